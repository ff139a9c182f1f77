"""A comparison of methods on tasks: one run per cell (method x task x seed), then the table.

  python -m launch.compare --config=configs/tiny.py --methods=all --tasks=nlgraph_gen \
    --seeds=0,1,2 --workdir=runs/compare

Cells. Every method of `--methods` ('all': every name in `hs_jax.methods.METHODS`) on every
task of `--tasks`, once per seed of `--seeds` (with `--seeded_methods=a,b` only those methods;
every other one runs once with the config's seed, and the table compares a cell only with cells
of the same seeds and items). A task is a registered task name (`hs_jax.tasks.TASKS`:
'nlgraph_gen' is generated, the others read `<data_dir>/<its file name>`; data_dir defaults
to the folder of config.task.path, else data/eval) or a path to a task JSON file (its column
is named after the file's `dataset`, or its stem). A cell is an ordinary run,
`hs_jax.run(cell config, <workdir>/<task>/<method>/seed_<k>)`, in this process: the config
given (with its `--config.x` overrides) with config.method, config.seed and the task set.

Order and budget. Each task's 'hs' cells run first, so a budgeted method (every method that is
not the search or one of its ablations: random search, the dynamic baselines) gets the utility
evaluations Heterogeneous Swarms actually spent: config.budget is set to `evaluations` of the
'hs' cell of the same task and seed (its results.json, also one left by an earlier comparison
in the same workdir). A cell without such an 'hs' result, or any cell with
`budget_from_hs=False`, keeps config.budget (0 = `method_api.budget_of`: the most the search
can spend). cells.json records each cell's budget and where it came from.

Shared pools. A trained pool (experts.source='train' without experts.pool_dir) is trained once
per distinct set of pool-defining settings (the fields `identity.pool_reusable` compares:
seed, protocol, model, task, experts) into `<workdir>/<task>/pools/<hash>` and loaded by every
cell with those settings, so the methods of one seed are compared on the same experts. It is
written whole or not at all (`experts.write_pool`); a pool folder there that is not whole (a
kill in an older hs_jax) is moved aside to `<hash>.incomplete-<UTC time>` and trained again
by the next cell that needs it.

Resume. A finished cell (its results.json present) is not recomputed: `hs_jax.run` returns it
as it is, loading nothing and writing nothing (a cell whose config changed since is refused by
its run identity, and reported failed). A killed comparison, run again with the same command,
goes over the cells again: the finished ones are counted as such in the log, the one it was
killed in resumes through `hs_jax.run`'s own resume, the rest run; the staged files a killed
comparison left (its own: cells.json, the tables, the shared pools, the singles cache) are
removed once its lock is held (`remove_stale_files`), each cell's by its run.
`--config.restart=True` starts every cell over (each run moved aside into its `previous/`).

Tuning (`tune_trials` = K > 0). Every method with a declared space
(`hs_jax.sweep.method_spaces`: 'hs' and its ablations the paper's grid, each tunable baseline a
small grid of its own) is a tuned cell in `<workdir>/<task>/<method>/tuned_seed_<k>`: a sweep
of K runs over its space (resumed like any sweep), the best on dev reported with its test
numbers, and `evaluations`, `cost` and `seconds` of every trial added up in its results.json,
so the table counts them in the method's cost; a budgeted method's trials each get the
evaluations of the tuned 'hs' cell's chosen run. Methods without a space run once, as above.

Failures. A method that does not apply (`MethodSpec.applies` of the cell's resolved config,
or `method_api.NotApplicable` raised by the method) is reported as 'not_applicable' with its
reason; a cell that raises anything else is reported 'failed' with the error's first line and
its traceback in `<cell>/failed.txt`. Neither stops the other cells; a failed cell is tried
again by the next comparison. `failure_summary` names the failed cells in one line;
launch.compare prints it and exits 1 when a cell failed (not for a cell that does not apply).

Outputs in the workdir: cells.json (every cell: method, family, task, seed, workdir, status,
reason, budget; rewritten after each cell, so a killed comparison shows where it stopped),
then table.md, table.csv and comparison.png (`hs_jax.comparison.table`).

One process: config.distributed is refused (run `launch.main` per cell on a pod instead).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from tqdm.auto import tqdm

from hs_jax import methods, tasks
from hs_jax.comparison import table
from hs_jax.config.pool_source import PoolSource
from hs_jax.config.task_choice import GENERATED, TaskChoice
from hs_jax.methods import hs as hs_method
from hs_jax.methods.api import NotApplicable, budget_of
from hs_jax.pipeline import door, runner
from hs_jax.runtime import distributed
from hs_jax.runtime.errors import ConfigError, UserError
from hs_jax.setup import identity
from hs_jax.store import workdir as workdir_lib
from hs_jax.sweep import method_spaces

CELLS_JSON = "cells.json"
FAILED_TXT = "failed.txt"
POOLS = "pools"  # <workdir>/<task>/pools: the shared trained pools
SINGLES = "singles"  # <workdir>/singles: the single experts' scores (config.singles_cache)
# Every method runs on every seed given: a table compares cells with the same seeds (a method
# run on fewer seeds is compared only with its like).
ALL = "all"
DEFAULT_SEEDED = (ALL,)
HS = "hs"


@dataclasses.dataclass(frozen=True)
class TaskRef:
    """A task of the comparison: its column label (also its folder), config.task.name and
    config.task.path ('' for the generated task)."""

    label: str
    name: str
    path: str


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the comparison (a tuned cell: the best of a sweep's runs, `--tune_trials`)."""

    method: str
    task: TaskRef
    seed: int
    tuned: bool = False

    def subdir(self) -> str:
        """The cell's workdir, relative to the comparison's (a tuned cell's apart: it holds a
        sweep, not a run)."""
        return f"{self.task.label}/{self.method}/{'tuned_' if self.tuned else ''}seed_{self.seed}"


