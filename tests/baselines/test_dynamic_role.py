"""GPT-Swarm, the GNN edge predictor and Meta-Agent (hs_jax.methods.dynamic_role).

Pure parts against hand-computed values; each method end to end on the tiny config, whose
random experts score 0 on everything: the end-to-end runs replace each system's utility by a
fixed pseudo-random function of the system (the generations still run and are counted), so
the REINFORCE updates and the GNN labels see varied utilities. The tiny designer writes
garbage, so every Meta-Agent proposal falls back to a random DAG, and is counted as such.
"""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from hs_jax.methods import dynamic_role as dr
from hs_jax.swarm.graph import Dag

ROOT = Path(__file__).resolve().parents[2]


# GPT-Swarm's pieces. ----------------------------------------------------------------------------


def test_reinforce_update_by_hand():
    # p = 0.5 everywhere; advantages u - mean u = (0.5, -0.5, 0); edges - p = +-0.5.
    theta = np.zeros(2)
    edges = np.array([[1, 0], [0, 1], [1, 1]], bool)
    u = np.array([1.0, 0.0, 0.5])
    # mean over samples of adv * (e - p): [(0.25 + 0.25 + 0) / 3, (-0.25 - 0.25 + 0) / 3].
    np.testing.assert_allclose(dr.reinforce_update(theta, edges, u, 2.0), [1 / 3, -1 / 3])
    # p = 0.75: advantages (0.5, -0.5), e - p = (0.25, -0.75): mean (0.125 + 0.375) / 2 = 0.25.
    theta = np.array([np.log(3.0)])
    got = dr.reinforce_update(theta, np.array([[1], [0]], bool), np.array([1.0, 0.0]), 1.0)
    np.testing.assert_allclose(got, [np.log(3.0) + 0.25])
    # A NaN utility is left out (then one sample: zero advantage, no move); equal utilities
    # do not move either.
    nan = np.array([1.0, np.nan])
    np.testing.assert_allclose(dr.reinforce_update(theta, np.array([[1], [0]]), nan, 1.0), theta)
    np.testing.assert_allclose(dr.reinforce_update(np.zeros(2), edges, np.ones(3), 5.0), 0.0)


def test_expert_order_puts_the_best_single_last():
    np.testing.assert_array_equal(dr.expert_order([0.3, 0.1, 0.5, 0.2]), [1, 3, 0, 2])
    # Ties: the first maximum (Singles.best) is last; a NaN counts as worst.
    np.testing.assert_array_equal(dr.expert_order([0.5, np.nan, 0.5, 0.1]), [1, 3, 2, 0])


def test_sampled_systems_are_acyclic_and_only_hold_nodes_reaching_the_end():
    rng = np.random.default_rng(0)
    order = np.array([3, 0, 4, 1, 2])
    edges = dr.sample_edges(rng, np.full(10, 0.3), 300)
    assert edges.shape == (300, 10)
    sizes = set()
    for mask in edges:
        dag, assignment = dr.system_of(mask, order)
        assert isinstance(dag, Dag)  # construction checks acyclicity
        assert len(dag.topological_order) == dag.n
        assert dag.reaching_end == tuple(range(dag.n))
        assert assignment[dag.end] == 2  # the end node is the last of the order
        positions = [list(order).index(e) for e in assignment]
        assert positions == sorted(positions)  # nodes keep the order; edges go forward
        assert all(u < v for u, v in dag.edges)
        sizes.add(dag.n)
    assert sizes == {1, 2, 3, 4, 5}
    # Every edge present: the dense DAG over the order.
    dag, assignment = dr.system_of(np.ones(10, bool), order)
    assert dag.n == 5 and len(dag.edges) == 10 and assignment == (3, 0, 4, 1, 2)
    # No edge: the end expert alone.
    assert dr.system_of(np.zeros(10, bool), order) == (Dag(1, (), 0), (2,))


# Meta-Agent's parser and prompt. ---------------------------------------------------------------


