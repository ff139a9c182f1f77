"""The Agent-Prune-style baseline (hs_jax.methods.prune): its pieces, and end to end on the
tiny config with utilities replaced by a fixed function of the system (the tiny model's
random experts score 0 everywhere; the generation still runs and is counted)."""

import json
import runpy
import zlib
from pathlib import Path

import numpy as np
import pytest

from hs_jax.methods import prune, topologies
from hs_jax.swarm.graph import Dag

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(budget=0):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = "agent_prune"
    c.budget = budget
    c.outputs.export_experts = False
    c.outputs.plots = False
    return c


def _hashed(dag, assignment):
    from hs_jax.methods import archive

    key = json.dumps(archive.system_key(dag, assignment), sort_keys=True)
    return (zlib.crc32(key.encode()) % 1000) / 1000


def _sparse_is_better(dag, assignment):
    return 1.0 - 0.1 * len(dag.edges) + 0.01 * _hashed(dag, assignment)


def _fake(monkeypatch, utility):
    from hs_jax.engine import scoring

    real = scoring.SystemScorer.score

    def score(self, systems, weights, items):
        real(self, systems, weights, items)
        return np.asarray([utility(dag, a) for dag, a in systems], float)

    monkeypatch.setattr(scoring.SystemScorer, "score", score)


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


def test_utility_order_puts_the_best_single_last():
    assert prune.utility_order([0.5, 0.2, 0.5]) == (1, 2, 0)  # ties: the first maximum last
    assert prune.utility_order([float("nan"), 0.1, 0.0]) == (0, 2, 1)


def test_one_edge_removed_keeps_only_what_reaches_the_end():
    chain = (Dag(3, ((0, 1), (1, 2)), 2), (5, 6, 7))
    variants = prune.one_edge_removed(chain)
    assert variants == [
        ((0, 1), (Dag(2, ((0, 1),), 1), (6, 7))),  # node 0 is cut off
        ((1, 2), (Dag(1, (), 0), (7,))),  # only the end is left
    ]
    dense = (topologies.dense(3), (4, 5, 6))
    assert [v for _, v in prune.one_edge_removed(dense)] == [
        (Dag(3, ((0, 2), (1, 2)), 2), (4, 5, 6)),
        (Dag(3, ((0, 1), (1, 2)), 2), (4, 5, 6)),
        (Dag(2, ((0, 1),), 1), (4, 6)),  # without 1 -> 2, node 1 feeds nothing
    ]


def test_pick_prefers_utility_then_fewer_edges_then_the_first():
    a = (Dag(3, ((0, 1), (1, 2)), 2), (0, 1, 2))
    b = (Dag(2, ((0, 1),), 1), (1, 2))
    assert prune.pick(np.array([0.5, 0.5]), [a, b]) == 1
    assert prune.pick(np.array([0.6, 0.5]), [a, b]) == 0
    assert prune.pick(np.array([np.nan, 0.1]), [a, b]) == 1
    assert prune.pick(np.array([0.5, 0.5]), [b, b]) == 0


def _check_run(results, rows, budget):
    history = results["history"]
    utilities = [h["dev_utility"] for h in history]
    assert utilities == sorted(utilities)  # never goes down
    assert results["evaluations"] == len(rows) <= budget
    # Starts from the dense DAG over the experts by single utility, the best single the end.
    first = rows[0]["system"]
    assert Dag.from_dict(first["dag"]) == topologies.dense(3)
    assert first["assignment"][-1] == results["best_single"]["expert"]
    # An accepted round keeps its best variant; the result is the last system kept.
    for h in history[1:]:
        if h["removed"] is not None:
            assert h["dev_utility"] == max(h["utilities"])
    assert (
        results["best_system"]["dev_utility"]
        == utilities[-1]
        == max(r["dev_utility"] for r in rows)
    )
    assert len(results["best_system"]["dag"]["edges"]) == history[-1]["edges"]


@pytest.mark.parametrize("utility", [_hashed, _sparse_is_better], ids=["hashed", "sparse"])
def test_prunes_greedily_within_the_budget(tmp_path, monkeypatch, utility):
    import hs_jax

    _fake(monkeypatch, utility)
    results = hs_jax.run(_tiny_config(), tmp_path / "run")  # budget: 2 * (2 + 2) = 8
    rows = _archive(tmp_path / "run")
    _check_run(results, rows, 8)
    if utility is _sparse_is_better:
        # Each removal helps: 3 edges, then 1 (removing 1 -> 2 also drops 0 -> 1: node 1 is
        # cut off), then 0.
        assert [h["edges"] for h in results["history"]] == [3, 1, 0]
        assert results["stop_reason"] == "no edge left"
        assert results["best_system"]["dag"] == {"n": 1, "edges": [], "end": 0}


def test_stops_when_the_budget_is_spent(tmp_path, monkeypatch):
    import hs_jax

    _fake(monkeypatch, _sparse_is_better)
    results = hs_jax.run(_tiny_config(budget=3), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    _check_run(results, rows, 3)
    assert len(rows) == 3 and results["stop_reason"] == "budget"
    assert results["history"][-1]["partial"] is True
