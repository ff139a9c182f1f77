"""NLGraph generator: gold answers re-derived from the question text by independent algorithms
(and by networkx on the graph read back from the text, for edge and degree); every question in
exactly one split; answers of every type read by the exact-match parsing."""

import heapq
import json
import re
from collections import Counter, deque
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from hs_jax.tasks import (
    QUESTION_TYPES,
    SPLITS,
    GraphGenConfig,
    generate_dataset,
    generate_items,
    get_spec,
    load_task,
    match_exact,
    question_hash,
    score_item,
    split_of,
    write_dataset,
)
from hs_jax.tasks.nlgraph_gen import DEFAULT_TYPES, SPLIT_SHARES, make_item

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"

_UNWEIGHTED_LINE = re.compile(r"Node (\d+) is connected to ((?:\d+, )*\d+)\.")
_WEIGHTED_LINE = re.compile(
    r"Node (\d+) is connected to ((?:node \d+ with weight \d+, )*node \d+ with weight \d+)\."
)


def _graph_from_text(question):
    """Adjacency {u: {v: w}} read back from the text (w = 1 for unweighted graphs)."""
    adj = {}
    for line in question.split("\n"):
        m = _WEIGHTED_LINE.fullmatch(line)
        if m:
            pairs = re.findall(r"node (\d+) with weight (\d+)", m.group(2))
            adj[int(m.group(1))] = {int(v): int(w) for v, w in pairs}
            continue
        m = _UNWEIGHTED_LINE.fullmatch(line)
        if m:
            adj[int(m.group(1))] = {int(v): 1 for v in m.group(2).split(", ")}
    for u, nbrs in adj.items():  # the text lists every edge from both ends, with one weight
        for v, w in nbrs.items():
            assert adj[v][u] == w
    return adj


def _reachable(adj, s, t):
    seen, todo = {s}, deque([s])
    while todo:
        u = todo.popleft()
        for v in adj.get(u, {}):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return t in seen


def _has_cycle(adj):
    parent = {u: u for u in adj}

    def find(u):
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    for u in adj:
        for v in adj[u]:
            if u < v:
                ru, rv = find(u), find(v)
                if ru == rv:
                    return True
                parent[ru] = rv
    return False