# ----------------------------------------------------------------------------- the plan


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def method_names(arg: str) -> list[str]:
    """The methods of `--methods`: 'all' (every registered one, in registration order) or
    a comma list of registered names (unknown names refused, listing the known ones)."""
    names = list(methods.METHODS) if arg.strip() == "all" else _split(arg)
    if not names:
        raise UserError("--methods: no method given ('all' or a comma list)")
    unknown = [n for n in names if n not in methods.METHODS]
    if unknown:
        raise UserError(f"--methods: unknown method(s) {unknown}; known: {list(methods.METHODS)}")
    return list(dict.fromkeys(names))


def parse_seeds(arg: str) -> list[int]:
    try:
        seeds = [int(s) for s in _split(arg)]
    except ValueError:
        raise UserError(f"--seeds={arg!r}: expected a comma list of ints") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"--seeds={arg!r}: expected a non-empty comma list of ints >= 0")
    return list(dict.fromkeys(seeds))


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "task"


def _file_label(path: Path) -> str:
    dataset = tasks.read_task_file(path).get("dataset")
    name = tasks.registered_name(dataset) or (dataset if isinstance(dataset, str) else "")
    return _safe_label(name or path.stem)


def task_refs(entries: Sequence[str], data_dir: str) -> list[TaskRef]:
    """The tasks of `--tasks`: an existing file is a task file; a registered task name is the
    generated task or `<data_dir>/<its file>`. Two tasks with the same label are told apart
    by their file stems."""
    refs = []
    for entry in entries:
        path = Path(entry)
        if path.is_file():
            label = _file_label(path)
            refs.append(TaskRef(label, tasks.registered_name(label) or label, str(path)))
        elif entry == GENERATED:
            refs.append(TaskRef(GENERATED, GENERATED, ""))
        elif entry in tasks.TASKS:
            file = tasks.task_path(data_dir or "data/eval", entry)
            if not file.is_file():
                raise UserError(f"--tasks: task {entry!r} reads {file}, which is not a file")
            refs.append(TaskRef(entry, entry, str(file)))
        else:
            raise UserError(
                f"--tasks: {entry!r} is neither a task file nor a registered task "
                f"({', '.join(sorted(tasks.TASKS))})"
            )
    labels = [r.label for r in refs]
    if len(set(labels)) < len(labels):
        refs = [
            dataclasses.replace(r, label=_safe_label(Path(r.path).stem)) if r.path else r
            for r in refs
        ]
        labels = [r.label for r in refs]
        if len(set(labels)) < len(labels):
            raise UserError(f"--tasks: two tasks would share a column: {labels}")
    return refs


def default_tasks(config: ml_collections.ConfigDict) -> list[str]:
    """The config's own task, when --tasks is empty."""
    return [TaskChoice.of(config).label]


def plan(
    method_list: Sequence[str],
    task_list: Sequence[TaskRef],
    seeds: Sequence[int],
    seeded: Sequence[str],
    config_seed: int,
    tuned: Sequence[str] = (),
) -> list[Cell]:
    """The cells in the order they run: task by task, its 'hs' cells first (the budget of the
    others), then each method in the order given, seeds ascending. The methods of `seeded`
    ('all': every method) run once per seed, the others once with `config_seed`; the methods
    of `tuned` are tuned cells."""
    ordered = sorted(method_list, key=lambda m: m != HS)  # stable: 'hs' first, the rest as given
    every = ALL in seeded
    return [
        Cell(m, t, s, m in tuned)
        for t in task_list
        for m in ordered
        for s in (sorted(seeds) if every or m in seeded else [config_seed])
    ]


