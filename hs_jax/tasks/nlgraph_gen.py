"""A seeded generator of NLGraph-style questions, so the package has a task without data files.

Five question types, written like the items of the authors' nlgraph.json (adjacency lists
with nodes and neighbours in string order, "Q: ..." then a directive line):

* connectivity: "Is there a path between node i and node j?" -> "Yes" / "No";
* cycle: "Is there a cycle in this undirected graph?" -> "Yes" / "No";
* shortest_path: weighted graph, "What is the shortest path between node i and node j, and what
  is the length of the shortest path?" -> the total weight (a number); one shortest path is
  stored in the item's ``path``;
* edge: "Is there an edge between node i and node j?" -> "Yes" / "No" (a "No" pair is joined
  by a path where the graph has one, so connectivity alone does not answer it);
* degree: "How many neighbours does node i have?" -> a number.

The first three are the default (`DEFAULT_TYPES`, the authors' task); edge and degree are
opt-in, so a pool can hold more experts with distinct skills.

Gold answers come from networkx. Every item has ``type`` (and ``domain``, as in the authors'
file) so expert pools can be trained per question type. Yes/No answers alternate per type,
so each type is balanced (exactly, for an even count). Graphs are G(n, p) with n drawn from
``node_range`` and p from ``edge_prob``; query nodes always have at least one edge, so they
appear in the text.

Splits. Every question belongs to exactly one split, 'train', 'dev' or 'test', decided by a
hash of its normalised text (`split_of`); `generate_items` keeps only questions of the split
it is asked for. Training data (the experts' slices) and the dev and test items a run scores
therefore never share a question, whatever the seeds, settings or pools. The hash does not
depend on what the graph looks like, so each split is a uniform sample of the same question
distribution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

# The authors' three question types: the default of GraphGenConfig and config.task.gen.types.
DEFAULT_TYPES: tuple[str, ...] = ("connectivity", "cycle", "shortest_path")
QUESTION_TYPES: tuple[str, ...] = (*DEFAULT_TYPES, "edge", "degree")
_YES_NO_TYPES = frozenset({"connectivity", "cycle", "edge"})

# Percent of the question space in each split (`split_of`). Every kept question costs
# 100 / share draws on average, so no split is small: train is the largest because the
# training slices are the largest draw (experts.n x experts.train_examples, and the data-merge
# baseline draws them again); test is larger than dev, as the default splits are (64 vs 32).
SPLIT_SHARES: dict[str, int] = {"train": 50, "dev": 20, "test": 30}
SPLITS: tuple[str, ...] = tuple(SPLIT_SHARES)
# The rule as recorded in a generated task file: a file made by another rule is not reused.
SPLIT_RULE = "sha256(question)[:8] % 100: " + ", ".join(
    f"{name} {share}" for name, share in SPLIT_SHARES.items()
)

_CONNECTIVITY_HEAD = (
    "The following text describes an undirected graph. "
    "Determine if there is a path between two nodes in the graph."
)
_CYCLE_HEAD = (
    "The following text describes an undirected graph. Determine if there is a cycle in the graph."
)
_SHORTEST_HEAD = "The following paragraph describes an undirected graph with weights."
_EDGE_HEAD = (
    "The following text describes an undirected graph. "
    "Determine if there is an edge between two nodes in the graph."
)
_DEGREE_HEAD = (
    "The following text describes an undirected graph. "
    "Determine the number of neighbours of a node in the graph."
)
_YES_NO_TAIL = "Please directly answer with Yes or No:"
_SHORTEST_TAIL = "Please directly answer with the length of the shortest path:"
_DEGREE_TAIL = "Please directly answer with the number of neighbours:"


def normalize_question(question: str) -> str:
    """The question with every run of whitespace made one space and the ends stripped: what
    `question_hash` and `split_of` read, so a re-indented or re-wrapped copy is the same
    question."""
    return " ".join(question.split())


def question_hash(question: str) -> str:
    """sha256 (hex) of the normalised question: how a pool's training record names the
    questions it was trained on without storing them."""
    return hashlib.sha256(normalize_question(question).encode("utf-8")).hexdigest()


def split_of(question: str) -> str:
    """'train', 'dev' or 'test': the split this question belongs to, from the first 8 bytes of
    its `question_hash` modulo 100 against `SPLIT_SHARES` (stable across runs, machines and
    versions of Python)."""
    bucket = int(question_hash(question)[:16], 16) % 100
    for name, share in SPLIT_SHARES.items():
        if bucket < share:
            return name
        bucket -= share
    raise AssertionError("SPLIT_SHARES must sum to 100")


@dataclasses.dataclass(frozen=True)
class GraphGenConfig:
    """Difficulty knobs.

    Attributes:
      node_range: inclusive range of the node count.
      edge_prob: inclusive range of the G(n, p) edge probability (drawn per graph).
      weight_range: inclusive range of the integer edge weights (shortest path).
      types: question types to emit, cycled in this order.
      max_tries: graphs drawn per item before a constructive fallback.
    """

    node_range: tuple[int, int] = (6, 12)
    edge_prob: tuple[float, float] = (0.15, 0.35)
    weight_range: tuple[int, int] = (1, 10)
    types: tuple[str, ...] = DEFAULT_TYPES
    max_tries: int = 200

    def __post_init__(self):
        lo, hi = self.node_range
        if not 4 <= lo <= hi:
            raise ValueError(f"node_range must satisfy 4 <= lo <= hi, got {self.node_range}")
        plo, phi = self.edge_prob
        if not 0.0 < plo <= phi <= 1.0:
            raise ValueError(f"edge_prob must satisfy 0 < lo <= hi <= 1, got {self.edge_prob}")
        if not 1 <= self.weight_range[0] <= self.weight_range[1]:
            raise ValueError(f"weight_range must be positive, got {self.weight_range}")
        bad = [t for t in self.types if t not in QUESTION_TYPES]
        if bad or not self.types:
            raise ValueError(f"types must be a non-empty subset of {QUESTION_TYPES}, got {bad}")


def _random_graph(rng: np.random.Generator, cfg: GraphGenConfig, weighted: bool) -> nx.Graph:
    n = int(rng.integers(cfg.node_range[0], cfg.node_range[1] + 1))
    p = float(rng.uniform(*cfg.edge_prob))
    g = nx.Graph()
    g.add_nodes_from(range(n))
    iu, ju = np.triu_indices(n, k=1)
    keep = rng.random(iu.size) < p
    weights = rng.integers(cfg.weight_range[0], cfg.weight_range[1] + 1, size=iu.size)
    for i, j, w in zip(iu[keep], ju[keep], weights[keep]):
        if weighted:
            g.add_edge(int(i), int(j), weight=int(w))
        else:
            g.add_edge(int(i), int(j))
    return g


def _describe(g: nx.Graph, weighted: bool) -> str:
    """Adjacency lines in the authors' style: nodes and neighbours sorted as strings."""
    lines = []
    for u in sorted((u for u in g.nodes if g.degree(u) > 0), key=str):
        nbrs = sorted(g.neighbors(u), key=str)
        if weighted:
            parts = ", ".join(f"node {v} with weight {g[u][v]['weight']}" for v in nbrs)
            lines.append(f"Node {u} is connected to {parts}.")
        else:
            lines.append(f"Node {u} is connected to {', '.join(str(v) for v in nbrs)}.")
    return "\n".join(lines)