def _dijkstra(adj, s, t):
    dist, heap = {s: 0}, [(0, s)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist[u]:
            continue
        for v, w in adj[u].items():
            if d + w < dist.get(v, float("inf")):
                dist[v] = d + w
                heapq.heappush(heap, (d + w, v))
    return dist[t]


def _check(item):
    q = item["question"]
    adj = _graph_from_text(q)
    assert adj, q
    if item["type"] == "connectivity":
        s, t = map(
            int, re.search(r"Is there a path between node (\d+) and node (\d+)\?", q).groups()
        )
        assert s in adj and t in adj and s != t
        assert item["answer"] == ("Yes" if _reachable(adj, s, t) else "No")
        assert q.endswith("Please directly answer with Yes or No:")
    elif item["type"] == "cycle":
        assert "Q: Is there a cycle in this undirected graph?" in q
        assert item["answer"] == ("Yes" if _has_cycle(adj) else "No")
    elif item["type"] == "edge":
        s, t = map(
            int, re.search(r"Q: Is there an edge between node (\d+) and node (\d+)\?", q).groups()
        )
        assert s in adj and t in adj and s != t
        assert item["answer"] == ("Yes" if t in adj[s] else "No")
        assert q.endswith("Please directly answer with Yes or No:")
    elif item["type"] == "degree":
        (u,) = map(int, re.search(r"Q: How many neighbours does node (\d+) have\?", q).groups())
        assert int(item["answer"]) == len(adj[u]) >= 1
        assert q.endswith("Please directly answer with the number of neighbours:")
    else:
        assert item["type"] == "shortest_path"
        pattern = r"What is the shortest path between node (\d+) and node (\d+), and what"
        s, t = map(int, re.search(pattern, q).groups())
        assert int(item["answer"]) == _dijkstra(adj, s, t)
        path = item["path"]
        assert path[0] == s and path[-1] == t
        assert sum(adj[a][b] for a, b in zip(path, path[1:])) == int(item["answer"])
        assert q.endswith("Please directly answer with the length of the shortest path:")
    assert item["domain"] == item["type"]


def test_gold_answers_match_independent_algorithms():
    data = generate_dataset(90, 60, seed=0)
    for item in data["dev"] + data["test"]:
        _check(item)


@pytest.mark.parametrize(
    "config",
    [
        GraphGenConfig(node_range=(4, 5), edge_prob=(0.05, 0.1)),
        GraphGenConfig(node_range=(15, 20), edge_prob=(0.6, 0.9)),
        GraphGenConfig(node_range=(8, 8), edge_prob=(0.9, 1.0)),
    ],
)
def test_extreme_knobs_still_balanced_and_correct(config):
    items = generate_items(30, seed=5, split="dev", config=config)
    for item in items:
        _check(item)
        nodes = [int(n) for n in re.findall(r"Node (\d+) is", item["question"])]
        assert max(nodes) < config.node_range[1]
    counts = Counter((it["type"], it["answer"]) for it in items if it["type"] != "shortest_path")
    assert counts == {
        ("connectivity", "Yes"): 5,
        ("connectivity", "No"): 5,
        ("cycle", "Yes"): 5,
        ("cycle", "No"): 5,
    }


def test_deterministic_by_seed_and_balanced():
    a = generate_dataset(24, 12, seed=7)
    assert a == generate_dataset(24, 12, seed=7)
    b = generate_dataset(24, 12, seed=8)
    assert [i["question"] for i in a["dev"]] != [i["question"] for i in b["dev"]]
    assert a["dataset"] == "nlgraph_gen"
    assert Counter(i["type"] for i in a["dev"]) == {
        "connectivity": 8,
        "cycle": 8,
        "shortest_path": 8,
    }
    yes_no = Counter(i["answer"] for i in a["dev"] if i["type"] != "shortest_path")
    assert yes_no == {"Yes": 8, "No": 8}
    questions = [i["question"] for i in a["dev"] + a["test"]]
    assert len(set(questions)) == len(questions)
    ids = [i["id"] for i in a["dev"] + a["test"]]
    assert len(set(ids)) == len(ids)


def test_single_type_and_config_validation():
    items = generate_items(6, seed=1, split="train", config=GraphGenConfig(types=("cycle",)))
    assert {i["type"] for i in items} == {"cycle"}
    assert [i["answer"] for i in items] == ["Yes", "No"] * 3
    for bad in (
        dict(node_range=(3, 5)),
        dict(node_range=(6, 5)),
        dict(edge_prob=(0.0, 0.5)),
        dict(types=("coloring",)),
        dict(types=()),
        dict(weight_range=(0, 3)),
    ):
        with pytest.raises(ValueError):
            GraphGenConfig(**bad)


def test_written_file_loads_and_keeps_types(tmp_path):
    path = write_dataset(tmp_path / "sub" / "gen.json", 9, 6, seed=2)
    dev = load_task(path, "dev", spec="nlgraph_gen")
    test = load_task(path, "test", spec="nlgraph_gen")
    assert len(dev) == 9 and len(test) == 6
    assert [it.type for it in dev[:3]] == ["connectivity", "cycle", "shortest_path"]
    assert dev[2].extra["path"][0] != dev[2].extra["path"][-1]
    assert json.loads(path.read_text())["dataset"] == "nlgraph_gen"


@pytest.mark.skipif(not EVAL_DIR.is_dir(), reason="shared eval data not present")
def test_same_text_style_as_the_authors_file():
    real = json.loads((EVAL_DIR / "nlgraph.json").read_text())["dev"]
    types = ("connectivity", "shortest_path")
    gen = generate_items(6, seed=0, split="test", config=GraphGenConfig(types=types))
    for qtype in ("connectivity", "shortest_path"):
        r = next(i["question"] for i in real if i["domain"] == qtype).split("\n")
        g = next(i["question"] for i in gen if i["type"] == qtype).split("\n")
        assert g[0] == r[0] and g[-1] == r[-1]  # same header and directive
        assert re.sub(r"\d+", "N", g[-2]) == re.sub(r"\d+", "N", r[-2])  # same "Q:" line
        line = _WEIGHTED_LINE if qtype == "shortest_path" else _UNWEIGHTED_LINE
        assert all(line.fullmatch(x) for x in r[1:-2]) and all(line.fullmatch(x) for x in g[1:-2])
        # Nodes and neighbours listed in string order, as in the authors' file.
        heads = [x.split(" ")[1] for x in g[1:-2]]
        assert heads == sorted(heads)


# ----------------------------------------------------------------------------- new types


def _nx_graph(question):
    """The question's graph as networkx reads it back from the text."""
    g = nx.Graph()
    for u, nbrs in _graph_from_text(question).items():
        g.add_edges_from((u, v) for v in nbrs)
    return g


@pytest.mark.parametrize(
    "config",
    [
        GraphGenConfig(types=("edge", "degree")),
        GraphGenConfig(types=("edge", "degree"), node_range=(4, 5), edge_prob=(0.05, 0.1)),
        GraphGenConfig(types=("edge", "degree"), node_range=(8, 8), edge_prob=(0.9, 1.0)),
    ],
)
def test_edge_and_degree_gold_answers_match_networkx_on_their_graphs(config):
    items = generate_items(40, seed=3, split="test", config=config)
    for item in items:
        _check(item)
        g = _nx_graph(item["question"])
        q = item["question"]
        if item["type"] == "edge":
            s, t = map(int, re.search(r"edge between node (\d+) and node (\d+)\?", q).groups())
            assert item["answer"] == ("Yes" if g.has_edge(s, t) else "No")
        else:
            (u,) = map(int, re.search(r"neighbours does node (\d+) have", q).groups())
            assert item["answer"] == str(g.degree(u))
    edges = [i for i in items if i["type"] == "edge"]
    assert Counter(i["answer"] for i in edges) == {"Yes": 10, "No": 10}
    # A "No" pair is joined by a path where the graph has one: edge is not connectivity.
    far = [i["question"] for i in edges if i["answer"] == "No"]
    pairs = [
        map(int, re.search(r"edge between node (\d+) and node (\d+)", q).groups()) for q in far
    ]
    joined = sum(nx.has_path(_nx_graph(q), *pair) for q, pair in zip(far, pairs))
    assert joined >= len(far) // 2
    degrees = {i["answer"] for i in items if i["type"] == "degree"}
    assert len(degrees) >= 2  # not one answer for everything


def test_new_types_are_opt_in_and_all_types_cycle():
    assert GraphGenConfig().types == DEFAULT_TYPES == ("connectivity", "cycle", "shortest_path")
    assert set(QUESTION_TYPES) == {*DEFAULT_TYPES, "edge", "degree"}
    items = generate_items(10, seed=0, split="train", config=GraphGenConfig(types=QUESTION_TYPES))
    assert [i["type"] for i in items] == list(QUESTION_TYPES) * 2
    for item in items:
        _check(item)


def test_exact_match_reads_every_types_answers(tmp_path):
    """The generated task's scoring (hs_jax parsing) reads the Yes/No and number answers of
    every question type, and takes neither a wrong answer nor a longer number."""
    spec = get_spec("nlgraph_gen")
    data = generate_dataset(10, 10, seed=4, config=GraphGenConfig(types=QUESTION_TYPES))
    path = tmp_path / "gen.json"
    path.write_text(json.dumps(data))
    items = load_task(path, "test", spec=spec)
    assert {item.type for item in items} == set(QUESTION_TYPES)
    for item in items:
        gold = item.answer
        assert score_item(spec, item, f" {gold}") == 1.0
        assert score_item(spec, item, f"The answer is {gold}.") == 1.0
        if gold in ("Yes", "No"):
            assert score_item(spec, item, "No" if gold == "Yes" else "Yes") == 0.0
        else:
            assert score_item(spec, item, str(int(gold) + 1)) == 0.0
            assert score_item(spec, item, gold + "1") == 0.0
    assert match_exact("Node 2 has 3 neighbours, so: 3", "3")


# ----------------------------------------------------------------------------- splits


def test_split_of_is_stable_and_shares_are_as_declared():
    assert sum(SPLIT_SHARES.values()) == 100 and set(SPLITS) == set(SPLIT_SHARES)
    # Stable: a fixed question has a fixed split and hash (across runs, machines, versions).
    q = "Q: Is there a cycle in this undirected graph?"
    assert question_hash(q) == question_hash("  Q: Is there a cycle\nin this  undirected graph? ")
    assert split_of(q) == split_of(" ".join(q.split(" "))) == split_of(q + "\n")
    rng = np.random.default_rng(0)
    config = GraphGenConfig(types=QUESTION_TYPES)
    questions = {
        make_item(rng, QUESTION_TYPES[k % 5], want_yes=bool(k % 2), cfg=config)["question"]
        for k in range(4000)
    }
    assert len(questions) > 3500
    counts = Counter(split_of(q) for q in questions)
    for name, share in SPLIT_SHARES.items():
        assert abs(counts[name] / len(questions) - share / 100) < 0.03, counts
    # Each question type is spread over the splits alike (the hash ignores what the graph is).
    assert all(split_of(q) in SPLITS for q in questions)


@pytest.mark.parametrize("split", SPLITS)
def test_generate_items_keeps_only_its_split(split):
    items = generate_items(25, seed=11, split=split, config=GraphGenConfig(types=QUESTION_TYPES))
    assert {split_of(i["question"]) for i in items} == {split}
    assert len({i["question"] for i in items}) == 25
    with pytest.raises(ValueError, match="split must be one of"):
        generate_items(1, seed=0, split="validation")


def test_dataset_dev_and_test_come_from_their_splits():
    for seed in range(3):
        data = generate_dataset(12, 20, seed=seed)
        assert {split_of(i["question"]) for i in data["dev"]} == {"dev"}
        assert {split_of(i["question"]) for i in data["test"]} == {"test"}


def test_exclude_still_guards_within_a_split():
    config = GraphGenConfig(types=("cycle",))
    first = generate_items(8, seed=2, split="train", config=config)
    seen = {i["question"] for i in first}
    again = generate_items(8, seed=2, split="train", config=config, exclude=set(seen))
    assert not seen & {i["question"] for i in again}
