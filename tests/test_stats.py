"""Bootstrap intervals and the paired bootstrap, against direct computations."""

import time

import numpy as np
import pytest
import scipy.stats

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


# --- several seeds: the seed is the unit of replication ---------------------------------------


def _seeds(rng, sizes, kind="binary"):
    if kind == "binary":
        return [rng.integers(0, 2, size=m).astype(float) for m in sizes]
    return [rng.random(m) for m in sizes]


def test_one_seed_is_exactly_the_item_bootstrap():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2, size=70).astype(float)
    assert stats.interval_over_seeds([x]) == stats.interval(x)
    assert stats.interval_over_seeds([x], n=500, seed=3, level=0.9) == stats.interval(
        x, n=500, seed=3, level=0.9
    )
    one = stats.estimate_over_seeds({"seed 7": x})
    assert (one.mean, one.interval, one.seeds, one.items) == (x.mean(), stats.interval(x), 1, 70)
    assert one.procedure == "items" and one.se == pytest.approx(np.sqrt(x.var() / 70), rel=0.05)
    a, b = x, np.where(rng.random(70) < 0.7, x, 1 - x)
    assert stats.paired_over_seeds([a], [b]) == stats.paired(a, b)
    assert stats.paired_over_seeds([a], [b], n=700, seed=2) == stats.paired(a, b, n=700, seed=2)


def _loop_two_level_se(by_seed, n, seed):
    # The two-level bootstrap spelled out: draw S seeds with replacement, redraw each drawn
    # seed's items with replacement, average the S resampled means; sd * sqrt(S / (S - 1)).
    rng = np.random.default_rng(seed)
    s = len(by_seed)
    means = []
    for _ in range(n):
        resampled = []
        for k in rng.integers(0, s, size=s):
            scores = by_seed[k]
            resampled.append(np.mean(scores[rng.integers(0, len(scores), size=len(scores))]))
        means.append(np.mean(resampled))
    return np.std(means, ddof=1) * np.sqrt(s / (s - 1))


def _exact_two_level_se(by_seed):
    # The bootstrap's own variance (n -> infinity): a drawn seed's resampled mean has variance
    # popvar(seed means) + mean over seeds of popvar(items) / items; the mean of S such draws
    # divides it by S; then the S / (S - 1) correction.
    s = len(by_seed)
    seed_means = np.array([x.mean() for x in by_seed])
    within = np.mean([x.var() / x.size for x in by_seed])
    return np.sqrt((seed_means.var() + within) / (s - 1))


@pytest.mark.parametrize(
    ("kind", "sizes"),  # resampled as multinomial counts of the values, and as item indices
    [("binary", [100, 130, 90]), ("continuous", [30, 45, 38])],
)
def test_two_level_bootstrap_against_a_loop_reference(kind, sizes):
    by_seed = _seeds(np.random.default_rng(4), sizes, kind)
    got = stats.estimate_over_seeds(by_seed, n=10_000, seed=1)
    assert got.mean == np.mean([x.mean() for x in by_seed])
    assert (got.seeds, got.items, got.procedure) == (3, sum(sizes), "seeds x items, t(S-1)")
    # Monte-Carlo sd of a bootstrap SE from n resamples is about SE / sqrt(2 n): ~0.7% here,
    # ~1.6% for the 2000-resample loop.
    assert got.se == pytest.approx(_loop_two_level_se(by_seed, 2000, 9), rel=0.06)
    assert got.se == pytest.approx(_exact_two_level_se(by_seed), rel=0.03)
    half = scipy.stats.t.ppf(0.975, 2) * got.se
    assert got.interval == pytest.approx((got.mean - half, got.mean + half))
    assert stats.interval_over_seeds(by_seed, n=10_000, seed=1) == got.interval


