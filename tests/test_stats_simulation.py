"""Simulated error rates of the comparisons over seeds, in tables where seeds differ a lot.

Each simulated table: every method x seed system has its own accuracy 0.5 + N(0, SEED_SD) (a
seed's search finds a different system), and is scored on the same ITEMS items of 0/1
correctness, drawn independently. The seed is then the unit of replication: pooling every
seed's items into one item bootstrap (`stats.paired` on the concatenation) rejects "no
difference" far too often, `stats.paired_over_seeds` must not. Fixed generator seeds keep the
rates, and so the test, deterministic; each assertion's Monte-Carlo slack is 2 binomial
standard deviations of the nominal rate over the simulated tables (3 where a procedure is
expected to run at the nominal rate itself, not below it).
"""

import numpy as np
import pytest

from hs_jax import stats

ITEMS = 240
SEED_SD = 0.06
RESAMPLES = 1000
ALPHA = 0.05


def _slack(tables: int, sds: float = 2.0) -> float:
    return sds * np.sqrt(ALPHA * (1 - ALPHA) / tables)


def _tables(rng, tables, seeds, methods=2, effect=0.0):
    """[tables, methods, seeds, ITEMS] 0/1 scores; method 0's accuracy is `effect` higher."""
    accuracy = 0.5 + rng.normal(0.0, SEED_SD, size=(tables, methods, seeds))
    accuracy[:, 0] += effect
    return (rng.random((tables, methods, seeds, ITEMS)) < accuracy[..., None]).astype(float)


def _over_seeds(table, **kw):
    return stats.paired_over_seeds(list(table[0]), list(table[1]), n=RESAMPLES, **kw).p_value


def _pooled(table):
    return stats.paired(table[0].ravel(), table[1].ravel(), n=RESAMPLES).p_value


@pytest.mark.parametrize("seeds", [3, 5])
def test_no_difference_is_rarely_found_over_seeds_but_often_by_pooling_items(seeds):
    tables = 400  # slack 2 * sqrt(0.05 * 0.95 / 400) = 0.022
    x = _tables(np.random.default_rng(seeds), tables, seeds)
    new = np.mean([_over_seeds(t) < ALPHA for t in x])
    seeds_only = np.mean([_over_seeds(t, resample_items=False) < ALPHA for t in x])
    pooled = np.mean([_pooled(t) < ALPHA for t in x])
    print(
        f"{seeds} seeds, no difference, rate of p < {ALPHA} over {tables} tables: "
        f"seeds x items {new:.4f}, seeds only {seeds_only:.4f}, pooled items {pooled:.4f}"
    )
    assert new <= ALPHA + _slack(tables)
    assert seeds_only <= ALPHA + _slack(tables, 3.0)
    assert pooled > 0.15


def test_a_real_difference_is_found_in_most_tables():
    # Power is bounded by the seeds: with sd 0.06 per method-seed system, a difference of the
    # means of 5 seeds has sd ~0.043, so +0.12 is found in only about half the tables (even
    # by the t-test on the seed means), +0.20 in about 90%.
    tables = 400
    found = {}
    for effect in (0.12, 0.20):
        x = _tables(np.random.default_rng(7), tables, 5, effect=effect)
        found[effect] = np.mean([_over_seeds(t) < ALPHA for t in x])
        seeds_only = np.mean([_over_seeds(t, resample_items=False) < ALPHA for t in x])
        print(
            f"5 seeds, +{effect}: found in {found[effect]:.4f} of {tables} tables "
            f"(seeds only: {seeds_only:.4f})"
        )
    assert found[0.20] >= 0.8
    assert found[0.12] >= 0.3


@pytest.mark.parametrize(("resample_items", "families"), [(True, 100), (False, 500)])
def test_holm_keeps_the_family_wise_error_rate(resample_items, families):
    # Each family: 20 methods compared with one shared baseline on 5 seeds, no true difference.
    # Seeds-only p-values run at the nominal rate, so unadjusted they make some false finding
    # in most families; Holm must bring that to at most 0.05 (+ 2 sd over `families`).
    comparisons, seeds = 20, 5
    rng = np.random.default_rng(20)
    any_raw, any_holm = 0, 0
    for _ in range(families):
        x = _tables(rng, 1, seeds, methods=comparisons + 1)[0]
        p = [
            stats.paired_over_seeds(
                list(x[k]), list(x[comparisons]), n=RESAMPLES, resample_items=resample_items
            ).p_value
            for k in range(comparisons)
        ]
        any_raw += min(p) < ALPHA
        any_holm += min(stats.holm(p)) < ALPHA
    print(
        f"{families} families of {comparisons} (resample_items={resample_items}): "
        f"family-wise error rate unadjusted {any_raw / families:.4f}, "
        f"Holm {any_holm / families:.4f}"
    )
    assert any_holm / families <= ALPHA + _slack(families)
    if not resample_items:
        assert any_raw / families > 0.3
