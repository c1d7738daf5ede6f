"""intent_samples: typical (EIMF): clustering, budget, LLM calls = exemplars x views, no target leaks,
staleness, resolve_samples(auto), the catalogue files of the table."""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Sequence

import numpy as np
import pytest
import torch

from intent_helpers import DS, ITEMS, base_settings, write_dataset

from recbole_llm4sbr.errors import LLM4SBRError
from recbole_llm4sbr.intent import build_intent_table, ensure_intent_table, load_intent_table, prefix_key
from recbole_llm4sbr.intent import backends as backends_mod
from recbole_llm4sbr.intent import pipeline
from recbole_llm4sbr.intent.backends import REGISTRY, backend_class, resolve_backend_name, resolve_samples
from recbole_llm4sbr.intent.backends.base import Backend
from recbole_llm4sbr.intent.prompts import build_prompt
from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.identity import table_tag
from recbole_llm4sbr.intent.typical import minibatch_kmeans, plan_typical, resolve_budget

torch.set_num_threads(1)


class CountingBackend(Backend):
    """Records every prompt it is sent (one entry per LLM call of one prompt)."""

    name = "counting"
    sent: List[str] = []

    def describe(self) -> Dict[str, Any]:
        return {"backend": "counting"}

    def generate(self, prompts: Sequence[str]) -> List[str]:
        type(self).sent.extend(prompts)
        return [f"Answer: {p.splitlines()[1][3:40]}" for p in prompts]


# three item groups; train prefixes: every ordered pair and triple inside a group (all distinct)
GROUPS = [["1", "2", "6"], ["3", "4", "7"], ["5", "8"]]
TRAIN_PREFIXES = [" ".join(p) for g in GROUPS for n in (1, 2, 3) for p in itertools.permutations(g, n) if len(p) == n]
# valid/test: length 4, so never a train prefix
VALID_PREFIXES = ["1 2 6 1", "3 4 7 3"]
TEST_PREFIXES = ["5 8 5 8", "6 2 1 6"]


def rows(target_of=lambda i, p: str((i % 8) + 1)):
    return {
        "train": [(str(i), p, target_of(i, p)) for i, p in enumerate(TRAIN_PREFIXES)],
        "valid": [(str(100 + i), p, target_of(i + 1, p)) for i, p in enumerate(VALID_PREFIXES)],
        "test": [(str(200 + i), p, target_of(i + 2, p)) for i, p in enumerate(TEST_PREFIXES)],
    }


@pytest.fixture
def counting(monkeypatch):
    monkeypatch.setitem(REGISTRY, "counting", f"{__name__}:CountingBackend")
    cls = backend_class("counting")
    cls.sent = []
    return cls


@pytest.fixture
def data(tmp_path):
    write_dataset(tmp_path, rows=rows())
    return tmp_path


def typical_settings(root, **kw):
    over = dict(intent_backend="counting", intent_samples="typical", intent_budget=4)
    over.update(kw)
    return base_settings(root, **over)


def exemplar_map(folder) -> Dict[str, str]:
    return {r["key"]: r["exemplar"] for r in load_intent_table(folder).answers()}


# ---- budget -------------------------------------------------------------------------------------


def test_resolve_budget_count_and_fraction():
    assert resolve_budget(300, 1000) == 300
    assert resolve_budget(300.0, 1000) == 300
    assert resolve_budget("25", 1000) == 25
    assert resolve_budget(5000, 1000) == 1000  # capped at the prefixes there are
    assert resolve_budget(0.05, 1000) == 50
    assert resolve_budget(0.051, 1000) == 51  # rounded up
    assert resolve_budget(0.0001, 1000) == 1  # at least one
    assert resolve_budget("0.5", 10) == 5


@pytest.mark.parametrize("bad", [0, -3, "lots", None, True, float("nan"), float("inf"), 1.5, [3]])
def test_resolve_budget_rejects_bad_values(bad):
    with pytest.raises(IntentError, match="intent_budget"):
        resolve_budget(bad, 100)


def test_bad_budget_is_a_clear_error_from_the_pipeline(data, counting):
    with pytest.raises(LLM4SBRError, match="intent_budget"):  # refused where the settings are built
        build_intent_table(typical_settings(data, intent_budget=-1))
    assert counting.sent == []  # failed before any LLM call