def test_parser_reads_the_two_line_and_the_one_line_format():
    two = dr.parse_structure("edges: 0->2, 1->2\nend: 2\n", 3)
    one = dr.parse_structure("edges: 0->2, 1->2; end: 2", 3)
    assert two == one == (Dag(3, ((0, 2), (1, 2)), 2), (0, 1, 2))
    # Case, spaces, long arrows, a full stop, repeated edges and text around it are tolerated.
    assert dr.parse_structure("Sure!\nEDGES: 3 --> 1 , 3->1.\nEnd : 1\nthanks", 4) == (
        Dag(2, ((1, 0),), 0),
        (1, 3),
    )
    # Only the experts named are nodes, renumbered ascending; 'none' is a lone end model.
    assert dr.parse_structure("edges: none\nend: 4", 5) == (Dag(1, (), 0), (4,))
    assert dr.parse_structure("edges:\nend: 0", 2) == (Dag(1, (), 0), (0,))
    # An expert with no path to the end is dropped.
    assert dr.parse_structure("edges: 0->1, 2->3; end: 1", 4) == (Dag(2, ((0, 1),), 1), (0, 1))


@pytest.mark.parametrize(
    "text, why",
    [
        ("garbage without structure", "no 'edges:'"),
        ("edges: 0->1", "no 'end"),
        ("edges: 0->1, 1 2\nend: 2", "is not '<a>-><b>'"),
        ("edges: 0->1, foo\nend: 1", "is not '<a>-><b>'"),
        ("edges: 0->3\nend: 3", "model id 3 is not one of 0..2"),
        ("edges: -1->0\nend: 0", "model id -1"),
        ("edges: 0->1\nend: 7", "model id 7"),
        ("edges: 0->1, 1->2, 2->0\nend: 2", "edge|cycle"),
        ("edges: 0->1, 1->0\nend: 2", "cycle"),
        ("edges: 1->1\nend: 1", "self-loop"),
        ("edges: 0->1, 1->2\nend: 1", "leaves the end node"),
    ],
)
def test_parser_rejects_bad_structures(text, why):
    with pytest.raises(dr.ProposalError, match=why):
        dr.parse_structure(text, 3)


def test_format_structure_round_trips_through_the_parser():
    """Exactly for systems whose nodes ascend by expert id (how the parser numbers them);
    otherwise the same edges between the same experts, numbered differently (which can matter:
    parents' answers are read in node order)."""

    def in_experts(system):
        dag, a = system
        return {(a[u], a[v]) for u, v in dag.edges}, a[dag.end], sorted(a)

    rng = np.random.default_rng(1)
    for order in (np.arange(4), np.array([2, 0, 3, 1])):
        for mask in dr.sample_edges(rng, np.full(6, 0.5), 50):
            system = dr.system_of(mask, order)
            parsed = dr.parse_structure(dr.format_structure(system), 4)
            assert in_experts(parsed) == in_experts(system)
            if (order == np.arange(4)).all():
                assert parsed == system


def test_designer_prompt_lists_experts_feedback_and_format():
    tried = [((Dag(1, (), 0), (1,)), 0.25), ((Dag(2, ((0, 1),), 1), (0, 1)), 0.5)]
    prompt = dr.designer_prompt("gsm8k: math", ["a", "b"], [0.1, 0.2], tried, "Do it.")
    assert "Task: gsm8k: math" in prompt and "0: a (0.100)\n1: b (0.200)" in prompt
    best, worse = "edges: 0->1; end: 1 -> score 0.500", "edges: none; end: 1 -> score 0.250"
    assert prompt.index(best) < prompt.index(worse)
    assert "edges: <a>-><b>, <a>-><b>, ...   (or edges: none)\nend: <id>" in prompt
    assert prompt.endswith("Do it.\nedges:")
    assert "No team has been tried yet." in dr.designer_prompt("t", ["a"], [0.0], [], "x")


