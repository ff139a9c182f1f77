"""What a run's workdir holds, who may write it, and how its files are written.

`hs_jax.run` keeps one run per workdir. This module gives it the pieces that make that safe
when launches are killed, repeated or started twice:

- **One writer.** `lock(workdir)` takes an exclusive `fcntl.flock` on the workdir folder
  itself and on `<workdir>/.lock`, the holder's note (pid, host, start time). The kernel drops
  the flocks when the holder dies, so a note left by a killed process is never obeyed; a second
  launch is refused at once with `WorkdirBusyError`, naming the holder. Deleting `.lock` does
  not release the lock (the folder's flock holds; a refused launch then names the holder from
  /proc/locks), and the holder writes the note again at its next archive write
  (`require_lock`, which writers that must be alone call first). Where a file system cannot
  flock a folder (NFS), the note's flock is the lock and must not be deleted. The note stays
  after the run; only a held flock counts.
- **Atomic files.** `atomic_path` stages a file or folder under a temporary name in the same
  folder and renames it into place, so every output is either complete or absent. Stale
  temporary entries (a killed writer's) carry `TMP_MARK` and are removed by
  `remove_temp_files` once the lock is held.
- **Run identity.** `flat_config` / `identity_diff` compare what defines a run (the resolved
  config without the fields that do not change results, plus file identities the runner
  adds) with the one saved in `run.json`; a difference is refused field by field.
- **Starting over.** `move_aside` moves a run's files into `previous/<UTC time>/`; nothing is
  deleted.
- **Test hook.** `kill_point` SIGKILLs the process when the point named by the environment
  variable `HS_JAX_TEST_KILL_AT` is reached (tests/reliability/test_kill_resume.py); a no-op
  when the variable is unset.

Only the standard library is imported, so the lock and the hook cost nothing to import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from hs_jax.runtime.errors import UserError

LOCK_NAME = ".lock"
RUN_JSON = "run.json"
RESULTS_JSON = "results.json"
TASK_JSON = "task.json"
PREVIOUS = "previous"
# Marks a staged (not yet renamed) file or folder: `<stem>.hs-tmp-<pid><suffix>`.
TMP_MARK = ".hs-tmp-"
KILL_ENV = "HS_JAX_TEST_KILL_AT"


class WorkdirError(UserError):
    """A workdir that `hs_jax.run` refuses to use as it is; the message says why and what to do
    (a user error: the launchers print it without a traceback)."""


class WorkdirBusyError(WorkdirError):
    """Another live process holds the workdir's lock."""


class WorkdirReadOnlyError(WorkdirError):
    """The workdir cannot be written: a read-only file system, or no permission."""


# ----------------------------------------------------------------------------- lock

# flock errors of a file system that cannot lock a directory (NFS emulates flock with
# byte-range locks, which need a descriptor open for writing; a directory has none).
_NO_DIRECTORY_LOCK = {errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
_log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Held:
    """A lock this process holds: the workdir's descriptor (None where the file system cannot
    lock a directory) and the holder's note, open and locked too."""

    dir_fd: int | None
    note_fd: int
    note: bytes  # written again, as it was, if the file is deleted


_HELD: dict[str, _Held] = {}  # by the workdir's real path


def _holder_note() -> bytes:
    since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    note = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    return json.dumps(note).encode() + b"\n"


def _alive_or_elsewhere(holder: Mapping[str, Any]) -> bool:
    """False only for a note of this host whose process is gone (a stale note the new holder
    has not overwritten yet)."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive, another user's
    return True


def _holder_from_proc_locks(workdir: Path) -> str | None:
    """'pid P' of the process holding a flock on the directory `workdir`, from /proc/locks
    (Linux, this host's processes): the holder when its note was deleted."""
    try:
        st = os.stat(workdir)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()  # '1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF'
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue  # '->' marks a waiter
        try:
            major, minor, inode = parts[5].split(":")
            same = (int(major, 16), int(minor, 16), int(inode)) == (
                os.major(st.st_dev), os.minor(st.st_dev), st.st_ino,
            )  # fmt: skip
        except ValueError:
            continue
        if same:
            return f"pid {parts[4]} (its note {workdir / LOCK_NAME} was deleted)"
    return None


def holder_of(workdir: Path) -> str:
    """Who holds `workdir`'s lock, for messages: 'pid P on HOST since T' from the holder's note
    (retried briefly: the holder writes it right after taking the lock), else from /proc/locks."""
    for _ in range(20):
        try:
            holder = json.loads((workdir / LOCK_NAME).read_text())
            if _alive_or_elsewhere(holder):
                return f"pid {holder['pid']} on {holder['host']} since {holder['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.05)
    return _holder_from_proc_locks(workdir) or "an unknown process"


def _busy(workdir: Path) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {workdir} is in use by {holder_of(workdir)}; wait for that run to end or "
        "use another --workdir"
    )


def _open_workdir(workdir: Path) -> int:
    try:
        return os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise WorkdirError(f"workdir {workdir} does not exist") from None
    except NotADirectoryError:
        raise WorkdirError(f"workdir {workdir} is a file, not a folder") from None
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} cannot be opened ({e.strerror})") from None


