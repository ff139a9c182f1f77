"""Errors that are not mistakes in the input still stop a launcher with one line.

A full disk, a file over the size limit, a read-only file system, Ctrl-C and a damaged
run.json or results.json each stop `launch.main` (configs/tiny.py) with exactly one line on
stderr, `launch.main: <what happened>`, no traceback and no orbax ERROR log, and exit status 1
(130 for SIGINT). The line for a refused write names the file and what it belongs to; a run
stopped by a full disk or the size limit resumes, once the space is there, to the results.json
of an uninterrupted run. A finished run on a read-only file system is returned as it is.

The full disk is a small tmpfs and the read-only file system a read-only bind mount, made by
the test where it may mount (root with CAP_SYS_ADMIN); elsewhere those tests are skipped with
the reason. The size limit (RLIMIT_FSIZE, EFBIG) needs no privilege and always runs.
"""

import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hs_jax.runtime.errors import (
    EXIT_INTERRUPTED,
    UserError,
    format_error,
    is_user_error,
    write_failure,
)
from hs_jax.store.workdir import KILL_ENV, TMP_MARK

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = "launch.main"
# An absl ERROR line (orbax logs a failed write from its writer thread with a traceback).
ABSL_ERROR = re.compile(r"E\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")
# Small enough that a checkpoint of the tiny run does not fit (a finished tiny workdir takes
# about 740 KiB), big enough for run.json, task.json and the first archive rows.
FULL_DISK_SIZE = "450k"
# RLIMIT_FSIZE below the largest checkpoint data file of the tiny run (50-90 KiB), above the
# other files the run writes before its first checkpoint.
FILE_SIZE_LIMIT = 40 * 1024


def _env():
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _launch(workdir, *args, preexec_fn=None):
    cmd = [sys.executable, "-m", LAUNCHER, "--config=configs/tiny.py", f"--workdir={workdir}"]
    return subprocess.run(
        [*cmd, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec_fn,
    )


def _error_line(proc, status=1):
    """The one line that reports the stop: exit `status`, no traceback, no absl ERROR log,
    one `launch.main: ` line and no continuation line after it."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, out[-6000:]
    assert "Traceback" not in out, out[-6000:]
    assert not ABSL_ERROR.search(proc.stderr), proc.stderr[-6000:]
    lines = [line.split("\r")[-1] for line in proc.stderr.splitlines()]
    mine = [k for k, line in enumerate(lines) if f"{LAUNCHER}: " in line]
    assert len(mine) == 1, proc.stderr[-6000:]
    line = lines[mine[0]]
    assert line.startswith(f"{LAUNCHER}: "), line
    assert not any(later.startswith("  ") for later in lines[mine[0] + 1 :]), proc.stderr
    return line


def _comparable(workdir):
    results = json.loads((Path(workdir) / "results.json").read_text())
    results.pop("seconds")
    return json.dumps(results, sort_keys=True)  # NaN-safe, exact float repr


def _temporary(workdir):
    return [str(p) for p in Path(workdir).rglob("*") if "tmp" in p.name]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


def _mount(*args):
    """Runs `mount *args`; skips the test, with the reason, where mounting is not permitted."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
        pytest.skip(f"this test mounts a file system and may not here (mount {args[0]}: {why})")


def _umount(path):
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A FULL_DISK_SIZE tmpfs; yields (its folder, a function that enlarges it to 16 MiB)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={FULL_DISK_SIZE}", f"hs-jax-{uuid.uuid4().hex[:8]}", where)

    def free_space():
        subprocess.run(["mount", "-o", "remount,size=16m", str(where)], check=True)

    try:
        yield where, free_space
    finally:
        _umount(where)


@pytest.fixture
def read_only_mount(tmp_path):
    """(a folder to fill, the same folder seen read-only through a bind mount)."""
    source, view = tmp_path / "source", tmp_path / "read_only"
    source.mkdir()
    view.mkdir()
    _mount("--bind", source, view)
    try:
        remount = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(view)], capture_output=True, text=True
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot make a read-only bind mount here: {remount.stderr.strip()}")
        yield source, view
    finally:
        _umount(view)


# ----------------------------------------------------------------------------- full disk


def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(
    uninterrupted, small_tmpfs
):
    mount, free_space = small_tmpfs
    workdir = mount / "w"
    line = _error_line(_launch(workdir))
    assert line.startswith(f"{LAUNCHER}: no space left on device writing {workdir}/"), line
    assert re.search(r" \((checkpoint step \d+|the [^)]+)\); ", line), line  # what was written
    assert line.endswith("free space and run the same command to resume"), line
    assert not (workdir / "results.json").exists()

    free_space()
    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _comparable(workdir) == _comparable(uninterrupted)
    assert not _temporary(workdir)


