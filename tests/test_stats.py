"""Bootstrap intervals and the paired bootstrap, against direct computations."""

import numpy as np
import pytest

from hs_jax import stats


def _reference_means(scores, n, seed):
    # The bootstrap spelled out: n resamples of the items with replacement, one mean each.
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=(n, len(scores)))
    return np.array([np.mean(np.asarray(scores)[row]) for row in idx])


def test_interval_is_the_percentile_bootstrap():
    scores = np.random.default_rng(3).integers(0, 2, size=40).astype(float)
    means = _reference_means(scores, 2000, 7)
    lo, hi = stats.interval(scores, n=2000, seed=7)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert lo <= scores.mean() <= hi


def test_constant_scores_have_a_point_interval():
    assert stats.interval([1.0] * 10) == (1.0, 1.0)


def test_paired_bootstrap_against_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=60).astype(float)
    b = np.where(rng.random(60) < 0.8, a, 1 - a)
    got = stats.paired(a, b, n=3000, seed=5)
    diffs = _reference_means(a - b, 3000, 5)
    assert got.difference == pytest.approx(np.mean(a - b))
    assert got.interval == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    want_p = min(1.0, max(2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)), 1 / 3000))
    assert got.p_value == pytest.approx(want_p)
    assert got.items == 60


def test_paired_extremes():
    same = stats.paired([1, 0, 1], [1, 0, 1])
    assert same.p_value == 1.0 and same.difference == 0.0
    better = stats.paired([1.0] * 50, [0.0] * 50, n=1000)
    assert better.difference == 1.0 and better.interval == (1.0, 1.0)
    assert better.p_value == pytest.approx(1 / 1000)


def test_paired_needs_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        stats.paired([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        stats.interval([])


def test_mean_and_spread_over_seeds():
    assert stats.mean_and_spread([0.5]) == (0.5, 0.0)
    mean, sd = stats.mean_and_spread([0.2, 0.4, None, float("nan")])
    assert mean == pytest.approx(0.3) and sd == pytest.approx(np.std([0.2, 0.4], ddof=1))


def test_best_mean_worst_and_finite_or_none_skip_unscored_systems():
    u = [0.5, float("-inf"), None, 0.25, float("nan"), 1.0]
    assert stats.best_mean_worst(u) == {"best": 1.0, "mean": 0.5833333333333334, "worst": 0.25}
    none = stats.best_mean_worst([float("-inf"), None], missing=None)
    assert none == {"best": None, "mean": None, "worst": None}
    assert all(np.isnan(v) for v in stats.best_mean_worst([]).values())
    assert [stats.finite_or_none(x) for x in (0.5, float("-inf"), np.float32(0.25))] == [
        0.5, None, 0.25,
    ]  # fmt: skip
