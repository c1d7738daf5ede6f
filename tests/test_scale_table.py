"""Scaling out: approximate localization, float16 storage and the memory-mapped table.

The ANN gate runs at d = 64 (an HNSW/IVF build at 200k x 384 takes minutes on one core);
benchmarks/scale_localization.py measures the real d = 384 at 200k and 1M items.
"""
from __future__ import annotations

import json

import os

import numpy as np
import pytest
import torch

from recbole_llm4sbr.data import intents as intents_module
from recbole_llm4sbr.intent import load_settings
from recbole_llm4sbr.intent.identity import table_tag
from recbole_llm4sbr.intent.localization import Search, localize
from recbole_llm4sbr.intent.table import load_intent_table, lookup_rows, write_intent_table
from tinydata import build_tiny_batch, synthetic_intents, write_tiny_dataset

faiss = pytest.importorskip("faiss")


def clustered_catalogue(n, d, m, seed=0):
    """Unit item vectors around n/100 topics (cosine ~0.7 to their topic), and m queries each near
    one item (an LLM answer that names an item of the catalogue, in other words)."""
    rng = np.random.default_rng(seed)
    k = max(8, n // 100)
    topics = rng.normal(size=(k, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    items = topics[rng.integers(0, k, n)] + rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.integers(0, n, m)] + rng.normal(size=(m, d)).astype(np.float32) * (0.5 / np.sqrt(d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return items, queries


def gate(approx, exact):
    (av, ai, _), (ev, ei, _) = approx, exact
    recall = np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(ai, ei)])
    cosine = np.mean(np.sum(av * ev, 1) / (np.linalg.norm(av, axis=1) * np.linalg.norm(ev, axis=1)))
    return recall, cosine


def test_ivf_localization_meets_the_gate_on_200k_items():
    items, queries = clustered_catalogue(200_000, 64, 400)
    exact = localize(queries, items, 5)
    approx = localize(queries, items, 5, search=Search("ivf", threshold=100_000))
    recall, cosine = gate(approx, exact)
    assert recall >= 0.95 and cosine >= 0.99, (recall, cosine)
    assert not np.array_equal(approx[1], exact[1]) or recall == 1.0  # it really searched approximately


def test_hnsw_localization_meets_the_gate():
    items, queries = clustered_catalogue(20_000, 64, 400, seed=1)
    recall, cosine = gate(localize(queries, items, 5, search=Search("hnsw", threshold=1000)),
                          localize(queries, items, 5))
    assert recall >= 0.95 and cosine >= 0.99, (recall, cosine)


def test_an_approximate_index_is_used_only_above_the_threshold(monkeypatch):
    from recbole_llm4sbr.intent import localization

    used = []
    real = localization.top_r_faiss
    monkeypatch.setattr(localization, "top_r_faiss", lambda q, x, r, kind="flat", chunk=8192, cache=None:
                        used.append(kind) or real(q, x, r, kind, chunk, cache))
    items, queries = clustered_catalogue(3000, 16, 50)
    small = localize(queries, items, 3, search=Search("hnsw", threshold=5000))
    assert used == []  # below the threshold: exact, the same as the default
    np.testing.assert_array_equal(small[1], localize(queries, items, 3)[1])
    localize(queries, items, 3, search=Search("hnsw", threshold=1000))
    assert used == ["hnsw"]


def test_search_settings_name_the_table_only_when_they_change_it():
    base = load_settings(dataset="tiny", overrides={})
    tag = table_tag(base, "text")
    assert table_tag(dict(base, intent_ann="exact", intent_storage_dtype="float32"), "text") == tag
    ivf = table_tag(dict(base, intent_ann="ivf"), "text")
    assert len({tag, ivf, table_tag(dict(base, intent_ann="hnsw"), "text"),
                table_tag(dict(base, intent_ann="ivf", intent_faiss_threshold=1000), "text"),
                table_tag(dict(base, intent_storage_dtype="float16"), "text")}) == 5
    # the threshold only matters to an approximate index
    assert table_tag(dict(base, intent_faiss_threshold=1000), "text") == tag
    with pytest.raises(ValueError, match="intent_ann"):
        Search.from_settings({"intent_ann": "annoy"})


def write_table(folder, n=50, views=2, d=8, seed=0, **kw):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, views, d)).astype(np.float32)
    keys = [f"k{i}" for i in range(n)]
    items = rng.normal(size=(5, d)).astype(np.float32)
    meta = {"format_version": 2, "views": [f"v{i}" for i in range(views)]}
    write_intent_table(folder, meta, keys, vectors, vectors * 0.5, [{"key": k} for k in keys],
                       item_tokens=[f"i{i}" for i in range(5)], item_vectors=items, **kw)
    return keys, vectors


