"""The random-search control: Heterogeneous Swarms' budget spent on random systems.

Each candidate is what the search's first iteration could propose with no optimisation at
all: the G-decode (`graph.g_decode`, config.search.top_p) of a fresh random matrix drawn as the
role swarm starts (U(0, config.search.adjacency_scale) with a zero diagonal, like
`search.init_adjacency`) and a random assignment (`jfk.sample_assignments`: an expert drawn
uniformly with replacement per node), scored with the pool's weights as loaded. Candidates are
scored in batches of config.search.n_graphs + config.search.n_assignments, one Evaluator call
per batch (one "iteration", as the search scores N + M systems per iteration), until
`method_api.budget_of(config)` utility evaluations are spent (the last batch may be smaller);
the best on dev wins. If the search beats this control, its optimisation, not the extra
evaluations, is why.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hs_jax import graph, jfk, stats
from hs_jax.graph import Dag
from hs_jax.method_api import Evaluator, MethodResult, budget_of, score_singles
from hs_jax.methods import MethodSpec, register

if TYPE_CHECKING:
    from hs_jax.run_setup import Setup


def random_system(
    n: int, rng: np.random.Generator, *, scale: float, top_p: float
) -> tuple[Dag, tuple[int, ...]]:
    """One random candidate over n nodes and n experts: G-decode of U(0, scale) with a zero
    diagonal, and an expert per node drawn uniformly with replacement."""
    adjacency = rng.uniform(0.0, scale, size=(n, n)) * (1.0 - np.eye(n))  # [n, n]
    dag = graph.g_decode(adjacency, rng, top_p=top_p)
    assignment = jfk.sample_assignments(n, n, 1, rng)[0]
    return dag, tuple(int(e) for e in assignment)


def random_search(
    setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True
) -> MethodResult:
    """Random systems in search-sized batches until the budget is spent; the best on dev."""
    c = setup.config
    singles = score_singles(setup)
    n = setup.experts.n_experts
    budget = budget_of(c)
    batch = int(c.search.n_graphs + c.search.n_assignments)
    scale, top_p = float(c.search.adjacency_scale), float(c.search.top_p)
    rng = np.random.default_rng(c.seed)
    evaluator = Evaluator(setup, workdir, "random_search", budget=budget)
    history = []
    while evaluator.remaining > 0:
        t = len(history)
        systems = [
            random_system(n, rng, scale=scale, top_p=top_p)
            for _ in range(min(batch, evaluator.remaining))
        ]
        utilities = evaluator.score(systems, setup.experts, step="random", iteration=t)
        finite = utilities[np.isfinite(utilities)]
        history.append(
            {
                "iteration": t,
                "utilities": [stats.finite_or_none(u) for u in utilities],
                "best": float(finite.max()) if finite.size else None,
                "best_utility": evaluator.best.utility if evaluator.best is not None else None,
                "evaluations": evaluator.evaluations,
            }
        )
    return evaluator.finish(
        singles, history=history, iterations=len(history), stop_reason="budget",
        details={"budget": budget, "batch": batch},
    )  # fmt: skip


register(
    "random_search",
    MethodSpec(random_search, "control", "random DAGs and assignments at the search's budget"),
)
