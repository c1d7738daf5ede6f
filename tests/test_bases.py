"""Every supported LLM4SBR_<Base> trains, scores, saves and reloads; every refused base says why.

One tiny session dataset (tests/tinydata.py) with synthetic intents, small layers, one epoch each.
"""
import inspect
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole.model.sequential_recommender as seqrec
from recbole_llm4sbr.data import intents as intents_module
from recbole_llm4sbr.model.bases import BASES, SUPPORTED, UNSUPPORTED
from recbole_llm4sbr.model.wrapper import llm4sbr_class
from tinydata import PER_BASE, SMALL, synthetic_intents, tiny_width, write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
DOCS, README = ROOT / "docs" / "BASES.md", ROOT / "README.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    folder = write_tiny_dataset(root)
    width = tiny_width(folder)
    table = synthetic_intents(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
        yield root, width


def build(root, width, base, **overrides):
    from recbole_llm4sbr.quick_start import build as build_all, make_config

    config_dict = {"data_path": str(root), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(root / "saved" / base), "train_batch_size": 32,
                   "eval_batch_size": 64, "MAX_ITEM_LIST_LENGTH": width, **SMALL, "intent_strength": 1.0,
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


PLUGIN_PARAMETERS = ("projection.", "fusion.", "residual.", "text_target_head.", "eimf.")


def rel_diff(a, b):
    """Largest absolute difference relative to the largest score (bases' untrained scores are tiny)."""
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("base", SUPPORTED)
def test_untrained_wrapped_base_scores_exactly_like_its_base(tiny, base):
    """``fusion: residual`` (the default) keeps the base's own scoring path and adds an intent term
    that starts at zero: an untrained LLM4SBR_<Base> scores like <Base> holding the same weights.
    Once the residual is non-zero the scores move (``intent_strength: 0`` keeps the base's), and the
    paper's fusion (``fusion: paper``) replaces the base's vector from the start."""
    root, width = tiny
    config, (dataset, (_, _, test), model, _) = build(root, width, base)
    stock = getattr(seqrec, base)(config, dataset)
    loaded = stock.load_state_dict(model.state_dict(), strict=False)
    assert loaded.missing_keys == []
    assert loaded.unexpected_keys and all(k.startswith(PLUGIN_PARAMETERS) for k in loaded.unexpected_keys)
    model.eval(), stock.eval()
    interaction = next(iter(test))[0]
    with torch.no_grad():
        wrapped_scores, stock_scores = model.full_sort_predict(interaction), stock.full_sort_predict(interaction)
        assert rel_diff(wrapped_scores, stock_scores) < 1e-5, base
        assert rel_diff(model.predict(interaction), stock.predict(interaction)) < 1e-5
        torch.nn.init.normal_(model.residual.linear.weight, std=0.5)
        assert rel_diff(model.full_sort_predict(interaction), stock_scores) > 1e-2
        model.intent_strength = 0.0
        assert rel_diff(model.full_sort_predict(interaction), stock_scores) < 1e-5
    _, (_, (_, _, test), paper, _) = build(root, width, base, fusion="paper")
    assert paper.residual is None
    paper.eval()
    with torch.no_grad():
        assert rel_diff(paper.full_sort_predict(interaction), stock_scores) > 1e-2


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
    """docs/BASES.md's tables name every supported base (with its views) and every refused one; the
    README's base list names every supported one."""
    readme, docs = README.read_text(encoding="utf-8"), DOCS.read_text(encoding="utf-8")
    for base in SUPPORTED:
        assert f"| {base} |" in docs and f"`{base}`" in readme, base
    for base in UNSUPPORTED:
        assert f"| {base} |" in docs, base
    # the per-base notes name the bases whose spec needs them
    width_bound = re.search(r"\*\*Width-bound bases\*\* \(([^)]*)\)", docs).group(1).split(", ")
    assert sorted(width_bound) == sorted(name for name, spec in BASES.items() if spec.width_bound)
    for name, spec in BASES.items():
        assert not spec.mixins or f"- **{name}**" in docs, f"docs/BASES.md has no note on {name}'s mixins"


# -- one owner for a base: names, layout, checkpoints ----------------------------------------------
def test_wrapped_name_helpers():
    from recbole_llm4sbr.model.bases import PREFIX, base_of, is_wrapped, wrapped_name
    from recbole_llm4sbr.utils import get_model

    assert wrapped_name("SRGNN") == PREFIX + "SRGNN" and base_of(wrapped_name("SRGNN")) == "SRGNN"
    assert base_of("SRGNN") is None and base_of(None) is None and not is_wrapped("GRU4Rec")
    assert get_model(wrapped_name("GRU4Rec")) is llm4sbr_class("GRU4Rec")
    assert get_model("GRU4Rec") is seqrec.GRU4Rec


def test_checkpoint_classes_unpickle_in_a_fresh_process():
    """A checkpoint's config names recbole_llm4sbr.model.wrapper.LLM4SBR_<Base>; a new process
    (where no class has been made yet) finds it by that path."""
    import pickle
    import subprocess
    import sys

    data = pickle.dumps(llm4sbr_class("NARM"), protocol=4)
    assert b"recbole_llm4sbr.model.wrapper" in data and b"LLM4SBR_NARM" in data
    code = ("import pickle, sys; cls = pickle.loads(sys.stdin.buffer.read()); "
            "assert cls.__name__ == 'LLM4SBR_NARM' and cls.base_spec.name == 'NARM', cls")
    subprocess.run([sys.executable, "-c", code], input=data, check=True)
