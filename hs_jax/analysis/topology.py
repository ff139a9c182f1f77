"""The shape of found systems, where each expert sits in them, and the sparsity trade-off
(the paper's Table 3).

Only nodes with a path to the end node run (`Dag.reaching_end`), so every statistic is over
those "active" nodes and the edges between them:

- depth: the longest path, in edges, from an active node to the end node (a single node: 0);
- position of a node: its depth from the end, the longest path from it to the end node (the end
  node is position 0, its direct inputs 1, ...); in G-decode's in-trees the path is unique;
- fan-in: a node's number of inputs; the mean is over active nodes with at least one input
  (entry nodes only read the question), 0 when there are none.

The sparsity table groups runs by their search settings read from run.json (`search.prune_tau`,
`search.l1_lambda`; hs_jax.setup.identity records the resolved config): the original (method 'hs',
no pruning, no L1 term) and each tau / lambda, and reports test utility, active edges, and the
reduction of active edges against the original (the paper's "speedup", the percentage of reduced
connections). G-decode gives every node but the end exactly one outgoing edge
(hs_jax.swarm.graph.prune), so an n-node in-tree always has n - 1 edges: in hs_jax, tau and lambda
change which tree is found (depth, fan-in) and what the run costs (prompt tokens, reported too),
not the edge count.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hs_jax.swarm.graph import Dag


@dataclasses.dataclass(frozen=True)
class Topology:
    nodes: int
    active_nodes: int
    edges: int
    active_edges: int
    depth: int
    max_fan_in: int
    mean_fan_in: float
    positions: dict[int, int]  # active node -> its depth from the end

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["positions"] = {str(k): v for k, v in self.positions.items()}
        return d


def positions(dag: Dag) -> dict[int, int]:
    """Each active node's depth from the end node (the longest path to it, in edges)."""
    active = set(dag.reaching_end)
    depth = {dag.end: 0}
    for node in reversed(dag.topological_order):
        if node == dag.end or node not in active:
            continue
        depth[node] = 1 + max(depth[c] for c in dag.children(node) if c in active)
    return dict(sorted(depth.items()))


def topology(dag: Dag) -> Topology:
    """Node, edge, depth and fan-in statistics of a system's DAG (module docstring)."""
    active = dag.reaching_end
    pos = positions(dag)
    fan_in = [len(dag.parents(u)) for u in active]  # parents of an active node are active
    inner = [f for f in fan_in if f > 0]
    return Topology(
        nodes=dag.n,
        active_nodes=len(active),
        edges=len(dag.edges),
        active_edges=int(sum(fan_in)),
        depth=max(pos.values()),
        max_fan_in=max(fan_in),
        mean_fan_in=float(np.mean(inner)) if inner else 0.0,
        positions=pos,
    )


def expert_positions(systems: Iterable[tuple[Dag, Sequence[Any]]]) -> dict[Any, dict[int, int]]:
    """How often each expert sits at each position (depth from the end) over `systems`:
    {expert: {position: count}}, active nodes only. An assignment may name its experts (pool
    names) instead of numbering them, so systems from different pools count together."""
    counts: dict[Any, Counter] = defaultdict(Counter)
    for dag, assignment in systems:
        for node, p in positions(dag).items():
            counts[assignment[node]][p] += 1
    return {
        e: dict(sorted(c.items())) for e, c in sorted(counts.items(), key=lambda kv: str(kv[0]))
    }


def system_of(results: Mapping[str, Any]) -> tuple[Dag, list[int]]:
    best = results["best_system"]
    return Dag.from_dict(best["dag"]), [int(e) for e in best["assignment"]]


def sparsity_setting(method: str, prune_tau: Any, l1_lambda: Any) -> str | None:
    """The row of Table 3 a run belongs to: 'original' (method 'hs' without pruning or L1),
    'tau=<t>', 'lambda=<l>' (or both joined), None for a run that is neither."""
    parts = []
    if prune_tau is not None:
        parts.append(f"tau={float(prune_tau):g}")
    if l1_lambda:
        parts.append(f"lambda={float(l1_lambda):g}")
    if parts:
        return ", ".join(parts)
    return "original" if method == "hs" else None


def sparsity_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table 3 rows, per task, pool and setting, averaged over the runs (seeds) of each.

    `runs`: one mapping per run with task, pool (the expert names, a tuple: only runs on the
    same pool compare), setting (`sparsity_setting`), test_utility, active_edges, depth,
    mean_fan_in, prompt_tokens (None when unknown). Each row adds edge_reduction = 1 - edges /
    edges of the original on that task and pool (None without one)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["setting"] is not None:
            groups[(r["task"], tuple(r.get("pool", ())), r["setting"])].append(r)

    def mean(rows, key):
        v = [float(r[key]) for r in rows if r.get(key) is not None]
        return float(np.mean(v)) if v else None

    def order(key):  # per task and pool, the original first
        task, pool, setting = key
        return task, len(pool), pool, setting != "original", setting

    table = []
    for task, pool, setting in sorted(groups, key=order):
        rows = groups[(task, pool, setting)]
        original = groups.get((task, pool, "original"))
        edges = mean(rows, "active_edges")
        base = mean(original, "active_edges") if original else None
        table.append(
            {
                "task": task,
                "experts": len(pool),
                "pool": list(pool),
                "setting": setting,
                "runs": len(rows),
                "test_utility": mean(rows, "test_utility"),
                "active_edges": edges,
                "edge_reduction": (1.0 - edges / base) if base else None,
                "depth": mean(rows, "depth"),
                "mean_fan_in": mean(rows, "mean_fan_in"),
                "prompt_tokens": mean(rows, "prompt_tokens"),
            }
        )
    return table
