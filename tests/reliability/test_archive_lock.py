"""archive.jsonl holds exactly the evaluations a run counts, and the workdir lock holds even when
its file is deleted (hs_jax.methods.archive, hs_jax.store.workdir.lock).

- A launch killed before the first checkpoint (during its write, then inside a role step) is
  rerun from scratch: its archive equals an uninterrupted run's (it used to keep the killed
  launches' rows and add the rerun's: 14 rows for 8).
- A damaged line in the middle of the archive is set aside in archive.jsonl.damaged with its
  line number; the rows after it are kept, and a resume works: the search ends with the
  uninterrupted archive but the damaged row, a baseline (which replays its archive) with the
  whole uninterrupted archive.
- Deleting `.lock` while a run holds the workdir does not let a second writer in: the lock is
  a flock on the workdir folder, and the refusal names the holder.

Kills use the test hook of hs_jax.store.workdir.kill_point (HS_JAX_TEST_KILL_AT=<point>:<count>).
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import launch

from hs_jax.store import workdir as workdir_lib
from hs_jax.store.workdir import WorkdirBusyError, WorkdirReadOnlyError

ROOT = Path(__file__).resolve().parents[2]


def _finish(workdir, method="hs"):
    proc = launch(workdir, method)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def _results(workdir):
    results = json.loads((workdir / "results.json").read_text())
    results.pop("seconds")
    return json.dumps(results, sort_keys=True)


def _lines(workdir, name="archive.jsonl"):
    return (workdir / name).read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    _finish(workdir)
    return workdir


def _garble(workdir, index):
    """Line `index` (0-based) of the archive made unreadable; returns it."""
    lines = _lines(workdir)
    lines[index] = lines[index][:20] + b"\x00\xff garbled\n"
    (workdir / "archive.jsonl").write_bytes(b"".join(lines))
    return lines[index]


# ----------------------------------------------------------------------------- the archive


def test_archive_after_kills_before_the_first_checkpoint_equals_the_uninterrupted_one(
    uninterrupted, tmp_path
):
    rows = _lines(uninterrupted)
    assert len(rows) == json.loads((uninterrupted / "results.json").read_text())["evaluations"]
    workdir = tmp_path / "run"
    for kill in ("checkpoint_write:1", "role_step:1"):  # 4 rows, then 2 rows, no step committed
        proc = launch(workdir, kill=kill)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stderr[-4000:])
        assert len(_lines(workdir)) == {"checkpoint_write:1": 4, "role_step:1": 2}[kill]
    assert "resumed" not in _finish(workdir)
    assert _lines(workdir) == rows
    assert _results(workdir) == _results(uninterrupted)


def test_a_garbled_line_keeps_the_rows_after_it_and_the_search_resumes(uninterrupted, tmp_path):
    """The run as it was killed after iteration 1's weight step (step 1 committed with 4 rows,
    all 8 rows written); row 1 is garbled: set aside, rows 2-3 kept, rows 4-7 scored again."""
    workdir = shutil.copytree(uninterrupted, tmp_path / "run")
    (workdir / "results.json").unlink()
    shutil.rmtree(workdir / "best_experts")
    shutil.rmtree(workdir / "search" / "2")
    garbled = _garble(workdir, 1)
    out = _finish(workdir)
    assert "resumed" in out and "line(s) 2 damaged" in out
    rows = _lines(uninterrupted)
    assert _lines(workdir) == rows[:1] + rows[2:]
    (damaged,) = [json.loads(line) for line in _lines(workdir, "archive.jsonl.damaged")]
    assert damaged["line"] == 2
    assert damaged["text"] == garbled.decode("utf-8", "backslashreplace")
    assert _results(workdir) == _results(uninterrupted)


def test_a_baseline_replays_past_a_garbled_line_and_ends_with_the_whole_archive(tmp_path):
    """random_search replays its archive: the call holding the garbled row is scored again, so
    the archive ends whole; the rows that were after it are kept in archive.jsonl.diverged."""
    whole = tmp_path / "whole"
    _finish(whole, "random_search")
    rows = _lines(whole)
    workdir = shutil.copytree(whole, tmp_path / "run")
    (workdir / "results.json").unlink()
    _garble(workdir, 3)
    out = _finish(workdir, "random_search")
    assert "line(s) 4 damaged" in out
    assert _lines(workdir) == rows
    assert len(_lines(workdir, "archive.jsonl.damaged")) == 1
    diverged = [
        json.loads(line)["evaluation"] for line in _lines(workdir, "archive.jsonl.diverged")
    ]
    assert diverged and min(diverged) <= 3 and max(diverged) == len(rows) - 1
    assert _results(workdir) == _results(whole)


# ----------------------------------------------------------------------------- the lock

HOLDER = """
import sys
from hs_jax.store import workdir as w
with w.lock(sys.argv[1]):
    print("held", flush=True)
    for line in sys.stdin:  # each line: check the lock, as an archive write does
        w.require_lock(sys.argv[1])
        print("checked", flush=True)
