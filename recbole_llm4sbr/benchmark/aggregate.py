"""From finished cells to numbers: mean and std over seeds, relative change, a paired t-test over seeds,
a paired bootstrap over test samples, and efficiency ratios. Pure numpy + scipy: no RecBole, no training.

Conventions (the tests check them on hand-computed inputs):
- std is the sample standard deviation (ddof = 1); ``None`` with one seed;
- relative change = 100 * (mean_variant - mean_base) / mean_base, in percent, over the seeds each side has;
- the t-test is scipy's paired ``ttest_rel(variant, base)`` (two-sided) over the seeds *both* sides
  finished; ``None`` with fewer than 2 pairs or when every paired difference is the same (t undefined);
- the bootstrap (``paired_bootstrap``) resamples test samples, the same indices for both sides, drawn
  independently for each seed in a replicate; statistic = mean over seeds of (mean variant - mean other);
  percentile CI; p = share of replicates <= 0 (one-sided: "is the variant not better?");
- an efficiency ratio is mean(variant) / mean(base) over the seeds each side has.

Three seeds give the t-test two degrees of freedom: it cannot tell a 10 % gain from noise. The bootstrap
uses the hundreds of test samples of each cell, so it measures how much the *test set* could move the
difference; it does not cover training noise beyond the seeds it averages over.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from recbole_llm4sbr.benchmark.variants import STOCK

METRICS = ("recall", "mrr", "ndcg", "hit")
#: the metrics the headline tables, the bootstrap and the chart use
HEADLINE_METRICS = ("recall@20", "mrr@20")
#: efficiency fields of a cell: (key, label, unit)
EFFICIENCY = (
    ("epoch_time_s", "epoch time", "s"),
    ("time_to_best_s", "time to best", "s"),
    ("inference_s", "test inference", "s"),
    ("peak_mem_mb", "peak memory", "MB"),
    ("params", "parameters", ""),
)
N_BOOT = 2000
BOOT_SEED = 0


def metric_names(cells: Iterable[dict]) -> list[str]:
    """The test metrics the cells carry, in the order recall, mrr, ndcg, hit (then any other), by k."""
    seen = []
    for cell in cells:
        for key in cell.get("test_result", {}):
            if key not in seen:
                seen.append(key)

    def order(key):
        name, _, k = key.partition("@")
        rank = METRICS.index(name) if name in METRICS else len(METRICS)
        return (rank, name, int(k) if k.isdigit() else 0)

    return sorted(seen, key=order)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def relative_change(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def paired_ttest(variant: Sequence[float], base: Sequence[float]) -> float | None:
    """Two-sided p of scipy's paired t-test; None with < 2 pairs or a constant difference."""
    if len(variant) != len(base):
        raise ValueError("paired_ttest: both sides need the same seeds")
    if len(variant) < 2:
        return None
    diffs = [float(a) - float(b) for a, b in zip(variant, base)]
    if max(diffs) - min(diffs) <= 1e-15 * max(1.0, max(abs(d) for d in diffs)):
        return None  # zero variance of the differences: t is undefined
    from scipy.stats import ttest_rel

    p = float(ttest_rel(list(map(float, variant)), list(map(float, base))).pvalue)
    return None if math.isnan(p) else p


# ---- paired bootstrap over test samples ---------------------------------------------------------------

def _draw(size: int, position: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n_boot, size) and the matching counts of the ``position``-th seed of a comparison, from
    that position's own stream (child ``position`` of ``SeedSequence(seed)``): a comparison with fewer
    seeds reuses the first positions' draws, so its result does not depend on how many others exist."""
    stream = np.random.SeedSequence(seed, spawn_key=(position,))
    idx = np.random.default_rng(stream).integers(0, size, size=(n_boot, size))
    flat = idx + size * np.arange(n_boot)[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_boot * size).reshape(n_boot, size).astype(float)
    return idx, counts


@lru_cache(maxsize=8)
def _resample_counts(size: int, position: int, n_boot: int, seed: int) -> np.ndarray:
    """Cached counts: every comparison of a report (vs base, vs arch, each metric) reuses the same
    resamples (common random numbers) and costs one matrix product."""
    counts = _draw(size, position, n_boot, seed)[1]
    counts.flags.writeable = False
    return counts


