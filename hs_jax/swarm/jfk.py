"""JFK-score: each expert's individual contribution to a multi-LLM system (paper Algorithm 3).

The weight-step fills every node of this iteration's best DAG with experts drawn uniformly
with replacement, M times (:func:`sample_assignments`), scores each filled system, and credits
expert i with the frequency-weighted mean utility of the systems it sat in
(:func:`jfk_scores`):

    score[i] = sum_j cnt[j, i] * u[j] / sum_j cnt[j, i],  cnt[j, i] = #nodes of assignment j
                                                                     holding expert i.

Two cases the formula leaves open get a defined answer here:

- An expert drawn in no assignment (``sum_j cnt[j, i] = 0``; the authors divide by zero) keeps
  its ``previous`` score when one is given, else gets the mean utility over all M assignments
  (the score of an expert that contributes like the average draw).
- A non-finite utility (NaN, +-inf: a failed or broken system) counts as the worst outcome: it
  is replaced by ``worst`` if given, else by the lowest finite utility of this call. If no
  utility is finite the drawn experts score ``-inf``, which the PSO treats as worst and never
  makes a best.
"""

from __future__ import annotations

import numpy as np


def sample_assignments(
    n_nodes: int, n_experts: int, m: int, rng: np.random.Generator
) -> np.ndarray:
    """M assignments, each filling every node with an expert drawn uniformly with replacement.

    Returns int64 ``[m, n_nodes]``; entry ``[j, k]`` = the expert at node k in assignment j.
    """
    if n_nodes < 1 or n_experts < 1 or m < 1:
        raise ValueError(f"need n_nodes, n_experts, m >= 1, got {n_nodes}, {n_experts}, {m}")
    return rng.integers(0, n_experts, size=(m, n_nodes), dtype=np.int64)


def assignment_counts(assignments: np.ndarray, n_experts: int) -> np.ndarray:
    """``cnt[j, i]`` = how many nodes of assignment j hold expert i, ``[M, n_experts]``."""
    a = np.asarray(assignments)
    if a.ndim != 2:
        raise ValueError(f"assignments must be [M, n_nodes], got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= n_experts):
        raise ValueError(f"assignments hold experts outside 0..{n_experts - 1}")
    return (a[:, :, None] == np.arange(n_experts)).sum(axis=1)  # [M, n_nodes, E] -> [M, E]


def jfk_scores(
    assignments: np.ndarray,
    utilities: np.ndarray,
    n_experts: int,
    previous: np.ndarray | None = None,
    *,
    worst: float | None = None,
) -> np.ndarray:
    """Frequency-weighted mean utility per expert, float64 ``[n_experts]``.

    Args:
      assignments: ``[M, n_nodes]`` expert index per node, e.g. from :func:`sample_assignments`.
      utilities: ``[M]`` utility of each assigned system (higher is better).
      n_experts: number of experts.
      previous: ``[n_experts]`` scores kept by experts that were never drawn.
      worst: value replacing non-finite utilities (default: lowest finite utility given).
    """
    counts = assignment_counts(assignments, n_experts).astype(np.float64)  # [M, E]
    u = np.asarray(utilities, dtype=np.float64)
    if u.shape != (counts.shape[0],) or u.size == 0:
        raise ValueError(f"utilities must be [M] with M = {counts.shape[0]} >= 1, got {u.shape}")
    finite = np.isfinite(u)
    if worst is None:
        worst = u[finite].min() if finite.any() else -np.inf
    u = np.where(finite, u, worst)  # [M]

    drawn = counts.sum(axis=0)  # [E]
    if np.isfinite(u).all():
        weighted = counts.T @ u
    else:
        # -inf utilities: 0 * -inf would be NaN for experts absent from that assignment.
        terms = np.multiply(counts, u[:, None], out=np.zeros_like(counts), where=counts > 0)
        weighted = terms.sum(axis=0)
    if previous is None:
        fallback = np.full(n_experts, u.mean())
    else:
        fallback = np.asarray(previous, dtype=np.float64)
        if fallback.shape != (n_experts,):
            raise ValueError(f"previous must be [{n_experts}], got {fallback.shape}")
    return np.where(drawn > 0, weighted / np.maximum(drawn, 1.0), fallback)
