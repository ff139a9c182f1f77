"""Reading a live run is safe: inspection never calls a healthy step damaged.

A tiny search (configs/tiny.py, 60 iterations, a checkpoint every iteration, 2 steps kept, so
orbax prunes a step at every save) runs as a launcher subprocess while this process verifies
its checkpoints in a loop (``checkpointing.verify_checkpoint``, what ``launch.inspect_checkpoint
--verify`` calls, and ``checkpointing.read_step``, what ``load_system`` / ``launch.answer``
read), and ``launch.inspect_checkpoint --verify`` itself runs beside it. Before the fix, one
verification in three named a step the run was pruning "damaged" (NOT_FOUND, FAILED_PRECONDITION,
"Requested directory for restore does not exist") and none said the run was live. Real damage
in a committed step is still found while a run holds the lock, and a workdir that is a file is
named in one line.
"""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hs_jax
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib

ROOT = Path(__file__).resolve().parents[2]
ITERATIONS = 60


def _search(workdir, log):
    cmd = [
        sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}",
        f"--config.search.max_iterations={ITERATIONS}", f"--config.search.patience={ITERATIONS}",
        "--config.search.checkpoint_every=1", "--config.search.max_to_keep=2",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != workdir_lib.KILL_ENV}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _inspect(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.inspect_checkpoint", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def _attempt(read):
    """read()'s value, or the error it raised as one line (the fixture keeps going)."""
    try:
        return read()
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _has_step(workdir):
    search = workdir / checkpointing.SEARCH_SUBDIR
    return search.is_dir() and any(p.name.isdigit() for p in search.iterdir())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(workdir, pid, reports, reads, cli): the finished run; the verifications and newest-step
    reads made in process while it ran, and the launcher's --verify runs beside it, each with
    whether the run was still unfinished (no results.json, so its lock held) when it returned."""
    workdir = tmp_path_factory.mktemp("live") / "run"
    finished = workdir / workdir_lib.RESULTS_JSON
    with open(workdir.parent / "search.log", "wb") as log:
        proc = _search(workdir, log)
        reports, reads, cli = [], [], []

        def launcher():  # the real command, a few times over the run
            while proc.poll() is None and len(cli) < 3:
                if _has_step(workdir):
                    cli.append((*_inspect(f"--workdir={workdir}", "--verify"), finished.exists()))
                time.sleep(2.0)

        thread = threading.Thread(target=launcher)
        thread.start()
        try:
            while proc.poll() is None:
                if not _has_step(workdir):
                    time.sleep(0.1)
                    continue
                report = _attempt(lambda: checkpointing.verify_checkpoint(workdir))
                reports.append((report, finished.exists()))
                reads.append(_attempt(lambda: checkpointing.read_step(workdir)[1]))
                time.sleep(0.3)  # leave the search most of the CPU
        finally:
            thread.join()
            proc.wait()
    assert proc.returncode == 0, (workdir.parent / "search.log").read_text()[-3000:]
    return workdir, proc.pid, reports, reads, cli


def test_verify_beside_a_live_search_never_reports_damage(live):
    workdir, pid, reports, reads, cli = live
    errors = [r for r, _ in reports if isinstance(r, str)] + [
        r for r in reads if isinstance(r, str)
    ]
    assert not errors
    pruned = sum(len(report["pruned"]) for report, _ in reports)
    print(f"{len(reports)} verifications, {pruned} steps pruned under them, {len(cli)} CLI runs")
    holder = f"pid {pid} on "
    damaged = [row for report, _ in reports for row in report["steps"] if not row["ok"]]
    assert not damaged
    assert len(reports) >= 10 and all(report["steps"] for report, _ in reports)
    during = [report for report, done in reports if not done]
    assert during and all(holder in report["live"] for report in during)
    verified = {row["step"] for report, _ in reports for row in report["steps"]}
    assert len(verified) >= 10  # the run saved (and pruned) steps all along the loop
    assert sorted(reads) == reads and len(set(reads)) >= 10
    assert cli
    for rc, out, err, done in cli:
        assert rc == 0 and "damaged" not in out and not err, (out, err)
        assert done or f"run in progress ({holder}" in out.splitlines()[1], out
    # Once it has finished, the run is no longer called live.
    report = checkpointing.verify_checkpoint(workdir)
    assert report["live"] is None and [r["step"] for r in report["steps"]] == [59, 60]


def test_real_damage_in_a_committed_step_is_still_found_while_a_run_holds_the_lock(live, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(live[0], workdir)
    search = workdir / checkpointing.SEARCH_SUBDIR
    for f in (search / "60" / "state" / "d").iterdir():
        os.truncate(f, f.stat().st_size // 2)
    with workdir_lib.lock(workdir):
        rc, out, err = _inspect(f"--workdir={workdir}", "--verify")
        lines = out.splitlines()
        assert rc == 1 and lines[1].startswith(f"run in progress (pid {os.getpid()} on ")
        assert len(lines) == 4 and lines[2] == "step 59: ok"
        assert lines[3].startswith("step 60: damaged (state: ")
        assert err == "inspect_checkpoint: damaged steps: [60]\n"
        report = checkpointing.verify_checkpoint(workdir)
        assert report["live"] and not report["pruned"]
        assert [(r["step"], r["ok"]) for r in report["steps"]] == [(59, True), (60, False)]
        assert checkpointing.read_step(workdir)[1] == 59  # the newest readable one
        # load_system (launch.answer) of the unfinished run: the newest healthy committed step.
        (workdir / workdir_lib.RESULTS_JSON).unlink()
        system = hs_jax.load_system(workdir)
        assert system.source.startswith("checkpoint step 59; run in progress (pid ")


def test_a_step_deleted_while_it_is_read_is_pruned_not_damaged(live, tmp_path, monkeypatch):
    """orbax prunes a step by deleting its files, then its folders: a read in between fails."""
    workdir = tmp_path / "search"
    shutil.copytree(live[0] / checkpointing.SEARCH_SUBDIR, workdir)
    restore = checkpointing._restore_arrays
    doomed = {59}

    def pruned_under_the_read(manager, step, *args):
        if step in doomed:
            for f in (workdir / str(step) / "state" / "d").iterdir():
                f.unlink()
            threading.Timer(0.2, shutil.rmtree, (workdir / str(step),)).start()
        return restore(manager, step, *args)

    monkeypatch.setattr(checkpointing, "_restore_arrays", pruned_under_the_read)
    report = checkpointing.verify_checkpoint(workdir)
    assert report["steps"] == [{"step": 60, "ok": True, "reason": None}]
    assert report["pruned"] == [59]

    # The newest step pruned under a stale listing: listed again, the next newest is read.
    shutil.copytree(live[0] / checkpointing.SEARCH_SUBDIR / "59", workdir / "59")
    shutil.copytree(live[0] / checkpointing.SEARCH_SUBDIR / "60", workdir / "61")
    doomed.add(61)
    assert checkpointing.read_step(workdir)[1] == 60


def test_a_workdir_that_is_a_file_is_named_in_one_line(tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    rc, out, err = _inspect(f"--workdir={path}", "--verify")
    assert rc == 1 and not out and err.count("\n") == 1
    assert err.startswith(f"inspect_checkpoint: {path} is a file, not a run's workdir")
    done = subprocess.run(
        [sys.executable, "-m", "launch.answer", f"--workdir={path}", "--question=q"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"launch.answer: {path} is a file, not a run's workdir"
    ]
    for launcher, extra in (("launch.main", []), ("launch.compare", ["--methods=hs"])):
        done = subprocess.run(
            [sys.executable, "-m", launcher, "--config=configs/tiny.py", f"--workdir={path}",
             *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        lines = [x for x in done.stderr.splitlines() if x.strip() and x[:1] not in "IW"]
        assert done.returncode == 1 and lines == [
            f"{launcher}: {path} is a file, not a run's workdir"
        ], done.stderr[-2000:]
    assert path.read_text() == "not a folder"
