"""Typical samples (EIMF, Qiao et al., arXiv 2411.09410): LLM calls for cluster exemplars only.

``intent_samples: typical`` with ``intent_budget`` LLM calls per view:

1. every prefix is embedded as the mean of its items' text embeddings (the stage-1 encoder's,
   L2-normalised afterwards, so distances are cosine distances); prefixes never hold their target;
2. the unique TRAIN prefixes are clustered by mini-batch k-means (Sculley 2010) with
   ``k = budget``, k-means++ seeding (``intent_seed``) and a bounded number of iterations;
3. the exemplar of a cluster is its member nearest the centroid; only exemplars go to the LLM;
4. EVERY prefix (train, valid, test) takes the exemplar nearest its own embedding and shares its
   answers. Valid and test prefixes are only ever compared with train exemplars, never clustered,
   and no target is read anywhere, so nothing leaks.

numpy only (no scikit-learn, no torch, no RecBole): stage 1 runs in LLM-only environments.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import IntentError

#: bump when the clustering changes what it picks (it is part of the table identity with typical)
TYPICAL_VERSION = 1
#: mini-batch k-means: points per step, max steps, stop when the centroids move less than this
BATCH_SIZE = 1024
MAX_ITER = 300
TOL = 1e-6
#: k-means++ seeds from at most this many points (a uniform sample) so it stays O(pool * k * d)
INIT_POOL = 20_000

_log = logging.getLogger("recbole_llm4sbr.intent")


def resolve_budget(budget: Any, n_prefixes: int) -> int:
    """``intent_budget`` as a number of LLM calls per view.

    An integer >= 1 (``300``, ``300.0``) is a count; a number in (0, 1) is a fraction of the unique
    prefixes (rounded up, at least 1). Capped at ``n_prefixes``.
    """
    if isinstance(budget, str):
        try:
            budget = float(budget)
        except ValueError:
            budget = None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise IntentError(
            f"intent_budget={budget!r}: give the LLM calls per view as a count >= 1 (e.g. 300) or a "
            "fraction of the unique prefixes in (0, 1) (e.g. 0.05)"
        )
    if budget < 1:
        k = max(1, math.ceil(budget * n_prefixes))
    elif float(budget).is_integer():
        k = int(budget)
    else:
        raise IntentError(f"intent_budget={budget!r}: a count must be a whole number (or give a fraction in (0, 1))")
    return max(1, min(k, n_prefixes))


def prefix_embeddings(
    prefixes: Sequence[Sequence[str]], item_row: Mapping[str, int], item_vectors: np.ndarray
) -> np.ndarray:
    """``[len(prefixes), d]`` float32: the mean of each prefix's item embeddings, L2-normalised."""
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    flat: List[int] = []
    owner: List[int] = []
    for i, prefix in enumerate(prefixes):
        for tok in prefix:
            try:
                flat.append(item_row[tok])
            except KeyError:
                raise IntentError(f"item {tok!r} of a prefix has no text embedding (not in the item text file)") from None
            owner.append(i)
    out = np.zeros((len(prefixes), item_vectors.shape[1]), dtype=np.float32)
    np.add.at(out, np.asarray(owner, dtype=np.int64), item_vectors[np.asarray(flat, dtype=np.int64)])
    counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(prefixes)).astype(np.float32)
    out /= np.maximum(counts, 1.0)[:, None]
    return _normalize(out)


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``[len(x), len(c)]`` (clipped at 0)."""
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def nearest(x: np.ndarray, c: np.ndarray, block: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """``(index of the nearest row of c, its squared distance)`` for every row of x, in blocks."""
    idx = np.empty(len(x), dtype=np.int64)
    dist = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), block):
        d = _sq_dists(x[s : s + block], c)
        j = d.argmin(axis=1)  # ties -> the lowest index: deterministic
        idx[s : s + block] = j
        dist[s : s + block] = d[np.arange(len(j)), j]
    return idx, dist


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``k`` distinct rows of ``x`` as centroids."""
    n = len(x)
    first = int(rng.integers(n))
    chosen = [first]
    d2 = _sq_dists(x, x[first : first + 1])[:, 0].astype(np.float64)
    d2[first] = 0.0  # a chosen point is never chosen again, whatever the rounding
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:  # every point sits on a centroid already: no further distinct seed
            break
        j = int(rng.choice(n, p=d2 / total))
        chosen.append(j)
        d2 = np.minimum(d2, _sq_dists(x, x[j : j + 1])[:, 0])
        d2[j] = 0.0
    return x[np.asarray(chosen)].copy()


