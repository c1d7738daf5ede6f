"""``intent_strength: off``: ``LLM4SBR_<Base>`` IS ``<Base>``, trained, not only at the start.

The benchmark's fair protocol counts the stock base among the wrapped model's candidates (the run of
``intent_strength: off`` is the stock base's own run, not trained again), and a per-base property file
may ship ``off``. Both rest on this: with the same seed and data, the wrapped model with the intents
off trains to the same weights, the same validation score and the same test metrics as the stock base,
bit for bit, and needs no stage-1 table.
"""
import numpy as np
import pytest
import torch

from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.model.bases import SUPPORTED
from tinydata import PER_BASE, SMALL, tiny_width, write_tiny_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("off")
    folder = write_tiny_dataset(root)
    width = tiny_width(folder)
    return root, width


def trained(root, width, model, **overrides):
    """Train ``model`` two epochs on the tiny data as the quick start does; its weights and results.
    No intent table exists for this dataset: a model that tried to read one would fail."""
    from recbole_llm4sbr.quick_start import build, make_config

    config_dict = {"data_path": str(root), "epochs": 2, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(root / "saved" / model), "train_batch_size": 32, "eval_batch_size": 64,
                   "MAX_ITEM_LIST_LENGTH": width, "seed": 7, **SMALL, **overrides}
    if not model.startswith("LLM4SBR_"):
        config_dict.pop("intent_strength", None)  # a stock model has no such key
    config = make_config(model, "tiny", config_dict=config_dict, read_cmd_line=False)
    _, (train, valid, test), net, trainer = build(config)
    best_score, _ = trainer.fit(train, valid, saved=True, show_progress=False)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    return config, net, best_score, dict(result), trainer.best_epoch


@pytest.mark.parametrize("base", SUPPORTED)
def test_wrapped_base_with_intents_off_trains_exactly_like_its_base(tiny, base):
    root, width = tiny
    extra = PER_BASE.get(base, {})
    _, stock, stock_score, stock_result, stock_epoch = trained(root, width, base, **extra)
    config, off, off_score, off_result, off_epoch = trained(root, width, f"LLM4SBR_{base}",
                                                           intent_strength="off", **extra)
    assert type(off).__name__ == f"LLM4SBR_{base}"
    assert config["load_intent"] is False and config["semantic_at_inference"] is False
    assert off_score == stock_score and off_epoch == stock_epoch
    assert off_result == stock_result, base
    stock_state, off_state = stock.state_dict(), off.state_dict()
    assert list(off_state) == list(stock_state)  # no parameter of the wrapper's own
    for name, tensor in stock_state.items():
        assert torch.equal(off_state[name], tensor), (base, name)


def test_off_is_read_from_yaml_and_the_command_line(tiny, tmp_path):
    """An unquoted ``off`` in a yaml file is YAML's False; ``--intent_strength=off`` a string; ``0`` is
    a number (the intents still train the views through the alignment loss): only the first two are off."""
    from recbole_llm4sbr.quick_start import make_config

    root, width = tiny
    common = {"data_path": str(root), "MAX_ITEM_LIST_LENGTH": width, "state": "WARNING"}
    yaml_file = tmp_path / "off.yaml"
    yaml_file.write_text("intent_strength: off\n")
    for files, extra in (([str(yaml_file)], {}), (None, {"intent_strength": "OFF"})):
        config = make_config("LLM4SBR_SASRec", "tiny", config_file_list=files, config_dict={**common, **extra},
                             read_cmd_line=False)
        assert config["intent_strength"] == "off" and config["load_intent"] is False
    config = make_config("LLM4SBR_SASRec", "tiny", config_dict={**common, "intent_strength": 0}, read_cmd_line=False)
    assert config["intent_strength"] == 0 and config["load_intent"] is True
    # the key is the residual fusion's: a per-base ``off`` leaves the paper's fusion on
    config = make_config("LLM4SBR_SASRec", "tiny", config_dict={**common, "intent_strength": "off", "fusion": "paper"},
                         read_cmd_line=False)
    assert config["load_intent"] is True and config["semantic_at_inference"] is True
    with pytest.raises(ConfigError, match="intent_strength.*off"):
        make_config("LLM4SBR_SASRec", "tiny", config_dict={**common, "intent_strength": "of"}, read_cmd_line=False)


def test_off_serves_like_the_stock_base_without_intents(tiny):
    """A checkpoint trained with the intents off serves without prefix keys or an intent table (its
    config says ``semantic_at_inference: False``) and recommends exactly what the stock checkpoint does."""
    from recbole.data.interaction import Interaction

    from recbole_llm4sbr.serve import ServedModel

    root, width = tiny
    for model in ("GRU4Rec", "LLM4SBR_GRU4Rec"):
        _, off, _, _, _ = trained(root, width, model, intent_strength="off", epochs=1,
                                  checkpoint_dir=str(root / "serve" / model))
    off.eval()
    seq = torch.tensor([[3, 4, 5, 0, 0, 0, 0, 0][:width]])
    batch = Interaction({off.ITEM_SEQ: seq, off.ITEM_SEQ_LEN: torch.tensor([3])})
    with torch.no_grad():
        scores = off.full_sort_predict(batch)
    assert scores.shape[0] == 1 and np.isfinite(scores.numpy()).all()
    served = {}
    for model in ("GRU4Rec", "LLM4SBR_GRU4Rec"):
        checkpoint, = (root / "serve" / model).glob("*.pth")
        served[model] = ServedModel(checkpoint, data_path=str(root))
    assert served["LLM4SBR_GRU4Rec"].semantic is False
    stock, wrapped = (served[m].recommend(["101", "104", "107"], k=5) for m in ("GRU4Rec", "LLM4SBR_GRU4Rec"))
    assert wrapped.items == stock.items and wrapped.scores == stock.scores