def test_seeds_only_resampling_is_the_t_test_on_seed_means():
    by_seed = _seeds(np.random.default_rng(5), [50, 60, 55, 40], "continuous")
    got = stats.estimate_over_seeds(by_seed, resample_items=False)
    seed_means = [x.mean() for x in by_seed]
    assert got.procedure == "seeds, t(S-1)"
    assert got.se == pytest.approx(scipy.stats.sem(seed_means), rel=0.03)
    b = [x + rng_shift for x, rng_shift in zip(by_seed, [0.1, -0.05, 0.02, 0.2])]
    p = stats.paired_over_seeds(b, by_seed, resample_items=False)
    want = scipy.stats.ttest_1samp([0.1, -0.05, 0.02, 0.2], 0.0)
    assert p.difference == pytest.approx(np.mean([0.1, -0.05, 0.02, 0.2]))
    assert p.p_value == pytest.approx(want.pvalue, rel=0.05)


def test_paired_over_seeds_is_the_t_test_on_the_two_level_se():
    rng = np.random.default_rng(6)
    a = _seeds(rng, [80, 100, 90, 120])
    b = [np.where(rng.random(x.size) < 0.75, x, 1 - x) for x in a]
    got = stats.paired_over_seeds(a, b, n=4000, seed=2)
    d = [x - y for x, y in zip(a, b)]
    same = stats.estimate_over_seeds(d, n=4000, seed=2)
    assert got.difference == same.mean == np.mean([x.mean() for x in d])
    assert (got.se, got.interval) == (same.se, same.interval)
    assert got.p_value == pytest.approx(2 * scipy.stats.t.sf(abs(got.difference) / got.se, 3))
    assert (got.seeds, got.items, got.procedure) == (4, 390, "seeds x items, t(S-1)")
    assert got.as_dict() == {
        "difference": got.difference,
        "interval": list(got.interval),
        "p_value": got.p_value,
        "items": 390,
        "seeds": 4,
        "procedure": "seeds x items, t(S-1)",
        "se": got.se,
    }
    # Mappings pair by seed, whatever their order.
    by_name = stats.paired_over_seeds(
        dict(zip("wxyz", a)), dict(reversed(list(zip("wxyz", b)))), n=4000, seed=2
    )
    assert by_name == got


def test_paired_over_seeds_extremes():
    same = [np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0])]
    none = stats.paired_over_seeds(same, same)
    assert (none.difference, none.interval, none.p_value, none.seeds) == (0.0, (0.0, 0.0), 1.0, 2)
    ones, zeros = [np.ones(20)] * 3, [np.zeros(20)] * 3
    better = stats.paired_over_seeds(ones, zeros, n=2000)  # three copies: one replicate
    assert (better.difference, better.interval, better.seeds) == (1.0, (1.0, 1.0), 1)
    assert better.p_value == pytest.approx(1 / 2000)
    shifted = [np.ones(20), np.r_[np.ones(19), 0.5], np.r_[0.5, np.ones(19)]]
    apart = stats.paired_over_seeds(shifted, zeros, n=2000)  # distinct seeds, no seed spread
    assert apart.seeds == 3 and apart.p_value < 0.05
    # Seeds alone resampled: seed means that agree exactly leave no spread.
    a, b = [np.array([1.0, 0.0]), np.array([1.0, 1.0])], [np.array([0.0, 1.0]), np.ones(2)]
    flat = stats.paired_over_seeds(a, b, resample_items=False)
    assert (flat.difference, flat.se, flat.p_value) == (0.0, 0.0, 1.0)
    shifted = stats.paired_over_seeds([x + 0.5 for x in b], b, n=2000, resample_items=False)
    assert (shifted.difference, shifted.interval) == (0.5, (0.5, 0.5))
    assert shifted.p_value == 1 / 2000
    # Three seeds all favouring a: the percentile bootstrap over seeds would say p = 1/n.
    a = [np.ones(20), np.ones(20), np.r_[np.ones(19), 0.0]]
    b = [np.r_[np.ones(10), np.zeros(10)], np.r_[np.ones(15), np.zeros(5)], np.ones(20)]
    assert 0.01 < stats.paired_over_seeds(a, b, n=2000).p_value < 1