# ---- clustering ---------------------------------------------------------------------------------


def _blobs(n_per=50, centers=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 10
    x = np.concatenate([c[i] + rng.normal(size=(n_per, d)) * 0.1 for i in range(centers)]).astype(np.float32)
    return x, np.repeat(np.arange(centers), n_per)


def test_minibatch_kmeans_recovers_separated_blobs():
    x, truth = _blobs()
    centroids, labels, steps = minibatch_kmeans(x, 4, seed=1, batch_size=32)
    assert centroids.shape == (4, 8) and labels.shape == (200,) and steps >= 1
    # every true blob is one cluster and every cluster one blob
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 4 and len({t for t, _ in pairs}) == 4 and len({label for _, label in pairs}) == 4


def _plan_inputs(n_train=60, n_eval=20, n_items=30, d=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = [f"i{j}" for j in range(n_items)]
    vecs = rng.normal(size=(n_items, d)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    prefixes = {}
    for _ in range(n_train + n_eval):
        p = tuple(rng.choice(tokens, size=int(rng.integers(1, 6))))
        prefixes[prefix_key(p)] = p
    keys = list(prefixes)
    return prefixes, keys[: len(keys) - n_eval], tokens, vecs


def test_every_prefix_gets_exactly_one_exemplar_within_budget():
    prefixes, train, tokens, vecs = _plan_inputs()
    tp = plan_typical(prefixes, train, tokens, vecs, budget=7, seed=3)
    assert set(tp.plan) == set(prefixes)  # every prefix, one exemplar each (a dict: exactly one)
    assert 1 <= len(tp.exemplars) <= 7 and len(set(tp.exemplars)) == len(tp.exemplars)
    assert set(tp.plan.values()) == set(tp.exemplars)
    assert set(tp.exemplars) <= set(train)  # only train prefixes are asked
    assert all(tp.plan[e] == e for e in tp.exemplars)  # an exemplar answers for itself
    # each prefix uses the exemplar nearest its own embedding
    from recbole_llm4sbr.intent.typical import prefix_embeddings

    row = {t: i for i, t in enumerate(tokens)}
    keys = list(prefixes)
    emb = dict(zip(keys, prefix_embeddings([prefixes[k] for k in keys], row, vecs)))
    for k in keys:
        d = {e: float(((emb[k] - emb[e]) ** 2).sum()) for e in tp.exemplars}
        assert d[tp.plan[k]] <= min(d.values()) + 1e-5
    # deterministic for a seed, fraction form of the budget
    assert plan_typical(prefixes, train, tokens, vecs, budget=7, seed=3).plan == tp.plan
    frac = plan_typical(prefixes, train, tokens, vecs, budget=0.1, seed=3)
    assert frac.budget == int(np.ceil(0.1 * len(prefixes))) and len(frac.exemplars) <= frac.budget


def test_budget_of_every_train_prefix_asks_each_one():
    prefixes, train, tokens, vecs = _plan_inputs(n_train=12, n_eval=3)
    tp = plan_typical(prefixes, train, tokens, vecs, budget=len(train), seed=0)
    assert sorted(tp.exemplars) == sorted(train)


# ---- pipeline -----------------------------------------------------------------------------------


def test_llm_calls_are_exemplars_times_views(data, counting):
    folder = build_intent_table(typical_settings(data, intent_budget=4))
    t = load_intent_table(folder)
    exemplars = set(exemplar_map(folder).values())
    assert 1 <= len(exemplars) <= 4
    n_views = len(t.views)
    assert len(counting.sent) == len(exemplars) * n_views == 4 * 2
    summ = t.meta["summary"]
    assert summ["sent"] == len(counting.sent) and summ["exemplars"] == len(exemplars)
    assert summ["LLM prompts per view"] == len(exemplars) and summ["LLM prompts"] == len(counting.sent)
    n_samples = len(TRAIN_PREFIXES) + len(VALID_PREFIXES) + len(TEST_PREFIXES)
    assert summ["samples"] == n_samples and summ["samples with a direct answer"] == len(exemplars)
    assert summ["direct answer fraction"] == round(len(exemplars) / n_samples, 4)
    assert t.meta["intent_samples"] == "typical" and t.meta["typical"]["exemplars"] == len(exemplars)
    # every prompt sent lists an exemplar's prefix; each prefix's row holds its exemplar's answers
    sent_prefixes = {p.splitlines()[1] for p in counting.sent}
    assert len(sent_prefixes) == len(exemplars)
    for rec in t.answers():
        ex = next(t.answers([rec["exemplar"]]))
        assert rec["views"] == ex["views"]
        np.testing.assert_array_equal(t.vectors[t.row(rec["key"])], t.vectors[t.row(ex["key"])])
    # the catalogue is in the table too
    assert t.item_tokens == list(ITEMS) and t.item_vectors.shape == (len(ITEMS), t.meta["d_text"])


def test_all_asks_every_prefix(data, counting):
    t = load_intent_table(build_intent_table(typical_settings(data, intent_samples="all")))
    n = len(TRAIN_PREFIXES) + len(VALID_PREFIXES) + len(TEST_PREFIXES)
    assert len(counting.sent) == n * 2 and t.meta["intent_samples"] == "all"
    assert t.meta["summary"]["direct answer fraction"] == 1.0
    assert all("exemplar" not in r for r in t.answers())


def test_valid_test_never_exemplars_and_plan_ignores_targets(tmp_path, counting):
    write_dataset(tmp_path, rows=rows())
    first = exemplar_map(build_intent_table(typical_settings(tmp_path, intent_budget=5)))
    train_keys = {prefix_key(p.split()) for p in TRAIN_PREFIXES}
    eval_keys = {prefix_key(p.split()) for p in VALID_PREFIXES + TEST_PREFIXES}
    assert set(first.values()) <= train_keys
    assert all(first[k] != k and first[k] in train_keys for k in eval_keys)
    # other targets everywhere (valid/test targets = the items of their own prefix, train shuffled)
    write_dataset(tmp_path, rows=rows(lambda i, p: p.split()[0] if i % 2 else "8"))
    assert exemplar_map(build_intent_table(typical_settings(tmp_path, intent_budget=5))) == first


def test_typical_table_is_stale_when_the_budget_changes(data, counting):
    s4 = typical_settings(data, intent_budget=4)
    folder = ensure_intent_table(s4)
    assert pipeline.stale_reason(pipeline.normalize_settings(s4), folder, "counting") is None
    s3 = typical_settings(data, intent_budget=3)
    assert table_tag(s3, "counting") != table_tag(s4, "counting")
    # even pointed at the old folder, its settings differ
    assert pipeline.stale_reason(pipeline.normalize_settings(s3), folder, "counting").startswith("stale")
    assert pipeline.stale_reason(pipeline.normalize_settings({**s4, "intent_seed": 7}), folder, "counting") is not None
    # with all, the budget means nothing and changes nothing
    assert table_tag({**s4, "intent_samples": "all"}, "counting") == table_tag({**s3, "intent_samples": "all"}, "counting")


def test_auto_resolves_in_the_meta_never_auto(data, monkeypatch, counting, caplog):
    """intent_samples auto + transformers on a CPU -> typical (the fake stands in for transformers)."""
    monkeypatch.setitem(REGISTRY, "transformers", f"{__name__}:CountingBackend")
    s = typical_settings(data, intent_backend="transformers", intent_device="cpu", intent_samples="auto", intent_budget=2)
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        t = load_intent_table(ensure_intent_table(s))
    assert t.meta["intent_samples"] == "typical" and t.meta["table_settings"]["samples"] == "typical"
    assert len(counting.sent) == 2 * 2
    assert "intent_samples auto -> typical" in caplog.text
    # the text backend: auto -> all, the same table as an explicit all
    s_text = base_settings(data, intent_samples="auto")
    t_text = load_intent_table(ensure_intent_table(s_text))
    assert t_text.meta["intent_samples"] == "all"
    assert table_tag(s_text, "text") == table_tag(base_settings(data, intent_samples="all"), "text")


def test_prompt_max_items(data, counting):
    assert build_prompt("{items}|{qualifier}", ["1", "2", "3"], ITEMS, "Q", max_items=2) == (
        f"1. {ITEMS['2']}_2\n2. {ITEMS['3']}_3|Q"
    )
    assert build_prompt("{items}", ["1", "2"], ITEMS, "Q", max_items=0) == build_prompt("{items}", ["1", "2"], ITEMS, "Q")
    t = load_intent_table(build_intent_table(typical_settings(data, intent_samples="all", intent_prompt_max_items=1)))
    assert counting.sent and all(sum(line[:1].isdigit() for line in p.splitlines()) == 1 for p in counting.sent)
    assert t.meta["table_settings"]["prompt_max_items"] == 1
    with pytest.raises(LLM4SBRError, match="intent_prompt_max_items"):
        build_intent_table(typical_settings(data, intent_prompt_max_items=-2))


# ---- resolve_samples ----------------------------------------------------------------------------


def test_resolve_samples(monkeypatch):
    auto = {"intent_samples": "auto"}
    assert resolve_samples({**auto, "intent_device": "cpu"}, "transformers")[0] == "typical"
    assert resolve_samples({**auto, "intent_device": "cuda"}, "transformers")[0] == "all"
    for backend in ("text", "vllm", "openai"):
        assert resolve_samples({**auto, "intent_device": "cpu"}, backend)[0] == "all"
    monkeypatch.setattr(backends_mod, "_cuda_available", lambda: False)
    assert resolve_samples({**auto, "intent_device": "auto"}, "transformers")[0] == "typical"
    monkeypatch.setattr(backends_mod, "_cuda_available", lambda: True)
    assert resolve_samples({**auto, "intent_device": "auto"}, "transformers")[0] == "all"
    # explicit values win; unknown ones are an error
    assert resolve_samples({"intent_samples": "all", "intent_device": "cpu"}, "transformers")[0] == "all"
    assert resolve_samples({"intent_samples": "typical"}, "text")[0] == "typical"
    with pytest.raises(IntentError, match="intent_samples"):
        resolve_samples({"intent_samples": "most"}, "text")


def test_auto_says_what_it_picked_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(backends_mod, "choose_auto", lambda s: ("transformers", "the packaged model is installed"))
    monkeypatch.setattr(backends_mod, "_cuda_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        name = resolve_backend_name({"intent_backend": "auto", "intent_samples": "auto"})
    assert name == "transformers"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "intent_backend auto -> transformers" in lines[0] and "intent_samples auto -> typical" in lines[0]


def test_prompt_max_items_auto_only_shortens_typical_prompts():
    from recbole_llm4sbr.intent.settings import TYPICAL_PROMPT_MAX_ITEMS, prompt_max_items

    s = {"intent_prompt_max_items": "auto"}
    assert prompt_max_items(s, "typical") == TYPICAL_PROMPT_MAX_ITEMS > 0
    assert prompt_max_items(s, "all") == 0 and prompt_max_items({}, "typical") == 0
    assert prompt_max_items({"intent_prompt_max_items": 3}, "all") == 3
    base = {"dataset": DS, "intent_template": "{items} {qualifier}", "intent_views": {"long": "long-term"}}
    # text backend, auto everywhere: the identity of a plain `all` table (text results unchanged)
    auto = {**base, "intent_samples": "auto", "intent_prompt_max_items": "auto", "intent_budget": 64}
    assert table_tag(auto, "text") == table_tag({**base, "intent_samples": "all"}, "text")
    with pytest.raises(IntentError, match="intent_prompt_max_items"):
        prompt_max_items({"intent_prompt_max_items": "many"}, "typical")


def test_online_stage1_asks_an_unseen_prefix_as_the_table_asked_its_own(data, counting):
    """Serving's online stage 1 uses the table's prompt length (here 2 items), not the whole prefix."""
    from recbole_llm4sbr.intent.online import OnlineIntents

    settings = typical_settings(data, intent_samples="all", intent_prompt_max_items=2)
    folder = build_intent_table(settings)
    counting.sent = []
    OnlineIntents(settings, folder).infer(["1", "2", "6", "3"])  # unseen prefix of 4 items
    assert len(counting.sent) == 2  # one prompt per view
    assert all(sum(line[:1].isdigit() for line in p.splitlines()) == 2 for p in counting.sent)