def bootstrap_indices(sizes: Sequence[int], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[np.ndarray]:
    """The test-sample indices ``paired_bootstrap`` draws for pairs of these sizes, one (n_boot, size)
    array per seed position: replicate r of position i averages ``d_i[idx[i][r]]``."""
    return [_draw(int(size), i, n_boot, seed)[0] for i, size in enumerate(sizes)]


def paired_bootstrap(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], n_boot: int = N_BOOT,
                     seed: int = BOOT_SEED, level: float = 0.95) -> dict:
    """Paired bootstrap of ``mean over seeds of (mean variant - mean other)`` over test samples.

    ``pairs``: one ``(variant, other)`` per seed, two equally long per-sample lists in the same sample
    order. Returns ``diff`` (observed), ``lo`` / ``hi`` (percentile CI at ``level``), ``rel`` (100 * diff /
    mean of the other side), ``rel_lo`` / ``rel_hi`` (the CI over the same denominator), ``p`` (share of
    replicates <= 0), ``pairs``, ``n`` (samples per pair), ``n_boot``. Deterministic given ``seed``.
    """
    if not pairs:
        raise ValueError("paired_bootstrap: no pairs")
    diffs, others = [], []
    for a, b in pairs:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError("paired_bootstrap: each pair needs two non-empty lists of the same length")
        diffs.append(a - b)
        others.append(float(b.mean()))
    stats = np.zeros(n_boot)
    for position, d in enumerate(diffs):
        # einsum, not BLAS: single-threaded and steady on a loaded machine (BLAS threads spin when cores are shared)
        stats += np.einsum("ij,j->i", _resample_counts(d.size, position, n_boot, seed), d) / d.size
    stats /= len(diffs)
    observed = float(np.mean([d.mean() for d in diffs]))
    tail = 100 * (1 - level) / 2
    lo, hi = (float(x) for x in np.percentile(stats, [tail, 100 - tail]))
    ref = float(np.mean(others))

    def rel(x):
        return 100.0 * x / ref if ref else None

    return {"diff": observed, "lo": lo, "hi": hi, "rel": rel(observed), "rel_lo": rel(lo), "rel_hi": rel(hi),
            "p": float(np.mean(stats <= 0)), "pairs": len(diffs), "n": sorted({d.size for d in diffs}),
            "n_boot": n_boot}


def bootstrap_cells(variant: dict[int, dict], other: dict[int, dict], metric: str, n_boot: int = N_BOOT,
                    seed: int = BOOT_SEED) -> tuple[dict | None, str]:
    """The paired bootstrap of two (base, variant) groups (``{seed: cell}``) on ``metric``'s per-sample list.

    Only seeds both sides have, with per-sample results, are used (``seeds`` in the result); returns
    ``(None, reason)`` when a pair's test-sample order differs (``order_sha1``: the lists are not
    comparable, so nothing is computed) or no pair carries per-sample results (cells from before format 2).
    """
    common = sorted(set(variant) & set(other))
    pairs, seeds = [], []
    for s in common:
        va, vb = variant[s].get("per_sample") or {}, other[s].get("per_sample") or {}
        if metric not in va or metric not in vb:
            continue
        if va.get("order_sha1") != vb.get("order_sha1") or len(va[metric]) != len(vb[metric]):
            return None, (f"seed {s}: the test samples are in a different order on the two sides "
                          f"(order_sha1 {va.get('order_sha1')} vs {vb.get('order_sha1')})")
        pairs.append((va[metric], vb[metric]))
        seeds.append(s)
    if not pairs:
        if not common:
            return None, "no seed in common"
        if not any(c.get("per_sample") for c in [*variant.values(), *other.values()]):
            return None, "no per-sample results in the cells (written before cell format 2)"
        return None, f"no per-sample {metric} on both sides of any seed"
    result = paired_bootstrap(pairs, n_boot=n_boot, seed=seed)
    result["seeds"] = seeds
    return result, ""


# ---- grouping -----------------------------------------------------------------------------------------

