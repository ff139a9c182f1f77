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

Writes: whole calls are appended in one write, flushed and fsynced; a torn last line (a kill
mid-write) is dropped when read. `truncate` keeps the first rows: the Heterogeneous Swarms
search, which resumes from its own checkpoints, drops the rows of the iteration it redoes (they
come back identical), so the archive never counts a system twice.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hs_jax import workdir as workdir_lib
from hs_jax.graph import Dag

ARCHIVE = "archive.jsonl"


def weights_fingerprint(tree: Any) -> str:
    """CRC32 of a pytree's values (hex): which expert weights a system ran with."""
    crc = 0
    for leaf in jax.tree.leaves(tree):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).view(np.uint8).reshape(-1), crc)
    return f"{crc:08x}"


def system_key(dag: Dag, assignment: Iterable[int]) -> dict[str, Any]:
    return {"dag": dag.to_dict(), "assignment": [int(e) for e in assignment]}


class Archive:
    """Append-only JSONL of scored systems in `path` (module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        """Every complete row; a torn last line is dropped (and cut from the file)."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        rows, good = [], 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
        if good != len(raw):
            self._keep_bytes(raw[:good])
        return rows

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        data = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows)
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def diverged_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.diverged")

    def truncate(self, n_rows: int, *, keep_rest: bool = False) -> None:
        """Keep the first `n_rows` rows (atomically): the rest is redone by the caller. With
        `keep_rest` the dropped rows are first appended to `diverged_path()` (rows a changed
        run no longer reproduces: kept for the user, never replayed)."""
        rows = self.read()
        if len(rows) > n_rows and keep_rest:
            Archive(self.diverged_path()).append(rows[n_rows:])
        if len(rows) > n_rows:
            data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows[:n_rows])
            self._keep_bytes(data.encode())

    def _keep_bytes(self, data: bytes) -> None:
        with workdir_lib.atomic_path(self.path) as tmp:
            Path(tmp).write_bytes(data)
