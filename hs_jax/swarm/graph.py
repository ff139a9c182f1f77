"""Multi-LLM systems as DAGs, and G-decode: continuous adjacency matrix -> discrete DAG.

A system is a :class:`Dag` over nodes ``0..n-1``. An edge ``(src, dst)`` means src's output is
part of dst's input; the end node's output is the system's output. Nodes run level by level
(:meth:`Dag.levels`), and only nodes with a path to the end node matter
(:meth:`Dag.reaching_end`).

G-decode (the paper's Algorithm 2; docs/FIDELITY.md) turns an ``[n, n]`` matrix ``A``
(``A[i, j]`` = how much i should feed j) into an in-tree rooted at the end node: every node
except the end node gets exactly ONE outgoing edge, so every node reaches the end node.

1. end node  ~ top-p(softmax(inv(d)))      over all nodes,
2. then, until all nodes are placed:
   u         ~ top-p(softmax(d[remaining]))  over the remaining nodes,
   v         ~ top-p(softmax(A[u, placed]))  over the placed nodes, and the edge u -> v is added,

where ``d[i] = sum_{j != i} A[i, j]`` is node i's out-degree.

How every step is made well defined for ANY finite matrix (the authors' code is not):

- Out-degree ignores the diagonal (a self-edge cannot exist in a DAG). The authors include it;
  PSO moves of zero-diagonal matrices keep the diagonal at zero, so in the search both agree.
  Row sums are computed in float64 and saturate at +-float64 max instead of overflowing.
- ``inv(d)`` is ``1/d`` for ``d >= 1`` (the paper's inverse out-degree, unchanged in the usual
  regime of U(0, 1) matrices) continued below 1 by its tangent line ``2 - d``. The result is
  finite, continuous and strictly decreasing on the whole real line, so a smaller out-degree
  always means a likelier end node, also for zero or negative rows (where ``1/d`` would
  overflow or flip sign).
- Softmax subtracts the maximum logit first (no overflow; huge gaps underflow to probability 0),
  and keeps every candidate: an entry that is exactly 0 gets weight ``exp(0)``, it is not
  dropped.
- Top-p: candidates sorted by probability (ties: lower node index first), the shortest prefix
  whose cumulative probability reaches ``top_p`` is kept and renormalised, once; there is no
  second softmax. ``top_p=0`` keeps only the most probable candidate (argmax, ties to the
  lowest index), so decoding is deterministic and draws nothing from ``rng``; otherwise every
  choice draws exactly one uniform number from ``rng``.
- NaN or inf entries raise ``ValueError`` naming the first offending entry.

:func:`dag_probability` and :func:`decode_distribution` compute the exact probability of each
decoded DAG (summing over all decoding orders), for tests and for analysis.

``rule='authors'`` (:func:`g_decode`; the authors' preset, ``search.decode``) decodes as the
authors' released code does with its top-p of 0, where the two differ:

- out-degrees are whole row sums, the diagonal included;
- the end node is the argmax of ``1 / row_sum``: a row summing to a negative number is the
  LEAST likely end node (``1/d`` is negative), where the default rule makes it the most likely;
- their softmax gives an entry that is exactly 0 no weight, so a parent candidate whose
  ``A[u, v]`` is exactly 0 is never chosen;
- every tie goes to the higher node index (the default rule: the lower).

Where their code would overflow or crash, it raises a ``ValueError`` naming the row: a row
summing to 0 or so near it that their float32 ``1 / row_sum`` overflows, or a node whose
parent candidates are all exactly 0 (a softmax over nothing). It decodes by argmax only
(``top_p`` 0), as their evaluation path does.

Sparsity (paper section 4, Table 3): :func:`prune` thresholds ``A`` before decoding and
:func:`l1_penalty` is the ``lambda * |A|_1`` term the search subtracts from the utility.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import heapq
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

_FLOAT_MAX = np.finfo(np.float64).max
# Below this out-degree the inverse 1/d is replaced by its tangent line (see module docstring).
_INV_KNEE = 1.0


@dataclasses.dataclass(frozen=True)
class Dag:
    """A directed acyclic graph of ``n`` nodes whose ``end`` node gives the system's output.

    ``edges`` are ``(src, dst)`` pairs: src's output is part of dst's input. They are stored
    sorted, so two Dags with the same edge set compare and hash equal whatever order the edges
    were given in. Construction checks: ``n >= 1``, indices in range, no self-loops, no duplicate
    edges, no cycle, and the end node has no outgoing edge (its output is the final answer, so
    nothing may consume it). Nodes without a path to the end node are allowed (see
    :meth:`reaching_end`); G-decode never produces them.
    """

    n: int
    edges: tuple[tuple[int, int], ...]
    end: int

    def __post_init__(self):
        n = _as_index(self.n, "n")
        if n < 1:
            raise ValueError(f"a Dag needs at least one node, got n={n}")
        end = _as_index(self.end, "end")
        if not 0 <= end < n:
            raise ValueError(f"end node {end} out of range for n={n}")
        edges = []
        for edge in self.edges:
            if len(edge) != 2:
                raise ValueError(f"edge {edge!r} is not a (src, dst) pair")
            src, dst = _as_index(edge[0], "edge src"), _as_index(edge[1], "edge dst")
            if not (0 <= src < n and 0 <= dst < n):
                raise ValueError(f"edge {src}->{dst} out of range for n={n}")
            if src == dst:
                raise ValueError(f"self-loop {src}->{dst} is not allowed")
            if src == end:
                raise ValueError(f"edge {src}->{dst} leaves the end node {end}")
            edges.append((src, dst))
        edges.sort()
        for a, b in zip(edges, edges[1:], strict=False):
            if a == b:
                raise ValueError(f"duplicate edge {a[0]}->{a[1]}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "edges", tuple(edges))
        if len(self.topological_order) != n:
            raise ValueError(f"edges contain a cycle: {self.edges}")

    # Derived structure (cached: a frozen Dag never changes). ----------------------------------

    @cached_property
    def _parents(self) -> tuple[tuple[int, ...], ...]:
        parents: list[list[int]] = [[] for _ in range(self.n)]
        for src, dst in self.edges:
            parents[dst].append(src)
        return tuple(tuple(sorted(p)) for p in parents)

    @cached_property
    def _children(self) -> tuple[tuple[int, ...], ...]:
        children: list[list[int]] = [[] for _ in range(self.n)]
        for src, dst in self.edges:
            children[src].append(dst)
        return tuple(tuple(sorted(c)) for c in children)

    def parents(self, node: int) -> tuple[int, ...]:
        """Nodes whose output feeds ``node``, ascending (the order of "Previous response k")."""
        return self._parents[node]

    def children(self, node: int) -> tuple[int, ...]:
        """Nodes that read ``node``'s output, ascending."""
        return self._children[node]

    @cached_property
    def topological_order(self) -> tuple[int, ...]:
        """Every node after its parents; among ready nodes the lowest index first (Kahn).

        Shorter than ``n`` only while a cyclic edge set is being rejected in construction.
        """
        indegree = [len(p) for p in self._parents]
        ready = [i for i in range(self.n) if indegree[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            node = heapq.heappop(ready)
            order.append(node)
            for child in self._children[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    heapq.heappush(ready, child)
        return tuple(order)

    @cached_property
    def pass_order(self) -> tuple[int, ...]:
        """The authors' topological order: repeated passes over node indices 0..n-1, each pass
        placing every unplaced node whose parents are all placed by the time the pass reaches
        it (so a node can follow its parent within one pass).

        Edges 1->0, 0->4, 2->4, 3->4 give (1, 2, 3, 0, 4) where ``topological_order`` gives
        (1, 0, 2, 3, 4). Context tasks under the authors' protocol hand chunk i to the node at
        position i of this order (docs/FIDELITY.md).
        """
        placed = [False] * self.n
        order: list[int] = []
        while len(order) < self.n:
            for node in range(self.n):
                if not placed[node] and all(placed[p] for p in self._parents[node]):
                    placed[node] = True
                    order.append(node)
        return tuple(order)

    @cached_property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """Nodes grouped for batched execution: level 0 = entry nodes (no parents), a node's
        level = 1 + the largest level of its parents; each level ascending."""
        level = [0] * self.n
        for node in self.topological_order:
            if self._parents[node]:
                level[node] = 1 + max(level[p] for p in self._parents[node])
        groups: list[list[int]] = [[] for _ in range(max(level) + 1)]
        for node in range(self.n):
            groups[level[node]].append(node)
        return tuple(tuple(g) for g in groups)

    @cached_property
    def reaching_end(self) -> tuple[int, ...]:
        """Nodes with a path to the end node (the end node included), ascending; only these
        need to run."""
        seen = {self.end}
        stack = [self.end]
        while stack:
            for parent in self._parents[stack.pop()]:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return tuple(sorted(seen))

    @property
    def entry_nodes(self) -> tuple[int, ...]:
        """Nodes without parents: they see only the question."""
        return self.levels[0]

    def is_in_tree(self) -> bool:
        """True if every node but the end node has exactly one outgoing edge (G-decode's shape)."""
        return (
            all(len(self._children[i]) == (0 if i == self.end else 1) for i in range(self.n))
            and len(self.reaching_end) == self.n
        )

    # Serialisation. -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "edges": [list(e) for e in self.edges], "end": self.end}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Dag:
        return cls(int(d["n"]), tuple(tuple(e) for e in d["edges"]), int(d["end"]))

    def to_json(self) -> str:
        """Canonical JSON (sorted edges, fixed key order, no spaces)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Dag:
        return cls.from_dict(json.loads(text))

    def stable_hash(self) -> str:
        """Hex sha256 of the canonical JSON: the same for the same graph in every process and
        Python version, independent of the edge order it was built from and of PYTHONHASHSEED."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_networkx(self):
        """``networkx.DiGraph`` with nodes ``0..n-1``, the edges, and ``graph['end']``."""
        import networkx as nx

        g = nx.DiGraph(end=self.end)
        g.add_nodes_from(range(self.n))
        g.add_edges_from(self.edges)
        return g

    @classmethod
    def from_networkx(cls, g, end: int | None = None) -> Dag:
        """Inverse of :meth:`to_networkx`. Nodes must be the integers ``0..n-1``; ``end`` defaults
        to ``g.graph['end']``, else to the only node without outgoing edges."""
        nodes = sorted(g.nodes)
        if nodes != list(range(len(nodes))):
            raise ValueError(f"networkx nodes must be 0..n-1, got {nodes}")
        if end is None:
            end = g.graph.get("end")
        if end is None:
            sinks = [v for v in nodes if g.out_degree(v) == 0]
            if len(sinks) != 1:
                raise ValueError(f"no end given and the graph has sinks {sinks}, not exactly one")
            end = sinks[0]
        return cls(len(nodes), tuple((int(u), int(v)) for u, v in g.edges), int(end))

    def __str__(self) -> str:
        edges = ", ".join(f"{s}->{d}" for s, d in self.edges)
        return f"Dag(n={self.n}, end={self.end}, edges=[{edges}])"


def _as_index(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{what} must be an int, got {value!r}")
    return int(value)


# Fixed structures (baselines). ------------------------------------------------------------------


def from_edges(n: int, edges: Iterable[Sequence[int]], end: int) -> Dag:
    """A Dag from an explicit edge list (any iterable of (src, dst) pairs, numpy ints ok)."""
    return Dag(int(n), tuple((int(s), int(d)) for s, d in edges), int(end))


def chain(order: int | Sequence[int]) -> Dag:
    """``chain(n)``: 0 -> 1 -> ... -> n-1. ``chain(order)``: order[0] -> order[1] -> ... with
    the last node as the end node; ``order`` must be a permutation of ``0..len(order)-1``."""
    order = list(range(order)) if isinstance(order, int | np.integer) else [int(i) for i in order]
    if sorted(order) != list(range(len(order))):
        raise ValueError(f"chain order must be a permutation of 0..n-1, got {order}")
    return Dag(len(order), tuple(zip(order, order[1:], strict=False)), order[-1])


def star(k: int) -> Dag:
    """The paper's 1 -> k -> 1 star: node 0 feeds the k middle nodes 1..k, which all feed the end
    node k+1 (n = k + 2; the paper's 10 experts form 1-8-1)."""
    if k < 1:
        raise ValueError(f"a star needs k >= 1 middle nodes, got {k}")
    end = k + 1
    edges = [(0, i) for i in range(1, k + 1)] + [(i, end) for i in range(1, k + 1)]
    return Dag(k + 2, tuple(edges), end)


def fan_in(k: int) -> Dag:
    """k entry nodes 0..k-1 all feeding the end node k (n = k + 1)."""
    if k < 1:
        raise ValueError(f"fan_in needs k >= 1 entry nodes, got {k}")
    return Dag(k + 1, tuple((i, k) for i in range(k)), k)


# Sparsity options. ------------------------------------------------------------------------------


def prune(adjacency: np.ndarray, tau: float) -> np.ndarray:
    """Threshold pruning before decoding (paper: ``A' = a_ij * 1[a_ij > tau]``): entries ``<= tau``
    (negative ones included) become 0, larger ones are kept. Works on ``[..., n, n]``.

    In G-decode a pruned entry then adds nothing to its row's out-degree and gets the softmax
    weight ``exp(0)`` when a node is attached, like any other 0: it is not removed from the
    candidates (every decoded in-tree has n - 1 edges), it only lowers that edge's odds
    relative to the entries above tau.
    """
    a = np.asarray(adjacency)
    return np.where(a > tau, a, np.zeros_like(a))


def l1_penalty(adjacency, lam: float):
    """``lam * |A|_1`` over the last two axes (``[..., n, n] -> [...]``), numpy or jax arrays.

    The search maximises ``utility - l1_penalty(A, lam)`` (the paper's ``f + lambda |A|_1``
    with the sign that makes a positive lambda favour sparse matrices, as its Table 3 uses it).
    """
    return lam * abs(adjacency).sum(axis=(-2, -1))


# G-decode. --------------------------------------------------------------------------------------


def _check_adjacency(adjacency) -> np.ndarray:
    a = np.asarray(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"adjacency must be a square [n, n] matrix with n >= 1, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"adjacency[{i}, {j}] = {a[i, j]} is not finite ({int(bad.sum())} non-finite entries)"
        )
    return a


def _check_top_p(top_p: float) -> float:
    top_p = float(top_p)
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    return top_p


def out_degrees(adjacency: np.ndarray) -> np.ndarray:
    """``d[i] = sum_{j != i} A[i, j]`` in float64 ``[n]``, saturated at +-float64 max."""
    a = _check_adjacency(adjacency)
    off = a.copy()
    np.fill_diagonal(off, 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        d = off.sum(axis=1)
        overflow = ~np.isfinite(d)
        if overflow.any():
            # Rows whose sum overflowed: sum scaled entries (cannot overflow), scale back, clip.
            scale = np.abs(off[overflow]).max()
            d[overflow] = (off[overflow] / scale).sum(axis=1) * scale
    return np.clip(d, -_FLOAT_MAX, _FLOAT_MAX)


def inverse_out_degree(d: np.ndarray) -> np.ndarray:
    """``1/d`` for ``d >= 1``, tangent line ``2 - d`` below: finite, strictly decreasing."""
    d = np.asarray(d, dtype=np.float64)
    safe = np.maximum(d, _INV_KNEE)
    return np.where(d >= _INV_KNEE, 1.0 / safe, 2.0 / _INV_KNEE - d / _INV_KNEE**2)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax of finite logits; gaps beyond float range underflow to 0."""
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        shifted = z - z.max()  # finite - finite may overflow to -inf: weight exactly 0
    w = np.exp(shifted)
    return w / w.sum()


def top_p_probs(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Top-p truncation of a probability vector, renormalised once.

    Candidates sorted by probability (ties: lower index first); the shortest prefix whose
    cumulative probability reaches ``top_p`` is kept (all of them if rounding keeps the sum
    below ``top_p``). ``top_p=0`` keeps only the first, i.e. argmax.
    """
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    keep = min(int(np.searchsorted(cum, top_p, side="left")) + 1, p.size)
    out = np.zeros_like(p)
    out[order[:keep]] = p[order[:keep]]
    return out / out.sum()


def _choose(probs: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    if top_p == 0.0:
        return int(np.argmax(probs))  # first maximum: deterministic ties
    q = top_p_probs(probs, top_p)
    cum = np.cumsum(q)
    idx = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    # Never land on a truncated (zero) candidate, even at the rounding edge of the last bin.
    idx = min(idx, q.size - 1)
    while q[idx] == 0.0:
        idx -= 1
    return idx


def _end_probs(a: np.ndarray) -> np.ndarray:
    return softmax(inverse_out_degree(out_degrees(a)))


DECODE_RULES = ("hs_jax", "authors")


def _argmax_last(values: np.ndarray) -> int:
    """The index of the largest value, the highest index among equals (the authors' ties)."""
    v = np.asarray(values, dtype=np.float64)
    return int(v.size - 1 - np.argmax(v[::-1]))


def _g_decode_authors(a: np.ndarray) -> Dag:
    """G-decode as the authors' code runs it with top-p 0 (module docstring)."""
    n = a.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        d = a.sum(axis=1)  # the diagonal included, as they sum
    # Their float32 1/row_sum overflows for a sum of 0 or one closer to 0 than 1/float32 max.
    zero = np.flatnonzero(np.abs(d) < 1.0 / np.finfo(np.float32).max)
    if zero.size:
        raise ValueError(
            f"G-decode (rule 'authors'): row {int(zero[0])} of the adjacency matrix sums to "
            f"{d[zero[0]]:g}, where the authors' 1/row_sum overflows"
        )
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"G-decode (rule 'authors'): row {bad} sums beyond float64 range")
    end = _argmax_last(1.0 / d)
    placed, remaining, edges = [end], [i for i in range(n) if i != end], []
    while remaining:
        u = remaining.pop(_argmax_last(d[remaining]))
        weights = a[u, placed]
        if not (weights != 0.0).any():
            raise ValueError(
                f"G-decode (rule 'authors'): every parent candidate of node {u} has weight "
                "exactly 0, where the authors' softmax has nothing to choose from"
            )
        v = placed[_argmax_last(np.where(weights != 0.0, weights, -np.inf))]
        edges.append((u, v))
        bisect.insort(placed, u)
    return Dag(n, tuple(edges), end)


def g_decode(
    adjacency: np.ndarray, rng: np.random.Generator, top_p: float = 0.8, rule: str = "hs_jax"
) -> Dag:
    """Decode an ``[n, n]`` adjacency matrix into an in-tree :class:`Dag` (see module docstring).

    ``rng`` is a ``numpy.random.Generator``; every choice draws one uniform from it when
    ``top_p > 0`` and none when ``top_p == 0``. ``rule='authors'``: the authors' decode (module
    docstring), by argmax only (``top_p`` must be 0; it draws nothing).
    """
    a = _check_adjacency(adjacency)
    top_p = _check_top_p(top_p)
    if rule == "authors":
        if top_p != 0.0:
            raise ValueError(
                f"G-decode rule 'authors' decodes by argmax: top_p must be 0, got {top_p}"
            )
        return _g_decode_authors(a)
    if rule != "hs_jax":
        raise ValueError(f"G-decode rule must be one of {DECODE_RULES}, got {rule!r}")
    n = a.shape[0]
    d = out_degrees(a)
    end = _choose(_end_probs(a), top_p, rng)
    # Both candidate lists stay in ascending node order, so top-p ties always go to the lower
    # node index, whatever order the nodes were placed in.
    placed = [end]
    remaining = [i for i in range(n) if i != end]
    edges = []
    while remaining:
        u = remaining.pop(_choose(softmax(d[remaining]), top_p, rng))
        v = placed[_choose(softmax(a[u, placed]), top_p, rng)]
        edges.append((u, v))
        bisect.insort(placed, u)
    return Dag(n, tuple(edges), end)


def dag_probability(adjacency: np.ndarray, dag: Dag, top_p: float = 0.8) -> float:
    """Exact probability that ``g_decode(adjacency, rng, top_p)`` returns ``dag``.

    Sums over every decoding order that yields ``dag`` (a node can be placed once the node it
    feeds is placed) by dynamic programming over placed-node sets: O(2^n * n^2), fine for the
    small n of tests and analysis. 0 for Dags that G-decode cannot produce.
    """
    a = _check_adjacency(adjacency)
    top_p = _check_top_p(top_p)
    n = a.shape[0]
    if dag.n != n or not dag.is_in_tree():
        return 0.0
    d = out_degrees(a)
    target = {src: dst for src, dst in dag.edges}
    p_end = top_p_probs(_end_probs(a), top_p)[dag.end]
    if p_end == 0.0 or n == 1:
        return float(p_end)
    memo: dict[int, float] = {}

    def from_state(placed_mask: int) -> float:
        # Probability of completing `dag` from this placed set. Candidates are in ascending
        # node order in g_decode, so the step probabilities depend on the set only.
        if placed_mask == (1 << n) - 1:
            return 1.0
        if placed_mask in memo:
            return memo[placed_mask]
        placed = [i for i in range(n) if placed_mask >> i & 1]
        remaining = [i for i in range(n) if not placed_mask >> i & 1]
        p_u = top_p_probs(softmax(d[remaining]), top_p)
        total = 0.0
        for k, u in enumerate(remaining):
            v = target[u]
            if p_u[k] == 0.0 or not placed_mask >> v & 1:
                continue
            p_v = top_p_probs(softmax(a[u, placed]), top_p)[placed.index(v)]
            if p_v > 0.0:
                total += p_u[k] * p_v * from_state(placed_mask | 1 << u)
        memo[placed_mask] = total
        return total

    return float(p_end * from_state(1 << dag.end))


def decode_distribution(adjacency: np.ndarray, top_p: float = 0.8) -> dict[Dag, float]:
    """Every Dag ``g_decode`` can return with its exact probability (sums to 1).

    Enumerates all decoding paths: n * (n-1)!^2 of them, so keep n <= 6.
    """
    a = _check_adjacency(adjacency)
    top_p = _check_top_p(top_p)
    n = a.shape[0]
    d = out_degrees(a)
    out: dict[Dag, float] = {}

    def walk(end: int, placed: list[int], remaining: list[int], edges: list, prob: float):
        if not remaining:
            dag = Dag(n, tuple(edges), end)
            out[dag] = out.get(dag, 0.0) + prob
            return
        p_u = top_p_probs(softmax(d[remaining]), top_p)
        for k, u in enumerate(remaining):
            if p_u[k] == 0.0:
                continue
            p_v = top_p_probs(softmax(a[u, placed]), top_p)
            rest = remaining[:k] + remaining[k + 1 :]
            for m, v in enumerate(placed):
                if p_v[m] > 0.0:
                    now = sorted(placed + [u])
                    walk(end, now, rest, edges + [(u, v)], prob * p_u[k] * p_v[m])

    p_end = top_p_probs(_end_probs(a), top_p)
    for end in range(n):
        if p_end[end] > 0.0:
            walk(end, [end], [i for i in range(n) if i != end], [], float(p_end[end]))
    return out
