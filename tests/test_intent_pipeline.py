"""Stage 1 end to end in-process: build, reuse, staleness, fallbacks, input errors."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from intent_helpers import DS, ITEMS, EchoBackend, base_settings, unique_prefix_count, write_dataset

from recbole_llm4sbr.intent import build_intent_table, ensure_intent_table, load_intent_table, prefix_key
from recbole_llm4sbr.intent import pipeline
from recbole_llm4sbr.errors import ConfigError
from recbole_llm4sbr.intent.backends import REGISTRY
from recbole_llm4sbr.intent.encoder import encode, load_encoder
from recbole_llm4sbr.intent.errors import IntentError

torch.set_num_threads(1)


@pytest.fixture
def data(tmp_path):
    write_dataset(tmp_path)
    return tmp_path


def test_build_with_text_backend_and_real_encoder(data):
    s = base_settings(data)
    folder = ensure_intent_table(s)
    assert folder.parent == data / DS / "intent" and folder.name.startswith("text-")
    t = load_intent_table(folder)
    n = unique_prefix_count()
    assert t.vectors.shape == (n, 2, 384) and t.raw.shape == (n, 2, 384)
    assert t.views == ["long", "short"]
    meta = t.meta
    for field in ("format_version", "dataset", "views", "qualifiers", "backend", "backend_info", "template",
                  "template_version", "sampling", "encoder", "topr", "d_text", "n_keys", "keys_sha1", "summary"):
        assert field in meta, field
    assert meta["backend"] == "text" and meta["backend_info"]["backend"] == "text"
    assert meta["qualifiers"] == {"long": "long-term", "short": "short-term"}
    assert meta["topr"] == 5 and meta["encoder"] == "all-MiniLM-L6-v2" and meta["d_text"] == 384
    assert meta["sampling"] == {"max_tokens": 32, "temperature": 0.0, "top_p": 1.0, "seed": 2024}
    summ = meta["summary"]
    assert (summ["samples"], summ["unique prefixes"], summ["prompts total"], summ["prompts unique"]) == (9, n, 18, 2 * n)
    assert (summ["from cache"], summ["sent"], summ["failed"], summ["fallbacks"]) == (0, 2 * n, 0, 0)
    assert all(f"time {p}" in summ for p in ("prompting", "LLM", "encoding", "localization"))

    # every sample's prefix key is a row; the answer of the text backend is the prefix's item names
    key = prefix_key(["1", "2"])
    rec = next(t.answers([key]))
    assert rec["prefix"] == ["1", "2"]
    assert rec["views"]["long"]["answer"] == f"{ITEMS['2']}; {ITEMS['1']}"
    # the stored vector is Eq. 4-5 over the stored items and sims, with the same encoder
    model = load_encoder("all-MiniLM-L6-v2", "cpu")
    e = dict(zip(ITEMS, encode(model, list(ITEMS.values()), progress=False)))
    v = rec["views"]["short"]
    want = sum(sim * e[tok] for tok, sim in zip(v["items"], v["sims"]))
    np.testing.assert_allclose(t.vectors[t.row(key), 1], want, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(t.raw, axis=2), 1.0, atol=1e-5)
    assert v["sims"] == sorted(v["sims"], reverse=True) and len(v["items"]) == 5
    # the catalogue in the same text space (items.txt / items.npy), what stage 2's semantic loss reads
    assert t.item_tokens == list(ITEMS) and t.item_vectors.shape == (len(ITEMS), 384)
    np.testing.assert_allclose(t.item_vectors, np.stack([e[tok] for tok in ITEMS]), atol=1e-5)


def test_ensure_reuses_then_rebuilds_when_stale(data, monkeypatch, caplog):
    s = base_settings(data)
    folder = ensure_intent_table(s)
    created = load_intent_table(folder).meta["created"]

    def must_not_build(*a, **kw):
        raise AssertionError("rebuilt an up-to-date table")

    monkeypatch.setattr(pipeline, "build_intent_table", must_not_build)
    assert ensure_intent_table(s) == folder
    monkeypatch.undo()

    # a new test sample with an unseen prefix makes the table stale; only its prompts are sent
    with open(data / DS / f"{DS}.test.inter", "a") as f:
        f.write("6\t8 3\t1\n")
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        assert ensure_intent_table(s) == folder
    assert "stale: 1 of the dataset's" in caplog.text
    t = load_intent_table(folder)
    assert prefix_key(["8", "3"]) in t
    assert (t.meta["summary"]["from cache"], t.meta["summary"]["sent"]) == (2 * unique_prefix_count(), 2)
    # no temporary folder left; the build lock's file stays (removing it would break the lock)
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == [f".{folder.name}.lock"]

    # changed item texts make it stale too
    caplog.clear()
    with open(data / DS / f"{DS}.itemtext", "a") as f:
        f.write("9\tA new item\n")
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        ensure_intent_table(s)
    assert "itemtext changed" in caplog.text
    assert load_intent_table(folder).meta["created"] >= created


def test_settings_pick_their_own_folder(data):
    a = ensure_intent_table(base_settings(data))
    b = ensure_intent_table(base_settings(data, intent_topr=0))
    assert a != b and a.exists() and b.exists()
    t = load_intent_table(b)
    np.testing.assert_array_equal(t.vectors, t.raw)  # r = 0: no localization
    assert t.meta["summary"]["sent"] == 0  # same backend and prompts: all from the cache


def test_recbole_config_is_accepted(data):
    class FakeConfig:  # RecBole's Config: data_path already ends in the dataset name
        final_config_dict = {"dataset": DS, "data_path": str(data / DS), "intent_backend": "text", "show_progress": False}

    assert ensure_intent_table(FakeConfig()) == ensure_intent_table(base_settings(data))


def test_empty_answers_fall_back_to_the_last_item(data, monkeypatch, caplog):
    monkeypatch.setitem(REGISTRY, "empty", "intent_helpers:EmptyBackend")
    with caplog.at_level(logging.WARNING, logger="recbole_llm4sbr.intent"):
        folder = build_intent_table(base_settings(data, intent_backend="empty"))
    t = load_intent_table(folder)
    n = unique_prefix_count()
    assert t.meta["summary"]["fallbacks"] == 2 * n and t.meta["summary"]["fallbacks empty"] == 2 * n
    assert f"{2 * n} answers fell back" in caplog.text
    rec = next(t.answers([prefix_key(["5", "6", "7"])]))
    assert rec["views"]["long"] == {**rec["views"]["long"], "answer": ITEMS["7"], "fallback": "empty"}
    assert np.all(np.linalg.norm(t.vectors, axis=2) > 0.5)  # never a zero vector


def test_failed_backend_falls_back_and_is_counted(data, monkeypatch):
    monkeypatch.setitem(REGISTRY, "failing", "intent_helpers:FailingBackend")
    t = load_intent_table(build_intent_table(base_settings(data, intent_backend="failing", intent_batch_size=100)))
    n = unique_prefix_count()
    assert t.meta["summary"]["failed"] == 2 * n and t.meta["summary"]["fallbacks"] == 2 * n
    assert all(v["fallback"] == "failed" for r in t.answers() for v in r["views"].values())


def test_views_come_from_config(data, monkeypatch):
    monkeypatch.setitem(REGISTRY, "echo", "intent_helpers:EchoBackend")
    EchoBackend.sent = []
    views = {"long": "long-term", "short": "short-term", "next": "next click"}
    t = load_intent_table(build_intent_table(base_settings(data, intent_backend="echo", intent_views=views)))
    assert t.views == ["long", "short", "next"] and t.vectors.shape[1] == 3
    assert sum("in the next click." in p for p in EchoBackend.sent) == unique_prefix_count()
    assert len(EchoBackend.sent) == 3 * unique_prefix_count()


def test_missing_item_text_names_file_tokens_and_fix(tmp_path):
    write_dataset(tmp_path, items={k: v for k, v in ITEMS.items() if k not in ("3", "7")})
    with pytest.raises(IntentError) as e:
        build_intent_table(base_settings(tmp_path))
    msg = str(e.value)
    assert "tiny.itemtext" in msg and "(3, 7)" in msg and "2 item tokens" in msg and "add an" in msg


@pytest.mark.parametrize(
    "content,match",
    [("", "is empty"), ("id\ttext\n1\tx\n", "header"), ("item_id\ttext\n1 no tab\n", "line 2"), ("item_id\ttext\n", "no items")],
)
def test_bad_itemtext(tmp_path, content, match):
    write_dataset(tmp_path)
    (tmp_path / DS / f"{DS}.itemtext").write_text(content)
    with pytest.raises(IntentError, match=match):
        build_intent_table(base_settings(tmp_path))


def test_missing_benchmark_file(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / DS / f"{DS}.valid.inter").unlink()
    with pytest.raises(IntentError, match=r"tiny\.valid\.inter not found"):
        ensure_intent_table(base_settings(tmp_path))


def test_unknown_backend_and_samples(data):
    # refused where the settings are built (validation), before any table work
    with pytest.raises(ConfigError, match="'intent_backend' = 'nope'"):
        ensure_intent_table(base_settings(data, intent_backend="nope"))
    with pytest.raises(ConfigError, match="'intent_samples' = 'some'"):
        build_intent_table(base_settings(data, intent_samples="some"))


def test_format_1_table_is_stale_not_a_crash(data, caplog):
    """A table written before items.npy/items.txt (format 1) sitting where the current tag points."""
    s = base_settings(data)
    folder = ensure_intent_table(s)
    meta = json.loads((folder / "meta.json").read_text())
    meta["format_version"] = 1
    meta["table_settings"]["format_version"] = 1
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "items.npy").unlink()
    (folder / "items.txt").unlink()
    assert pipeline.stale_reason(pipeline.normalize_settings(s), folder, "text").startswith("stale")
    with caplog.at_level(logging.INFO, logger="recbole_llm4sbr.intent"):
        again = ensure_intent_table(s)
    assert again == folder and "building it" in caplog.text
    t = load_intent_table(again)
    assert t.meta["format_version"] == 2 and len(t.item_tokens) == len(ITEMS)
    # only the items files missing (identity intact): stale as well
    (folder / "items.npy").unlink()
    assert "items.npy" in pipeline.stale_reason(pipeline.normalize_settings(s), folder, "text")


def test_auto_uses_an_up_to_date_llm_table_built_elsewhere(data, monkeypatch):
    """A table built with vllm on a GPU box and copied over is used by ``auto`` on a CPU box (where auto
    picks transformers, and intent_samples auto would mean typical there), never rebuilt; an explicit
    backend gets its own table, and the LLM-free text table is never borrowed."""
    import shutil

    from recbole_llm4sbr.intent import backends

    monkeypatch.setitem(REGISTRY, "vllm", REGISTRY["text"])  # stands in for vLLM: same settings identity
    gpu = ensure_intent_table(base_settings(data, intent_backend="vllm"))
    assert gpu.name.startswith("vllm-")
    text = ensure_intent_table(base_settings(data, intent_backend="text"))
    builds = []

    def no_build(settings, log, backend_name):
        builds.append(backend_name)
        return data / "built"

    monkeypatch.setattr(pipeline, "build_intent_table", no_build)
    monkeypatch.setattr(backends, "choose_auto", lambda s: ("transformers", "a CPU box"))
    auto = base_settings(data, intent_backend="auto")
    assert ensure_intent_table(auto) == gpu and builds == []
    assert pipeline.locate_table(auto)[:3] == (gpu, "vllm", None)
    shutil.rmtree(gpu)  # only the text table is left: auto builds its own, it does not borrow text
    assert ensure_intent_table(auto) == data / "built" and builds == ["transformers"]
    assert text.is_dir()
