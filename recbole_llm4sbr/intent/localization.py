"""Intent localization (docs/METHOD.md Eq. 4-5): ground each LLM answer in the item catalogue.

For an answer embedding ``a`` (unit norm) and item embeddings ``E`` (unit norm): take the top-r items
by cosine similarity and return ``h = sum_i sim_i * e_i``, each retrieved item weighted by ITS OWN
similarity, with no division by r. (The authors' code weights by the similarities of catalogue rows
0..r-1 and divides by r; see docs/METHOD.md, "Defects".) r = 0 means no localization: ``h = a``.

How the top-r are found is a ``Search`` (``intent_ann``, ``intent_faiss_threshold``, ``intent_device``):

* ``exact`` (default): the true top-r. A chunked matrix product (memory bounded by
  ``max_block_bytes``); on a GPU a chunked ``torch`` matmul + ``topk``; on a CPU, catalogues above
  the threshold use a faiss flat inner-product index when faiss is importable. Same results
  everywhere (up to float rounding), so the table's tag does not name it.
* ``ivf`` / ``hnsw``: catalogues above the threshold are searched with an approximate faiss index
  (``IndexIVFFlat`` / ``IndexHNSWFlat``, inner product; parameters in ``ANN_PARAMS``) on the CPU.
  Results change slightly, so the kind, threshold and parameters name the table (identity.py).

Queries are searched in chunks (``query_chunk``), so no ``[m, n]`` similarity matrix is ever whole.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import IntentError

_log = logging.getLogger("recbole_llm4sbr.intent")

ANN_KINDS = ("exact", "ivf", "hnsw")
#: the approximate indexes' parameters: part of the table's identity when one is used (changing one
#: renames those tables). ivf: ``nlist = lists_per_sqrt_n * sqrt(n)`` lists, trained (k-means) on
#: ``train_per_list * nlist`` sampled items (``niter`` rounds), ``nprobe = nlist / probe_divisor`` lists scanned per
#: query. hnsw: ``M`` links per node, ``efConstruction`` / ``efSearch`` beam widths.
ANN_PARAMS: Dict[str, Dict[str, Any]] = {
    "ivf": {"lists_per_sqrt_n": 4, "train_per_list": 40, "niter": 10, "probe_divisor": 16, "seed": 1234},
    "hnsw": {"M": 32, "efConstruction": 64, "efSearch": 128},
}
DEFAULT_THRESHOLD = 200_000


@dataclass(frozen=True)
class Search:
    """How ``localize`` finds the top-r: ``kind`` (``ANN_KINDS``) for catalogues above ``threshold``
    items, ``device`` (``cpu``/``cuda``/``auto``) for the exact search, ``query_chunk`` queries at a time."""

    kind: str = "exact"
    threshold: int = DEFAULT_THRESHOLD
    device: str = "cpu"
    query_chunk: int = 8192
    #: faiss indexes this search has built, by (kind, catalogue): a long-lived search (online stage 1,
    #: one prefix per call) builds its index once; each entry keeps its catalogue array alive
    indexes: Dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "Search":
        kind = str(settings.get("intent_ann") or "exact").strip().lower()
        if kind not in ANN_KINDS:
            raise IntentError(f"intent_ann={kind!r}: use one of {', '.join(ANN_KINDS)}. Fix: --intent_ann=exact")
        threshold = settings.get("intent_faiss_threshold")
        return cls(kind, DEFAULT_THRESHOLD if threshold is None else int(threshold),
                   str(settings.get("intent_device") or "auto"))

    def approximate(self, n_items: int) -> bool:
        return self.kind != "exact" and n_items > self.threshold

    def identity(self) -> Optional[Dict[str, Any]]:
        """What names the table (identity.py): None for ``exact`` (today's tags), else kind,
        threshold and the index's parameters."""
        if self.kind == "exact":
            return None
        return {"kind": self.kind, "threshold": int(self.threshold), "params": dict(ANN_PARAMS[self.kind])}


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


def top_r_torch(queries: np.ndarray, items: np.ndarray, r: int, device: str = "cuda",
                max_block_bytes: int = 1 << 30) -> Tuple[np.ndarray, np.ndarray]:
    """``top_r_exact`` as a chunked ``torch`` matmul + ``topk`` on ``device`` (a GPU): the catalogue
    is copied there once, queries go in blocks of at most ``max_block_bytes`` of similarities."""
    import torch

    m, n = queries.shape[0], items.shape[0]
    idx = np.empty((m, r), dtype=np.int64)
    sims = np.empty((m, r), dtype=np.float32)
    with torch.no_grad():
        items_t = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)).to(device)
        rows = max(1, int(max_block_bytes // (4 * max(n, 1))))
        for s in range(0, m, rows):
            block = torch.from_numpy(np.ascontiguousarray(queries[s : s + rows], dtype=np.float32)).to(device)
            top = torch.topk(block @ items_t.T, r, dim=1, largest=True, sorted=True)
            sims[s : s + rows] = top.values.cpu().numpy()
            idx[s : s + rows] = top.indices.cpu().numpy()
    return idx, sims


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def top_r_faiss(queries: np.ndarray, items: np.ndarray, r: int, kind: str = "flat", query_chunk: int = 8192,
                cache: Optional[Dict[Any, Any]] = None):
    """The top-r via a faiss inner-product index (``flat``: exact; ``ivf``/``hnsw``: approximate, see
    ``ANN_PARAMS``), queries searched ``query_chunk`` at a time; None when faiss is not importable.
    ``cache`` (``Search.indexes``) keeps the index for the next call over the same ``items`` object."""
    faiss = _faiss()
    if faiss is None:
        return None
    key = (kind, id(items))
    cached = None if cache is None else cache.get(key)
    if cached is not None and cached[0] is items:
        index = cached[1]
    else:
        index = build_index(faiss, np.ascontiguousarray(items, dtype=np.float32), kind)
        if cache is not None:
            cache[key] = (items, index)
    m = queries.shape[0]
    idx = np.empty((m, r), dtype=np.int64)
    sims = np.empty((m, r), dtype=np.float32)
    for s in range(0, m, query_chunk):
        d, i = index.search(np.ascontiguousarray(queries[s : s + query_chunk], dtype=np.float32), r)
        sims[s : s + query_chunk], idx[s : s + query_chunk] = d, i
    return idx, sims


def build_index(faiss, items: np.ndarray, kind: str):
    """A faiss inner-product index over ``items`` (float32, C-contiguous), ready to search."""
    n, d = items.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        p = ANN_PARAMS["hnsw"]
        index = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p["efConstruction"]
        index.add(items)
        index.hnsw.efSearch = p["efSearch"]
        return index
    elif kind == "ivf":
        p = ANN_PARAMS["ivf"]
        nlist = max(1, min(int(round(p["lists_per_sqrt_n"] * math.sqrt(n))), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        n_train = min(n, p["train_per_list"] * nlist)
        sample = np.random.default_rng(p["seed"]).choice(n, n_train, replace=False) if n_train < n else slice(None)
        index.cp.seed, index.cp.niter = p["seed"], p["niter"]
        index.train(np.ascontiguousarray(items[np.sort(sample)] if n_train < n else items))
        index.nprobe = max(1, int(math.ceil(nlist / p["probe_divisor"])))
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}")
    index.add(items)
    return index


def resolve_device(device: Optional[str]) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    device = str(device or "auto")
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def top_r(queries: np.ndarray, items: np.ndarray, r: int, search: Search, logger: logging.Logger,
          max_block_bytes: int = 256 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """The top-r by ``search`` (module docstring)."""
    n = items.shape[0]
    if search.approximate(n):
        found = top_r_faiss(queries, items, r, search.kind, search.query_chunk, search.indexes)
        if found is not None:
            idx, sims = found
            short = (idx < 0).any(axis=1)  # the index reached fewer than r items: exact for those
            if short.any():
                idx[short], sims[short] = top_r_exact(queries[short], items, r, max_block_bytes)
            return idx, sims
        logger.warning(f"intent_ann={search.kind}: faiss is not installed, exact search over {n} items (pip install faiss-cpu)")
    if resolve_device(search.device).startswith("cuda"):
        return top_r_torch(queries, items, r, resolve_device(search.device))
    if n > search.threshold:
        found = top_r_faiss(queries, items, r, "flat", search.query_chunk, search.indexes)
        if found is not None:
            return found
        logger.info(f"{n} items > intent_faiss_threshold but faiss is not installed: exact search (pip install faiss-cpu for speed)")
    return top_r_exact(queries, items, r, max_block_bytes)


def localize(
    answers: np.ndarray,
    items: np.ndarray,
    topr: int,
    faiss_threshold: int = DEFAULT_THRESHOLD,
    logger: Optional[logging.Logger] = None,
    max_block_bytes: int = 256 << 20,
    search: Optional[Search] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors [m, d] float32, item indices [m, r] int64, sims [m, r] float32)`` per Eq. 4-5.

    ``answers`` and ``items`` must be L2-normalised (encoder.encode does it), so inner product = cosine.
    ``search`` (default: exact on the CPU above ``faiss_threshold``) says how the top-r are found.
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
    if search is None:
        search = Search("exact", DEFAULT_THRESHOLD if faiss_threshold is None else int(faiss_threshold), "cpu")
    idx, sims = top_r(answers, items, r, search, log, max_block_bytes)
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
