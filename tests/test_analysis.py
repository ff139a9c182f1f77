"""The analyses of finished runs (hs_jax.analysis) and launch.analyze, on hand-computed examples
and synthetic workdirs (no model)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hs_jax import analysis
from hs_jax.analysis import cgain, curves, roles, runs, scaling, topology
from hs_jax.analysis.compose import unique_labels
from hs_jax.methods import archive
from hs_jax.runtime.errors import UserError
from hs_jax.swarm import graph
from hs_jax.swarm.graph import Dag

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG"


# ----------------------------------------------------------------------------- C-Gain


def test_cgain_hand_example():
    # solved by: item 0 both, items 1, 2, 4 one expert, items 3, 5 none.
    experts = [[1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 0, 0]]
    system = [1, 1, 0, 1, 1, 0]
    g = cgain.collaborative_gain(system, experts)
    assert [b.count for b in g.buckets] == [2, 3, 1]
    assert [b.solved for b in g.buckets] == [1, 2, 1]
    assert [b.expected for b in g.buckets] == [0.0, 0.5, 1.0]
    assert g.b0_accuracy == 0.5
    # B_0 is outside the sum: 3/6 * (2/3 - 1/2) + 1/6 * (1 - 1) = 1/12.
    assert g.c_gain == pytest.approx(1 / 12)


def test_cgain_matches_the_formula_on_random_scores():
    rng = np.random.default_rng(0)
    experts = rng.integers(0, 2, size=(4, 50))
    system = rng.integers(0, 2, size=50)
    g = cgain.collaborative_gain(system, experts)
    k = experts.sum(0)
    want = sum(
        (k == n).sum() / 50 * (system[k == n].mean() - n / 4) for n in range(1, 5) if (k == n).any()
    )
    assert g.c_gain == pytest.approx(want)
    assert sum(b.count for b in g.buckets) == 50


def test_cgain_non_binary_scores_use_the_threshold():
    # AbstainQA: +1 right, 0 abstained, -1 wrong; only +1 solves.
    g = cgain.collaborative_gain([1, 0, -1], [[1, -1, 0], [0, 1, 1]])
    assert [b.count for b in g.buckets] == [0, 3, 0]
    assert g.buckets[1].accuracy == pytest.approx(1 / 3)
    # Judge ratings / 10: with 0.5, 0.3 is unsolved and 0.8 solved.
    g = cgain.collaborative_gain([0.8, 0.3], [[0.9, 0.2], [0.1, 0.6]], solved_above=0.5)
    assert [b.count for b in g.buckets] == [0, 2, 0]
    assert g.c_gain == pytest.approx(1.0 * (0.5 - 0.5))


def test_cgain_refuses_mismatched_items():
    with pytest.raises(ValueError, match="same non-empty test items"):
        cgain.collaborative_gain([1, 0], [[1, 0, 1]])
    results = {"best_system": {"test_item_scores": [1]}, "single_experts": {"test_item_scores": []}}
    assert "no per-item" in cgain.of_results(results)


# ----------------------------------------------------------------------------- topology


def test_topology_of_an_in_tree():
    dag = Dag(5, ((0, 2), (1, 2), (2, 4), (3, 4)), 4)
    t = topology.topology(dag)
    assert t.positions == {0: 2, 1: 2, 2: 1, 3: 1, 4: 0}
    assert (t.nodes, t.active_nodes, t.edges, t.active_edges) == (5, 5, 4, 4)
    assert (t.depth, t.max_fan_in, t.mean_fan_in) == (2, 2, 2.0)


def test_topology_longest_path_and_inactive_nodes():
    # 1 -> 0 -> 3 and 1 -> 3: node 1 is 2 from the end by the longest path; 2 -> 4 never runs.
    dag = Dag(5, ((1, 0), (0, 3), (1, 3), (2, 4)), 3)
    t = topology.topology(dag)
    assert t.positions == {0: 1, 1: 2, 3: 0}
    assert (t.active_nodes, t.edges, t.active_edges, t.depth) == (3, 4, 3, 2)
    assert (t.max_fan_in, t.mean_fan_in) == (2, 1.5)
    single = topology.topology(Dag(1, (), 0))
    assert (single.depth, single.max_fan_in, single.mean_fan_in) == (0, 0, 0.0)


def test_expert_positions_count_over_systems():
    systems = [(graph.chain(3), [2, 0, 1]), (graph.fan_in(2), [0, 0, 1])]
    # chain 0 -> 1 -> 2: node 2 (expert 1) at 0, node 1 (expert 0) at 1, node 0 (expert 2) at 2.
    assert topology.expert_positions(systems) == {0: {1: 3}, 1: {0: 2}, 2: {2: 1}}


def test_sparsity_table_against_the_original():
    rows = [
        {"task": "t", "setting": "original", "test_utility": 0.6, "active_edges": 4},
        {"task": "t", "setting": "original", "test_utility": 0.4, "active_edges": 4},
        {"task": "t", "setting": "tau=0.5", "test_utility": 0.3, "active_edges": 3},
        {"task": "t", "setting": None, "test_utility": 0.9, "active_edges": 1},
    ]
    table = topology.sparsity_table(rows)
    assert [(r["setting"], r["runs"]) for r in table] == [("original", 2), ("tau=0.5", 1)]
    other_pool = {"task": "t", "pool": ("a",), "setting": "tau=0.5", "active_edges": 1}
    assert topology.sparsity_table([*rows, other_pool])[-1]["edge_reduction"] is None
    assert table[0]["test_utility"] == pytest.approx(0.5)
    assert table[1]["edge_reduction"] == pytest.approx(0.25)
    assert topology.sparsity_setting("hs", None, 0.0) == "original"
    assert topology.sparsity_setting("hs_l1", None, 0.05) == "lambda=0.05"
    assert topology.sparsity_setting("uniform_soup", None, 0.0) is None


# ----------------------------------------------------------------------------- curves


def _archive_rows(utilities, method="hs"):
    return [
        {
            "method": method,
            "evaluation": k,
            "step": "search",
            "iteration": k // 2,
            "system": {"dag": {"n": 1, "edges": [], "end": 0}, "assignment": [0]},
            "weights": "0",
            "dev_utility": u,
            "cost": None,
        }
        for k, u in enumerate(utilities)
    ]


def test_best_so_far_from_a_synthetic_archive(tmp_path):
    path = tmp_path / "archive.jsonl"
    rows = _archive_rows([None, 0.2, 0.1, 0.5, 0.5])
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + '{"method": "hs", "evalu')  # a torn last line
    read = runs.read_jsonl(path)
    assert len(read) == 5
    assert path.read_text().endswith('"evalu')  # analysis never repairs a workdir
    curve = curves.best_so_far(read)
    assert math.isnan(curve[0]) and curve[1:] == [0.2, 0.2, 0.5, 0.5]
    assert curves.budget_summary(curve) == {"evaluations": 5, "best": 0.5, "reached_at": 4}
    assert runs.ARCHIVE == archive.ARCHIVE


def test_optimisation_curves_from_a_search_history():
    history = [
        {
            "iteration": 0,
            "role": {"ran": True, "utilities": [0.1, 0.3]},
            "weight": {"ran": False, "reason": "dropout"},
        },
        {
            "iteration": 1,
            "role": {"ran": True, "utilities": [0.2, None, 0.4]},
            "weight": {"ran": True, "utilities": [0.5, 0.1]},
        },
    ]
    assert curves.is_search_history(history)
    c = curves.optimisation_curves(history)
    assert c["role step"] == {"best": [0.3, 0.4], "mean": pytest.approx([0.2, 0.3])}
    assert math.isnan(c["weight step"]["best"][0]) and c["weight step"]["best"][1] == 0.5
    assert not curves.is_search_history([{"step": "random"}])


# ----------------------------------------------------------------------------- scaling


def test_scaling_tables_pool_size_and_diversity():
    def res(names, test, seed=0):
        return {
            "task": "t",
            "method": "hs",
            "experts": names,
            "seed": seed,
            "best_system": {"test_utility": test, "test_interval": [test - 0.1, test + 0.1]},
            "best_single": {"test_utility": 0.2},
        }

    rs = [res(["a", "b"], 0.4), res(["a", "b", "c", "d"], 0.5), res(["a", "b", "c", "d"], 0.7, 1)]
    rs.append(res(["a", "a", "b", "b"], 0.1))  # repeats: in the diversity study only
    rows = scaling.pool_size_table(rs)
    assert [(r["key"], r["runs"]) for r in rows] == [("2", 1), ("4", 2)]
    assert rows[0]["interval"] == [pytest.approx(0.3), pytest.approx(0.5)]
    assert rows[1]["test_utility"] == pytest.approx(0.6)
    assert rows[1]["interval_kind"] == "mean +- sd"
    rows = scaling.diversity_table(rs)
    assert [(r["experts"], r["key"], r["runs"]) for r in rows] == [(4, "2x2", 1), (4, "4x1", 2)]
    assert scaling.diversity({"experts": ["a", "a", "b"]})[1] == "2 of 3"
    assert scaling.pool_size_table(rs[:1]) == []  # nothing differs


# ----------------------------------------------------------------------------- roles


def test_role_prompt_and_parsing():
    prompt = roles.role_prompt("What is 2+2?", "Part one:\nadd", answer_prefix="Scenario:")
    assert "1. solving part of the problem, 2. refining the previous answer" in prompt
    assert "The problem is: What is 2+2?\nThe output is: Part one: add\nScenario:" in prompt
    assert roles.parse_role(" 3. providing feedback") == "feedback"
    assert roles.parse_role("It is irrelevant.") == "irrelevant"
    assert roles.parse_role("This output is refining the answer") == "refine"
    assert roles.parse_role("no idea") is None


def test_label_roles_by_position_with_a_fake_judge():
    dag = Dag(3, ((0, 2), (1, 2)), 2)
    rows = [
        {
            "id": f"q{i}",
            "item": i,
            "pass": "answer",
            "node": node,
            "parents": list(dag.parents(node)),
            "expert": node,
            "prompt": f"Q{i} prompt",
            "output": f"out {i} {node}",
        }
        for i in range(2)
        for node in (0, 1, 2)
    ]
    cases = roles.cases_from_audit(rows, dag, questions={0: "question zero"})
    assert [(c.item, c.node, c.position) for c in cases] == [
        ("q0", 0, 1),
        ("q0", 1, 1),
        ("q1", 0, 1),
        ("q1", 1, 1),
    ]
    assert cases[0].problem == "question zero" and cases[2].problem == "Q1 prompt"
    asked = []

    def generate(prompts):
        asked.extend(prompts)
        return [
            "1" if "out 0" in p else "4. irrelevant" if p.endswith("1 0") else "??" for p in prompts
        ]

    labels = roles.label_roles(cases, generate, batch=3)
    assert labels == ["divide", "divide", "irrelevant", roles.UNPARSED]
    assert len(asked) == 4
    t = roles.tally(cases, labels)
    assert t["fractions"]["divide"] == 0.5 and t["by_position"]["1"]["irrelevant"] == 0.25


# ----------------------------------------------------------------------------- end to end


def _write_workdir(
    path,
    *,
    method="hs",
    names=("e0", "e1", "e2"),
    seed=0,
    tau=None,
    l1=0.0,
    history=True,
    audit=False,
):
    """A finished workdir as hs_jax.pipeline.report writes it (the fields the analyses read)."""
    rng = np.random.default_rng(len(names) * 10 + seed)
    n_test = 8
    singles = rng.integers(0, 2, size=(len(names), n_test)).astype(float).tolist()
    system = rng.integers(0, 2, size=n_test).astype(float).tolist()
    dag = Dag(3, ((0, 2), (1, 2)), 2)
    hist = (
        [
            {
                "iteration": t,
                "role": {"ran": True, "utilities": (rng.random(3)).tolist()},
                "weight": {"ran": t > 0, "utilities": rng.random(3).tolist()},
                "best_utility": 0.5,
            }
            for t in range(3)
        ]
        if history
        else [{"step": "random", "evaluations": 4}]
    )
    results = {
        "method": method,
        "seed": seed,
        "task": "nlgraph",
        "n_test": n_test,
        "experts": list(names),
        "best_system": {
            "kind": "dag",
            "dag": dag.to_dict(),
            "assignment": [0, 1, len(names) - 1],
            "dev_utility": 0.6,
            "test_utility": float(np.mean(system)),
            "test_interval": [0.1, 0.9],
            "test_item_scores": system,
        },
        "best_single": {
            "expert": 0,
            "name": names[0],
            "dev_utility": 0.4,
            "test_utility": 0.3,
            "test_interval": [0.0, 0.6],
        },
        "single_experts": {
            "dev": [0.4] * len(names),
            "test": [0.3] * len(names),
            "test_item_scores": singles,
        },
        "vs_best_single": {
            "difference": 0.1,
            "interval": [-0.2, 0.4],
            "p_value": 0.5,
            "items": n_test,
        },
        "evaluations": 6,
        "cost": {"generate_calls": 12, "prompt_tokens": 900},
        "history": hist,
        "seconds": 3.0,
    }
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    utilities = rng.random(6).tolist()
    (path / "archive.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _archive_rows(utilities, method))
    )
    config = {"method": method, "seed": seed, "search.prune_tau": tau, "search.l1_lambda": l1}
    (path / "run.json").write_text(json.dumps({"format": 1, "identity": {"config": config}}))
    if audit:
        rows = [
            {
                "id": i,
                "pass": "answer",
                "node": node,
                "parents": list(dag.parents(node)),
                "expert": node,
                "prompt": f"prompt {i}",
                "output": f"output {i} {node}",
            }
            for i in range(n_test)
            for node in (0, 1, 2)
        ]
        (path / "test_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def parent(tmp_path):
    p = tmp_path / "runs"
    _write_workdir(p / "hs_s0", audit=True)
    _write_workdir(p / "hs_s1", seed=1)
    _write_workdir(p / "hs_prune", method="hs_prune", tau=0.5)
    _write_workdir(p / "random", method="random_search", history=False)
    _write_workdir(p / "hs_pool5", names=("e0", "e1", "e2", "e3", "e4"))
    _write_workdir(p / "hs_div", names=("e0", "e0", "e1"))
    _write_workdir(p / "hs_s0" / "previous" / "old", seed=7)  # moved aside: skipped
    return p


def _launch(*args):
    cmd = [sys.executable, "-m", "launch.analyze", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_launcher_end_to_end(parent, tmp_path):
    out = tmp_path / "out"
    proc = _launch(f"--workdirs={parent}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "analysis.md").read_text()
    for heading in (
        "## Runs",
        "## Collaborative gain",
        "## Topology",
        "### Sparsity (Table 3)",
        "## Utility against budget",
        "## Scaling",
        "## Roles",
    ):
        assert heading in md
    assert "| nlgraph | 3 | tau=0.5 | 1 |" in md and "| nlgraph | 3 | original | 2 |" in md
    assert "| nlgraph | 3 (2 distinct) | original | 1 |" in md
    data = json.loads((out / "analysis.json").read_text())
    assert len(data["runs"]) == 6  # previous/ skipped
    assert data["cgain"]["hs_s0"]["n_experts"] == 3
    assert [r["key"] for r in data["scaling"]["pool size"]] == ["3", "5"]
    assert [r["key"] for r in data["scaling"]["diversity"]] == ["2 of 3", "3x1"]
    pictures = [
        "cgain.png",
        "budget_curves.png",
        "iteration_curves_hs_s0.png",
        "scaling_pool.png",
        "scaling_diversity.png",
    ]
    for name in pictures:
        assert name in data["pictures"]
        assert (out / name).read_bytes()[:4] == PNG
    assert "iteration_curves_random.png" not in data["pictures"]
    assert not list(out.glob("*.hs-tmp-*"))


def test_analyze_with_a_judge_and_a_subset(parent, tmp_path):
    out = tmp_path / "out"
    data = analysis.analyze(
        f"{parent / 'hs_s0'},{parent / 'hs_s1'}",
        out,
        analyses="roles,cgain",
        generate=lambda ps: ["2"] * len(ps),
    )
    assert data["analyses"] == ["cgain", "roles"]
    assert data["roles"]["hs_s0"]["fractions"]["refine"] == 1.0
    assert "hs_s1" not in data["roles"]  # no test_prompts.jsonl
    md = (out / "analysis.md").read_text()
    assert "no test_prompts.jsonl" in md and "## Topology" not in md


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such folder"),
        (lambda p: p.mkdir() or (p / "run.json").write_text("{}"), "no results.json"),
        (lambda p: p.mkdir() or (p / "results.json").write_text("{not json"), "not valid JSON"),
        (lambda p: p.mkdir() or (p / "results.json").write_text('{"method": "hs"}'), "missing"),
    ],
)
def test_bad_workdir_is_one_line_and_exit_1(tmp_path, make, message):
    bad = tmp_path / "bad"
    make(bad)
    proc = _launch(f"--workdirs={bad}", f"--out={tmp_path / 'out'}")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.analyze: ") and message in lines[0]
    assert not (tmp_path / "out" / "analysis.md").exists()


def test_labels_tell_runs_apart(tmp_path):
    paths = [tmp_path / "hs" / "seed_0", tmp_path / "chain" / "seed_0", tmp_path / "x"]
    made = [runs.Run(p, {}, (), {}) for p in paths]
    assert unique_labels(made) == ["hs/seed_0", "chain/seed_0", f"{tmp_path.name}/x"]


def test_unknown_analysis_is_refused():
    with pytest.raises(UserError, match="unknown 'shape'"):
        analysis.parse_analyses("cgain,shape")
    assert analysis.parse_analyses("all") == analysis.ANALYSES