"""

TAKER = """
import sys
from hs_jax.store import workdir as w
try:
    with w.lock(sys.argv[1]):
        print("taken")
except w.WorkdirBusyError as e:
    print(e)
"""


def _try_lock(workdir):
    proc = subprocess.run(
        [sys.executable, "-c", TAKER, str(workdir)], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_deleted_lock_file_still_refuses_a_second_writer(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        note = json.loads((workdir / workdir_lib.LOCK_NAME).read_text())
        assert note["pid"] == holder.pid
        (workdir / workdir_lib.LOCK_NAME).unlink()
        refusal = _try_lock(workdir)  # another process
        assert refusal.startswith(f"workdir {workdir} is in use by pid {holder.pid} "), refusal
        assert not (workdir / workdir_lib.LOCK_NAME).exists()  # the refused launch wrote nothing
        with pytest.raises(WorkdirBusyError, match=f"in use by pid {holder.pid} "):
            with workdir_lib.lock(workdir):  # this process
                pass
        # The holder writes its note again at its next archive write.
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "checked"
        assert json.loads((workdir / workdir_lib.LOCK_NAME).read_text()) == note
        assert _try_lock(workdir).startswith(
            f"workdir {workdir} is in use by pid {holder.pid} on {note['host']} since "
        )
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert _try_lock(workdir) == "taken"  # released with its holder


def test_without_a_folder_lock_a_deleted_note_is_detected(tmp_path, monkeypatch):
    """Where a file system cannot flock a folder (NFS: EBADF), the note is the lock; a writer
    that took it after its deletion makes the first holder stop at its next archive write."""
    real = workdir_lib.fcntl.flock

    def no_folder_locks(fd, op):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, op)

    monkeypatch.setattr(workdir_lib.fcntl, "flock", no_folder_locks)
    with workdir_lib.lock(tmp_path):
        with pytest.raises(WorkdirBusyError):
            with workdir_lib.lock(tmp_path):
                pass
        (tmp_path / workdir_lib.LOCK_NAME).unlink()
        with workdir_lib.lock(tmp_path):
            with pytest.raises(WorkdirBusyError, match=r"\.lock was deleted while this run held"):
                workdir_lib.require_lock(tmp_path)


def test_a_read_only_workdir_is_one_line_naming_it(tmp_path, monkeypatch):
    real = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(workdir_lib.LOCK_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(workdir_lib.os, "open", read_only)
    with pytest.raises(WorkdirReadOnlyError) as e:
        with workdir_lib.lock(tmp_path):
            pass
    assert str(e.value) == (
        f"workdir {tmp_path} is on a read-only file system: its lock "
        f"{tmp_path / workdir_lib.LOCK_NAME} cannot be written"
    )
    monkeypatch.undo()
    with workdir_lib.lock(tmp_path):  # the folder's flock was released
        pass