def group(cells: Iterable[dict]) -> dict[tuple[str, str], dict[int, dict]]:
    """(base, variant) -> {seed: cell}."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for cell in cells:
        out.setdefault((cell["base"], cell["variant"]), {})[int(cell["seed"])] = cell
    return out


def _value(cell: dict, key: str):
    if "@" in key:
        return cell.get("test_result", {}).get(key)
    return cell.get(key)


def compare(by_seed: dict[int, dict], ref: dict[int, dict], metric: str, bootstrap: bool = True,
            n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """One variant group against a reference group on one metric: means, std, ``rel`` (% of the means over
    the seeds each side has), ``pairs`` and ``p`` (paired t over seeds), and ``boot`` / ``boot_reason``."""
    mean, std, n = mean_std([_value(c, metric) for c in by_seed.values()])
    rmean, rstd, rn = mean_std([_value(c, metric) for c in ref.values()])
    common = sorted(s for s in by_seed if s in ref
                    and _value(by_seed[s], metric) is not None and _value(ref[s], metric) is not None)
    out = {"mean": mean, "std": std, "n": n, "ref mean": rmean, "ref std": rstd, "ref n": rn,
           "rel": relative_change(mean, rmean), "pairs": len(common),
           "p": paired_ttest([_value(by_seed[s], metric) for s in common], [_value(ref[s], metric) for s in common])}
    if bootstrap:
        out["boot"], out["boot_reason"] = bootstrap_cells(by_seed, ref, metric, n_boot=n_boot, seed=seed) \
            if ref else (None, "no reference cells")
    return out


def aggregate(cells: Sequence[dict], bases: Sequence[str], variants: Sequence[str],
              metrics: Sequence[str] | None = None) -> list[dict]:
    """One row per (base, variant) that has at least one cell, bases then variants in the given order.

    Row keys: ``base``, ``variant``, ``n`` (seeds), ``seeds``; for each metric m: ``m`` (mean),
    ``m std``, and for a non-base variant ``m rel`` (% vs base), ``m p`` (paired t-test), ``m pairs``;
    for each efficiency key e: ``e`` (mean), ``e std``, and ``e ratio`` (variant / base).
    """
    metrics = list(metrics or metric_names(cells))
    groups = group(cells)
    rows = []
    for base in bases:
        ref = groups.get((base, STOCK), {})
        for variant in variants:
            by_seed = groups.get((base, variant))
            if not by_seed:
                continue
            row = {"base": base, "variant": variant, "n": len(by_seed), "seeds": sorted(by_seed)}
            for key in metrics:
                c = compare(by_seed, ref, key, bootstrap=False)
                row[key], row[f"{key} std"] = c["mean"], c["std"]
                if variant != STOCK:
                    row[f"{key} rel"], row[f"{key} pairs"], row[f"{key} p"] = c["rel"], c["pairs"], c["p"]
            for key, _, _ in EFFICIENCY:
                mean, std, _ = mean_std([_value(c, key) for c in by_seed.values()])
                row[key], row[f"{key} std"] = mean, std
                bmean, _, _ = mean_std([_value(c, key) for c in ref.values()])
                row[f"{key} ratio"] = ratio(mean, bmean)
            rows.append(row)
    return rows


def comparisons(cells: Sequence[dict], bases: Sequence[str], variants: Sequence[str], reference: str,
                metrics: Sequence[str] = HEADLINE_METRICS, n_boot: int = N_BOOT,
                seed: int = BOOT_SEED) -> list[dict]:
    """Headline rows: every variant (but the reference) of each base against ``reference`` of that base
    (``"base"``, ``variants.STOCK``: the stock model; ``"arch"``, its ``constant_control``:
    the wrapper with one constant intent). Bases without
    reference cells give no rows. Row: ``base``, ``variant``, ``reference``, ``seeds``, and per metric
    the dict of :func:`compare` under the metric's name."""
    groups = group(cells)
    rows = []
    for base in bases:
        ref = groups.get((base, reference))
        if not ref:
            continue
        for variant in variants:
            by_seed = groups.get((base, variant))
            if variant == reference or not by_seed:
                continue
            row = {"base": base, "variant": variant, "reference": reference, "seeds": sorted(by_seed)}
            for m in metrics:
                row[m] = compare(by_seed, ref, m, n_boot=n_boot, seed=seed)
            rows.append(row)
    return rows


def at_cap(cell: dict) -> bool | None:
    """Whether the best epoch was the last one allowed (still learning when training stopped); the
    runner's ``at_cap`` if recorded, else from ``best_epoch`` (0-based) and ``epochs_max``."""
    if cell.get("at_cap") is not None:
        return bool(cell["at_cap"])
    best, cap = cell.get("best_epoch"), cell.get("epochs_max")
    if best is None or cap is None:
        return None
    return int(best) + 1 >= int(cap)


def best_by_validation(cells: Sequence[dict], variant, bases: Sequence[str] | None = None):
    """The base whose ``variant`` cells have the best mean ``best_valid_score`` over their seeds (the
    validation split only: how a user would pick a model without looking at the test split); None
    when no base has such cells. ``variant`` may be several names: then ``(base, variant)`` of the best."""
    names = (variant,) if isinstance(variant, str) else tuple(variant)
    best = None
    for (base, v), by_seed in group(cells).items():
        if v not in names or (bases is not None and base not in bases):
            continue
        scores = [c.get("best_valid_score") for c in by_seed.values() if c.get("best_valid_score") is not None]
        if not scores:
            continue
        bigger = next(iter(by_seed.values())).get("valid_score_bigger", True)
        mean = float(np.mean(scores))
        if best is None or (mean > best[1] if bigger else mean < best[1]):
            best = ((base, v) if not isinstance(variant, str) else base, mean)
    return None if best is None else best[0]


def no_harm_verdict(c: dict) -> str:
    """A wrapped model against its stock base on one metric (``compare``'s dict): ``gains`` (bootstrap
    CI above 0), ``holds`` (mean at least the base's and no CI wholly below 0), ``costs`` (CI wholly
    below 0), ``below`` (mean under the base's, CI across 0)."""
    boot = c.get("boot")
    if boot and boot["lo"] > 0:
        return "gains"
    if boot and boot["hi"] < 0:
        return "costs"
    if c.get("mean") is not None and c.get("ref mean") is not None and c["mean"] >= c["ref mean"]:
        return "holds"
    return "below"
