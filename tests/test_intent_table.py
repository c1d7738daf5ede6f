"""The intent table on disk: round trip, atomic replacement, no temp folders left behind."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recbole_llm4sbr.intent import IntentTable, load_intent_table
from recbole_llm4sbr.intent.table import keys_sha1, read_meta, write_intent_table

torch.set_num_threads(1)


def _table(n=3, v=2, d=4, seed=0):
    rng = np.random.default_rng(seed)
    keys = [f"{i:016x}" for i in range(n)]
    vec = rng.normal(size=(n, v, d)).astype(np.float32)
    raw = rng.normal(size=(n, v, d)).astype(np.float32)
    views = ["long", "short"][:v]
    meta = {"format_version": 2, "dataset": "tiny", "views": views}
    recs = [{"key": k, "prefix": [str(i)], "views": {w: {"answer": f"a{i}{w}", "items": ["1"], "sims": [0.5]} for w in views}}
            for i, k in enumerate(keys)]
    return meta, keys, vec, raw, recs


def _items(n=6, d=4, seed=0):
    rng = np.random.default_rng(seed + 100)
    return {"item_tokens": [str(10 + i) for i in range(n)], "item_vectors": rng.normal(size=(n, d)).astype(np.float32)}


def write(folder, meta, keys, vec, raw, recs, **items):
    return write_intent_table(folder, meta, keys, vec, raw, recs, **(items or _items(d=vec.shape[2])))


def test_round_trip(tmp_path):
    meta, keys, vec, raw, recs = _table()
    items = _items()
    folder = write_intent_table(tmp_path / "t", meta, keys, vec, raw, recs, **items)
    assert sorted(p.name for p in folder.iterdir()) == [
        "answers.jsonl", "answers.offsets.npy", "items.npy", "items.txt", "keys.txt", "meta.json", "raw.npy",
        "vectors.npy"]
    t = load_intent_table(folder)
    assert isinstance(t, IntentTable)
    assert t.keys == keys and t.views == ["long", "short"] and len(t) == 3
    np.testing.assert_array_equal(t.vectors, vec)
    np.testing.assert_array_equal(t.raw, raw)
    assert t.vectors.dtype == np.float32
    assert t.meta["n_keys"] == 3 and t.meta["d_text"] == 4 and t.meta["keys_sha1"] == keys_sha1(keys)
    assert t.item_tokens == items["item_tokens"] and t.meta["n_items"] == 6
    assert t.item_vectors.dtype == np.float32 and t.item_vectors.shape == (6, 4)
    np.testing.assert_array_equal(t.item_vectors, items["item_vectors"])
    assert (folder / "items.txt").read_text().splitlines() == items["item_tokens"]
    assert t.item_tokens == items["item_tokens"] and t.meta["n_items"] == 6
    assert t.item_vectors.dtype == np.float32 and t.item_vectors.shape == (6, 4)
    np.testing.assert_array_equal(t.item_vectors, items["item_vectors"])
    assert (folder / "items.txt").read_text().splitlines() == items["item_tokens"]
    assert t.row(keys[2]) == 2 and keys[1] in t and t.view_index("short") == 1
    with pytest.raises(KeyError, match="rebuild"):
        t.row("nope")
    assert [r["key"] for r in t.answers()] == keys
    assert [r["views"]["short"]["answer"] for r in t.answers([keys[1]])] == ["a1short"]
    tm = load_intent_table(folder, mmap=True)
    np.testing.assert_array_equal(tm.vectors[1], vec[1])
    np.testing.assert_array_equal(tm.item_vectors[2], items["item_vectors"][2])
    with open(folder / "answers.jsonl") as f:
        assert json.loads(f.readline())["prefix"] == ["0"]


def test_replace_is_atomic_and_leaves_no_temp_dirs(tmp_path):
    meta, keys, vec, raw, recs = _table()
    write(tmp_path / "t", meta, keys, vec, raw, recs)
    meta2, keys2, vec2, raw2, recs2 = _table(n=5, seed=1)
    write(tmp_path / "t", meta2, keys2, vec2, raw2, recs2)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert load_intent_table(tmp_path / "t").keys == keys2

    def exploding():
        yield recs[0]
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write(tmp_path / "t", meta, keys, vec, raw, exploding())
    assert [p.name for p in tmp_path.iterdir()] == ["t"]  # temp folder removed
    assert load_intent_table(tmp_path / "t").keys == keys2  # old table intact


def test_shape_checks(tmp_path):
    meta, keys, vec, raw, recs = _table()
    with pytest.raises(ValueError):
        write(tmp_path / "t", meta, keys[:2], vec, raw, recs)
    with pytest.raises(ValueError):
        write(tmp_path / "t", {**meta, "views": ["long"]}, keys, vec, raw, recs)
    with pytest.raises(ValueError):
        write(tmp_path / "t", meta, [keys[0]] * 3, vec, raw, recs)
    assert not (tmp_path / "t").exists()


def test_missing_table(tmp_path):
    assert read_meta(tmp_path / "nothing") is None
    with pytest.raises(FileNotFoundError, match="no intent table"):
        load_intent_table(tmp_path / "nothing")


def test_item_checks(tmp_path):
    meta, keys, vec, raw, recs = _table()
    bad_d = _items(d=5)
    with pytest.raises(ValueError, match="item_vectors"):
        write_intent_table(tmp_path / "t", meta, keys, vec, raw, recs, **bad_d)
    short = _items()
    short["item_tokens"] = short["item_tokens"][:-1]
    with pytest.raises(ValueError, match="item_vectors"):
        write_intent_table(tmp_path / "t", meta, keys, vec, raw, recs, **short)
    dup = _items()
    dup["item_tokens"][1] = dup["item_tokens"][0]
    with pytest.raises(ValueError, match="unique"):
        write_intent_table(tmp_path / "t", meta, keys, vec, raw, recs, **dup)
    with pytest.raises(TypeError):  # the catalogue is not optional
        write_intent_table(tmp_path / "t", meta, keys, vec, raw, recs)
    assert not (tmp_path / "t").exists()


def test_format_1_table_asks_for_a_rebuild(tmp_path):
    """A table from before items.npy/items.txt: a clear 'rebuild it', never a crash deeper down."""
    meta, keys, vec, raw, recs = _table()
    folder = write(tmp_path / "t", {**meta, "format_version": 1}, keys, vec, raw, recs)
    (folder / "items.npy").unlink()
    (folder / "items.txt").unlink()
    with pytest.raises(ValueError, match="rebuild"):
        load_intent_table(folder)


def _lines_by_key(folder):
    with open(folder / "answers.jsonl", encoding="utf-8") as f:
        return {json.loads(line)["key"]: json.loads(line) for line in f}


def test_record_is_the_answers_line_of_every_key(tmp_path):
    """``record(key)`` is that key's answers.jsonl line (serving's intents), with the index written
    with the table, and for a table written before the index existed (built on first read)."""
    meta, keys, vec, raw, recs = _table(n=7)
    for i, rec in enumerate(recs):  # multi-byte text: offsets are bytes, not characters
        rec["views"]["long"]["answer"] = "Amélie — 東京物語 " * (i + 1)
    folder = write(tmp_path / "t", meta, keys, vec, raw, recs[::-1])  # any record order
    expected = _lines_by_key(folder)
    assert set(expected) == set(keys)
    t = load_intent_table(folder)
    assert [t.record(k) for k in keys] == [expected[k] for k in keys]
    with pytest.raises(KeyError, match="rebuild"):
        t.record("nope")

    (folder / "answers.offsets.npy").unlink()  # a table written before the index
    old = load_intent_table(folder, mmap=True)
    assert [old.record(k) for k in reversed(keys)] == [expected[k] for k in reversed(keys)]
    assert sorted(p.name for p in folder.iterdir()) == [  # read only: the table is not rewritten
        "answers.jsonl", "items.npy", "items.txt", "keys.txt", "meta.json", "raw.npy", "vectors.npy"]


def test_record_survives_an_index_that_does_not_fit(tmp_path):
    meta, keys, vec, raw, recs = _table(n=4)
    folder = write(tmp_path / "t", meta, keys, vec, raw, recs)
    expected = _lines_by_key(folder)
    np.save(folder / "answers.offsets.npy", np.array([0, 0, 0, 0, 0], dtype=np.int64))  # wrong size
    assert [load_intent_table(folder).record(k) for k in keys] == [expected[k] for k in keys]


def test_records_must_belong_to_the_table(tmp_path):
    meta, keys, vec, raw, recs = _table()
    with pytest.raises(ValueError, match="key of the table"):
        write(tmp_path / "t", meta, keys, vec, raw, recs + [recs[0]])
    with pytest.raises(ValueError, match="key of the table"):
        write(tmp_path / "t", meta, keys, vec, raw, [{**recs[0], "key": "elsewhere"}])
    assert not (tmp_path / "t").exists()
