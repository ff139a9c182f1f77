"""The random-search controls: Heterogeneous Swarms' budget spent on random systems.

Both controls draw candidates the way the search's first iteration could propose them with no
optimisation at all: the G-decode (`graph.g_decode`, config.search.top_p) of a fresh random
matrix drawn as the role swarm starts (U(0, config.search.adjacency_scale) with a zero
diagonal, like `search.init_adjacency`) and a random assignment (`jfk.sample_assignments`: an
expert drawn uniformly with replacement per node). Candidates are scored in batches of
config.search.n_graphs + config.search.n_assignments, one Evaluator call per batch (one
"iteration": the search scores N + M systems per iteration with one set of expert weights),
until `method_api.budget_of(config)` utility evaluations are spent (the last batch may be
smaller); the best on dev wins.

- `random_search` samples the search's whole space: DAGs, assignments AND expert weights.
  The weight swarm's particles start at the pool's experts and move by PSO, so they stay in
  (and around) the region the pool spans; a random point of it is a random convex combination
  of the pool's experts. Each batch gets one fresh weight stack (`random_pool`): expert slot
  k holds sum_i W[k, i] * expert i, leaf by leaf (a LoRA stack's A's and B's are mixed
  separately with the same weights, as `dynamic_weight.remix` merges; full-weight experts,
  experts.source='full', are mixed the same way along their leading expert axis), the rows
  of the mixing matrix W [n, n] drawn from Dirichlet(1, ..., 1) (uniform on the simplex).
  The first batch runs the pool as loaded (W = I: where the search starts), later batches
  fresh draws. The systems come from the same random stream as `random_roles`' (seeded by
  config.seed), the mixing matrices from a stream of their own, so for one seed both controls
  score the same systems and differ only in the weights. Every batch's W is in its history
  record (`mixing`) and the best system's in `best_system.details` (`mixing`), so the best
  system's experts can be rebuilt from the pool. If the search beats this control, its
  optimisation, not the size of its space or its evaluations, is why.
- `random_roles` (the earlier random search) draws DAGs and assignments only and runs every
  batch with the pool's own weights: it tells whether moving weights at all matters.

Both are deterministic functions of config.seed (the mixing matrices are drawn from numpy's
PCG64 and cast to float32 before use), so a rerun asks the Evaluator for the same systems
with the same weights' fingerprints and replays its archive.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hs_jax import stats
from hs_jax.config import schema
from hs_jax.methods.api import Evaluator, MethodResult, budget_of, score_singles
from hs_jax.methods.dynamic_weight import remix
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.swarm import graph, jfk
from hs_jax.swarm.graph import Dag

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

WEIGHTS_STREAM = 1  # the mixing matrices' numpy stream: seeded by (config.seed, WEIGHTS_STREAM)


def random_system(
    n: int, rng: np.random.Generator, *, scale: float, top_p: float
) -> tuple[Dag, tuple[int, ...]]:
    """One random candidate over n nodes and n experts: G-decode of U(0, scale) with a zero
    diagonal, and an expert per node drawn uniformly with replacement."""
    adjacency = rng.uniform(0.0, scale, size=(n, n)) * (1.0 - np.eye(n))  # [n, n]
    dag = graph.g_decode(adjacency, rng, top_p=top_p)
    assignment = jfk.sample_assignments(n, n, 1, rng)[0]
    return dag, tuple(int(e) for e in assignment)


def mixing_matrix(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, n] float32: row k = the Dirichlet(1) weights of slot k's convex combination of the
    n experts (each row >= 0, summing to 1 up to float32 rounding)."""
    return rng.dirichlet(np.ones(n), size=n).astype(np.float32)


def random_pool(experts: Any, mixing: np.ndarray) -> Any:
    """The pool with slot k = sum_i mixing[k, i] * expert i on every leaf (`remix`)."""
    return remix(experts, mixing)


def _search(setup: Setup, workdir: Path, *, mix_weights: bool) -> MethodResult:
    """Random systems in search-sized batches until the budget is spent; with `mix_weights`
    each batch after the first runs a fresh random convex combination of the pool."""
    c = setup.config
    singles = score_singles(setup)
    n = setup.experts.n_experts
    budget = budget_of(c)
    s = schema.search_config(c)
    batch = int(s.n_graphs + s.n_assignments)
    scale, top_p = float(s.adjacency_scale), float(s.top_p)
    rng = np.random.default_rng(c.seed)
    weight_rng = np.random.default_rng((int(c.seed), WEIGHTS_STREAM))
    evaluator = Evaluator(setup, workdir, c.method, budget=budget)
    history: list[dict[str, Any]] = []
    while evaluator.remaining > 0:
        t = len(history)
        systems = [
            random_system(n, rng, scale=scale, top_p=top_p)
            for _ in range(min(batch, evaluator.remaining))
        ]
        weights, mixing = setup.experts, None
        if mix_weights:
            mixing = np.eye(n, dtype=np.float32) if t == 0 else mixing_matrix(n, weight_rng)
            weights = setup.experts if t == 0 else random_pool(setup.experts, mixing)
        utilities = evaluator.score(systems, weights, step="random", iteration=t)
        finite = utilities[np.isfinite(utilities)]
        record = {
            "iteration": t,
            "utilities": [stats.finite_or_none(u) for u in utilities],
            "best": float(finite.max()) if finite.size else None,
            "best_utility": evaluator.best.utility if evaluator.best is not None else None,
            "evaluations": evaluator.evaluations,
        }
        if mixing is not None:
            record["weights"] = "pool" if t == 0 else "mixed"
            record["mixing"] = mixing.tolist()
        history.append(record)
    details: dict[str, Any] = {"budget": budget, "batch": batch}
    if mix_weights and evaluator.best is not None:
        found = history[evaluator.best.iteration]
        details["weights"] = found["weights"]
        details["mixing"] = found["mixing"]
    return evaluator.finish(
        singles, history=history, iterations=len(history), stop_reason="budget", details=details
    )


def random_search(
    setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True
) -> MethodResult:
    """Random DAGs, assignments and expert weights at the search's budget (module
    docstring)."""
    return _search(setup, workdir, mix_weights=True)


def random_roles(
    setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True
) -> MethodResult:
    """Random DAGs and assignments over the pool's own weights at the search's budget."""
    return _search(setup, workdir, mix_weights=False)


register(
    "random_search",
    MethodSpec(
        random_search, "control",
        "random DAGs, assignments and expert weights at the search's budget",
    ),
)  # fmt: skip
register(
    "random_roles",
    MethodSpec(random_roles, "control", "random DAGs and assignments over the pool's own weights"),
)
