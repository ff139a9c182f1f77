"""Agent-Prune-style baseline (a dynamic-role method of the paper's Table 1): start from every
possible connection, then cut the edges that do not help.

The experts are ordered by their single dev utility (ascending, so the best single expert is
last; ties put the lower index last, as `Singles.best` picks the first maximum) and connected
by the dense DAG over that order (`topologies.dense`: every i -> j with i < j, the best expert
the end node). Greedy pruning then repeats: every system with one edge of the current one
removed is scored on dev in one call; the best variant replaces the current system when its dev
utility is at least the current one's (ties: fewer edges, then the earlier edge), so utility
never goes down and a tie still makes the system sparser. It stops when no variant is as good,
when no edge is left, or when `method_api.budget_of(config)` evaluations are spent (a round
that does not fit scores the variants that do, in edge order).

Nodes cut off from the end node never run (the executor runs `Dag.reaching_end` only), so each
variant keeps only the nodes that reach the end (`topologies.keep_reaching`): the systems
scored and archived are the ones that run.

How this differs from the paper: its Appendix B runs Agent-Prune as 20 repeats of sampling a
random structure, pruning it and re-evaluating, reporting the best across runs and pruning
degrees. Here one greedy prune of the dense DAG is run (a deterministic path from every
connection down, within the same budget as the search), so the starting structure is not a
random draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hs_jax import stats
from hs_jax.methods import topologies
from hs_jax.methods.api import Evaluator, MethodResult, budget_of, score_singles
from hs_jax.methods.dynamic_role import expert_order
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.swarm.graph import Dag
from hs_jax.swarm.search import BestSystem

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

System = tuple[Dag, tuple[int, ...]]


def utility_order(dev: list[float]) -> tuple[int, ...]:
    """Experts by ascending single dev utility (non-finite lowest); among ties the lower index
    later, so the last one is the first maximum (`dynamic_role.expert_order`, the order the
    other dynamic-role baselines use)."""
    return tuple(int(e) for e in expert_order(dev))


def one_edge_removed(system: System) -> list[tuple[tuple[int, int], System]]:
    """Each edge of the system with the system it leaves when removed (only the nodes that
    still reach the end kept); variants that come out the same are listed once."""
    dag, assignment = system
    seen: set[System] = set()
    variants = []
    for edge in dag.edges:
        variant = topologies.keep_reaching(topologies.without_edges(dag, [edge]), assignment)
        if variant not in seen:  # a frozen Dag hashes by its nodes, edges and end
            seen.add(variant)
            variants.append((edge, variant))
    return variants


def pick(utilities: np.ndarray, variants: list[System]) -> int:
    """The best variant: highest utility, then fewest edges, then the first."""
    u = np.where(np.isfinite(utilities), utilities, -np.inf)
    return min(range(len(variants)), key=lambda k: (-u[k], len(variants[k][0].edges), k))


def agent_prune(
    setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True
) -> MethodResult:
    """Dense DAG over the experts by single utility, greedily pruned one edge at a time."""
    singles = score_singles(setup)
    evaluator = Evaluator(setup, workdir, "agent_prune", budget=budget_of(setup.config))
    current: System = (topologies.dense(setup.experts.n_experts), utility_order(singles.dev))
    u0 = float(evaluator.score([current], setup.experts, step="dense")[0])
    utility = u0 if np.isfinite(u0) else -np.inf
    history = [{"iteration": 0, "dev_utility": stats.finite_or_none(utility),
                "edges": len(current[0].edges), "removed": None, "variants": 0}]  # fmt: skip
    stop_reason = "no edge left"
    while current[0].edges:
        if evaluator.remaining <= 0:
            stop_reason = "budget"
            break
        t = len(history)
        variants = one_edge_removed(current)
        partial = len(variants) > evaluator.remaining
        variants = variants[: evaluator.remaining]
        systems = [v for _, v in variants]
        u = evaluator.score(systems, setup.experts, step="prune", iteration=t)
        k = pick(u, systems)
        accepted = bool(np.isfinite(u[k]) and u[k] >= utility)
        if accepted:
            current, utility = systems[k], float(u[k])
        history.append(
            {
                "iteration": t,
                "dev_utility": stats.finite_or_none(utility),
                "edges": len(current[0].edges),
                "removed": list(variants[k][0]) if accepted else None,
                "variants": len(systems),
                "utilities": [stats.finite_or_none(x) for x in u],
                "partial": partial,
            }
        )
        if partial or not accepted:
            # A partial round left variants unscored: the budget, not the graph, ended it.
            stop_reason = "budget" if partial else "no variant as good"
            break
    if np.isfinite(utility):
        # The pruned system is the result: its utility is the highest scored (every variant
        # of every round is at most the one accepted), and on a tie it is the sparser one.
        found = next((r["iteration"] for r in reversed(history) if r["removed"] is not None), 0)
        evaluator.best = BestSystem(current[0], current[1], setup.experts, utility, found)
    return evaluator.finish(
        singles, history=history, iterations=len(history), stop_reason=stop_reason,
        details={
            "dense_dev_utility": stats.finite_or_none(u0), "edges_left": len(current[0].edges)
        },
    )  # fmt: skip


register(
    "agent_prune",
    MethodSpec(agent_prune, "dynamic role", "dense DAG by single utility, greedy edge pruning"),
)
