"""Intervals and paired tests for utilities measured on the same items, over one or more seeds.

Every utility hs_jax reports is a mean of per-item scores (0/1 correctness, effective
reliability in {-1, 0, 1}, judge ratings in [0, 1]). `interval` is the percentile bootstrap
over items; `paired` compares two systems scored on the same items by resampling the items
together (the paired bootstrap), so the item-to-item correlation of two systems that mostly
agree is used instead of ignored. One generator seed makes every number reproducible.

Several seeds per method. A seed's search finds a different system, and that seed-to-seed
variance dominates (one method's test utility: sd 0.056 over seeds against an item-bootstrap
standard error near 0.02), so the unit of replication is the seed. Pooling every seed's items
into one sample and bootstrapping the items ignores it and gives p-values far too small.
`estimate_over_seeds` / `interval_over_seeds` / `paired_over_seeds` take per-seed score
arrays instead. The estimate is the mean over seeds of the per-seed means. With one seed they
are exactly `interval` / `paired`. With S >= 2 seeds they use a two-level bootstrap (resample
the seeds with replacement, then the items with replacement within each resampled seed, and
average the resampled seed means) for the standard error only, not for percentiles:

* With S = 3..5 seeds a percentile interval or tail-count p-value of that bootstrap is badly
  anti-conservative. Three seeds whose differences all share a sign (probability 1/4 when
  there is no difference) put every resample on one side of 0: p = 1/n. Percentiles of a
  resampled mean of S values are also too narrow by the factor sqrt((S-1)/S).
* So the bootstrap variance is multiplied by S/(S-1) (the plug-in variance of a mean of S
  resampled values divides by S where the unbiased one divides by S-1), and the interval and
  p-value use Student's t with S-1 degrees of freedom: mean +- t_{S-1,(1+level)/2} * SE and
  p = 2 * P(T_{S-1} > |mean / SE|): the one-sample t-test on the seed means, with each seed's
  item sampling noise resampled as well.
* That item level counts the items' noise twice (the spread of the seed means already holds
  it), and as a floor under the SE it removes the small-SE draws that the t_{S-1} critical
  value allows for, so the procedure is conservative, the more so the fewer the seeds. In
  tests/test_stats_simulation.py's setting (240 0/1 items per seed, seed sd 0.06 per method,
  no true difference; 20 000 simulated tables) its rate of p < 0.05 is about 0.1% with 3
  seeds and 1.3% with 5; with 2 seeds (t_1) it practically never rejects.
  `resample_items=False` resamples the seeds only: with the S/(S-1) scaling that is the plain
  t-test on the seed means, at the nominal rate and with more power (+0.12 with 5 seeds:
  found in 56% of tables against 44%).

Seeds that repeat an earlier seed's scores item by item (a method that ignores its seed, such
as the best single expert on the same items; in a paired test, both methods) count once: they
replicate nothing.

p-values are clamped to [1/n, 1]: 1/n is the bootstrap's resolution, and `format_p` writes a
p-value at that floor as a bound ("p < 0.0001"), never as an equality. `holm` adjusts the
p-values of a table's family of comparisons (Holm-Bonferroni step-down).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0  # the bootstrap's own stream: numbers do not depend on the run's seed
ITEMS = "items"  # `Paired.procedure` / `Estimate.procedure` of the one-seed item bootstrap
SEEDS_X_ITEMS = "seeds x items, t(S-1)"  # ... of the several-seed procedure
SEEDS = "seeds, t(S-1)"  # ... of it with resample_items=False
# A seed's item resample is drawn as multinomial counts of its distinct score values when
# there are at most 1/_FEW_VALUES as many values as items (0/1 or {-1, 0, 1} scores: two or
# three binomial draws instead of one index per item); otherwise as item indices, at most
# _CHUNK of them at a time to bound memory.
_FEW_VALUES = 32
_CHUNK = 1 << 18


def finite_or_none(value) -> float | None:
    """`value` as a float for JSON, None where it is not finite (an unscored or failed system's
    utility is -inf or NaN, which JSON cannot hold)."""
    v = float(value)
    return v if np.isfinite(v) else None


def best_mean_worst(utilities, missing: float | None = float("nan")) -> dict[str, float | None]:
    """best / mean / worst of the finite utilities of one step (`missing` for each when none is
    finite: NaN in the search's records, None in a method's JSON history)."""
    u = np.asarray([np.nan if x is None else x for x in utilities], float)
    finite = u[np.isfinite(u)]
    if finite.size == 0:
        return {"best": missing, "mean": missing, "worst": missing}
    return {"best": float(finite.max()), "mean": float(finite.mean()), "worst": float(finite.min())}


def _resample_means(scores: np.ndarray, n: int, seed: int) -> np.ndarray:
    """[n] means of `scores` ([items] or [k, items], resampled along the items together)."""
    rng = np.random.default_rng(seed)
    items = scores.shape[-1]
    idx = rng.integers(0, items, size=(n, items))
    return scores[..., idx].mean(axis=-1)


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    a = np.asarray(scores, float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"per-item scores must be a non-empty 1-d sequence, got shape {a.shape}")
    return a


def interval(
    scores: Sequence[float], *, level: float = LEVEL, n: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-item scores."""
    return _percentiles(_resample_means(_as_scores(scores), n, seed), level)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of resampled means."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class Paired:
    """a - b on the same items: the difference of means, its interval, and the two-sided
    p-value of "no difference".

    `procedure` says how they were computed. "items" (`paired`, one seed): the percentile
    interval of the paired item bootstrap and twice its smaller tail around 0, at least 1/n;
    1.0 when the two score vectors are identical; `se` is None. "seeds x items, t(S-1)"
    (`paired_over_seeds`, S = `seeds` >= 2): the mean over seeds of the per-seed differences,
    the two-level bootstrap's standard error `se` and Student's t with S-1 degrees of freedom
    (see the module docstring); "seeds, t(S-1)" the same with the seeds alone resampled.
    `items` counts the compared item pairs over all seeds."""

    difference: float
    interval: tuple[float, float]
    p_value: float
    items: int
    seeds: int = 1
    procedure: str = ITEMS
    se: float | None = None

    def as_dict(self) -> dict:
        return {
            "difference": self.difference,
            "interval": list(self.interval),
            "p_value": self.p_value,
            "items": self.items,
            "seeds": self.seeds,
            "procedure": self.procedure,
            "se": self.se,
        }


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = LEVEL,
    n: int = RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """Paired bootstrap of mean(a) - mean(b) over the same items."""
    a, b = _as_scores(a), _as_scores(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.size} vs {b.size}")
    d = a - b
    observed = float(d.mean())
    if not np.any(d):
        return Paired(0.0, (0.0, 0.0), 1.0, int(a.size))
    diffs = _resample_means(d, n, seed)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    below, above = np.mean(diffs <= 0.0), np.mean(diffs >= 0.0)
    p = float(min(1.0, max(2.0 * min(below, above), 1.0 / n)))
    return Paired(observed, (float(lo), float(hi)), p, int(a.size))


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) over seeds."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One system's utility over seeds: the mean over seeds of the per-seed means, its interval
    and standard error. `procedure` is "items" for one seed (the percentile item bootstrap,
    exactly `interval`; `se` is the sd of its resampled means) and "seeds x items, t(S-1)" for
    S = `seeds` >= 2 (the two-level bootstrap's SE and Student's t, see the module docstring;
    "seeds, t(S-1)" with the seeds alone resampled). `items` counts the scored items over all
    seeds."""

    mean: float
    interval: tuple[float, float]
    se: float
    seeds: int
    items: int
    procedure: str

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "interval": list(self.interval),
            "se": self.se,
            "seeds": self.seeds,
            "items": self.items,
            "procedure": self.procedure,
        }


def _by_seed(scores_by_seed) -> tuple[list, list[np.ndarray]]:
    """(seed names, per-seed score arrays): a mapping's keys name its seeds, a sequence's
    positions name its."""
    if isinstance(scores_by_seed, Mapping):
        names, arrays = list(scores_by_seed), list(scores_by_seed.values())
    else:
        arrays = list(scores_by_seed)
        names = list(range(len(arrays)))
    if not arrays:
        raise ValueError("need the per-item scores of at least one seed")
    out = []
    for name, scores in zip(names, arrays, strict=True):
        try:
            out.append(_as_scores(scores))
        except ValueError as e:
            raise ValueError(f"seed {name!r}: {e}") from None
    return names, out


def _distinct(*by_seed: list[np.ndarray]) -> list[int]:
    """The seeds (positions) to keep: a seed whose scores equal an earlier seed's item by item
    (in every one of the given methods: a method that ignores its seed, the best single expert
    on the same items) replicates nothing, and counting it again would make the seeds look
    like more evidence than they are (and, with a seed sd of 0, a t interval of the items'
    noise times t_{S-1})."""
    keep: list[int] = []
    for k in range(len(by_seed[0])):
        same = any(
            all(m[j].shape == m[k].shape and np.array_equal(m[j], m[k]) for m in by_seed)
            for j in keep
        )
        if not same:
            keep.append(k)
    return keep


def _mean_of_seed_means(by_seed: list[np.ndarray]) -> float:
    return float(np.mean([a.mean() for a in by_seed]))


def _check_resamples(n: int) -> None:
    if n < 2:
        raise ValueError(f"a bootstrap standard error needs at least 2 resamples, got n={n}")


def _item_means(scores: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` independent item-bootstrap means of one seed's scores."""
    m = scores.size
    values, tallies = np.unique(scores, return_counts=True)
    if values.size == 1:
        return np.full(count, values[0])
    if values.size * _FEW_VALUES <= m:
        return rng.multinomial(m, tallies / m, size=count) @ values / m
    out = np.empty(count)
    rows = max(1, _CHUNK // m)
    for start in range(0, count, rows):
        stop = min(count, start + rows)
        out[start:stop] = np.take(scores, rng.integers(0, m, size=(stop - start, m))).mean(axis=1)
    return out


def _seed_se(by_seed: list[np.ndarray], n: int, seed: int, resample_items: bool) -> float:
    """Standard error of the mean of S >= 2 seed means: the sd of n two-level bootstrap
    resamples (S seeds drawn with replacement, each seed's items redrawn with replacement
    unless not `resample_items`, the mean of the S resampled seed means), with the variance
    scaled by S/(S-1) to undo the plug-in bias of resampling only S seeds. 0 when nothing
    varies (every score, or without `resample_items` every seed mean, is the same)."""
    s = len(by_seed)
    seed_means = np.array([a.mean() for a in by_seed])
    if np.ptp(np.concatenate(by_seed) if resample_items else seed_means) == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, s, size=(n, s))
    if resample_items:
        means = np.empty((n, s))
        for k, scores in enumerate(by_seed):
            chosen = picks == k
            means[chosen] = _item_means(scores, int(chosen.sum()), rng)
    else:
        means = seed_means[picks]
    return float(np.sqrt(np.var(means.mean(axis=1), ddof=1) * s / (s - 1)))


