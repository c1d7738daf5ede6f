"""From finished cells to numbers: mean and std over seeds, relative change and paired t-test vs the
stock base, and efficiency ratios. Pure Python + scipy: no RecBole, no training.

Conventions (the tests check them on hand-computed inputs):
- std is the sample standard deviation (ddof = 1); ``None`` with one seed;
- relative change = 100 * (mean_variant - mean_base) / mean_base, in percent, over the seeds each side has;
- the t-test is scipy's paired ``ttest_rel(variant, base)`` (two-sided) over the seeds *both* sides
  finished; ``None`` with fewer than 2 pairs or when every paired difference is the same (t undefined);
- an efficiency ratio is mean(variant) / mean(base) over the seeds each side has.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

METRICS = ("recall", "mrr", "ndcg", "hit")
TOPK = (5, 10, 20)
#: efficiency fields of a cell: (key, label, unit)
EFFICIENCY = (
    ("epoch_time_s", "epoch time", "s"),
    ("time_to_best_s", "time to best", "s"),
    ("inference_s", "test inference", "s"),
    ("peak_mem_mb", "peak memory", "MB"),
    ("params", "parameters", ""),
)


def metric_names(cells: Iterable[dict]) -> List[str]:
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


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float], int]:
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return None, None, 0
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def relative_change(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or base is None or base == 0:
        return None
    return 100.0 * (value - base) / base


def ratio(value: Optional[float], base: Optional[float]) -> Optional[float]:
    if value is None or base is None or base == 0:
        return None
    return value / base


def paired_ttest(variant: Sequence[float], base: Sequence[float]) -> Optional[float]:
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


def group(cells: Iterable[dict]) -> Dict[Tuple[str, str], Dict[int, dict]]:
    """(base, variant) -> {seed: cell}."""
    out: Dict[Tuple[str, str], Dict[int, dict]] = {}
    for cell in cells:
        out.setdefault((cell["base"], cell["variant"]), {})[int(cell["seed"])] = cell
    return out


def _value(cell: dict, key: str):
    if "@" in key:
        return cell.get("test_result", {}).get(key)
    return cell.get(key)


def aggregate(cells: Sequence[dict], bases: Sequence[str], variants: Sequence[str],
              metrics: Optional[Sequence[str]] = None) -> List[dict]:
    """One row per (base, variant) that has at least one cell, bases then variants in the given order.

    Row keys: ``base``, ``variant``, ``n`` (seeds), ``seeds``; for each metric m: ``m`` (mean),
    ``m std``, and for a non-base variant ``m rel`` (% vs base), ``m p`` (paired t-test), ``m pairs``;
    for each efficiency key e: ``e`` (mean), ``e std``, and ``e ratio`` (variant / base).
    """
    metrics = list(metrics or metric_names(cells))
    groups = group(cells)
    rows = []
    for base in bases:
        ref = groups.get((base, "base"), {})
        for variant in variants:
            by_seed = groups.get((base, variant))
            if not by_seed:
                continue
            row = {"base": base, "variant": variant, "n": len(by_seed), "seeds": sorted(by_seed)}
            for key in metrics:
                mean, std, _ = mean_std([_value(c, key) for c in by_seed.values()])
                row[key], row[f"{key} std"] = mean, std
                if variant != "base":
                    bmean, _, _ = mean_std([_value(c, key) for c in ref.values()])
                    row[f"{key} rel"] = relative_change(mean, bmean)
                    common = sorted(s for s in by_seed if s in ref
                                    and _value(by_seed[s], key) is not None and _value(ref[s], key) is not None)
                    row[f"{key} pairs"] = len(common)
                    row[f"{key} p"] = paired_ttest([_value(by_seed[s], key) for s in common],
                                                   [_value(ref[s], key) for s in common])
            for key, _, _ in EFFICIENCY:
                mean, std, _ = mean_std([_value(c, key) for c in by_seed.values()])
                row[key], row[f"{key} std"] = mean, std
                bmean, _, _ = mean_std([_value(c, key) for c in ref.values()])
                row[f"{key} ratio"] = ratio(mean, bmean)
            rows.append(row)
    return rows
