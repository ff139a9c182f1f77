"""A whole run, from model files to results (`hs_jax.run`): the composition of its parts.

Steps (docs/ARCHITECTURE.md): resolve and check the config; lock the workdir and compare the
run's identity (`hs_jax.setup.identity`); set up the task, refuse a pool trained on its dev or
test questions (`assembly.check_train_overlap`, before the model loads), set up the protocol,
base model, expert pool, engine and scorer (`hs_jax.setup.assembly`); run the method
`config.method` names (`hs_jax.methods`: the singles baseline, then the Heterogeneous Swarms
search, checkpointed in `workdir/search` and resumed automatically, its best system scored on
the test split); write `results.json`, `best_dag.png`, `curves.png` and the best system's
experts as PEFT folders (`hs_jax.pipeline.report`). The launcher and the Colab notebooks call this.

One workdir holds one run (see `hs_jax.store.workdir`):

- only one process writes it (an exclusive lock, released by the kernel if the process dies);
- `run.json` records the run's identity: the resolved config without the fields that do not
  change results (`run_identity.FREE_FIELDS`), the task file's size and sha256, the model's
  file identity (the PyPI model: its published sha256; other files: size and mtime), the PEFT
  pool's files' sha256 and, once the pool is built, its fingerprint. A rerun compares it
  before it loads or writes anything and refuses any difference, one line per field;
- a rerun of a finished run (results.json present) returns results.json as it is, loading no
  model and writing no file; on a workdir that cannot be written (a read-only file system, or
  files not this user's), where not even the lock can be taken, too: nothing is written, so
  there is nothing to guard; an unfinished run there stops with one line naming the file;
- a killed run resumes from its last checkpoint and ends with the results.json of an
  uninterrupted run, costs included (timing fields aside): the cost counters, the
  per-iteration cost records and the test outputs are checkpointed with the search state and
  restored on resume, so work redone after a kill is counted once, as the uninterrupted run
  counts it; each iteration starts with an empty generation cache, so its cost does not
  depend on which process ran the iteration before it;
- every file is written under a temporary name and renamed into place; results.json is written
  last, so its presence means the run is complete;
- `config.restart=True` moves the run's files into `previous/<UTC time>/` (a trained pool in
  `workdir/experts` stays when the new run would train the same pool) and starts over.

Devices: one mesh (`config.mesh`, `sharding.make_mesh`) serves the whole run: the engine puts
generation rows along 'data' and the base model's big kernels along 'model'; the search puts
the weight swarm's experts along 'expert'. A layout the pool or the devices cannot take is
refused before anything is loaded.

Multi-process (`config.distributed`, `hs_jax.runtime.distributed`): every process runs this same
function on its share of the devices. Process 0 alone creates the workdir, holds the lock and
writes every file (run.json, task.json, the trained pool, test_prompts.jsonl, pictures,
exported experts, results.json); each workdir decision (busy, another run, finished) is made
there and handed to the others, which stop with the same message when it refuses. Checkpoints
are saved and restored by all processes together, as orbax requires (the workdir must be on a
file system every process sees). The task file and the expert pool each process has are
checked to be the same; the search checks each iteration's host-side draws.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from hs_jax import methods
from hs_jax.config import mesh_layout
from hs_jax.pipeline import door, report
from hs_jax.runtime import distributed, host_allocator, sharding
from hs_jax.setup import assembly
from hs_jax.setup import identity as run_identity
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib


def run(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, callbacks: Sequence = ()
) -> dict[str, Any]:
    """Runs (or resumes) the method described by `config` in `workdir`; returns results.json.

    A finished run with the same identity is returned as it is; a workdir that holds another
    run, or that another process is using, is refused (hs_jax.store.workdir.WorkdirError) before
    anything is loaded or written (module docstring). One seed: config.seeds ('0,1,2') is
    `hs_jax.run`'s, which makes each seed's run a cell of a comparison
    (`hs_jax.comparison.compare.run_seeds`). `callbacks` go to the method: each is called with
    an iteration's record (its history entry) after that iteration, and may stop the run by
    raising (a sweep's pruner, `hs_jax.sweep`).
    """
    return run_opened(door.open_config(config), workdir, callbacks=callbacks)


def run_opened(
    c: ml_collections.ConfigDict, workdir: str | os.PathLike, *, callbacks: Sequence = ()
) -> dict[str, Any]:
    """`run` of a config the door has opened (`door.open_config`): resolved and checked."""
    if c.seeds:
        raise ValueError("config.seeds is hs_jax.run's (one run per seed); runner.run runs one")
    host_allocator.reuse_freed_memory()  # before JAX starts, or it cannot apply
    assembly.quiet_orbax()
    assembly.use_compilation_cache(c)
    if c.distributed:
        distributed.initialize(c)  # before anything touches a device
    layout = mesh_layout.mesh_shape(c, jax.device_count(), jax.process_count())
    # A missing model or PEFT folder fails here, before any write.
    static = run_identity.static_identity(c)
    workdir = Path(workdir)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(run_identity.workdir_lock(workdir))
        except Exception as e:  # raised on every process (workdir_lock hands it round)
            if not _cannot_write(e) or c.restart:
                raise  # each process's own message (config.restart moves files: it must write)
            read_only = functools.partial(_finished_read_only, c, workdir, static, e)
            return distributed.on_primary(read_only)
        return _run_locked(c, workdir, static, layout, callbacks)


def make_pool(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
    """`hs_jax.make_pool`: the expert pool of `config` as PEFT folders in workdir (or
    config.experts.pool_dir), without a search (`setup.assembly.make_pool`); returns them."""
    return assembly.make_pool(door.open_config(config), workdir)


def _finished(workdir: Path, results: dict[str, Any]) -> dict[str, Any]:
    logging.info("%s holds this run, finished: returning its results.json as it is", workdir)
    if distributed.is_primary():
        report.print_summary(results)
    return results


# Errors of a workdir that cannot be written: its file system is read-only, or the files and
# folders are not this user's to write (hs_jax.store.workdir refuses the lock with
# WorkdirReadOnlyError).
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _cannot_write(e: BaseException) -> bool:
    if isinstance(e, workdir_lib.WorkdirReadOnlyError):
        return True
    return isinstance(e, OSError) and e.errno in _READ_ONLY_ERRNOS


def _finished_read_only(c, workdir: Path, static: dict[str, Any], error: Exception):
    """Process 0, when the workdir's lock could not be taken (`error`): a workdir that cannot
    be written but holds this run finished is returned as it is, reading only (nothing to
    write: the lock only guards writes); a workdir without it re-raises `error`. (`run` raises
    any other error, and config.restart, which moves files, at once on every process.)"""
    results = run_identity.open_run(c, workdir, static).results  # refuses another run
    if results is None:
        raise error
    logging.info("%s cannot be written (%s); it holds this run, finished", workdir, error)
    return _finished(workdir, results)


def _run_locked(
    c, workdir: Path, static: dict[str, Any], layout: dict[str, int], callbacks: Sequence = ()
) -> dict[str, Any]:
    """The run once the workdir is this process's: its identity checked, set up, the method,
    the report. The kill points (`workdir.kill_point`, a test hook) mark the steps."""
    start = time.perf_counter()
    opened, decision = distributed.on_primary_keeping(
        lambda: run_identity.open_run(c, workdir, static), run_identity.OpenedRun.decision
    )
    saved, results = decision["saved"], decision["results"]
    if results is not None:
        return _finished(workdir, results)

    # Process 0 has read or generated the task file; the others make theirs the same way
    # (reading the same file, or generating the same bytes) and all check they agree.
    source = opened.source if opened is not None else run_identity.task_source(c, workdir)
    identity = run_identity.run_identity(static, source)
    distributed.assert_same("the task file", identity["task_file"])
    distributed.on_primary(lambda: run_identity.remove_stale_files(workdir))
    if source.pending:
        distributed.on_primary(lambda: assembly.write_task(c, source))
    spec, dev, test = assembly.read_items(c, source.path)
    workdir_lib.kill_point("setup")  # test hook (1st): task file in place
    logging.info(
        "task %s: %d dev / %d test items from %s", spec.name, len(dev), len(test), source.path
    )
    # The pool's training records need no model: a run that would score its experts on their
    # own training questions is refused here, before the model loads.
    train_overlap = distributed.on_primary(
        lambda: assembly.check_train_overlap(c, workdir, dev, test)
    )
    mesh = sharding.make_mesh(**layout)  # the model loads straight into it
    base_cfg, params, tokenizer = assembly.load_base(c, mesh)
    if saved is None:  # written once task and model have loaded: a failed setup binds nothing
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        saved = distributed.on_primary(
            lambda: run_identity.write_first_record(workdir, identity, since)
        )
    workdir_lib.kill_point("setup")  # test hook (2nd): run.json written
    experts = assembly.build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
    pool = workdir_lib.jsonable(checkpointing.fingerprint(experts))
    distributed.assert_same("the expert pool", pool)
    saved = distributed.on_primary(lambda: run_identity.check_pool(workdir, saved, pool))
    workdir_lib.kill_point("setup")  # test hook (3rd): pool built and recorded
    setup = assembly.assemble(
        c, (spec, dev, test), source.path, (base_cfg, params, tokenizer), experts, mesh,
        train_overlap=train_overlap,
    )  # fmt: skip
    method = methods.METHODS[c.method].run
    found = method(setup, workdir, callbacks=callbacks, progress=distributed.is_primary())
    return report.report(setup, found, workdir, time.perf_counter() - start)
