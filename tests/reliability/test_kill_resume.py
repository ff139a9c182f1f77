"""SIGKILL the launcher at every kind of point of a run, relaunch it until it finishes, and
check that it ends with the results.json of an uninterrupted run, costs included (only the
timing field `seconds` may differ), the same exported experts, and no temporary file left.

The kills are placed by the test hook of hs_jax.store.workdir.kill_point: HS_JAX_TEST_KILL_AT=
<point>:<count> SIGKILLs the process the count-th time it reaches <point> ('setup' 1-4: task
file written, run.json written, pool built, baseline scored; 'role_step' / 'weight_step':
after the step's scoring; 'checkpoint_write': in the middle of an orbax save;
'checkpoint_committed': right after one; 'outputs': between output files, 3+ inside the
export of the best experts). The tiny config runs 2 iterations, so step 2 is the final
checkpoint (written after the test-split scoring).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hs_jax.store.workdir import KILL_ENV, TMP_MARK

ROOT = Path(__file__).resolve().parents[2]


def _launch(workdir, kill=None):
    cmd = [sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}"]
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _finish(workdir):
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _comparable(workdir):
    results = json.loads((workdir / "results.json").read_text())
    results.pop("seconds")
    return json.dumps(results, sort_keys=True)  # NaN-safe, exact float repr


def _experts(workdir):
    folder = workdir / "best_experts"
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _temporary(workdir):
    return [str(p) for p in workdir.rglob("*") if "tmp" in p.name]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _finish(workdir)
    assert not _temporary(workdir)
    return workdir


# Each scenario: the kills of consecutive launches on one workdir, and whether the launch that
# finishes resumes from a checkpoint (a kill before the first complete one starts afresh).
SCENARIOS = {
    "setup_before_run_json": (["setup:1"], False),
    "setup_after_pool_then_first_role_step": (["setup:3", "role_step:1"], False),  # two in a row
    "weight_step_after_a_checkpoint": (["weight_step:2"], True),
    "during_a_checkpoint_write": (["checkpoint_write:1"], False),
    "after_a_commit_then_same_iteration_again": (["checkpoint_committed:1", "role_step:1"], True),
    "during_the_final_write_then_between_pictures": (["checkpoint_write:2", "outputs:1"], True),
    "after_the_final_commit": (["checkpoint_committed:2"], True),
    "inside_the_expert_export": (["outputs:3"], True),
}


@pytest.mark.parametrize("kills, resumes", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_killed_runs_end_as_an_uninterrupted_one(uninterrupted, tmp_path, kills, resumes):
    for kill in kills:
        proc = _launch(tmp_path, kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-4000:])
        assert f"{KILL_ENV}: SIGKILL at {kill.split(':')[0]}" in proc.stderr
        assert not (tmp_path / "results.json").exists()
        if kill.startswith("checkpoint_write"):  # the kill landed inside an orbax save
            assert any("orbax-checkpoint-tmp" in p.name for p in (tmp_path / "search").iterdir())
        if kill == "outputs:3":  # inside the staged export folder
            assert any(TMP_MARK in p.name for p in tmp_path.iterdir())
    out = _finish(tmp_path).stderr
    assert ("resumed" in out) == resumes
    assert _comparable(tmp_path) == _comparable(uninterrupted)
    assert _experts(tmp_path) == _experts(uninterrupted)
    assert (tmp_path / "best_dag.png").exists() and (tmp_path / "curves.png").exists()
    assert not _temporary(tmp_path)


def test_run_search_hands_back_the_extra_meta_of_the_step_it_resumes_from(tmp_path):
    """The search stores the caller's JSON with each checkpoint and returns the one of the step
    it resumes from (checkpoint_every=2: step 2's, not that of the unsaved step 3)."""
    import numpy as np

    from hs_jax.swarm import search

    experts = {"w": np.linspace(0, 1, 6, dtype=np.float32).reshape(3, 2)}
    cfg = search.SearchConfig(
        n_graphs=2, n_assignments=2, max_iterations=4, patience=4, checkpoint_every=2
    )
    calls = []

    def score(systems, weights):
        calls.append(1)
        if len(calls) == 7:  # inside iteration 3 (two scorings per iteration)
            raise KeyboardInterrupt("simulated kill")
        return np.array([float(len(d.edges)) for d, _ in systems])

    def extra(record):
        return {"seen": record["iteration"]}

    with pytest.raises(KeyboardInterrupt):
        search.run_search(
            experts, score, cfg, workdir=str(tmp_path), extra_meta=extra, progress=False
        )
    resumed = []
    calls.clear()
    search.run_search(
        experts, score, cfg, workdir=str(tmp_path), extra_meta=extra, on_resume=resumed.append,
        progress=False,
    )  # fmt: skip
    assert resumed == [{"seen": 1}]