def _within(lo: float, hi: float, by_seed: list[np.ndarray]) -> tuple[float, float]:
    """[lo, hi] cut to the range of the scores: a mean of them cannot leave it (t_{S-1}'s
    interval over 2-3 seeds easily does, e.g. below 0 for an accuracy)."""
    scores = np.concatenate(by_seed)
    return float(max(lo, scores.min())), float(min(hi, scores.max()))


def _student_t():
    """scipy's Student t, imported where it is used: `scipy.stats` takes over a second to import,
    which every launcher process (all of which import this module) would pay at start."""
    from scipy import stats as scipy_stats

    return scipy_stats.t


def _t_critical(level: float, seeds: int) -> float:
    """The two-sided `level` quantile of Student's t with seeds - 1 degrees of freedom."""
    return float(_student_t().ppf((1.0 + level) / 2.0, seeds - 1))


def estimate_over_seeds(
    scores_by_seed: Sequence[Sequence[float]] | Mapping[object, Sequence[float]],
    *,
    level: float = LEVEL,
    n: int = RESAMPLES,
    seed: int = SEED,
    resample_items: bool = True,
) -> Estimate:
    """The mean over seeds of one system's per-seed mean scores, with its interval and SE.

    `scores_by_seed` holds one 1-d array of per-item scores per seed (a sequence, or a mapping
    from seed to scores); seeds may have different items. One seed: the item bootstrap,
    exactly `interval`. S >= 2 seeds: mean +- t_{S-1} * SE with the two-level bootstrap's SE
    (the seeds' alone with `resample_items=False`), because the seeds, not the items, are the
    replicates (module docstring)."""
    _, by_seed = _by_seed(scores_by_seed)
    by_seed = [by_seed[k] for k in _distinct(by_seed)]
    items = sum(a.size for a in by_seed)
    if len(by_seed) == 1:
        a = by_seed[0]
        means = _resample_means(a, n, seed)
        se = float(np.std(means, ddof=1))
        return Estimate(float(a.mean()), _percentiles(means, level), se, 1, items, ITEMS)
    _check_resamples(n)
    mean = _mean_of_seed_means(by_seed)
    se = _seed_se(by_seed, n, seed, resample_items)
    half = _t_critical(level, len(by_seed)) * se
    procedure = SEEDS_X_ITEMS if resample_items else SEEDS
    interval = _within(mean - half, mean + half, by_seed)
    return Estimate(mean, interval, se, len(by_seed), items, procedure)


