"""JFK-score: a hand-computed example, the never-drawn and non-finite cases, and the sampler."""

import numpy as np
import pytest
from scipy import stats

from hs_jax.swarm import jfk

# Three assignments of 3 nodes over experts 0..2 (expert 3 is never drawn when n_experts=4).
ASSIGN = np.array([[0, 0, 1], [1, 2, 2], [0, 2, 1]])
UTILS = np.array([0.6, 0.3, 0.9])


def test_hand_computed_example():
    # e0: nodes (2 in a0, 1 in a2) -> (2*0.6 + 0.9) / 3 = 0.7
    # e1: (1 in a0, a1, a2)       -> (0.6 + 0.3 + 0.9) / 3 = 0.6
    # e2: (2 in a1, 1 in a2)      -> (2*0.3 + 0.9) / 3 = 0.5
    np.testing.assert_allclose(jfk.jfk_scores(ASSIGN, UTILS, 3), [0.7, 0.6, 0.5])
    np.testing.assert_array_equal(
        jfk.assignment_counts(ASSIGN, 3), [[2, 1, 0], [0, 1, 2], [1, 1, 1]]
    )


def test_never_drawn_expert():
    # Without previous scores: the mean utility of all assignments, (0.6 + 0.3 + 0.9) / 3.
    np.testing.assert_allclose(jfk.jfk_scores(ASSIGN, UTILS, 4), [0.7, 0.6, 0.5, 0.6])
    previous = np.array([9.0, 9.0, 9.0, -0.25])
    np.testing.assert_allclose(jfk.jfk_scores(ASSIGN, UTILS, 4, previous), [0.7, 0.6, 0.5, -0.25])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_utility_counts_as_worst(bad):
    u = np.array([0.6, bad, 0.9])
    # Default: replaced by the lowest finite utility, 0.6.
    # e0 = (1.2 + 0.9) / 3, e1 = (0.6 + 0.6 + 0.9) / 3, e2 = (2*0.6 + 0.9) / 3.
    np.testing.assert_allclose(jfk.jfk_scores(ASSIGN, u, 3), [0.7, 0.7, 0.7])
    # Explicit worst value: e1 = (0.6 + 0 + 0.9) / 3, e2 = (0 + 0.9) / 3.
    np.testing.assert_allclose(jfk.jfk_scores(ASSIGN, u, 3, worst=0.0), [0.7, 0.5, 0.3])
    # worst=-inf: the experts of the failed system score -inf, the others stay finite (no NaN).
    scores = jfk.jfk_scores(ASSIGN, u, 4, worst=-np.inf, previous=np.zeros(4))
    np.testing.assert_allclose(scores, [0.7, -np.inf, -np.inf, 0.0])


def test_all_utilities_non_finite():
    scores = jfk.jfk_scores(ASSIGN, np.array([np.nan, np.inf, np.nan]), 4, np.full(4, 0.5))
    np.testing.assert_array_equal(scores, [-np.inf, -np.inf, -np.inf, 0.5])
    assert not np.isnan(scores).any()


def test_matches_per_expert_loop():
    rng = np.random.default_rng(0)
    n_experts = 7
    assignments = jfk.sample_assignments(5, n_experts, 10, rng)
    utils = rng.normal(size=10)
    previous = rng.normal(size=n_experts)
    expected = []
    for i in range(n_experts):
        cnt = [int(np.sum(row == i)) for row in assignments]
        total = sum(cnt)
        expected.append(
            sum(c * u for c, u in zip(cnt, utils, strict=True)) / total if total else previous[i]
        )
    np.testing.assert_allclose(jfk.jfk_scores(assignments, utils, n_experts, previous), expected)


def test_sample_assignments_shape_range_and_seed():
    a = jfk.sample_assignments(10, 10, 10, np.random.default_rng(5))
    b = jfk.sample_assignments(10, 10, 10, np.random.default_rng(5))
    c = jfk.sample_assignments(10, 10, 10, np.random.default_rng(6))
    assert a.shape == (10, 10) and a.dtype == np.int64
    assert a.min() >= 0 and a.max() < 10
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_assignments_uniform_with_replacement():
    a = jfk.sample_assignments(4, 5, 20_000, np.random.default_rng(1))
    counts = np.bincount(a.ravel(), minlength=5)
    assert stats.chisquare(counts).pvalue > 1e-3
    # With replacement: some assignments repeat an expert (with 4 of 5 this is likely).
    assert (np.array([len(set(row)) for row in a[:100]]) < 4).any()


def test_errors():
    with pytest.raises(ValueError, match="utilities"):
        jfk.jfk_scores(ASSIGN, UTILS[:2], 3)
    with pytest.raises(ValueError, match="outside"):
        jfk.jfk_scores(ASSIGN, UTILS, 2)
    with pytest.raises(ValueError, match="previous"):
        jfk.jfk_scores(ASSIGN, UTILS, 4, previous=np.zeros(3))
    with pytest.raises(ValueError, match=">= 1"):
        jfk.sample_assignments(3, 0, 10, np.random.default_rng(0))