def minibatch_kmeans(
    x: np.ndarray,
    k: int,
    seed: int,
    batch_size: int = BATCH_SIZE,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
) -> Tuple[np.ndarray, np.ndarray, int]:
    """Mini-batch k-means (Sculley 2010). Returns ``(centroids [k', d], labels [n], iterations)``.

    k-means++ seeds from a uniform sample of at most ``INIT_POOL`` points; each step assigns a
    random batch to its nearest centroids and moves each centroid towards its points with the
    per-centroid rate 1 / (points it has seen). Stops after ``max_iter`` steps or once no centroid
    moved more than ``tol`` (squared) in a step. ``k' <= k``: fewer when ``x`` has fewer distinct
    rows. The labels are a final full assignment of every point to its nearest centroid.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n == 0:
        raise ValueError("k-means needs at least one point")
    rng = np.random.default_rng(int(seed))
    k = max(1, min(int(k), n))
    pool = x if n <= INIT_POOL else x[rng.choice(n, size=INIT_POOL, replace=False)]
    centroids = kmeans_pp(pool, k, rng)
    counts = np.zeros(len(centroids), dtype=np.float64)
    b = min(int(batch_size), n)
    it = 0
    for it in range(1, int(max_iter) + 1):  # noqa: B007 - the count is returned
        batch = x[rng.choice(n, size=b, replace=False)] if b < n else x
        labels, _ = nearest(batch, centroids)
        old = centroids.copy()
        m = np.bincount(labels, minlength=len(centroids)).astype(np.float64)
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate(([0], np.cumsum(m[m > 0])[:-1])).astype(np.int64)
        sums = np.zeros(centroids.shape, dtype=np.float64)
        sums[m > 0] = np.add.reduceat(batch[order].astype(np.float64), starts, axis=0)
        hit = m > 0
        counts[hit] += m[hit]
        rate = (m[hit] / counts[hit])[:, None]  # the running mean of every point the centroid has seen
        centroids[hit] = ((1.0 - rate) * centroids[hit] + rate * (sums[hit] / m[hit][:, None])).astype(np.float32)
        if float(((centroids - old) ** 2).sum(axis=1).max()) <= tol:
            break
    labels, _ = nearest(x, centroids)
    return centroids, labels, it


@dataclass
class TypicalPlan:
    """Which prefix answers for which (``plan``), and how it was found."""

    plan: Dict[str, str]  # every prefix key -> its exemplar's key
    exemplars: List[str]  # the keys sent to the LLM, in cluster order
    budget: int  # k asked for
    iterations: int
    train_prefixes: int


def plan_typical(
    prefixes: Mapping[str, Sequence[str]],
    train_keys: Sequence[str],
    item_tokens: Sequence[str],
    item_vectors: np.ndarray,
    budget: Any,
    seed: int,
    logger: Optional[logging.Logger] = None,
) -> TypicalPlan:
    """The typical-samples plan over ``prefixes`` (every split's unique prefixes, key -> tokens).

    ``train_keys``: the keys of the train split's prefixes (only these are clustered and can be
    exemplars); ``item_tokens``/``item_vectors``: the catalogue and its unit-norm text embeddings.
    """
    log = logger or _log
    keys = list(prefixes)
    train = [k for k in dict.fromkeys(train_keys) if k in prefixes]
    if not train:
        raise IntentError("intent_samples: typical needs train prefixes to cluster, and the train split has none")
    k = resolve_budget(budget, len(keys))
    item_row = {t: i for i, t in enumerate(item_tokens)}
    emb = prefix_embeddings([prefixes[key] for key in keys], item_row, item_vectors)
    row = {key: i for i, key in enumerate(keys)}
    train_emb = emb[[row[key] for key in train]]
    centroids, labels, iterations = minibatch_kmeans(train_emb, min(k, len(train)), seed)

    # exemplar of each non-empty cluster: its member nearest the centroid (ties -> first-seen prefix)
    exemplar_rows: List[int] = []
    for j in range(len(centroids)):
        members = np.flatnonzero(labels == j)
        if len(members) == 0:
            continue
        d = _sq_dists(train_emb[members], centroids[j : j + 1])[:, 0]
        exemplar_rows.append(int(members[int(d.argmin())]))
    exemplars = [train[i] for i in exemplar_rows]
    ex_emb = train_emb[exemplar_rows]

    # every prefix -> the exemplar nearest its own embedding; an exemplar answers for itself
    nearest_ex, _ = nearest(emb, ex_emb)
    plan = {key: exemplars[int(j)] for key, j in zip(keys, nearest_ex)}
    plan.update({e: e for e in exemplars})
    log.info(
        f"typical samples: {len(train)} train prefixes clustered into {len(exemplars)} exemplars "
        f"(budget {k}, {iterations} mini-batch k-means steps); all {len(keys)} prefixes share their nearest exemplar's answers"
    )
    return TypicalPlan(plan, exemplars, k, iterations, len(train))