def test_designer_setting():
    import ml_collections

    c = ml_collections.ConfigDict({"baselines": {"designer": ""}})
    assert dr.designer_id(c, 3) == -1
    c.baselines.designer = "2"
    assert dr.designer_id(c, 3) == 2
    for bad in ("3", "gemini", "-1"):
        c.baselines.designer = bad
        with pytest.raises(ValueError, match="config.baselines.designer"):
            dr.designer_id(c, 3)


# End to end. -----------------------------------------------------------------------------------


def _run(method, workdir, **baselines):
    import hs_jax

    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.budget = 8
    c.outputs.export_experts = False
    c.outputs.plots = False
    for k, v in baselines.items():
        c.baselines[k] = v
    return hs_jax.run(c, workdir)


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


def _check_common(results, workdir, method):
    rows = _archive(workdir)
    assert results["method"] == method
    assert results["evaluations"] == len(rows) <= 8
    assert len(results["history"]) == results["iterations"]
    best = results["best_system"]
    assert best["dev_utility"] == max(r["dev_utility"] for r in rows)
    assert best["test_utility"] is not None
    for r in rows:
        dag = Dag.from_dict(r["system"]["dag"])
        assert dag.reaching_end == tuple(range(dag.n))
    return rows


def test_gpt_swarm_end_to_end(tmp_path, fake_utilities):
    results = _run("gpt_swarm", tmp_path / "run", swarm_lr=4.0)
    _check_common(results, tmp_path / "run", "gpt_swarm")
    assert results["iterations"] == 4 and results["stop_reason"] == "budget"
    probs = [r["edge_probs"] for r in results["history"]]
    assert all(len(p) == 3 for p in probs)  # 3 experts: pairs (0,1), (0,2), (1,2)
    assert probs[-1] != [0.5, 0.5, 0.5]  # REINFORCE moved the edge probabilities
    assert results["best_system"]["details"]["order"][-1] == results["best_single"]["expert"]


def test_gnn_end_to_end(tmp_path, fake_utilities):
    results = _run("gnn", tmp_path / "run", gnn_steps=50)
    rows = _check_common(results, tmp_path / "run", "gnn")
    phases = [r["phase"] for r in results["history"]]
    assert phases[:2] == ["data", "data"] and set(phases[2:]) <= {"predicted"}
    details = results["best_system"]["details"]
    assert details["training_samples"] == 4
    assert details["loss_last"] < details["loss_first"]
    predicted = [json.dumps(r["system"], sort_keys=True) for r in rows[4:]]
    assert len(predicted) == len(set(predicted))  # each predicted structure scored once
    assert results["stop_reason"] in ("budget", "no new structures")


def test_meta_agent_end_to_end_falls_back_and_counts_the_designer(tmp_path, monkeypatch):
    from hs_jax.engine import engine as engine_lib

    designer = {"calls": 0, "generated_tokens": 0}
    real = engine_lib.Engine.generate

    def generate(self, prompts, expert_ids=None, **kw):
        out = real(self, prompts, expert_ids, **kw)
        if prompts and prompts[0].endswith("\nedges:"):
            designer["calls"] += 1
            designer["generated_tokens"] += out.costs.generated_tokens
        return out

    monkeypatch.setattr(engine_lib.Engine, "generate", generate)
    results = _run("meta_agent", tmp_path / "run", designer_tokens=16)
    rows = _check_common(results, tmp_path / "run", "meta_agent")
    details = results["best_system"]["details"]
    history = results["history"]
    assert results["iterations"] == designer["calls"] == 4
    assert details["proposals"] == 8 == sum(len(r["proposals"]) for r in history)
    # The tiny designer writes garbage: every proposal is a fallback, counted per iteration.
    assert details["fallbacks"] == 8 == sum(r["fallbacks"] for r in history)
    assert details["valid"] == 0
    assert all(p["status"] != "ok" for r in history for p in r["proposals"])
    # The designer's generations are in the run's costs, beyond what the scoring calls cost.
    scoring = sum(r["cost"]["generated_tokens"] for r in rows if r["cost"])
    assert designer["generated_tokens"] > 0
    assert results["cost"]["generated_tokens"] >= scoring + designer["generated_tokens"]
