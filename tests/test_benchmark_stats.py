"""Issue 11 "is it the LLM?": the paired bootstrap over test samples on hand-made inputs."""
import itertools
import math

import numpy as np
import pytest

from recbole_llm4sbr.benchmark import aggregate as agg

# ---- the bootstrap on fixed inputs -----------------------------------------------------------------------


def percentile(values, q):
    """numpy's default ('linear') percentile, written out."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def test_identical_lists_give_a_zero_interval():
    a = [1, 0, 0, 1, 0, 1, 1, 0]
    r = agg.paired_bootstrap([(a, list(a)), (a[::-1], a[::-1])])
    assert (r["diff"], r["lo"], r["hi"], r["rel"]) == (0.0, 0.0, 0.0, 0.0)
    assert r["p"] == 1.0  # every replicate is <= 0: no evidence of a gain
    assert r["pairs"] == 2 and r["n"] == [8] and r["n_boot"] == 2000


def test_a_constant_shift_is_the_interval():
    rng = np.random.default_rng(5)
    pairs = [(b + 0.05, b) for b in (rng.random(30), rng.random(30), rng.random(30))]
    r = agg.paired_bootstrap(pairs)
    assert r["diff"] == pytest.approx(0.05) and r["lo"] == pytest.approx(0.05) and r["hi"] == pytest.approx(0.05)
    assert r["p"] == 0.0
    ref = np.mean([b.mean() for _, b in pairs])
    assert r["rel"] == pytest.approx(100 * 0.05 / ref) and r["rel_lo"] == pytest.approx(r["rel"])


def test_matches_a_brute_force_loop_over_the_same_resamples():
    """Replicate r averages, over the seeds, the mean difference of the resampled samples of each seed
    (the same indices for both sides); a plain loop over the documented indices gives the same numbers."""
    va, oa = [1, 0, 1, 1, 0], [0, 0, 1, 0, 1]
    vb, ob = [0.5, 0.0, 1.0, 0.25], [0.5, 0.2, 0.0, 0.25]
    n_boot, seed = 50, 3
    r = agg.paired_bootstrap([(va, oa), (vb, ob)], n_boot=n_boot, seed=seed)
    ia, ib = agg.bootstrap_indices([5, 4], n_boot=n_boot, seed=seed)
    stats = []
    for rep in range(n_boot):
        da = sum(va[i] - oa[i] for i in ia[rep]) / 5
        db = sum(vb[i] - ob[i] for i in ib[rep]) / 4
        stats.append((da + db) / 2)
    assert r["diff"] == pytest.approx(((3 - 2) / 5 + (1.75 - 0.95) / 4) / 2)
    assert r["lo"] == pytest.approx(percentile(stats, 2.5)) and r["hi"] == pytest.approx(percentile(stats, 97.5))
    assert r["p"] == pytest.approx(sum(s <= 0 for s in stats) / n_boot)
    # the seeds are resampled independently of each other, and every sample of a seed can be drawn
    assert not np.array_equal(ia[:, :4], ib)
    assert set(np.unique(ia)) == set(range(5))


def test_approaches_the_exact_bootstrap_distribution():
    """One seed, 3 samples: the 27 equally likely resamples give P(mean diff <= 0) exactly."""
    d = [0.3, 0.0, -0.2]
    exact = sum(sum(d[i] for i in idx) <= 1e-12 for idx in itertools.product(range(3), repeat=3)) / 27
    r = agg.paired_bootstrap([(d, [0.0, 0.0, 0.0])], n_boot=20000, seed=1)
    assert exact == pytest.approx(11 / 27)  # no 0.3 (8 ways), or one 0.3 with two -0.2 (3 ways)
    assert r["p"] == pytest.approx(exact, abs=0.01)
    assert r["lo"] == pytest.approx(-0.2) and r["hi"] == pytest.approx(0.3)  # the extreme resamples


def test_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    pairs = [((rng.random(643) < 0.15).astype(float), (rng.random(643) < 0.12).astype(float)) for _ in range(5)]
    one, two = agg.paired_bootstrap(pairs, seed=7), agg.paired_bootstrap(pairs, seed=7)
    assert one == two
    assert agg.paired_bootstrap(pairs, seed=8)["lo"] != one["lo"]
    with pytest.raises(ValueError, match="same length"):
        agg.paired_bootstrap([([1, 0], [1, 0, 0])])


def ps_cell(seed, recall, order="s1", variant="x"):
    return {"seed": seed, "base": "B", "variant": variant,
            "per_sample": {"order_sha1": order, "n": len(recall), "recall@20": list(recall)}}


def test_bootstrap_cells_pairs_only_comparable_seeds():
    mine = {s: ps_cell(s, [1, 1, 0, 0]) for s in (2020, 2021, 2022)}
    other = {s: ps_cell(s, [1, 0, 0, 0]) for s in (2020, 2021)}
    r, why = agg.bootstrap_cells(mine, other, "recall@20")
    assert why == "" and r["pairs"] == 2 and r["seeds"] == [2020, 2021] and r["diff"] == pytest.approx(0.25)
    # another test-sample order on one seed: the lists are not comparable, nothing is computed
    other[2021] = ps_cell(2021, [1, 0, 0, 0], order="s2")
    r, why = agg.bootstrap_cells(mine, other, "recall@20")
    assert r is None and "seed 2021" in why and "order" in why
    # cells from before format 2 carry no per-sample lists
    old = {s: {"seed": s, "test_result": {"recall@20": 0.1}} for s in (2020, 2021)}
    r, why = agg.bootstrap_cells(old, old, "recall@20")
    assert r is None and "per-sample" in why
    assert agg.bootstrap_cells(mine, {2030: ps_cell(2030, [1, 0, 0, 0])}, "recall@20") == (None, "no seed in common")


def test_at_cap_from_the_runner_or_from_the_epochs():
    assert agg.at_cap({"best_epoch": 9, "epochs_max": 10}) is True
    assert agg.at_cap({"best_epoch": 8, "epochs_max": 10}) is False
    assert agg.at_cap({"best_epoch": 3, "epochs_max": 10, "at_cap": True}) is True
    assert agg.at_cap({"best_epoch": 3}) is None
