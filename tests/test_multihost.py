"""A run on two processes (2 CPU devices each, gloo collectives over localhost) ends with the
results.json of one process on 4 devices; process 0 alone writes the workdir; a second launch
returns the finished run; a half-finished run resumes collectively; processes that disagree
stop.

Each process is the launcher, started with `--config.distributed=True` and the coordinator
fields (`coordinator_address`, `num_processes`, `process_id`), its device count set by
XLA_FLAGS. A Python audit hook in every process records each file it opens for writing,
renames, creates or removes under the workdir, so "process 1 writes nothing" is observed, not
assumed (orbax's array files are written by tensorstore, below Python: they would not show,
and process 0 writes them anyway).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ["--config.experts.n=4", "--config.mesh.expert=2"]  # data=2 (across the processes)
OUTPUTS = {"results.json", "run.json", "task.json", "best_dag.png", "curves.png"}

# Runs `launch.main` with the remaining arguments; records the process's writes under the
# workdir (argv[1]) into the JSON file argv[2] at exit.
HOOK = textwrap.dedent(
    r"""
    import atexit, json, os, runpy, sys

    workdir, record = os.path.realpath(sys.argv[1]), sys.argv[2]
    sys.argv = ["launch.main", *sys.argv[3:]]
    sys.path.insert(0, os.getcwd())
    writes, busy = [], [False]

    def inside(path):
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None
        path = os.path.realpath(os.fsdecode(path))
        if path == workdir or path.startswith(workdir + os.sep):
            return os.path.relpath(path, workdir)
        return None

    def hook(event, args):
        if busy[0]:
            return
        busy[0] = True
        try:
            paths = []
            if event == "open":
                path, mode, flags = args
                if mode is None:
                    writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                else:
                    writing = any(c in mode for c in "wax+")
                paths = [path] if writing else []
            elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
                paths = list(args[:2]) if event == "os.rename" else [args[0]]
            for path in paths:
                rel = inside(path)
                if rel is not None:
                    writes.append([event, rel])
        finally:
            busy[0] = False

    def dump():
        busy[0] = True
        with open(record, "w") as f:
            json.dump(writes, f)

    atexit.register(dump)
    sys.addaudithook(hook)
    runpy.run_module("launch.main", run_name="__main__", alter_sys=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _communicate(procs, timeout=240) -> list[str]:
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def _two(workdir: Path, scratch: Path, *extra: str, ok=True, workdirs=None) -> list[dict]:
    """The launcher on 2 processes of 2 CPU devices (in `workdirs[i]`, default all in
    `workdir`); per process: output, exit status, pid, writes."""
    hook = scratch / "hook.py"
    hook.write_text(HOOK)
    port = _free_port()
    procs, records = [], []
    workdirs = workdirs or [workdir, workdir]
    for i in range(2):
        records.append(scratch / f"writes_{i}.json")
        cmd = [
            sys.executable, str(hook), str(workdirs[i]), str(records[i]),
            "--config=configs/tiny.py", f"--workdir={workdirs[i]}", *LAYOUT,
            "--config.distributed=True", f"--config.coordinator_address=localhost:{port}",
            "--config.num_processes=2", f"--config.process_id={i}", *extra,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=_env(2),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
        )
    outs = _communicate(procs)
    for proc, out in zip(procs, outs, strict=True):
        assert (proc.returncode == 0) == ok, out[-6000:]
    return [
        {
            "out": out,
            "returncode": proc.returncode,
            "pid": proc.pid,
            "writes": json.loads(record.read_text()),
        }
        for proc, out, record in zip(procs, outs, records, strict=True)
    ]


def _without_seconds(results: dict) -> str:
    return json.dumps({k: v for k, v in results.items() if k != "seconds"}, sort_keys=True)


def _results(workdir: Path) -> dict:
    return json.loads((workdir / "results.json").read_text())


def _tree(root: Path) -> dict:
    """Every entry under root but the lock file (rewritten by each holder): size and mtime."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else "dir", p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.name != ".lock"
    }


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process with the same 4 devices and the same mesh."""
    workdir = tmp_path_factory.mktemp("single") / "run"
    cmd = [
        sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}",
        *LAYOUT,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return workdir


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    scratch = tmp_path_factory.mktemp("two")
    workdir = scratch / "run"
    return workdir, _two(workdir, scratch)


def test_two_processes_end_with_the_one_process_results(single, two):
    workdir, procs = two
    assert _without_seconds(_results(workdir)) == _without_seconds(_results(single))
    assert {p.name for p in workdir.iterdir()} == {p.name for p in single.iterdir()}
    iterations = _results(workdir)["iterations"]
    for i, proc in enumerate(procs):
        out = proc["out"]
        assert f"process {i} of 2: 2 local devices, 4 in all" in out
        assert "mesh {'data': 2, 'expert': 2, 'model': 1} over 4 devices of 2 process(es)" in out
        assert "weight swarm: 4 experts along mesh axis 'expert' of 2 (P('expert',); 2 per" in out
        # Every iteration's host-side draws and utilities were compared across the processes.
        for t in range(iterations):
            assert f"iteration {t}: all 2 processes agree on its DAGs, assignments" in out


def test_only_process_0_writes_and_holds_the_lock(two):
    workdir, (first, second) = two
    holder = json.loads((workdir / ".lock").read_text())
    assert holder["pid"] == first["pid"]
    written = {path.split(os.sep)[0] for _, path in first["writes"]}
    assert OUTPUTS | {".lock", "best_experts"} <= written  # the hook sees process 0's writes
    assert second["writes"] == []  # and none at all from process 1, orbax's Python side too


def test_a_second_launch_returns_the_finished_run(two, tmp_path):
    workdir, _ = two
    before, results = _tree(workdir), _results(workdir)
    procs = _two(workdir, tmp_path)
    for proc in procs:
        assert "holds this run, finished: returning its results.json" in proc["out"]
    assert _tree(workdir) == before and _results(workdir) == results
    assert procs[1]["writes"] == []


def test_a_half_finished_run_resumes_on_two_processes(single, two, tmp_path):
    """Checkpoint step 1 restored by both processes (orbax, collectively) ends as the
    uninterrupted run."""
    src, _ = two
    workdir = tmp_path / "run"
    shutil.copytree(src, workdir, copy_function=shutil.copy2)
    for name in ("results.json", "best_dag.png", "curves.png"):
        (workdir / name).unlink()
    shutil.rmtree(workdir / "best_experts")
    shutil.rmtree(workdir / "search" / "2")
    procs = _two(workdir, tmp_path)
    for proc in procs:
        assert "from step 1" in proc["out"]
    assert _without_seconds(_results(workdir)) == _without_seconds(_results(single))
    assert not [w for w in procs[1]["writes"] if not w[1].startswith("search")]


def test_a_workdir_the_processes_do_not_share_is_refused_on_every_process(tmp_path):
    """Process 0 takes the lock; process 1, looking at another folder (as on a disk of its
    own), does not see it: both stop with one line before anything is loaded."""
    workdirs = [tmp_path / "host0" / "run", tmp_path / "host1" / "run"]
    procs = _two(workdirs[0], tmp_path, ok=False, workdirs=workdirs)
    for i, proc in enumerate(procs):
        assert proc["returncode"] == 1
        lines = [line for line in proc["out"].splitlines() if line.startswith("launch.main:")]
        assert lines == [
            f"launch.main: processes disagree on the lock file of workdir {workdirs[i]}: "
            "process(es) [1] differ from process 0 (the workdir must be on a file system every "
            "process sees)"
        ], proc["out"][-3000:]
        assert "task nlgraph_gen" not in proc["out"]  # stopped before the task was read
    assert not workdirs[1].exists() and procs[1]["writes"] == []
    assert {path for _, path in procs[0]["writes"]} <= {".", ".lock"}


AGREE = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace

    import jax

    from hs_jax.runtime import distributed
    from hs_jax.runtime.errors import UserError
    from hs_jax.store.workdir import WorkdirError

    port, i = sys.argv[1], int(sys.argv[2])
    distributed.initialize(SimpleNamespace(
        coordinator_address=f"localhost:{port}", num_processes=2, process_id=i
    ))
    distributed.assert_same("the same thing", {"dags": [1, 2, 3]})
    print("same: passed", flush=True)
    try:
        distributed.assert_same("iteration 7's JFK assignments", [jax.process_index()])
    except AssertionError as e:
        print("differ:", e, flush=True)

    def refuse():
        raise WorkdirError("workdir /w is in use by pid 1")

    try:
        distributed.on_primary(refuse)
    except UserError as e:
        print("refused:", type(e).__name__, e, flush=True)
    print("shared:", distributed.on_primary(lambda: {"saved": [i, "x"]}), flush=True)
    """
)


def test_processes_that_disagree_stop_and_refusals_reach_every_process():
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", AGREE, str(port), str(i)],
            cwd=ROOT,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = _communicate(procs, timeout=120)
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0, out[-4000:]
        assert "same: passed" in out
        assert "differ: processes disagree on iteration 7's JFK assignments: process(es) [1]" in out
        assert "shared: {'saved': [0, 'x']}" in out  # process 0's value on both
    assert "refused: WorkdirError workdir /w is in use by pid 1" in outs[0]
    assert "refused: UserError process 0 stopped the run: WorkdirError: workdir /w is in" in outs[1]