def _pick(rng: np.random.Generator, seq: list) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _connected_pairs(g: nx.Graph, *, prefer_far: bool) -> list[tuple[int, int]]:
    """Pairs of non-isolated nodes joined by a path (non-adjacent ones if any, when asked)."""
    pairs = []
    for comp in nx.connected_components(g):
        nodes = sorted(comp)
        if len(nodes) < 2:
            continue
        pairs += [(u, v) for a, u in enumerate(nodes) for v in nodes[a + 1 :]]
    if prefer_far:
        far = [(u, v) for u, v in pairs if not g.has_edge(u, v)]
        return far or pairs
    return pairs


def _connectivity(rng: np.random.Generator, cfg: GraphGenConfig, want_yes: bool):
    for _ in range(cfg.max_tries):
        g = _random_graph(rng, cfg, weighted=False)
        comps = [sorted(c) for c in nx.connected_components(g) if len(c) >= 2]
        if want_yes:
            pairs = _connected_pairs(g, prefer_far=True)
            if pairs:
                u, v = _pick(rng, pairs)
                break
        elif len(comps) >= 2:
            a, b = rng.choice(len(comps), size=2, replace=False)
            u, v = _pick(rng, comps[int(a)]), _pick(rng, comps[int(b)])
            break
    else:
        # Dense settings rarely leave two components: join two separately drawn halves.
        g = _two_part_graph(rng, cfg) if not want_yes else _random_graph(rng, cfg, False)
        return _connectivity_fallback(rng, g, want_yes, cfg)
    if rng.random() < 0.5:
        u, v = v, u
    return g, int(u), int(v)