# ----------------------------------------------------------------------------- one cell


def budgeted(method: str) -> bool:
    """Whether config.budget is the method's budget: every method but the search and its
    ablations (whose budget is their search settings)."""
    return methods.METHODS[method].run is not hs_method.heterogeneous_swarms


def _hs_cell(cell: Cell, tuning: bool) -> Cell:
    """The 'hs' cell of the same task and seed (tuned when the comparison tunes)."""
    return Cell(HS, cell.task, cell.seed, tuning)


def hs_budget(workdir: Path, cell: Cell, tuning: bool = False) -> int | None:
    """`evaluations` of the 'hs' cell of the same task and seed, when it has finished (of
    its chosen run when tuned: each trial of a tuned budgeted method gets that many)."""
    hs_dir = workdir / _hs_cell(cell, tuning).subdir()
    results = workdir_lib.read_json(hs_dir / workdir_lib.RESULTS_JSON)
    return method_spaces.run_evaluations(results) if results else None


def _shared_pool_dir(c: ml_collections.ConfigDict, workdir: Path, cell: Cell) -> str:
    """`<workdir>/<task>/pools/<hash of the pool-defining settings>` (module docstring)."""
    flat = workdir_lib.flat_config(door.resolve(c), identity.FREE_FIELDS)
    # The fields identity.pool_reusable compares to tell whether a pool can be reused.
    pool_fields = identity._POOL_FIELDS
    settings = {k: v for k, v in flat.items() if k.startswith(pool_fields)}
    settings.pop("experts.pool_dir", None)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return str(workdir / cell.task.label / POOLS / key[:12])


def cell_config(
    config: ml_collections.ConfigDict,
    cell: Cell,
    workdir: Path,
    budget: int | None,
    sc_tokens: float | None = None,
) -> ml_collections.ConfigDict:
    """The config of one cell: `config` with the method, seed, task (and budget, and
    self-consistency's target config.baselines.sc_tokens, when given) set; a trained pool
    shared with the cells that would train the same one."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.method = cell.method
    c.seed = cell.seed
    c.seeds = ""  # a cell is one run
    c.task.name = cell.task.name
    c.task.path = cell.task.path
    if budget is not None:
        c.budget = int(budget)
    if sc_tokens is not None:
        c.baselines.sc_tokens = float(sc_tokens)
    pool = PoolSource.of(c)
    if pool.trained and not pool.pool_dir:
        c.experts.pool_dir = _shared_pool_dir(c, workdir, cell)
    if not c.singles_cache:  # every cell of a task scores the same single experts
        c.singles_cache = str(Path(workdir) / SINGLES)
    return c


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _earlier_entries(workdir: Path, entries: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The cells an earlier comparison in this workdir recorded that this one does not plan
    (another --methods or --tasks): kept in cells.json and the table, so a rerun with a subset
    hides none of them."""
    path = workdir / CELLS_JSON
    if not path.exists():
        return []
    planned = {(e["method"], e["task"], e["seed"]) for e in entries}
    return [
        e
        for e in json.loads(path.read_text())
        if (e["method"], e["task"], e["seed"]) not in planned and e["method"] in methods.METHODS
    ]


def _entry(cell: Cell, status: str = "pending") -> dict[str, Any]:
    """The cell's cells.json entry before it has run."""
    spec = methods.METHODS[cell.method]
    return {
        "method": cell.method,
        "family": spec.family,
        "summary": spec.summary,
        "task": cell.task.label,
        "task_path": cell.task.path,
        "seed": cell.seed,
        "workdir": cell.subdir(),
        "status": status,
        "reason": None,
    }


