"""NLGraph generator: gold answers re-derived from the question text by independent algorithms."""

import heapq
import json
import re
from collections import Counter, deque
from pathlib import Path

import pytest

from hs_jax.tasks import GraphGenConfig, generate_dataset, generate_items, load_task, write_dataset

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
    else:
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
    items = generate_items(30, seed=5, config=config)
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
    items = generate_items(6, seed=1, config=GraphGenConfig(types=("cycle",)))
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
    gen = generate_items(6, seed=0, config=GraphGenConfig(types=("connectivity", "shortest_path")))
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
