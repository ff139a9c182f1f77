"""Fixed multi-LLM structures for the role baselines, as plain `graph.Dag`s and systems.

Pure helpers, shared by `hs_jax.methods.static_role`, `hs_jax.methods.prune` and
`hs_jax.methods.dynamic_role`. A system is `(Dag, assignment)`, `assignment[k]` = the expert
at node k (as everywhere in hs_jax). The API:

- `chain(order) -> (Dag, assignment)`: nodes 0 -> 1 -> ... -> n-1, node k holds expert
  `order[k]`, node n-1 is the end node. `chain([2, 0, 1])` has edges (0, 1), (1, 2) and
  assignment (2, 0, 1).
- `star(order) -> (Dag, assignment)`: the paper's 1 -> (n-2) -> 1: node 0 feeds the middle
  nodes 1..n-2, which all feed the end node n-1; node k holds `order[k]`; needs n >= 3.
- `dense(n) -> Dag`: every edge i -> j with i < j over nodes 0..n-1, end n-1 (the complete
  DAG over an order, where Agent-Prune starts).
- `without_edges(dag, edges) -> Dag`: the same nodes and end, those edges removed.
- `reaching_end(dag) -> (Dag, kept)`: only the nodes with a path to the end node, renumbered
  0..m-1 in ascending order of their old index; `kept[k]` = the old index of new node k.
- `keep_reaching(dag, assignment) -> (Dag, assignment)`: `reaching_end` applied to a system.

Why `reaching_end` exists: the executor (hs_jax/executor.py) runs only the nodes that reach the
end, so a node cut off by edge removal never runs; dropping it makes two systems that run the
same way also compare (and archive) as the same system.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hs_jax.swarm import graph
from hs_jax.swarm.graph import Dag


def _order(order: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(e) for e in order)
    if not out:
        raise ValueError("an expert order needs at least one expert")
    return out


def chain(order: Sequence[int]) -> tuple[Dag, tuple[int, ...]]:
    """A chain over `len(order)` nodes, node k holding expert `order[k]`, the last one the end."""
    order = _order(order)
    return graph.chain(len(order)), order


def star(order: Sequence[int]) -> tuple[Dag, tuple[int, ...]]:
    """1 -> (n-2) -> 1 over `n = len(order)` nodes (node k holds `order[k]`), n >= 3."""
    order = _order(order)
    if len(order) < 3:
        raise ValueError(f"a 1 -> k -> 1 star needs at least 3 nodes, got {len(order)}")
    return graph.star(len(order) - 2), order


def dense(n: int) -> Dag:
    """All edges i -> j with i < j over nodes 0..n-1; node n-1 is the end node."""
    n = int(n)
    if n < 1:
        raise ValueError(f"a dense DAG needs n >= 1 nodes, got {n}")
    return Dag(n, tuple((i, j) for i in range(n) for j in range(i + 1, n)), n - 1)


def without_edges(dag: Dag, edges: Iterable[Sequence[int]]) -> Dag:
    """`dag` with `edges` removed (each must be one of its edges: a typo is not silently a
    no-op)."""
    drop = {(int(u), int(v)) for u, v in edges}
    missing = drop - set(dag.edges)
    if missing:
        raise ValueError(f"edges {sorted(missing)} are not in {dag}")
    return Dag(dag.n, tuple(e for e in dag.edges if e not in drop), dag.end)


def reaching_end(dag: Dag) -> tuple[Dag, tuple[int, ...]]:
    """The sub-DAG of the nodes that reach the end node, renumbered in ascending old order, and
    the old index of each new node."""
    kept = dag.reaching_end
    new = {old: k for k, old in enumerate(kept)}
    edges = tuple((new[u], new[v]) for u, v in dag.edges if u in new and v in new)
    return Dag(len(kept), edges, new[dag.end]), kept


def keep_reaching(dag: Dag, assignment: Sequence[int]) -> tuple[Dag, tuple[int, ...]]:
    """The system restricted to the nodes that reach its end node (see `reaching_end`)."""
    if len(assignment) != dag.n:
        raise ValueError(f"assignment of {len(assignment)} experts for {dag.n} nodes")
    sub, kept = reaching_end(dag)
    return sub, tuple(int(assignment[k]) for k in kept)
