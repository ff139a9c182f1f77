"""Finished workdirs, read for analysis: results.json, archive.jsonl and run.json's config.

Analysis only reads: nothing in a workdir is written or repaired (the run itself sets damaged
archive lines aside, `hs_jax.methods.archive.Archive.repair`, before it finishes); a torn last line
(a killed writer) is dropped in memory.

A workdir is finished when it holds results.json (`hs_jax.pipeline.report` writes it last).
`find_workdirs` takes the launcher's comma list: each entry is a workdir, or a folder searched
(recursively) for workdirs; runs moved aside by a restart (`previous/`) are skipped. Anything
missing, unfinished or damaged is a `UserError` naming the path, so the launcher prints it in one
line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hs_jax.runtime.errors import UserError
from hs_jax.store import workdir as workdir_lib

# hs_jax.methods.archive.ARCHIVE, named here so that analysis does not import jax (that module
# does).
ARCHIVE = "archive.jsonl"

# results.json fields every analysis relies on (hs_jax.pipeline.report.results writes them all).
REQUIRED = ("method", "task", "experts", "best_system", "single_experts")
REQUIRED_BEST = ("dag", "assignment", "test_utility", "test_item_scores")


class AnalysisInputError(UserError):
    """A workdir that cannot be analysed: missing, unfinished, or with damaged files."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished run: its workdir, results.json, archive rows and flat config (run.json's
    `identity.config`, dotted keys; {} when run.json is absent)."""

    path: Path
    results: dict[str, Any]
    archive: tuple[dict[str, Any], ...]
    config: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.results["method"])

    @property
    def task(self) -> str:
        return str(self.results["task"])

    @property
    def seed(self) -> Any:
        return self.results.get("seed")

    @property
    def experts(self) -> list[str]:
        return list(self.results["experts"])

    @property
    def label(self) -> str:
        """The workdir's folder name: what tables and legends call the run."""
        return self.path.name

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config field of the run (e.g. 'search.prune_tau'), `default` when not recorded."""
        return self.config.get(dotted, default)


def _read_json_file(path: Path) -> Any:
    try:
        return workdir_lib.read_json(path)
    except workdir_lib.WorkdirError as e:
        raise AnalysisInputError(str(e)) from e


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete row of a JSONL file (archive.jsonl, test_prompts.jsonl; [] when absent);
    a torn or damaged last line is dropped, a damaged line before the last is an error naming
    the line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines(keepends=True)
    rows = []
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        try:
            row = json.loads(line)
        except ValueError:
            if last:
                break  # a kill mid-append: the row never counted
            raise AnalysisInputError(f"{path}: line {k + 1} is not valid JSON") from None
        if last and not line.endswith(b"\n"):
            break
        if not isinstance(row, dict):
            raise AnalysisInputError(f"{path}: line {k + 1} is not a JSON object")
        rows.append(row)
    return rows


def _check_results(path: Path, results: Any) -> None:
    if not isinstance(results, Mapping):
        raise AnalysisInputError(f"{path}: not a JSON object")
    missing = [k for k in REQUIRED if k not in results]
    best = results.get("best_system")
    if isinstance(best, Mapping):
        missing += [f"best_system.{k}" for k in REQUIRED_BEST if k not in best]
    elif "best_system" not in missing:
        missing.append("best_system (not an object)")
    if missing:
        raise AnalysisInputError(
            f"{path}: not a results.json of hs_jax (missing {', '.join(missing)})"
        )


def load_run(path: str | os.PathLike) -> Run:
    """The finished run in `path` (AnalysisInputError when it is not one)."""
    path = Path(path)
    if not path.is_dir():
        raise AnalysisInputError(f"workdir {path}: no such folder")
    results_path = path / workdir_lib.RESULTS_JSON
    results = _read_json_file(results_path)
    if results is None:
        raise AnalysisInputError(
            f"workdir {path}: no {workdir_lib.RESULTS_JSON} (not a finished run)"
        )
    _check_results(results_path, results)
    run_json = _read_json_file(path / workdir_lib.RUN_JSON) or {}
    config = run_json.get("identity", {}).get("config", {}) if isinstance(run_json, dict) else {}
    return Run(path, dict(results), tuple(read_jsonl(path / ARCHIVE)), dict(config))


def find_workdirs(spec: str | Sequence[str]) -> list[Path]:
    """The workdirs named by `spec` (a comma list, or a list): each entry a finished workdir,
    or a folder holding finished workdirs at any depth (`previous/` folders skipped). In the
    order given, each folder's workdirs sorted; no workdir twice."""
    entries = [e.strip() for e in spec.split(",")] if isinstance(spec, str) else list(spec)
    entries = [e for e in entries if str(e)]
    if not entries:
        raise AnalysisInputError("--workdirs is empty: name workdirs or a folder holding them")
    found: list[Path] = []
    for entry in entries:
        root = Path(entry)
        if not root.is_dir():
            raise AnalysisInputError(f"workdir {root}: no such folder")
        if (root / workdir_lib.RESULTS_JSON).exists():
            found.append(root)
            continue
        inside = []
        for folder, dirs, files in os.walk(root):
            if workdir_lib.RESULTS_JSON in files:
                inside.append(Path(folder))
                dirs[:] = []  # a workdir's own subfolders hold no other runs
                continue
            dirs[:] = sorted(d for d in dirs if d != workdir_lib.PREVIOUS)
        if not inside:
            raise AnalysisInputError(
                f"workdir {root}: no {workdir_lib.RESULTS_JSON} in it or below it "
                "(not a finished run, nor a folder of finished runs)"
            )
        found += sorted(inside)
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def load_runs(spec: str | Sequence[str]) -> list[Run]:
    """Every finished run `spec` names (see `find_workdirs`)."""
    return [load_run(p) for p in find_workdirs(spec)]
