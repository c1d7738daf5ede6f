"""Intent localization (docs/METHOD.md Eq. 4-5): ground each LLM answer in the item catalogue.

For an answer embedding ``a`` (unit norm) and item embeddings ``E`` (unit norm): take the top-r items
by cosine similarity and return ``h = sum_i sim_i * e_i``, each retrieved item weighted by ITS OWN
similarity, with no division by r. (The authors' code weights by the similarities of catalogue rows
0..r-1 and divides by r; see docs/METHOD.md, "Defects".) r = 0 means no localization: ``h = a``.

Exact search is a chunked matrix product (memory bounded by ``max_block_bytes``); catalogues above
``faiss_threshold`` items use a faiss inner-product index when faiss is importable.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

_log = logging.getLogger("recbole_llm4sbr.intent")


def top_r_exact(queries: np.ndarray, items: np.ndarray, r: int, max_block_bytes: int = 256 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """``(indices [m, r] int64, sims [m, r] float32)``, best first, by inner product."""
    m, n = queries.shape[0], items.shape[0]
    idx = np.empty((m, r), dtype=np.int64)
    sims = np.empty((m, r), dtype=np.float32)
    rows = max(1, int(max_block_bytes // (4 * max(n, 1))))
    items_t = np.ascontiguousarray(items.T)
    for s in range(0, m, rows):
        block = queries[s : s + rows] @ items_t  # [b, n]
        if r < n:
            part = np.argpartition(-block, r - 1, axis=1)[:, :r]
        else:
            part = np.broadcast_to(np.arange(n), (block.shape[0], n))
        part_sims = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        idx[s : s + rows] = np.take_along_axis(part, order, axis=1)
        sims[s : s + rows] = np.take_along_axis(part_sims, order, axis=1)
    return idx, sims


def top_r_faiss(queries: np.ndarray, items: np.ndarray, r: int):
    """Same result via a faiss flat inner-product index; None when faiss is not importable."""
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), r)
    return idx.astype(np.int64), sims.astype(np.float32)


def localize(
    answers: np.ndarray,
    items: np.ndarray,
    topr: int,
    faiss_threshold: int = 200_000,
    logger: Optional[logging.Logger] = None,
    max_block_bytes: int = 256 << 20,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors [m, d] float32, item indices [m, r] int64, sims [m, r] float32)`` per Eq. 4-5.

    ``answers`` and ``items`` must be L2-normalised (encoder.encode does it), so inner product = cosine.
    """
    log = logger or _log
    answers = np.asarray(answers, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    m = answers.shape[0]
    r = int(topr or 0)
    if r <= 0:
        return answers.copy(), np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.float32)
    n = items.shape[0]
    if n == 0:
        raise ValueError("localization needs a non-empty item catalogue")
    if r > n:
        log.warning(f"intent_topr={r} exceeds the catalogue's {n} items; using r={n}")
        r = n
    found = None
    if faiss_threshold is not None and n > int(faiss_threshold):
        found = top_r_faiss(answers, items, r)
        if found is None:
            log.info(f"{n} items > intent_faiss_threshold but faiss is not installed: exact search (pip install faiss-cpu for speed)")
    idx, sims = found if found is not None else top_r_exact(answers, items, r, max_block_bytes)
    return weighted_sum(items, idx, sims, max_block_bytes), idx, sims


def weighted_sum(items: np.ndarray, idx: np.ndarray, sims: np.ndarray, max_block_bytes: int = 256 << 20) -> np.ndarray:
    """Eq. 5: ``h_j = sum_i sims[j, i] * items[idx[j, i]]``, in blocks so ``items[idx]`` stays small."""
    m, r = idx.shape
    d = items.shape[1]
    out = np.empty((m, d), dtype=np.float32)
    rows = max(1, int(max_block_bytes // (4 * max(r * d, 1))))
    for s in range(0, m, rows):
        out[s : s + rows] = np.einsum("mr,mrd->md", sims[s : s + rows], items[idx[s : s + rows]])
    return out