def _flock_now(fd: int, patience: float = 0.25) -> None:
    """An exclusive flock without waiting for a holder, but retried for `patience` seconds:
    a reader's probe (`checkpointing.live_holder`) holds a shared flock for microseconds,
    which must not refuse a launch. BlockingIOError when still held after that."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _lock_workdir(fd: int, workdir: Path) -> bool:
    """flock on the workdir itself; False where the file system cannot lock a directory."""
    try:
        _flock_now(fd)
    except BlockingIOError:
        raise _busy(workdir) from None
    except OSError as e:
        if e.errno not in _NO_DIRECTORY_LOCK:
            raise
        _log.warning(
            "%s: this file system cannot lock a folder (%s); the lock is the file %s alone, "
            "which must not be deleted while a run holds it", workdir, e.strerror, LOCK_NAME,
        )  # fmt: skip
        return False
    return True


def _open_note(workdir: Path, note: bytes) -> int:
    """The holder's note `<workdir>/.lock`, opened (created if missing), flocked and written."""
    path = workdir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise WorkdirReadOnlyError(
                f"workdir {workdir} is on a read-only file system: its lock {path} cannot be "
                "written"
            ) from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise WorkdirReadOnlyError(
                f"workdir {workdir} is not writable: its lock {path} cannot be written "
                f"({e.strerror})"
            ) from None
        raise WorkdirError(
            f"workdir {workdir}: its lock {path} cannot be opened ({e.strerror})"
        ) from None
    try:
        _flock_now(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
    except BlockingIOError:
        os.close(fd)
        raise _busy(workdir) from None
    except OSError as e:
        os.close(fd)
        raise WorkdirError(
            f"workdir {workdir}: its lock {path} cannot be written ({e.strerror})"
        ) from None
    return fd


@contextlib.contextmanager
def lock(workdir: str | os.PathLike) -> Iterator[Path]:
    """Holds an exclusive lock on `workdir` (which must exist) until the block ends; yields
    the path of the holder's note.

    The lock is a `fcntl.flock` on the workdir folder itself, so deleting `.lock` does not
    release it; `.lock` is a note of the holder (pid, host, start time), flocked too (where a
    file system cannot flock a folder, as on NFS, it is the lock) and written again by
    `require_lock` if deleted. Raises WorkdirBusyError at once, naming the holder, when
    another process (or another `lock` in this process) holds it; WorkdirReadOnlyError when
    the note cannot be written (a read-only file system, no permission); WorkdirError when
    `workdir` is missing or a file. A killed holder's lock is released by the kernel.
    """
    workdir = Path(workdir)
    dir_fd: int | None = _open_workdir(workdir)
    try:
        if not _lock_workdir(dir_fd, workdir):
            os.close(dir_fd)
            dir_fd = None
        note = _holder_note()
        held = _Held(dir_fd, _open_note(workdir, note), note)
        key = os.path.realpath(workdir)
        _HELD.setdefault(key, held)  # (a second one only where the note alone is the lock)
        try:
            yield workdir / LOCK_NAME
        finally:
            if _HELD.get(key) is held:
                del _HELD[key]
            os.close(held.note_fd)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)  # closing the descriptors releases the flocks


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def require_lock(workdir: str | os.PathLike) -> None:
    """Checks that this process holds `workdir`'s lock (`lock`) before a write that must have
    one writer (the archive): raises WorkdirError when it does not, or when the workdir was
    moved or replaced since it was locked. A deleted note is written again; where the lock is
    the note alone (`lock`), a process that took it since is named (WorkdirBusyError)."""
    workdir = Path(workdir)
    held = _HELD.get(os.path.realpath(workdir))
    if held is None:
        raise WorkdirError(
            f"workdir {workdir} is written by a process that does not hold its lock "
            "(hs_jax.store.workdir.lock)"
        )
    if held.dir_fd is not None and not _same_file(workdir, held.dir_fd):
        raise WorkdirError(
            f"workdir {workdir} was moved or deleted while this run held it; the run stops "
            "(its files are where the folder went)"
        )
    if _same_file(workdir / LOCK_NAME, held.note_fd):
        return
    if held.dir_fd is None:
        # The note was the lock: another launch may have taken the workdir since.
        try:
            fd = _open_note(workdir, held.note)
        except WorkdirBusyError as e:
            raise WorkdirBusyError(
                f"{workdir / LOCK_NAME} was deleted while this run held the workdir: {e}"
            ) from None
    else:
        fd = _open_note(workdir, held.note)
    os.close(held.note_fd)
    held.note_fd = fd
    _log.warning(
        "%s was deleted while this run held the workdir; written again", workdir / LOCK_NAME
    )