def run_cell(
    config: ml_collections.ConfigDict,
    cell: Cell,
    workdir: Path,
    *,
    budget_from_hs: bool,
    tune_trials: int = 0,
) -> dict[str, Any]:
    """Runs (or resumes, or returns the finished run of) one cell; its cells.json entry.

    With `budget_from_hs`, a budgeted method gets the evaluations of the 'hs' cell of the same
    task and seed (`hs_budget`), and the 'self_consistency' cell the generated tokens per test
    item of that cell's best system (`best_system.test_cost.generated_tokens / n_test`) as
    config.baselines.sc_tokens; its entry records `sc_tokens` and `sc_tokens_from` ('hs' or
    'config'). A tuned cell (`tune_trials` > 0) is `tune_trials` runs over the method's
    declared space (`hs_jax.sweep.method_spaces.tune`), the best on dev reported, every
    trial's cost counted."""
    from hs_jax.methods import controls

    cell_dir = workdir / cell.subdir()
    budget = sc_tokens = None
    tuning = tune_trials > 0 and method_spaces.tunable(HS)
    if budgeted(cell.method) and budget_from_hs:
        budget = hs_budget(workdir, cell, tuning)
    if cell.method == controls.SELF_CONSISTENCY and budget_from_hs:
        hs_dir = workdir / _hs_cell(cell, tuning).subdir()
        sc_tokens = controls.test_tokens_per_item(
            workdir_lib.read_json(hs_dir / workdir_lib.RESULTS_JSON)
        )
    entry = _entry(cell)
    entry["finished_before"] = (cell_dir / workdir_lib.RESULTS_JSON).is_file()
    entry["budget"], entry["budget_from"] = None, None
    start = time.perf_counter()
    try:
        c = cell_config(config, cell, workdir, budget, sc_tokens)
        resolved = door.resolve(c)
        if budgeted(cell.method):
            entry["budget"] = budget_of(resolved)
            entry["budget_from"] = "hs" if budget is not None else "config"
        if cell.method == controls.SELF_CONSISTENCY:
            entry["sc_tokens"] = float(resolved.baselines.sc_tokens)
            entry["sc_tokens_from"] = "hs" if sc_tokens is not None else "config"
        why = methods.METHODS[cell.method].applies(resolved)
        if why:
            return {**entry, "status": "not_applicable", "reason": why}
        if cell.tuned:
            results = method_spaces.tune(c, cell_dir, tune_trials, progress=False)
        else:
            results = runner.run(c, cell_dir)
    except NotApplicable as e:
        return {**entry, "status": "not_applicable", "reason": str(e)}
    except ConfigError as e:
        if "does not apply here:" in str(e):
            reason = str(e).split("does not apply here:", 1)[1].strip().splitlines()[0]
            return {**entry, "status": "not_applicable", "reason": reason}
        return _failed(entry, cell_dir, e)
    except Exception as e:  # any failure is the cell's; the comparison goes on
        return _failed(entry, cell_dir, e)
    if (cell_dir / FAILED_TXT).exists():
        (cell_dir / FAILED_TXT).unlink()
    return {
        **entry,
        "status": "done",
        "test_utility": results["best_system"]["test_utility"],
        "evaluations": results.get("evaluations"),
        "seconds_here": time.perf_counter() - start,
        **({"tuned": results["tuning"]["trials"]} if cell.tuned else {}),
    }


def _failed(entry: dict[str, Any], cell_dir: Path, e: BaseException) -> dict[str, Any]:
    logging.error("cell %s failed: %s", entry["workdir"], _first_line(e))
    cell_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(e))
    workdir_lib.write_bytes(cell_dir / FAILED_TXT, text.encode("utf-8"))
    return {**entry, "status": "failed", "reason": _first_line(e)}


# ----------------------------------------------------------------------------- the whole


class CellsFailed(UserError):
    """Cells of a comparison failed; the message names them (`failure_summary`)."""


def failure_summary(entries: Sequence[Mapping[str, Any]], shown: int = 5) -> str | None:
    """One line naming the failed cells of `entries` and their errors' first lines (None when
    none failed; a cell that does not apply has not failed)."""
    failed = [e for e in entries if e["status"] == "failed"]
    if not failed:
        return None
    reasons = [str(e["reason"] or "") for e in failed[:shown]]
    reasons = [r if len(r) <= 120 else r[:117] + "..." for r in reasons]
    named = [f"{e['workdir']} ({r})" for e, r in zip(failed, reasons, strict=False)]
    more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
    return (
        f"{len(failed)} of {len(entries)} cells failed: {', '.join(named)}{more}; each failed "
        f"cell's traceback is in its {FAILED_TXT}, and a rerun tries it again"
    )


def remove_stale_files(workdir: Path) -> list[Path]:
    """Removes the staged (TMP_MARK) entries a killed comparison left in what it writes
    itself: the top of `workdir` (cells.json, the tables, the pictures), the shared pools
    (`<task>/pools`) and the singles cache; returns them. The cells' own are removed by their
    runs. Only call it while holding the comparison's lock."""
    removed = [p for p in workdir.iterdir() if workdir_lib.TMP_MARK in p.name]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for folder in [workdir / SINGLES, *sorted(workdir.glob(f"*/{POOLS}"))]:
        if folder.is_dir():
            removed += workdir_lib.remove_temp_files(folder)
    for path in removed:
        logging.info("removed %s (left by a killed comparison)", path)
    return removed