def test_float16_storage_and_the_float32_files_as_before(tmp_path):
    keys, vectors = write_table(tmp_path / "f32")
    np.save(tmp_path / "plain.npy", vectors)  # what write_intent_table wrote before it wrote in blocks
    assert (tmp_path / "f32" / "vectors.npy").read_bytes() == (tmp_path / "plain.npy").read_bytes()
    assert "storage_dtype" not in json.loads((tmp_path / "f32" / "meta.json").read_text())

    write_table(tmp_path / "f16", storage_dtype="float16")
    assert json.loads((tmp_path / "f16" / "meta.json").read_text())["storage_dtype"] == "float16"
    mapped = load_intent_table(tmp_path / "f16", mmap=True)
    assert isinstance(mapped.vectors, np.memmap) and mapped.vectors.dtype == np.float16
    np.testing.assert_allclose(mapped.vectors, vectors, rtol=1e-3, atol=1e-3)
    loaded = load_intent_table(tmp_path / "f16")  # read whole: float32 for every reader
    assert loaded.vectors.dtype == np.float32 and loaded.raw.dtype == np.float32
    with pytest.raises(ValueError, match="storage_dtype"):
        write_table(tmp_path / "bad", storage_dtype="int8")


def test_a_mapped_table_finds_rows_without_reading_every_key(tmp_path):
    keys, _ = write_table(tmp_path / "t", n=200)
    table = load_intent_table(tmp_path / "t", mmap=True)
    wanted = ["k7", "nope", "k199", "k0"]
    np.testing.assert_array_equal(table.rows_of(wanted), [7, -1, 199, 0])
    assert table._keys is None  # streamed, not loaded
    np.testing.assert_array_equal(lookup_rows(tmp_path / "t", wanted), [7, -1, 199, 0])
    assert table.row("k5") == 5 and len(table) == 200


# ---- stage 2: the model gathers rows from the mapped table ----------------------------------------


@pytest.fixture
def mapped_tiny(tmp_path, monkeypatch):
    """The tiny dataset's synthetic table written float16 to disk, so that stage 2 maps it."""
    import dataclasses

    table = synthetic_intents(write_tiny_dataset(tmp_path))
    rng = np.random.default_rng(3)
    order = rng.permutation(len(table.keys))  # the table's rows in another order than the dataset's ids
    keys = [table.keys[i] for i in order]
    write_intent_table(tmp_path / "table", {"views": table.views}, keys, table.vectors[order], table.raw[order],
                       [], item_tokens=table.item_tokens, item_vectors=table.item_vectors, storage_dtype="float16")
    on_disk = load_intent_table(tmp_path / "table", mmap=True)
    mapped = dataclasses.replace(table, keys=[], index={}, vectors=on_disk.vectors, raw=on_disk.raw,
                                 path=tmp_path / "table", mapped=True)
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: mapped)
    return tmp_path


def dense(mapped):
    """Every key's intents ``[n_keys, V, d]`` of a ``MappedIntents`` (what the in-memory buffer holds)."""
    return mapped.gather(torch.arange(len(mapped.rows)))


def build_model(root, **overrides):
    return build_tiny_batch(root, **overrides)


@pytest.mark.parametrize("control", ["none", "shuffled", "constant"])
def test_the_mapped_table_gives_the_same_model_as_the_copied_one(mapped_tiny, control):
    dataset, batch, mapped = build_model(mapped_tiny, intent_mmap=True, intent_control=control)
    # (the mapped rows are the table's float32 values: the copy compared is float32 too)
    _, _, copied = build_model(mapped_tiny, intent_mmap=False, intent_control=control, intent_buffer_dtype="float32")
    assert dataset.intent_vectors is None and isinstance(dataset.intent_source, np.memmap)
    assert mapped.intent_vectors is None and copied.intent_vectors is not None
    # nothing of the table in the checkpoint or among the buffers DDP would broadcast
    names = set(mapped.state_dict()) | {n for n, b in mapped.named_buffers() if b is not None}
    assert not any(n.startswith("intent_vectors") for n in names)
    if control == "constant":  # the mapped mean is summed in float64 blocks
        torch.testing.assert_close(dense(mapped._mapped_intents), copied.intent_vectors)
    else:
        assert torch.equal(dense(mapped._mapped_intents), copied.intent_vectors)
    if control == "constant":
        torch.testing.assert_close(mapped.intent_constant, copied.intent_constant)
    else:  # only the constant control and intent dropout read the constant: no pass over the mapped rows
        assert mapped.intent_constant is None
    mapped.load_state_dict(copied.state_dict())
    mapped.eval(), copied.eval()
    with torch.no_grad():
        torch.testing.assert_close(mapped.full_sort_predict(batch), copied.full_sort_predict(batch))
    mapped.train()
    loss = mapped.calculate_loss(batch)
    loss = loss if torch.is_tensor(loss) else sum(loss)
    loss.backward()
    assert mapped.projection.weight.grad is not None


