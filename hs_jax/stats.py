"""Intervals and paired tests for utilities measured on the same items.

Every utility hs_jax reports is a mean of per-item scores (0/1 correctness, effective
reliability in {-1, 0, 1}, judge ratings in [0, 1]). `interval` is the percentile bootstrap
over items; `paired` compares two systems scored on the same items by resampling the items
together (the paired bootstrap), so the item-to-item correlation of two systems that mostly
agree is used instead of ignored. One generator seed makes every number reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0  # the bootstrap's own stream: numbers do not depend on the run's seed


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
    a = _as_scores(scores)
    means = _resample_means(a, n, seed)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class Paired:
    """a - b on the same items: the difference of means, its bootstrap interval, and the
    two-sided p-value of "no difference" (twice the smaller tail of the resampled differences
    around 0, at least 1/n; 1.0 when the two score vectors are identical)."""

    difference: float
    interval: tuple[float, float]
    p_value: float
    items: int

    def as_dict(self) -> dict:
        return {
            "difference": self.difference,
            "interval": list(self.interval),
            "p_value": self.p_value,
            "items": self.items,
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
