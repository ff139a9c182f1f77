"""hs_jax.load_system on a tiny run: the best system, loaded from results.json + best_experts/
or from a checkpoint step, answers the run's test items with exactly results.json's
best_system_test_outputs (every node), and new questions in one batched run; launch.answer
prints its answers, and one-line errors."""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import hs_jax
from hs_jax.engine.engine import Engine
from hs_jax.engine.executor import System
from hs_jax.engine.scoring import SystemScorer
from hs_jax.experts import lora
from hs_jax.pipeline import door, found_system
from hs_jax.runtime import sharding
from hs_jax.setup import assembly
from hs_jax.store.workdir import WorkdirError

ROOT = Path(__file__).resolve().parents[1]


def _tiny():
    return runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, results) of a finished tiny run (export_experts on)."""
    workdir = tmp_path_factory.mktemp("found") / "run"
    return workdir, hs_jax.run(_tiny(), workdir)


def _copy(workdir: Path, dest: Path) -> Path:
    shutil.copytree(workdir, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def _node_outputs(system, items):
    answers, nodes = system.answer(items, return_node_outputs=True)
    return answers, {str(node): outputs for node, outputs in nodes.items()}


def test_finished_run_answers_its_test_items_as_the_run_did(run):
    workdir, results = run
    want = results["best_system_test_outputs"]
    for config in (_tiny(), None):  # the config given, and rebuilt from run.json
        system = hs_jax.load_system(workdir, config)
        assert system.source == "results.json"
        assert system.dag.to_dict() == results["best_system"]["dag"]
        assert list(system.assignment) == results["best_system"]["assignment"]
        assert system.expert_names == results["experts"]
        answers, nodes = _node_outputs(system, system.test_items)
        assert nodes == want
        assert answers == want[str(system.dag.end)]


def test_checkpoint_step_holds_the_exported_system(run, tmp_path):
    workdir, results = run
    want = results["best_system_test_outputs"]
    last = hs_jax.read_checkpoint(workdir)
    assert last.step == results["iterations"]
    system = hs_jax.load_system(workdir, _tiny(), step=last.step)
    assert system.source == f"checkpoint step {last.step}"
    assert _node_outputs(system, system.test_items)[1] == want
    # The checkpoint's best weights are those exported to best_experts/, bit for bit.
    used = sorted(set(system.assignment))
    base_cfg = assembly.load_base(door.resolve(_tiny()))[0]
    folders = [workdir / "best_experts" / results["experts"][e] for e in used]
    exported = jax.tree.leaves(lora.load_peft_pool(folders, base_cfg))
    saved = list(last.part("best_weights").values())
    assert len(exported) == len(saved)
    for got, stored in zip(exported, saved, strict=True):
        np.testing.assert_array_equal(np.asarray(got), stored[used])
    # A run with no results.json yet (killed after its last checkpoint): its latest step.
    unfinished = _copy(workdir, tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    system = hs_jax.load_system(unfinished)
    assert system.source == f"checkpoint step {last.step}"
    assert _node_outputs(system, system.test_items)[1] == want


def test_new_questions_are_answered_in_one_batched_run(run):
    workdir, _ = run
    system = hs_jax.load_system(workdir)
    questions = [
        "Is there a path between node 0 and node 1?",
        "What is 2 + 2?",
        {"question": "Which is larger?", "choices": ["1", "2"]},
    ]
    calls = system.stats.generate_calls
    answers, nodes = system.answer(questions, return_node_outputs=True)
    assert len(answers) == len(questions) and all(isinstance(a, str) for a in answers)
    # One generate call per level of the DAG for all questions together, not one per question.
    assert system.stats.generate_calls - calls == len(system.dag.levels)
    assert list(nodes) == system.live_nodes()
    assert sorted(nodes) == sorted(system.dag.reaching_end)
    assert all(len(outputs) == len(questions) for outputs in nodes.values())
    assert nodes[system.dag.end] == answers
    assert system.answer(questions[:2]) == answers[:2]  # cached rows: the same answers
    # A task item, its dict and its text are the same question.
    item = system.test_items[0]
    same = system.answer([item, {"question": item.question}, item.question])
    assert same[0] == same[1] == same[2]
    with pytest.raises(TypeError, match="list of questions"):
        system.answer("one string")
    with pytest.raises(ValueError, match="question 0"):
        system.answer([3])


def test_a_subset_of_the_experts_answers_as_the_whole_pool(run, tmp_path):
    """Only the experts a system uses are loaded; renumbered, they answer as in the full pool."""
    workdir, results = run
    copy = _copy(workdir, tmp_path / "subset")
    n = results["best_system"]["dag"]["n"]
    assignment = [2 if k % 2 == 0 else 0 for k in range(n)]  # experts 0 and 2 of 3
    edited = dict(results, best_system=dict(results["best_system"], assignment=assignment))
    (copy / "results.json").write_text(json.dumps(edited))
    system = hs_jax.load_system(copy)
    _, nodes = _node_outputs(system, system.test_items)

    c = door.resolve(_tiny())
    base = assembly.load_base(c)
    pool = lora.load_peft_pool(
        [workdir / "best_experts" / name for name in results["experts"]], base[0]
    )
    mesh = sharding.make_mesh(data=c.mesh.data, model=c.mesh.model)
    engine = assembly.make_engine(c, base, pool, mesh)
    executor = SystemScorer(engine, system.spec, system.protocol, max_batch=16).executor
    full = executor.run([System(system.dag, tuple(assignment))], system.test_items)
    assert nodes == {str(u): out for u, out in full.node_outputs[0].items()}
    assert len({tuple(out) for out in nodes.values()}) > 1  # the two experts do differ


def test_padding_to_the_pools_rank_changes_no_output():
    c = door.resolve(_tiny())
    base = assembly.load_base(c)
    stack = lora.init_lora_stack(
        base[0], 2, 2, ("q_proj", "v_proj"), jax.random.key(1), scheme="random", init_scale=0.5
    )
    padded = found_system._padded(stack, 4)
    assert padded.rank == 4 and padded.ranks == stack.ranks
    for small, big in zip(jax.tree.leaves(stack), jax.tree.leaves(padded), strict=True):
        assert np.count_nonzero(big) == np.count_nonzero(small)
    prompts, ids = ["Is 7 prime?", "Name a colour.", "2 + 3 ="], [0, 1, 0]
    texts = [
        Engine(*base, experts=experts).generate(prompts, ids, max_new_tokens=4).texts
        for experts in (stack, padded)
    ]
    assert texts[0] == texts[1]


def test_config_mistakes_are_named(run, tmp_path):
    workdir, _ = run
    other = _tiny()
    other.seed = 1
    with pytest.raises(WorkdirError, match="differs from the run.*\n  seed: saved 0, now 1"):
        hs_jax.load_system(workdir, other)
    bare = _copy(workdir, tmp_path / "no_run_json")
    (bare / "run.json").unlink()
    with pytest.raises(WorkdirError, match="no run.json: pass the config the run used"):
        hs_jax.load_system(bare)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hs_jax.load_system(tmp_path / "missing", _tiny())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no search"):
        hs_jax.load_system(tmp_path / "empty", _tiny())


def _answer(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.answer", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip


def test_launcher_prints_answers_and_one_line_errors(run, tmp_path):
    workdir, results = run
    questions = ["Is there a path between node 0 and node 1?", "What is 2 + 2?"]
    system = hs_jax.load_system(workdir)
    answers, nodes = system.answer(questions, return_node_outputs=True)

    done = _answer(f"--workdir={workdir}", *(f"--question={q}" for q in questions), "--show_nodes")
    assert done.returncode == 0, done.stderr
    for j, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        assert f"Q: {question}\n" in done.stdout
        assert f"A: {answer.strip()}\n" in done.stdout
        for node in system.live_nodes():
            assert f"node {node} (" in done.stdout
            assert f"): {nodes[node][j].strip()}\n" in done.stdout

    config = f"--config={ROOT / 'configs' / 'tiny.py'}"
    step = f"--step={results['iterations']}"
    asked = [f"--question={q}" for q in questions]
    done = _answer(config, f"--workdir={workdir}", *asked, step, "--json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"question": q, "answer": a} for q, a in zip(questions, answers, strict=True)
    ]

    done = _answer(f"--workdir={tmp_path / 'missing'}", "--question=q")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"launch.answer: workdir {tmp_path / 'missing'} does not exist"
    )
    assert "Traceback" not in done.stderr