def test_intent_dropout_on_a_mapped_table_drops_to_the_constant(mapped_tiny):
    _, _, mapped = build_model(mapped_tiny, intent_mmap=True, intent_dropout=1.0)
    _, _, copied = build_model(mapped_tiny, intent_mmap=False, intent_dropout=1.0, intent_buffer_dtype="float32")
    torch.testing.assert_close(mapped.intent_constant, copied.intent_constant)
    from recbole_llm4sbr.model.controls import drop_intents

    rows = mapped._mapped_intents.gather(torch.arange(1, 5))
    torch.testing.assert_close(drop_intents(rows, mapped.intent_constant, 1.0),
                               copied.intent_constant.expand(4, -1, -1))


def _resident_kb(path) -> int:
    """Resident KB of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps", encoding="utf-8"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux /proc/self/smaps")
def test_gathers_drop_the_mapped_pages_from_the_process(tmp_path, monkeypatch):
    """A rank's RSS must follow its own memory, not how much of a huge mapped table it has read: the
    pages it touched leave the process (they stay in the page cache) and the rows read stay right."""
    from recbole_llm4sbr.intent import table as table_module
    from recbole_llm4sbr.model import mapped_intents
    from recbole_llm4sbr.model.controls import IntentControl

    path = tmp_path / "vectors.npy"
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8192, 2, 256)).astype(np.float16)  # 8 MiB
    np.save(path, data)
    source = np.load(path, mmap_mode="r")
    rows = np.concatenate([[-1], np.arange(len(data))])
    monkeypatch.setattr(mapped_intents, "DROP_EVERY_BYTES", 1 << 40)  # never: pages accumulate
    kept = mapped_intents.MappedIntents(source, rows, [0, 1], IntentControl())
    for s in range(1, len(rows), 1024):
        kept.gather(torch.arange(s, min(s + 1024, len(rows))))
    assert _resident_kb(path) > 6 * 1024  # every page was read and is still mapped in
    assert table_module.drop_resident_pages(source)
    assert _resident_kb(path) < 1024
    monkeypatch.setattr(mapped_intents, "DROP_EVERY_BYTES", 1 << 20)
    dropping = mapped_intents.MappedIntents(source, rows, [0, 1], IntentControl())
    peak = 0
    for s in range(1, len(rows), 512):
        got = dropping.gather(torch.arange(s, min(s + 512, len(rows))))
        torch.testing.assert_close(got, torch.from_numpy(data[s - 1 : s - 1 + len(got)].astype(np.float32)))
        peak = max(peak, _resident_kb(path))
    assert peak < 4 * 1024  # a drop at least every batch (512 rows x 64 KB fault-around > 1 MiB): one batch's pages
    assert not table_module.drop_resident_pages(np.zeros(4))  # an in-memory array: nothing to drop


def test_localization_off_maps_the_raw_answers(mapped_tiny):
    _, _, grounded = build_model(mapped_tiny, intent_mmap=True)
    _, _, raw = build_model(mapped_tiny, intent_mmap=True, intent_localization=False)
    torch.testing.assert_close(dense(raw._mapped_intents), dense(grounded._mapped_intents) * 0.5)


def test_the_torch_search_finds_the_exact_top_r():
    from recbole_llm4sbr.intent.localization import top_r_exact, top_r_torch

    items, queries = clustered_catalogue(5000, 32, 100, seed=2)
    idx, sims = top_r_torch(queries, items, 5, device="cpu", max_block_bytes=1 << 20)  # several blocks
    want_idx, want_sims = top_r_exact(queries, items, 5)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(sims, want_sims, rtol=1e-5, atol=1e-6)