def _log_cell(k: int, n: int, entry: dict[str, Any]) -> None:
    where = f"cell {k}/{n} {entry['method']} / {entry['task']} / seed {entry['seed']}"
    if entry["status"] == "done":
        u = entry["test_utility"]
        logging.info(
            "%s: %s test utility %s, %s evaluations%s",
            where,
            "finished earlier:" if entry["finished_before"] else "done:",
            "n/a" if u is None else f"{u:.4f}",
            entry["evaluations"],
            f", budget {entry['budget']} ({entry['budget_from']})" if entry["budget"] else "",
        )
    else:
        logging.info("%s: %s: %s", where, entry["status"], entry["reason"])


def compare(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    method_list: Sequence[str],
    task_list: Sequence[str],
    seeds: Sequence[int],
    seeded: Sequence[str] = DEFAULT_SEEDED,
    budget_from_hs: bool = True,
    data_dir: str = "",
    progress: bool = True,
    tune_trials: int = 0,
) -> list[dict[str, Any]]:
    """Runs every cell (module docstring), writes cells.json and the tables; returns the cells'
    entries. With `tune_trials`, every method with a declared space is tuned over it with that
    many trials (`hs_jax.sweep.method_spaces`)."""
    if config.distributed:
        raise UserError(
            "config.distributed=True: a comparison runs its cells in one process; run "
            "launch.main per cell on a multi-process machine"
        )
    workdir = Path(workdir)
    names = method_names(",".join(method_list)) if method_list else method_names("all")
    given = TaskChoice.of(config).path
    data_dir = data_dir or (str(Path(given).parent) if given else "")
    refs = task_refs(list(task_list) or default_tasks(config), data_dir)
    if tune_trials < 0:
        raise UserError(f"--tune_trials={tune_trials}: must be >= 0")
    tuned = [m for m in names if method_spaces.tunable(m)] if tune_trials else []
    cells = plan(names, refs, seeds, seeded, int(config.seed), tuned)
    workdir_lib.make_workdir(workdir)
    with workdir_lib.lock(workdir):
        remove_stale_files(workdir)
        finished = [(workdir / c.subdir() / workdir_lib.RESULTS_JSON).is_file() for c in cells]
        logging.info(
            "%d cells (%d methods x %d tasks, seeds %s for %s): %d finished earlier (not "
            "recomputed), %d to run",
            len(cells), len(names), len(refs), list(seeds),
            "all" if ALL in seeded else [m for m in names if m in seeded], sum(finished),
            len(cells) - sum(finished),
        )  # fmt: skip
        entries: list[dict[str, Any]] = [_entry(c) for c in cells]
        earlier = _earlier_entries(workdir, entries)
        workdir_lib.write_json(workdir / CELLS_JSON, earlier + entries)
        for k, cell in enumerate(tqdm(cells, desc="cells", disable=not progress)):
            entries[k] = run_cell(
                config, cell, workdir, budget_from_hs=budget_from_hs, tune_trials=tune_trials
            )
            _log_cell(k + 1, len(cells), entries[k])
            workdir_lib.write_json(workdir / CELLS_JSON, earlier + entries)
        table.write_tables(workdir, earlier + entries)
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "not_applicable")}
    failed = len(entries) - sum(counts.values())
    logging.info(
        "comparison in %s: %d done, %d not applicable, %d failed; table.md, table.csv, "
        "comparison.png written", workdir, counts["done"], counts["not_applicable"], failed,
    )  # fmt: skip
    return entries


def run_seeds(config: ml_collections.ConfigDict, workdir) -> dict[str, Any]:
    """config.seeds ('0,1,2'): the method once per seed, each run in
    `<workdir>/<task>/<method>/seed_<k>`, as one row of a comparison whose table (mean and
    spread over seeds) is written in workdir and printed; returns {'cells': [...], 'table':
    path of table.md}."""
    seeds = [int(s) for s in str(config.seeds).split(",")]
    task = TaskChoice.of(config).label
    cells = compare(
        config, workdir, method_list=[config.method], task_list=[task], seeds=seeds,
        seeded=[config.method], budget_from_hs=False, progress=distributed.is_primary(),
    )  # fmt: skip
    table_md = Path(workdir) / "table.md"
    if distributed.is_primary() and table_md.exists():
        print(table_md.read_text())
    return {"cells": cells, "table": str(table_md)}
