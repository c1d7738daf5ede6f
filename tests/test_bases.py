"""Every supported LLM4SBR_<Base> trains, scores, saves and reloads; every refused base says why.

One tiny session dataset (tests/tinydata.py) with synthetic intents, small layers, one epoch each.
"""
import inspect
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole.model.sequential_recommender as seqrec
from recbole_llm4sbr.data import intents as intents_module
from recbole_llm4sbr.model.registry import SUPPORTED, UNSUPPORTED, llm4sbr_class
from tinydata import synthetic_intents, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
DOCS, README = ROOT / "docs" / "BASES.md", ROOT / "README.md"

SMALL = {"embedding_size": 16, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1}
PER_BASE = {
    "NARM": {"hidden_size": 24},  # views wider than the vector the base scores with
    "GRU4Rec": {"hidden_size": 24},
    "FEARec": {"n_layers": 2},  # its filter slide step divides by n_layers - 1
    "NextItNet": {"block_num": 1},
    "LightSANs": {"k_interests": 3},
    "SINE": {"prototype_size": 8},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    folder = write_tiny_dataset(root)
    width = max(len(line.split("\t")[1].split())
                for part in ("train", "valid", "test")
                for line in (folder / f"tiny.{part}.inter").read_text().splitlines()[1:])
    table = synthetic_intents(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
        yield root, width


def build(root, width, base, **overrides):
    from recbole_llm4sbr.quick_start import build as build_all, make_config

    config_dict = {"data_path": str(root), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(root / "saved" / base), "train_batch_size": 32,
                   "eval_batch_size": 64, "MAX_ITEM_LIST_LENGTH": width, **SMALL,
                   **PER_BASE.get(base, {}), **overrides}
    config = make_config(f"LLM4SBR_{base}", "tiny", config_dict=config_dict, read_cmd_line=False)
    return config, build_all(config)


def seeded_loss(model, batch):
    torch.manual_seed(0)
    random.seed(0)
    return model.calculate_loss(batch)


@pytest.mark.parametrize("base", SUPPORTED)
def test_wrapped_base_trains_scores_and_reloads(tiny, base):
    root, width = tiny
    config, (dataset, (train, valid, test), model, trainer) = build(root, width, base)
    assert type(model).__name__ == f"LLM4SBR_{base}"

    # a few steps on one batch: loss finite and falling, the alignment-uniformity term moving
    batch = next(iter(train))
    model.train()
    base_loss, au = seeded_loss(model, batch)
    assert torch.isfinite(base_loss) and torch.isfinite(au) and au.item() != 0.0
    before, au_before = (base_loss + au).item(), au.item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(8):
        opt.zero_grad()
        sum(seeded_loss(model, batch)).backward()
        opt.step()
    assert model.projection.weight.grad is not None and model.projection.weight.grad.abs().sum() > 0
    base_loss, au = seeded_loss(model, batch)
    assert torch.isfinite(base_loss) and (base_loss + au).item() < before
    assert au.item() != pytest.approx(au_before, abs=1e-6)

    # one epoch with RecBole's trainer, best checkpoint saved
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert Path(trainer.saved_model_file).is_file()

    model.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (len(interaction), dataset.item_num)
        assert torch.isfinite(scores).all()
        assert model.predict(interaction).shape == (len(interaction),)

    # the checkpoint reloads into a fresh model (torch >= 2.6: recbole_llm4sbr.compat) with equal scores
    fresh = llm4sbr_class(base)(config, train._dataset)
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    fresh.load_state_dict(checkpoint["state_dict"])
    fresh.load_other_parameter(checkpoint.get("other_parameter"))
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.full_sort_predict(interaction), scores, atol=1e-5)
    result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    assert np.isfinite(result["mrr@20"])


def test_fearec_contrastive_views_get_their_own_intents(tiny):
    """FEARec's supervised contrast encodes other training prefixes (same target): their intents,
    found by content, not the batch's; the alignment-uniformity term comes from the batch's pass."""
    root, width = tiny
    _, (_, (train, _, _), model, _) = build(root, width, "FEARec", contrast="us_x", tau=1.0, sim="dot")
    batch = next(iter(train))
    model.train()
    seen = []
    own = model._call_keys
    model._call_keys = lambda call: seen.append((call.item_seq is batch["item_id_list"], own(call))) or seen[-1][1]
    base_loss, au = model.calculate_loss(batch)
    assert torch.isfinite(base_loss) and torch.isfinite(au)
    assert [is_batch for is_batch, _ in seen] == [True, True, False]  # batch, dropout view, sem_aug
    assert torch.equal(seen[0][1], batch["prefix_key"]) and not torch.equal(seen[2][1], batch["prefix_key"])
    sem_aug = batch["sem_aug"]
    feat = train._dataset.inter_feat
    for row, key in zip(sem_aug[:5], seen[2][1][:5]):
        match = (feat["item_id_list"] == row).all(dim=1)
        assert key.item() in set(feat["prefix_key"][match].tolist())


def recbole_sequential_models():
    return {name for name, obj in vars(seqrec).items() if inspect.isclass(obj)}


def test_every_recbole_sequential_model_is_classified():
    assert not set(SUPPORTED) & set(UNSUPPORTED)
    assert set(SUPPORTED) | set(UNSUPPORTED) == recbole_sequential_models()


@pytest.mark.parametrize("base", sorted(UNSUPPORTED))
def test_unsupported_base_is_refused_with_its_reason(base):
    from recbole_llm4sbr.quick_start import make_config

    reason = UNSUPPORTED[base]
    with pytest.raises(ValueError) as err:
        llm4sbr_class(base)
    assert f"LLM4SBR_{base} is not supported" in str(err.value) and reason in str(err.value)
    with pytest.raises(ValueError, match="is not supported"):  # before any data is read
        make_config(f"LLM4SBR_{base}", "tiny", config_dict={"data_path": "/nonexistent"}, read_cmd_line=False)


def test_docs_list_every_base():
    """README's table names every supported base (with its views), docs/BASES.md every refused one."""
    readme, docs = README.read_text(encoding="utf-8"), DOCS.read_text(encoding="utf-8")
    for base in SUPPORTED:
        assert f"| {base} |" in readme, base
    for base in UNSUPPORTED:
        assert f"| {base} |" in docs, base
