"""Statistics for honest numbers: bootstrap intervals over items, paired bootstrap tests, the
two-level (seeds, then items) bootstrap with a t reference over seeds, Holm's adjustment and
p formatting (`bootstrap.py`; numpy only). The run's curves and the comparison table use it."""

from hs_jax.stats.bootstrap import (
    ITEMS,
    LEVEL,
    RESAMPLES,
    SEEDS,
    SEEDS_X_ITEMS,
    Estimate,
    Paired,
    best_mean_worst,
    estimate_over_seeds,
    finite_or_none,
    format_p,
    holm,
    interval,
    interval_over_seeds,
    mean_and_spread,
    paired,
    paired_over_seeds,
)

__all__ = [
    "ITEMS", "LEVEL", "RESAMPLES", "SEEDS", "SEEDS_X_ITEMS", "Estimate", "Paired",
    "best_mean_worst", "estimate_over_seeds", "finite_or_none", "format_p", "holm", "interval",
    "interval_over_seeds", "mean_and_spread", "paired", "paired_over_seeds",
]  # fmt: skip