def make_workdir(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` (and its parents) if absent; a file in its place is a WorkdirError
    saying so (a user's mistake, one line), not a FileExistsError."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"{workdir} is a file, not a run's workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


# ----------------------------------------------------------------------------- atomic files


def temp_path(path: str | os.PathLike) -> Path:
    """The staging name of `path`: same folder and suffix (matplotlib reads the format from
    it), marked with TMP_MARK and this process's id."""
    path = Path(path)
    return path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write `path`'s content to (a file or a folder); on success
    it is renamed over `path`, on an error removed. An existing folder at `path` is replaced
    (renamed aside first: a folder cannot be renamed over a non-empty one)."""
    path = Path(path)
    tmp = temp_path(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f"{path.name}{TMP_MARK}old-{os.getpid()}")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`data` into `path`, atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`value` as indented JSON, atomically (numpy scalars and other numbers via float)."""
    write_bytes(path, (json.dumps(value, indent=1, default=float) + "\n").encode())


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line, atomically."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    write_bytes(path, text.encode("utf-8"))


def remove_temp_files(workdir: str | os.PathLike, skip: Iterable[str] = ()) -> list[Path]:
    """Removes every staged entry (name containing TMP_MARK) under `workdir`, except in the
    top-level folders named in `skip` and in `previous/`; returns them. Only call it while
    holding the lock: then they are all a killed writer's."""
    skip = {PREVIOUS, *skip}
    removed = []
    for root, dirs, files in os.walk(workdir):
        if Path(root) == Path(workdir):
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [*files, *dirs]:
            if TMP_MARK in name:
                removed.append(Path(root) / name)
        dirs[:] = [d for d in dirs if TMP_MARK not in d]
    for path in removed:
        _remove(path)
    return removed


# ----------------------------------------------------------------------------- starting over


def move_aside(workdir: str | os.PathLike, names: Iterable[str]) -> Path | None:
    """Moves the entries `names` of `workdir` (those that exist) into a new folder
    `workdir/previous/<UTC time>/`; returns it (None when there was nothing to move)."""
    workdir = Path(workdir)
    present = [name for name in names if (workdir / name).exists()]
    if not present:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = workdir / PREVIOUS / stamp
    k = 1
    while dest.exists():
        k += 1
        dest = workdir / PREVIOUS / f"{stamp}-{k}"
    dest.mkdir(parents=True)
    for name in present:
        os.replace(workdir / name, dest / name)
    return dest


# ----------------------------------------------------------------------------- identity


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def bytes_identity(data: bytes) -> dict[str, Any]:
    """Size and sha256 of a file's content."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def stat_identity(path: str | os.PathLike, patterns: Iterable[str] = ("*",)) -> dict[str, Any]:
    """Size and mtime of a file, or of the files directly in a folder whose names match one of
    `patterns` (a cheap stand-in for a hash of large model files)."""
    path = Path(path)
    if path.is_dir():
        files = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})
    else:
        files = [path]
    out = {}
    for f in files:
        st = f.stat()
        out[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars and arrays -> Python values, recursively (a JSON round
    trip gives the value back exactly)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return jsonable(value.tolist())  # arrays and numpy scalars (numpy is not imported here)
    return value


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dict with dotted keys (tuples as lists)."""
    out = {}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = jsonable(v)
    return out


def flat_config(config, free: Iterable[str]) -> dict[str, Any]:
    """A (resolved) ConfigDict as dotted keys, without the fields in `free` (a name ending in
    '.' drops a whole section)."""
    free = tuple(free)

    def kept(key: str) -> bool:
        return not any(key == f or (f.endswith(".") and key.startswith(f)) for f in free)

    return {k: v for k, v in flatten(config.to_dict()).items() if kept(k)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def identity_diff(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    *,
    defaults: Mapping[str, Any] | None = None,
    removed_ok: bool = False,
    saved_as: str = "the saved run",
) -> list[str]:
    """One line per differing dotted field (`'seed: saved 0, now 1'`), empty when they agree:
    the one comparison of recorded identities (run.json, task files, checkpoints, pools).

    A field only `now` has differs, unless `defaults` gives it the same value (a config field
    added to hs_jax after the saved run started, which ran as the default). A field only
    `saved` has differs, unless `removed_ok` (a config field removed from hs_jax since: nothing
    reads it any more); a checkpoint's or a pool's identity has no such fields, so there every
    missing field is a difference.
    """
    a, b = flatten(saved), flatten(now)
    defaults = defaults or {}
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            if key in defaults and _same(defaults[key], b[key]):
                continue
            lines.append(f"{key}: not recorded by {saved_as}, now {_short(b[key])}")
        elif key not in b:
            if not removed_ok:
                lines.append(f"{key}: saved {_short(a[key])}, not in this run")
        elif not _same(a[key], b[key]):
            lines.append(f"{key}: saved {_short(a[key])}, now {_short(b[key])}")
    return lines


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when there is no such file; a damaged file is a
    WorkdirError naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise WorkdirError(f"{path} is a folder, not a JSON file") from None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError included: random bytes
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else str(e)
        raise WorkdirError(f"{path} is not valid JSON ({reason}); it is damaged") from None


# ----------------------------------------------------------------------------- test hook

_kill_counts: dict[str, int] = {}


def _die(name: str) -> None:
    sys.stderr.write(f"{KILL_ENV}: SIGKILL at {name}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _die_during_write(name: str, folder: Path) -> None:
    while True:  # poll until a temporary entry (a save in progress) exists
        try:
            if any("tmp" in entry for entry in os.listdir(folder)):
                _die(name)
        except FileNotFoundError:
            pass
        time.sleep(0.0005)


def kill_point(name: str, watch: str | os.PathLike | None = None) -> None:
    """Test hook: SIGKILLs this process when `$HS_JAX_TEST_KILL_AT` is `<name>:<count>` and
    this is the count-th call with `name` in this process (count defaults to 1).

    With `watch` (a folder), the kill instead happens at the first moment after that call at
    which `watch` holds a temporary entry (an orbax save in progress), from a polling thread:
    the process dies in the middle of a write. No-op when the variable is unset.

    The points: 'setup' (runner: 1 task file written, 2 run.json written, 3 pool built;
    methods: 4 baseline scored), 'role_step' / 'weight_step' (search: after the step's
    scoring), 'checkpoint_write' (search: during a save), 'checkpoint_committed' (search:
    after one), 'evaluation' (a baseline's `method_api.Evaluator`: after each archived scoring
    call), 'outputs' (report: after each picture, after each exported expert), 'pool_write'
    (`experts.write_pool`: after each expert's folder of a staged pool; count k = k experts
    written, the next expert's files and the completion record not yet).
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] != int(count or 1):
        return
    if watch is None:
        _die(name)
    threading.Thread(target=_die_during_write, args=(name, Path(watch)), daemon=True).start()