def _two_part_graph(rng: np.random.Generator, cfg: GraphGenConfig) -> nx.Graph:
    n = int(rng.integers(cfg.node_range[0], cfg.node_range[1] + 1))
    perm = [int(x) for x in rng.permutation(n)]
    halves = (perm[: n // 2], perm[n // 2 :])
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for half in halves:
        nx.add_path(g, [half[int(k)] for k in rng.permutation(len(half))])
    return g


def _connectivity_fallback(rng, g: nx.Graph, want_yes: bool, cfg: GraphGenConfig):
    if want_yes:
        nx.add_path(g, [int(k) for k in rng.permutation(g.number_of_nodes())])
        u, v = _pick(rng, _connected_pairs(g, prefer_far=True))
        return g, int(u), int(v)
    comps = [sorted(c) for c in nx.connected_components(g) if len(c) >= 2]
    return g, int(_pick(rng, comps[0])), int(_pick(rng, comps[1]))


def _cycle(rng: np.random.Generator, cfg: GraphGenConfig, want_yes: bool) -> nx.Graph:
    """A G(n, p) graph with a cycle, or a random spanning forest of one (no cycle).

    The forest keeps the components of its G(n, p) graph, so both answers come from graphs of
    the same size and spread.
    """
    for _ in range(cfg.max_tries):
        g = _random_graph(rng, cfg, weighted=False)
        if g.number_of_edges() < 2:
            continue
        if want_yes and not nx.is_forest(g):
            return g
        if not want_yes:
            for u, v in g.edges:
                g[u][v]["weight"] = float(rng.random())
            forest = nx.minimum_spanning_tree(g)
            out = nx.Graph()
            out.add_nodes_from(g.nodes)
            out.add_edges_from(forest.edges)
            if out.number_of_edges() >= 2:
                return out
    # Very sparse settings: close a triangle on top of a random graph.
    g = _random_graph(rng, cfg, weighted=False)
    a, b, c = (int(x) for x in rng.choice(g.number_of_nodes(), size=3, replace=False))
    g.add_edges_from([(a, b), (b, c), (c, a)])
    return g


def _shortest_path(rng: np.random.Generator, cfg: GraphGenConfig):
    for _ in range(cfg.max_tries):
        g = _random_graph(rng, cfg, weighted=True)
        pairs = _connected_pairs(g, prefer_far=True)
        if pairs:
            break
    else:
        g = _random_graph(rng, cfg, weighted=True)
        order = [int(k) for k in rng.permutation(g.number_of_nodes())]
        for u, v in zip(order, order[1:]):
            if not g.has_edge(u, v):
                w = int(rng.integers(cfg.weight_range[0], cfg.weight_range[1] + 1))
                g.add_edge(u, v, weight=w)
        pairs = _connected_pairs(g, prefer_far=True)
    u, v = _pick(rng, pairs)
    if rng.random() < 0.5:
        u, v = v, u
    return g, int(u), int(v)


def _non_edges(g: nx.Graph) -> list[tuple[int, int]]:
    """Non-adjacent pairs of non-isolated nodes; those joined by a path when there are any, so
    'is there an edge' is not answered by 'is there a path'."""
    far = [(u, v) for u, v in _connected_pairs(g, prefer_far=False) if not g.has_edge(u, v)]
    if far:
        return far
    nodes = sorted(u for u in g.nodes if g.degree(u) > 0)
    return [(u, v) for a, u in enumerate(nodes) for v in nodes[a + 1 :] if not g.has_edge(u, v)]


def _edge(rng: np.random.Generator, cfg: GraphGenConfig, want_yes: bool):
    """A graph and a query pair: adjacent (want_yes) or not, both nodes with an edge."""
    for _ in range(cfg.max_tries):
        g = _random_graph(rng, cfg, weighted=False)
        pairs = sorted(g.edges) if want_yes else _non_edges(g)
        if pairs:
            break
    else:
        # Very sparse or complete settings: a random path has edges and non-adjacent ends.
        g = nx.Graph()
        g.add_nodes_from(range(int(rng.integers(cfg.node_range[0], cfg.node_range[1] + 1))))
        nx.add_path(g, [int(k) for k in rng.permutation(g.number_of_nodes())])
        pairs = sorted(g.edges) if want_yes else _non_edges(g)
    u, v = _pick(rng, pairs)
    if rng.random() < 0.5:
        u, v = v, u
    return g, int(u), int(v)


def _degree(rng: np.random.Generator, cfg: GraphGenConfig):
    """A graph with at least one edge and a query node that has one (so it is in the text)."""
    for _ in range(cfg.max_tries):
        g = _random_graph(rng, cfg, weighted=False)
        if g.number_of_edges():
            break
    else:
        g = _random_graph(rng, cfg, weighted=False)
        nx.add_path(g, [int(k) for k in rng.permutation(g.number_of_nodes())])
    return g, int(_pick(rng, sorted(u for u in g.nodes if g.degree(u) > 0)))


def make_item(
    rng: np.random.Generator, qtype: str, *, want_yes: bool = True, cfg: GraphGenConfig
) -> dict[str, Any]:
    """One item dict (without ``id``) of the given question type.

    ``want_yes`` picks the gold answer of the yes/no types (ignored for shortest_path and
    degree).
    """
    if qtype == "connectivity":
        g, u, v = _connectivity(rng, cfg, want_yes)
        answer = "Yes" if nx.has_path(g, u, v) else "No"
        question = (
            f"{_CONNECTIVITY_HEAD}\n{_describe(g, False)}\n"
            f"Q: Is there a path between node {u} and node {v}?\n{_YES_NO_TAIL}"
        )
        return {"question": question, "answer": answer, "domain": qtype, "type": qtype}
    if qtype == "cycle":
        g = _cycle(rng, cfg, want_yes)
        answer = "No" if nx.is_forest(g) else "Yes"
        question = (
            f"{_CYCLE_HEAD}\n{_describe(g, False)}\n"
            f"Q: Is there a cycle in this undirected graph?\n{_YES_NO_TAIL}"
        )
        return {"question": question, "answer": answer, "domain": qtype, "type": qtype}
    if qtype == "shortest_path":
        g, u, v = _shortest_path(rng, cfg)
        length = nx.dijkstra_path_length(g, u, v, weight="weight")
        path = nx.dijkstra_path(g, u, v, weight="weight")
        question = (
            f"{_SHORTEST_HEAD}\n{_describe(g, True)}\n"
            f"Q: What is the shortest path between node {u} and node {v}, "
            f"and what is the length of the shortest path?\n{_SHORTEST_TAIL}"
        )
        return {
            "question": question,
            "answer": str(int(length)),
            "domain": qtype,
            "type": qtype,
            "path": [int(x) for x in path],
        }
    if qtype == "edge":
        g, u, v = _edge(rng, cfg, want_yes)
        answer = "Yes" if g.has_edge(u, v) else "No"
        question = (
            f"{_EDGE_HEAD}\n{_describe(g, False)}\n"
            f"Q: Is there an edge between node {u} and node {v}?\n{_YES_NO_TAIL}"
        )
        return {"question": question, "answer": answer, "domain": qtype, "type": qtype}
    if qtype == "degree":
        g, u = _degree(rng, cfg)
        question = (
            f"{_DEGREE_HEAD}\n{_describe(g, False)}\n"
            f"Q: How many neighbours does node {u} have?\n{_DEGREE_TAIL}"
        )
        answer = str(int(g.degree(u)))
        return {"question": question, "answer": answer, "domain": qtype, "type": qtype}
    raise ValueError(f"unknown question type {qtype!r}; one of {QUESTION_TYPES}")


def generate_items(
    n: int,
    *,
    seed: int | np.random.SeedSequence,
    split: str | None,
    config: GraphGenConfig = GraphGenConfig(),
    start_id: int = 0,
    exclude: set[str] | None = None,
) -> list[dict[str, Any]]:
    """``n`` items of `split` ('train', 'dev' or 'test'; `split_of`) cycling through
    ``config.types``; Yes/No alternates within each type.

    Deterministic in ``seed``. Questions of another split, questions in ``exclude`` and repeats
    are redrawn; the questions used are added to ``exclude`` so another draw can avoid them.
    `split` has no default: every caller says which split its data is, and None (questions of
    any split) is for studies of the generator itself, never for data a run trains or scores on.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    rng = np.random.default_rng(seed)
    seen = exclude if exclude is not None else set()
    counts = dict.fromkeys(config.types, 0)
    # Rejection by split takes 100 / share draws per item on average; the bound only stops a
    # question space too small for n items.
    tries = 1000 * (1 if split is None else -(-100 // SPLIT_SHARES[split]))
    items = []
    for i in range(n):
        qtype = config.types[i % len(config.types)]
        want_yes = counts[qtype] % 2 == 0
        counts[qtype] += 1
        for _ in range(tries):
            item = make_item(rng, qtype, want_yes=want_yes, cfg=config)
            question = item["question"]
            if question not in seen and (split is None or split_of(question) == split):
                break
        else:
            where = "" if split is None else f" in the {split!r} split"
            raise RuntimeError(
                f"could not draw a new {qtype} question{where}; "
                "widen GraphGenConfig.node_range or edge_prob"
            )
        seen.add(item["question"])
        items.append({"id": start_id + i, **item})
    return items


def generate_dataset(
    n_dev: int,
    n_test: int,
    *,
    seed: int = 0,
    config: GraphGenConfig = GraphGenConfig(),
) -> dict[str, Any]:
    """``{'dataset': 'nlgraph_gen', 'dev': [...], 'test': [...]}``: dev from the 'dev' split,
    test from the 'test' split, so they share no question with each other or with any
    training data drawn from 'train'.

    Dev and test draw from independent child seeds of ``seed``; ids are unique across splits.
    """
    dev_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
    seen: set[str] = set()
    dev = generate_items(n_dev, seed=dev_seed, split="dev", config=config, start_id=0, exclude=seen)
    test = generate_items(
        n_test, seed=test_seed, split="test", config=config, start_id=n_dev, exclude=seen
    )
    return {"dataset": "nlgraph_gen", "dev": dev, "test": test}


def write_dataset(
    path: str | Path,
    n_dev: int,
    n_test: int,
    *,
    seed: int = 0,
    config: GraphGenConfig = GraphGenConfig(),
) -> Path:
    """Generate a dataset and write it as a task file loadable by ``load_task``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = generate_dataset(n_dev, n_test, seed=seed, config=config)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path