def test_a_file_over_the_size_limit_is_one_line_and_the_run_resumes(uninterrupted, tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`): the write fails with EFBIG (Python ignores SIGXFSZ)."""

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))

    workdir = tmp_path / "w"
    line = _error_line(_launch(workdir, preexec_fn=limit_file_size))
    assert line.startswith(f"{LAUNCHER}: file too large writing {workdir}/"), line
    assert "(checkpoint step " in line, line
    assert "over the file size limit (ulimit -f)" in line, line

    proc = _launch(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _comparable(workdir) == _comparable(uninterrupted)
    assert not _temporary(workdir)


# ----------------------------------------------------------------------------- read-only


def test_a_finished_run_on_a_read_only_file_system_is_returned_as_it_is(
    uninterrupted, read_only_mount
):
    source, view = read_only_mount
    shutil.copytree(uninterrupted, source / "done")
    before = _comparable(source / "done")
    proc = _launch(view / "done")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert "H-Swarms system" in proc.stdout  # the summary of the finished run
    assert _comparable(source / "done") == before


def test_a_run_that_must_write_on_a_read_only_file_system_is_one_line(
    uninterrupted, read_only_mount
):
    source, view = read_only_mount
    (source / "started").mkdir()
    shutil.copy(uninterrupted / "run.json", source / "started" / "run.json")
    line = _error_line(_launch(view / "started"))
    assert "read-only file system" in line and str(view / "started") in line, line
    line = _error_line(_launch(view / "new"))  # the workdir cannot even be created
    assert "read-only file system" in line and str(view / "new") in line, line


# ----------------------------------------------------------------------------- SIGINT


def test_sigint_stops_with_one_line_and_status_130(tmp_path):
    cmd = [sys.executable, "-m", LAUNCHER, "--config=configs/tiny.py", f"--workdir={tmp_path}"]
    cmd += ["--config.search.max_iterations=50", "--config.search.patience=50"]
    # A suite started in the background (`cmd &` in a non-interactive shell) runs with SIGINT
    # ignored, which its children inherit (and then never see a Ctrl-C): restore the default.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    logged = []
    for line in proc.stderr:  # the search logs each iteration: interrupt it once it has
        logged.append(line)
        if "iteration 0:" in line:
            break
    else:
        proc.wait()
        pytest.fail("the search logged no iteration:\n" + "".join(logged)[-4000:])
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, "".join(logged) + stderr)
    line = _error_line(done, status=EXIT_INTERRUPTED)
    assert line == (
        f"{LAUNCHER}: interrupted (SIGINT); run the same command to resume from the last checkpoint"
    )


# ----------------------------------------------------------------------------- damaged JSON


@pytest.mark.parametrize("name", ["run.json", "results.json"])
def test_random_bytes_in_a_run_file_are_one_line(uninterrupted, tmp_path, name):
    workdir = tmp_path / "w"
    shutil.copytree(uninterrupted, workdir)
    (workdir / name).write_bytes(bytes(range(256)) * 4)
    line = _error_line(_launch(workdir))
    assert f"{workdir / name} is not valid JSON (not UTF-8 text); it is damaged" in line, line


# ----------------------------------------------------------------------------- in-process


def _raised_from(fn, *args):
    try:
        fn(*args)
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


def test_write_failures_are_found_wherever_they_are_wrapped():
    enospc = OSError(errno.ENOSPC, "No space left on device", "/w/search/3/state/d/ab")
    step3 = "no space left on device writing /w/search/3/state/d/ab (checkpoint step 3)"
    assert write_failure(enospc).startswith(step3 + "; free space")

    def save():
        try:
            raise enospc
        except OSError as e:
            raise RuntimeError("the save failed") from e

    wrapped = _raised_from(save)
    group = ExceptionGroup("writers", [ValueError("other"), wrapped])
    assert write_failure(group).startswith(step3)
    assert is_user_error(group) and format_error("launch.x", group).startswith(f"launch.x: {step3}")

    # tensorstore (orbax's writer) raises a ValueError naming the file and the errno.
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "k/0.0.0" in OCDBT database at local file '
        '"/w/search/2.orbax-checkpoint-tmp/state/ocdbt.process_0/": Failed writing: '
        '"/w/search/2.orbax-checkpoint-tmp/state/ocdbt.process_0/d/c9": Failed to write 15804 '
        "bytes to file 15: No space left on device [os_error_code='28'] "
        '[tensorstore_spec=\'{"path":"/elsewhere/"}\']'
    )
    assert write_failure(tensorstore).startswith(
        "no space left on device writing /w/search/2.orbax-checkpoint-tmp/state/ocdbt.process_0"
        "/d/c9 (checkpoint step 2)"
    )

    # `f.write` raises ENOSPC without a file name: the writing frame's `path` names it.
    def write(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    staged = f"/w/results{TMP_MARK}12.json"  # hs_jax.store.workdir's staged name of results.json
    unnamed = _raised_from(write, Path(staged))
    assert write_failure(unnamed).startswith(
        "no space left on device writing /w/results.json (the run's results); "
    )
    staged = OSError(errno.ENOSPC, "No space", f"/w/best_experts{TMP_MARK}3/expert_0/a.bin")
    assert " writing /w/best_experts/expert_0/a.bin (the best system's" in write_failure(staged)

    read_only = OSError(errno.EROFS, "Read-only file system", "/w/.lock")
    assert write_failure(read_only).startswith(
        "read-only file system writing /w/.lock (the workdir's lock file); "
    )
    too_large = OSError(errno.EFBIG, "File too large", "/w/archive.jsonl")
    assert "(the archive of scored systems): over the file size limit" in write_failure(too_large)
    quota = OSError(errno.EDQUOT, "Disk quota exceeded", "/w/best_experts/expert_0/x")
    assert "(the best system's exported experts)" in write_failure(quota)

    # Other errors are not write failures.
    assert write_failure(OSError(errno.EIO, "I/O error", "/w/x")) is None
    assert write_failure(ValueError("operands could not be broadcast")) is None
    assert not is_user_error(RuntimeError("a bug"))


def test_a_user_error_keeps_its_message_when_a_write_failure_is_behind_it():
    def check():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/w/x")
        except OSError as e:
            raise UserError("config.x: explained") from e

    assert format_error("launch.x", _raised_from(check)) == "launch.x: config.x: explained"