def interval_over_seeds(
    scores_by_seed: Sequence[Sequence[float]] | Mapping[object, Sequence[float]],
    *,
    level: float = LEVEL,
    n: int = RESAMPLES,
    seed: int = SEED,
    resample_items: bool = True,
) -> tuple[float, float]:
    """The interval of `estimate_over_seeds`: `interval` for one seed, mean +- t_{S-1} * SE
    with the two-level bootstrap's SE for S >= 2 seeds."""
    return estimate_over_seeds(
        scores_by_seed, level=level, n=n, seed=seed, resample_items=resample_items
    ).interval


def paired_over_seeds(
    a_by_seed: Sequence[Sequence[float]] | Mapping[object, Sequence[float]],
    b_by_seed: Sequence[Sequence[float]] | Mapping[object, Sequence[float]],
    *,
    level: float = LEVEL,
    n: int = RESAMPLES,
    seed: int = SEED,
    resample_items: bool = True,
) -> Paired:
    """a - b paired by seed and by item: per seed, a's and b's scores on the same items.

    Sequences pair by position, mappings by seed (both must name the same seeds). One seed:
    exactly `paired`. S >= 2 seeds: the difference is the mean over seeds of the per-seed
    mean differences; its SE is the two-level bootstrap's over the per-item differences (the
    seeds' alone with `resample_items=False`), the
    interval is difference +- t_{S-1} * SE and p = 2 * P(T_{S-1} > |difference / SE|), clamped
    to [1/n, 1] (1.0 when every difference is 0, 1/n when the SE is 0 and the difference
    is not), because the seeds, not the items, are the replicates (module docstring)."""
    a_names, a_seeds = _by_seed(a_by_seed)
    b_names, b_seeds = _by_seed(b_by_seed)
    if isinstance(a_by_seed, Mapping) != isinstance(b_by_seed, Mapping):
        raise ValueError("pass both methods' scores as mappings from seed, or both as sequences")
    if isinstance(a_by_seed, Mapping):
        if set(a_names) != set(b_names):
            raise ValueError(f"paired scores need the same seeds: {a_names} vs {b_names}")
        b_of = dict(zip(b_names, b_seeds, strict=True))
        b_seeds = [b_of[name] for name in a_names]
    elif len(a_seeds) != len(b_seeds):
        raise ValueError(
            f"paired scores need the same seeds: {len(a_seeds)} vs {len(b_seeds)} seeds"
        )
    for name, a, b in zip(a_names, a_seeds, b_seeds, strict=True):
        if a.shape != b.shape:
            raise ValueError(
                f"seed {name!r}: paired scores need the same items: {a.size} vs {b.size}"
            )
    keep = _distinct(a_seeds, b_seeds)
    a_seeds, b_seeds = [a_seeds[k] for k in keep], [b_seeds[k] for k in keep]
    if len(a_seeds) == 1:
        return paired(a_seeds[0], b_seeds[0], level=level, n=n, seed=seed)
    _check_resamples(n)
    s = len(a_seeds)
    d = [a - b for a, b in zip(a_seeds, b_seeds, strict=True)]
    items = sum(x.size for x in d)
    procedure = SEEDS_X_ITEMS if resample_items else SEEDS
    if not any(np.any(x) for x in d):
        return Paired(0.0, (0.0, 0.0), 1.0, items, s, procedure, 0.0)
    difference = _mean_of_seed_means(d)
    se = _seed_se(d, n, seed, resample_items)
    if se == 0.0:  # every seed shows the same difference: 1/n after clamping, 1 if it is 0
        p = 1.0 if difference == 0.0 else 0.0
    else:
        p = float(2.0 * _student_t().sf(abs(difference) / se, s - 1))
    p = min(1.0, max(p, 1.0 / n))
    half = _t_critical(level, s) * se
    interval = _within(difference - half, difference + half, d)
    return Paired(difference, interval, p, items, s, procedure, se)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    A table tests a family of comparisons; rejecting each at adjusted p < alpha keeps the
    chance of any false rejection at most alpha whatever their dependence. The k-th smallest
    of the m p-values is scaled by m - k + 1, made non-decreasing in rank and capped at 1.
    None entries (comparisons not made) stay None and do not count in m."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    p = np.asarray([p_values[i] for i in present], float)
    if np.any(~np.isfinite(p) | (p < 0.0) | (p > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1] (or be None), got {list(p_values)}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out: list[float | None] = [None] * len(p_values)
    for rank, j in enumerate(order):
        out[present[j]] = float(adjusted[rank])
    return out


def _three_significant(x: float) -> str:
    return np.format_float_positional(x, precision=3, fractional=False, trim="-")


def format_p(p: float | None, *, n: int = RESAMPLES) -> str:
    """A p-value for a table: "p = " and 3 significant digits, but "p < 1/n" (as a decimal,
    "p < 0.0001" for n = 10000) at or below the bootstrap's resolution 1/n, where only the
    bound is known; "p n/a" for None or NaN."""
    if p is None or np.isnan(p):
        return "p n/a"
    floor = 1.0 / n
    if p <= floor:
        return f"p < {_three_significant(floor)}"
    return f"p = {_three_significant(float(p))}"
