"""The archive: every system a method scores on dev, one JSON line each (workdir/archive.jsonl).

A row holds the method, the evaluation's index (0, 1, ... in the order the method scored),
the step that asked for it (say 'role', 'weight', 'random', 'greedy_soup'), the iteration, the
system (DAG as `Dag.to_dict`, assignment), a fingerprint of the expert weights it ran with, its
dev utility, and on the first row of each scoring call of a baseline that call's cost (the
engine's counters and the executor's; the search's costs are in its checkpoints and
results.json's cost_per_iteration). So a run can be audited system by system, and a method's
best-so-far against its budget drawn (`hs_jax.analysis.curves.best_so_far`).

The archive is also how methods without checkpoints resume (`method_api.Evaluator`): a method
is a deterministic function of its seed and the utilities it is given, so a rerun replays the
archived utilities and costs up to where the killed run stopped, and scores from there.

Consistency: the archive is written only by the holder of the workdir's lock
(`workdir.require_lock`), and holds exactly the evaluations its run counts. Whole calls are
appended in one write, fsynced, and rolled back when the write fails (a full disk), so a failed
append leaves no row. A torn last line (a kill mid-write) is dropped; a damaged line elsewhere
is set aside in `archive.jsonl.damaged` with its line number (`repair`), with a warning, and the
rows after it are kept. `truncate(n)` keeps the rows of evaluations 0..n-1: the Heterogeneous
Swarms search, which resumes from its own checkpoints, keeps those of its last committed step
(from scratch, none) and redoes the rest (they come back identical), so the archive never
counts a system twice; a baseline that goes another way than its archive moves the rest to
`archive.jsonl.diverged`. `read` only reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging

from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm.graph import Dag

ARCHIVE = "archive.jsonl"


def weights_fingerprint(tree: Any) -> str:
    """CRC32 of a pytree's values (hex): which expert weights a system ran with."""
    crc = 0
    for leaf in jax.tree.leaves(tree):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).view(np.uint8).reshape(-1), crc)
    return f"{crc:08x}"


def system_key(dag: Dag, assignment: Iterable[int]) -> dict[str, Any]:
    return {"dag": dag.to_dict(), "assignment": [int(e) for e in assignment]}


@dataclasses.dataclass
class _Scan:
    """archive.jsonl line by line: the good lines (bytes, row), the damaged ones (1-based line
    number, bytes) and a torn last line (no newline: a kill mid-write)."""

    good: list[tuple[bytes, dict[str, Any]]]
    damaged: list[tuple[int, bytes]]
    torn: bytes


def _scan(raw: bytes) -> _Scan:
    scan = _Scan([], [], b"")
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        if not line.endswith(b"\n"):
            scan.torn = line  # only the last line can lack its newline
            break
        try:
            row = json.loads(line)
        except ValueError:  # UnicodeDecodeError included
            row = None
        if isinstance(row, dict):
            scan.good.append((line, row))
        else:
            scan.damaged.append((number, line))
    return scan


def _evaluation(row: Mapping[str, Any], position: int) -> int:
    """The row's evaluation index (its position for a row without one)."""
    value = row.get("evaluation", position)
    return value if isinstance(value, int) else position


def _write_failed(path: Path, e: OSError, what: str) -> workdir_lib.WorkdirError:
    return workdir_lib.WorkdirError(
        f"{path}: {e.strerror} while {what}; the archive is as it was (a rerun resumes)"
    )


def _append_bytes(path: Path, data: bytes) -> None:
    """`data` at the end of `path`, fsynced; on a failure (a full disk) the file is cut back to
    its former length and a WorkdirError names the path."""
    what = f"appending {len(data.splitlines())} rows"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise _write_failed(path, e, what) from None
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise _write_failed(path, e, what) from None
    finally:
        os.close(fd)


class Archive:
    """Append-only JSONL of scored systems in `path` (module docstring). Every method that
    writes requires this process to hold the lock of `path`'s folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _scan(self) -> _Scan:
        try:
            return _scan(self.path.read_bytes())
        except FileNotFoundError:
            return _Scan([], [], b"")

    def read(self) -> list[dict[str, Any]]:
        """Every complete, readable row, in file order; the file is not written (a damaged line
        is skipped, a torn last line dropped: `repair` sets them aside)."""
        return [row for _, row in self._scan().good]

    def repair(self) -> list[dict[str, Any]]:
        """The rows, as `read`, with the file cut to them: each damaged line is appended to
        `damaged_path()` with its line number (and a warning), a torn last line is dropped."""
        return [row for _, row in self._repaired()]

    def _repaired(self) -> list[tuple[bytes, dict[str, Any]]]:
        workdir_lib.require_lock(self.path.parent)
        scan = self._scan()
        if scan.damaged:
            lines = ", ".join(str(number) for number, _ in scan.damaged)
            logging.warning(
                "%s: line(s) %s damaged: set aside in %s; the rows after them are kept",
                self.path, lines, self.damaged_path(),
            )  # fmt: skip
            when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            records = [
                {"line": number, "text": line.decode("utf-8", "backslashreplace"), "found": when}
                for number, line in scan.damaged
            ]
            _append_bytes(self.damaged_path(), _jsonl(records))
        if scan.torn:
            logging.info("%s: a torn last line (a killed write) dropped", self.path)
        if scan.damaged or scan.torn:
            self._keep_bytes(b"".join(line for line, _ in scan.good), "setting damaged lines aside")
        return scan.good

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Appends `rows` in one write (module docstring: none is kept if it fails)."""
        data = _jsonl(rows)
        if not data:
            return
        workdir_lib.require_lock(self.path.parent)
        if self._torn():  # a row must not be glued to a killed write's fragment
            self.repair()
        _append_bytes(self.path, data)

    def _torn(self) -> bool:
        """Whether the file ends inside a line (its last byte is not a newline)."""
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, os.SEEK_END) == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def diverged_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.diverged")

    def damaged_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.damaged")

    def truncate(self, n_rows: int, *, keep_rest: bool = False) -> int:
        """Keeps the rows of evaluations 0..n_rows-1 (atomically; a damaged line is set aside
        first, `repair`); returns how many rows were dropped: the rest is redone by the caller.
        With `keep_rest` the dropped rows are first appended to `diverged_path()` (rows a
        changed run no longer reproduces: kept for the user, never replayed)."""
        good = self._repaired()
        kept = [line for k, (line, row) in enumerate(good) if _evaluation(row, k) < n_rows]
        if len(kept) == len(good):
            return 0
        if keep_rest:
            rest = [line for k, (line, row) in enumerate(good) if _evaluation(row, k) >= n_rows]
            _append_bytes(self.diverged_path(), b"".join(rest))
        self._keep_bytes(b"".join(kept), f"keeping its first {len(kept)} rows")
        return len(good) - len(kept)

    def _keep_bytes(self, data: bytes, what: str) -> None:
        try:
            workdir_lib.write_bytes(self.path, data)
        except OSError as e:
            raise _write_failed(self.path, e, what) from None


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows).encode("utf-8")