def test_over_seeds_refusals():
    with pytest.raises(ValueError, match="seed 1: paired scores need the same items: 3 vs 2"):
        stats.paired_over_seeds([[1, 0], [1, 0, 1]], [[0, 0], [1, 0]])
    with pytest.raises(ValueError, match="'b': paired scores need the same items"):
        stats.paired_over_seeds({"a": [1, 0], "b": [1]}, {"a": [0, 1], "b": [1, 1]})
    with pytest.raises(ValueError, match="same seeds: 2 vs 3 seeds"):
        stats.paired_over_seeds([[1], [0]], [[1], [0], [1]])
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_over_seeds({0: [1], 1: [0]}, {0: [1], 2: [0]})
    with pytest.raises(ValueError, match="as mappings from seed, or both as sequences"):
        stats.paired_over_seeds({0: [1], 1: [0]}, [[1], [0]])
    with pytest.raises(ValueError, match="at least one seed"):
        stats.estimate_over_seeds([])
    with pytest.raises(ValueError, match="seed 1: per-item scores must be a non-empty"):
        stats.interval_over_seeds([[1.0], []])
    with pytest.raises(ValueError, match="at least 2 resamples"):
        stats.estimate_over_seeds([[1.0, 0.0], [0.0, 0.0]], n=1)


def test_two_level_bootstrap_is_fast_for_ten_seeds_of_a_thousand_items():
    by_seed = _seeds(np.random.default_rng(8), [1000] * 10)
    start = time.perf_counter()
    stats.paired_over_seeds(by_seed, by_seed[::-1])
    assert time.perf_counter() - start < 1.0


def test_holm_against_hand_computed_values():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = stats.holm([None, 0.01, None, 0.04, 0.03, 0.005])
    assert got[0] is None and got[2] is None
    assert got[1:2] + got[3:] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.7, 0.02]) == pytest.approx([1.0, 1.0, 0.06])  # capped at 1
    assert stats.holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])  # ties
    assert stats.holm([]) == [] and stats.holm([None]) == [None]
    assert stats.holm([0.2]) == [0.2]
    rng = np.random.default_rng(0)
    p = rng.random(30) ** 3
    adjusted = np.array(stats.holm(list(p)))
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0) and np.all(adjusted >= p) and adjusted.max() <= 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.1, float("nan")])


@pytest.mark.parametrize(
    ("p", "n", "text"),
    [
        (1e-4, 10_000, "p < 0.0001"),
        (1e-7, 10_000, "p < 0.0001"),
        (1 / 2000, 2000, "p < 0.0005"),
        (1 / 3000, 3000, "p < 0.000333"),
        (2e-4, 10_000, "p = 0.0002"),
        (0.0123, 10_000, "p = 0.0123"),
        (0.012345, 10_000, "p = 0.0123"),
        (0.25, 10_000, "p = 0.25"),
        (1.0, 10_000, "p = 1"),
        (None, 10_000, "p n/a"),
        (float("nan"), 10_000, "p n/a"),
    ],
)
def test_format_p(p, n, text):
    assert stats.format_p(p, n=n) == text


def test_format_p_writes_the_resolution_floor_of_a_bootstrap_as_a_bound():
    at_floor = stats.paired([1.0] * 40, [0.0] * 40).p_value
    assert stats.format_p(at_floor) == "p < 0.0001"
    assert stats.format_p(stats.paired([1.0] * 40, [0.0] * 40, n=2000).p_value, n=2000) == (
        "p < 0.0005"
    )


def test_seeds_that_repeat_each_other_count_once():
    """A method that ignores its seed (the best single expert on the same items) is one
    replicate, not S: its interval is the item bootstrap's, and a paired test against it keeps
    every seed of the other method."""
    rng = np.random.default_rng(1)
    same = rng.integers(0, 2, size=50).astype(float)
    assert stats.estimate_over_seeds([same, same, same]).interval == stats.interval(same)
    assert stats.estimate_over_seeds([same, same]).seeds == 1
    other = [rng.integers(0, 2, size=50).astype(float) for _ in range(3)]
    assert stats.paired_over_seeds(other, [same] * 3).seeds == 3
    assert stats.paired_over_seeds([same] * 3, [other[0]] * 3) == stats.paired(same, other[0])
