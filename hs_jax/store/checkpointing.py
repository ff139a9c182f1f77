"""Checkpoints of a swarm search: orbax ``CheckpointManager`` with two named items per step.

Layout of ``workdir`` (one directory per saved step, written atomically by orbax)::

    workdir/<step>/state   arrays (orbax StandardSave): every leaf of the search state pytree
                           (both PSO swarms, the best expert weights, the jax key data), stored
                           under flat, sanitised key-path names
    workdir/<step>/meta    JSON (orbax JsonSave): config, numpy Generator state, histories, best
                           system, CRC32 of every array leaf, stop reason ...
    workdir/corrupt/<step> steps found unreadable by a restore, moved aside (never deleted);
                           a second damaged copy of the same step is ``<step>-1``, then ``-2``

``step`` is the number of completed search iterations. The search code owns the content of
both items; this module only stores, verifies and reloads them:

- **Identity first.** ``meta['identity']`` holds whatever defines the run (config, expert
  fingerprint). ``restore_latest`` reads the JSON item of every step before it opens any array
  file, and a different identity raises ``ConfigMismatchError`` naming each differing field and
  leaves the workdir untouched, so a workdir is never continued, nor damaged, by a run with other
  settings (other settings often mean other array shapes, which would otherwise look like
  damage).
- **Integrity.** orbax only lists a step once it is fully written (a kill during a save leaves a
  ``<step>.orbax-checkpoint-tmp-*`` directory, which orbax deletes when the next manager opens
  the workdir: an incomplete write, never a user's step). A step that was finished but later
  damaged (a deleted, truncated or garbled file, a missing or garbled meta item, arrays whose
  shapes do not fit the run) is caught by orbax/tensorstore on read, by the CRC32 of each array
  leaf recorded in ``meta``, or by the template's shapes.
- **Never delete.** ``restore_latest`` moves a damaged step into ``workdir/corrupt/`` with one
  warning line and falls back to the previous step (its number would otherwise collide with the
  resumed run's next save). orbax lists and garbage collects (``max_to_keep``) only
  integer-named directories of ``workdir`` itself, so moved-aside steps are never touched
  again. When no step is usable (all damaged now, or only moved-aside ones left from before)
  ``NoUsableCheckpointError`` is raised: the caller never silently starts over on top of them.
- **No model needed to read.** ``read_meta`` reads only the JSON item (the search's
  ``summarize_checkpoint`` is built on it); ``verify_checkpoint`` also reads the arrays and
  checks them against the recorded CRC32s.
- **Safe beside a live search.** The readers (``read_meta``, ``read_step``,
  ``verify_checkpoint``) open only committed steps, while the search may save new ones and
  prune old ones (orbax deletes a pruned step's files in place). A read that fails on a step
  whose folder then disappears is "pruned", never damage; a step whose files stayed unchanged
  while its read failed is damaged, live run or not. ``live_holder`` says whether a run holds
  the workdir's lock (and who), without writing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import logging as pylogging
import os
import re
import sys
import time
import traceback
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from hs_jax.runtime import distributed
from hs_jax.store import workdir as workdir_lib
from hs_jax.store.workdir import LOCK_NAME

PyTree = Any

STATE = "state"
META = "meta"
# Where `hs_jax.run` keeps the search checkpoints inside a run's workdir.
SEARCH_SUBDIR = "search"
# Where damaged steps are moved to inside a search workdir (not an integer: orbax ignores it).
CORRUPT_SUBDIR = "corrupt"
FORMAT_VERSION = 1
RESTART_HINT = "--config.restart=True starts over"
# How long a failed read waits for a live search to finish deleting the step (orbax prunes a
# step by deleting its files, then its folders), and how often a stale listing is redone.
_PRUNE_WAIT_S = 1.0
_ROUNDS = 5
# Numbers the multi-host barrier of each move-aside: a barrier name must never repeat.
_move_barriers = itertools.count(1)


class ConfigMismatchError(ValueError):
    """The workdir was written by a run with a different identity (config or experts)."""


class NoUsableCheckpointError(RuntimeError):
    """Steps exist (or existed) in the workdir but none of them can be restored."""


# ----------------------------------------------------------------------------- pytree <-> flat


def _leaf_name(index: int, path) -> str:
    """A file-system-safe, unique array name for one leaf: '<index>_<sanitised key path>'."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")
    return f"{index:05d}_{readable}"[:200]


def flatten_state(tree: PyTree) -> dict[str, np.ndarray]:
    """Host copies of every leaf of ``tree`` under flat names (orbax sees only a flat dict).

    A leaf spread over several processes' devices (the weight swarm along 'expert' in a
    multi-process run) is gathered, so every process holds the same full copies: orbax saves
    numpy arrays as replicated values (process 0 writes them, all processes call ``save``) and
    every process reads them back whole, whatever the mesh of the run that resumes."""
    flat = {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(tree)):
        # A copy (np.array in `host`), so the saved value never aliases a buffer the search
        # later donates to a jitted step.
        flat[_leaf_name(i, path)] = distributed.host(leaf)
    return flat


def unflatten_state(template: PyTree, flat: Mapping[str, np.ndarray]) -> PyTree:
    """Inverse of ``flatten_state``: the restored arrays in ``template``'s structure, with the
    template leaves' dtypes and, for jax arrays, their shardings (so a resumed run computes
    exactly as the original did)."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for i, (path, leaf) in enumerate(leaves_with_path):
        name = _leaf_name(i, path)
        value = np.asarray(flat[name])
        if value.shape != np.shape(leaf) or value.dtype != np.asarray(leaf).dtype:
            raise ValueError(
                f"checkpoint leaf {name}: {value.dtype}{list(value.shape)} does not match "
                f"{np.asarray(leaf).dtype}{list(np.shape(leaf))}"
            )
        if isinstance(leaf, jax.Array):
            # A committed template leaf (e.g. sharded over a mesh) keeps its placement; an
            # uncommitted one stays uncommitted so it can meet arrays on any devices in a jit.
            value = jax.device_put(value, leaf.sharding) if leaf.committed else jnp.asarray(value)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def checksums(flat: Mapping[str, np.ndarray]) -> dict[str, int]:
    """CRC32 of each array's bytes (detects silently damaged data, cheap next to a save)."""
    return {
        k: zlib.crc32(np.ascontiguousarray(v).view(np.uint8).reshape(-1)) for k, v in flat.items()
    }


def fingerprint(tree: PyTree) -> dict[str, Any]:
    """Structure, shapes, dtypes and a CRC32 of a pytree's values (identifies an expert pool)."""
    flat = flatten_state(tree)
    crc = 0
    for v in flat.values():
        crc = zlib.crc32(np.ascontiguousarray(v).view(np.uint8).reshape(-1), crc)
    return {
        "structure": str(jax.tree.structure(tree)),
        "shapes": {k: [str(v.dtype), list(v.shape)] for k, v in flat.items()},
        "crc32": crc,
    }


# ----------------------------------------------------------------------------- identity


# ----------------------------------------------------------------------------- orbax noise


def _is_closed_loop_report(unraisable: Any) -> bool:
    """Whether an unraisable-exception report is tensorstore's late "Event loop is closed".

    Where it comes from: orbax runs each restore in a fresh asyncio loop and closes the loop as
    soon as the restore coroutine ends. When one array read fails, the restore ends with that
    error (``asyncio.gather`` does not wait for the rest) while tensorstore still has the other
    reads in flight; each of those completes later on a tensorstore thread and calls
    ``loop.call_soon_threadsafe`` on the closed loop, and tensorstore reports the resulting
    RuntimeError through ``sys.unraisablehook``: one traceback per read, hundreds for a large
    state. The failed restore itself is already reported (one
    warning line), so these reports carry nothing.
    """
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    return any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(exc.__traceback__))


def _silence_closed_loop_reports() -> None:
    """Install (once) an unraisable hook that drops only those reports and hands every other
    report to the hook installed before. Process-wide because the late reads finish after the
    failed restore has returned, at a time nobody can wait for."""
    if getattr(sys.unraisablehook, "_drops_closed_loop_reports", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_report(unraisable):
            previous(unraisable)

    hook._drops_closed_loop_reports = True
    sys.unraisablehook = hook
    asyncio_logger = pylogging.getLogger("asyncio")
    if not any(isinstance(f, _DropOrphanReadErrors) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_DropOrphanReadErrors())


class _DropOrphanReadErrors(pylogging.Filter):
    """Drops asyncio's "Task (or Future) exception was never retrieved" for a tensorstore read
    error.

    The same failed restore as above: when two array reads fail, ``asyncio.gather`` returns the
    first error and the second read's task or future is garbage-collected later, unretrieved,
    so asyncio logs it (at a time that depends on the collector: one run in several of the
    same damaged read shows it). The restore's failure is already reported. Every other record
    passes, as do unretrieved errors that are not tensorstore statuses ('DATA_LOSS: ...',
    'NOT_FOUND: ...', 'OUT_OF_RANGE: ...')."""

    _ORPHANS = ("Task exception was never retrieved", "Future exception was never retrieved")

    def filter(self, record: pylogging.LogRecord) -> bool:
        if not str(record.msg).startswith(self._ORPHANS):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, ValueError) and re.match(r"[A-Z_]+: ", str(exc)))


class _DropReaderNotices(pylogging.Filter):
    """Drops what orbax logs to a reader about things the reader does not need: "Given
    directory is read only" (reading is what the caller asked for), and "Metadata file does not
    exist" / "Failed to read Metadata file" for a step's ``_CHECKPOINT_METADATA`` (timestamps,
    not data: orbax restores without it, and it vanishes when a live search prunes the step
    while the manager lists it). Every other record passes."""

    _NOTICES = (
        "Given directory is read only",
        "Metadata file does not exist",
        "Failed to read Metadata file",
    )

    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOTICES)


@contextlib.contextmanager
def _read_only_manager(workdir: str) -> Iterator[ocp.CheckpointManager]:
    """A read-only manager of ``workdir`` (never writes or deletes), closed on exit."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    notices = _DropReaderNotices()
    absl_logger = logging.get_absl_logger()
    absl_logger.addFilter(notices)
    try:
        manager = ocp.CheckpointManager(workdir, options=options, item_names=(STATE, META))
        try:
            yield manager
        finally:
            manager.close()
    finally:
        absl_logger.removeFilter(notices)


def _reason(e: BaseException) -> str:
    """One line for an exception (orbax/tensorstore messages can span many lines)."""
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first[:300]}" if first else type(e).__name__


# ----------------------------------------------------------------------------- verification


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The JSON item of ``step`` (no array file is opened), checked for the fields a restore
    needs; raises on any damage."""
    meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    if not isinstance(meta, dict):
        raise ValueError(f"meta item is a {type(meta).__name__}, not a JSON object")
    for key in ("identity", "checksums"):
        if not isinstance(meta.get(key), dict):
            raise ValueError(f"meta item has no {key!r}")
    return meta


def _restore_arrays(
    manager: ocp.CheckpointManager,
    step: int,
    meta: Mapping[str, Any],
    flat_template: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The flat arrays of ``step``, verified against the CRC32s recorded in ``meta``; raises on
    any damage. ``flat_template``: the expected arrays (None: as saved)."""
    restore = ocp.args.StandardRestore(flat_template)
    flat = manager.restore(step, args=ocp.args.Composite(**{STATE: restore}))[STATE]
    if set(flat) != set(meta["checksums"]):
        raise ValueError("state arrays do not match the recorded checksums' names")
    sums = checksums(flat)
    bad = sorted(k for k in sums if sums[k] != meta["checksums"][k])
    if bad:
        raise ValueError(f"checksum mismatch in {bad[:5]}")
    return flat


# ----------------------------------------------------------------------------- manager


class Checkpointer:
    """Saves and restores (state pytree, meta dict) pairs per step in ``workdir``.

    ``save_every``: a step is written when ``step % save_every == 0`` or when forced (the search
    forces its final step). ``max_to_keep``: older steps are garbage collected by orbax (at least
    2 are kept so a damaged latest step has a fallback; steps moved to ``corrupt/`` are not
    counted and never collected). Saves are synchronous: the search's next iteration costs model
    inference, far more than the save, and a finished ``save`` means the step is on disk.
    """

    def __init__(self, workdir: str | os.PathLike, *, save_every: int = 1, max_to_keep: int = 3):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(2, max_to_keep),
            create=True,
            # Removes only `<step>.orbax-checkpoint-tmp-*` directories of workdir itself: saves
            # a kill interrupted, never a finished (or moved-aside) step.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(
            self.workdir, options=options, item_names=(STATE, META)
        )

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(
        self, step: int, state: PyTree, meta: Mapping[str, Any], *, force: bool = False
    ) -> bool:
        """Write ``state`` (any pytree of arrays) and ``meta`` (JSON-able) as ``step``; returns
        whether it was written (interval not reached and not forced -> False)."""
        if not force and step % self.save_every:
            return False
        flat = flatten_state(state)
        meta = dict(workdir_lib.jsonable(meta))
        meta["format_version"] = FORMAT_VERSION
        meta["checksums"] = checksums(flat)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardSave(flat), META: ocp.args.JsonSave(meta)}
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        return True

    def _move_aside(self, step: int, reason: str) -> None:
        """Rename a damaged step into ``corrupt/`` (same file system: atomic, nothing copied or
        deleted) and say so in one warning line. Multi-host: the primary process renames, all
        wait for it (every process found the same damage in the shared workdir)."""
        if ocp.multihost.is_primary_host(0):
            target_dir = os.path.join(self.workdir, CORRUPT_SUBDIR)
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, str(step))
            copy = 0
            while os.path.lexists(target):
                copy += 1
                target = os.path.join(target_dir, f"{step}-{copy}")
            os.rename(os.path.join(self.workdir, str(step)), target)
            logging.warning(
                "checkpoint step %d in %s is unreadable (%s); moved it to %s and falling back "
                "to the previous step",
                step,
                self.workdir,
                reason,
                target,
            )
        barrier = next(_move_barriers)
        ocp.multihost.sync_global_processes(f"hs_jax_checkpoint_move_aside_{barrier}")
        self._manager.reload()

    def restore_latest(
        self, template: PyTree, identity: Mapping[str, Any] | None = None
    ) -> tuple[int, PyTree, dict] | None:
        """(step, state, meta) of the newest step that restores cleanly, or None for a workdir
        that never held a finished step.

        ``template``: a pytree with the structure, dtypes and shardings of the saved state (e.g.
        a freshly initialised one). ``identity``: compared with ``meta['identity']`` of every
        step whose JSON item is readable, before any array is read; a difference raises
        ``ConfigMismatchError`` naming the fields, with the workdir unchanged. Then, newest
        first, a step whose meta, arrays, checksums or shapes (against ``template``) are damaged
        is moved to ``corrupt/`` (module docstring) and the previous step tried. Raises
        ``NoUsableCheckpointError`` when no step is usable, including a workdir whose only steps
        were moved aside by an earlier call.
        """
        _silence_closed_loop_reports()
        steps = self.all_steps()
        if not steps:
            moved = self.moved_aside()
            if moved:
                raise NoUsableCheckpointError(
                    f"no usable checkpoint in {self.workdir}: its only steps were found "
                    f"unreadable earlier and are in {os.path.join(self.workdir, CORRUPT_SUBDIR)} "
                    f"({', '.join(moved)}); {RESTART_HINT}"
                )
            return None
        metas, damage = {}, {}
        for step in steps:
            try:
                metas[step] = _restore_meta(self._manager, step)
            except Exception as e:  # any damage: orbax, JSON, missing item or fields
                damage[step] = f"meta: {_reason(e)}"
        if identity is not None:
            current = workdir_lib.jsonable(identity)
            for step in reversed(steps):
                diff = (
                    workdir_lib.identity_diff(
                        metas[step]["identity"], current, saved_as="the checkpoint"
                    )
                    if step in metas
                    else []
                )
                if diff:
                    raise ConfigMismatchError(
                        f"workdir {self.workdir} was written by a different run; differing "
                        "fields:\n  " + "\n  ".join(diff)
                    )
        for step in reversed(steps):
            if step not in damage:
                try:
                    flat = _restore_arrays(
                        self._manager, step, metas[step], flatten_state(template)
                    )
                    state = unflatten_state(template, flat)
                except Exception as e:  # orbax, tensorstore, checksum and shape errors
                    damage[step] = f"state: {_reason(e)}"
                else:
                    return step, state, metas[step]
            self._move_aside(step, damage[step])
        raise NoUsableCheckpointError(
            f"no usable checkpoint in {self.workdir}: steps {sorted(steps)} are all unreadable "
            f"and were moved to {os.path.join(self.workdir, CORRUPT_SUBDIR)} (reasons in the "
            f"warnings above); {RESTART_HINT}"
        )

    def moved_aside(self) -> list[str]:
        """Names of the steps moved into ``corrupt/`` (by this or any earlier run)."""
        return _moved_aside(self.workdir)


def _moved_aside(workdir: str) -> list[str]:
    folder = os.path.join(workdir, CORRUPT_SUBDIR)
    if not os.path.isdir(folder):
        return []
    return sorted(os.listdir(folder), key=lambda n: [int(p) for p in re.findall(r"\d+", n)] or [0])


# ----------------------------------------------------------------------------- live runs


def _run_dirs(path: str) -> list[str]:
    """The folders whose lock says a run writes the search workdir ``path``: the folder itself
    and, for the ``search/`` folder of a run (``hs_jax.run``), the run's workdir."""
    dirs = [path]
    if os.path.basename(path.rstrip(os.sep)) == SEARCH_SUBDIR:
        dirs.append(os.path.dirname(path.rstrip(os.sep)))
    return dirs


def _is_locked(target: str, flags: int) -> bool:
    """Whether another open file holds a flock on ``target``: a non-blocking shared flock,
    released at once (shared, so two readers probing at once never see each other)."""
    try:
        fd = os.open(target, flags | os.O_CLOEXEC)
    except OSError:  # absent (no lock file), unreadable, or not a folder
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without flock: nothing to learn
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def live_holder(path: str | os.PathLike) -> str | None:
    """Who runs the search in ``path`` right now ('pid P on HOST since T'), or None when no live
    process holds its workdir's lock.

    ``path``: as for ``read_meta``. The probe only opens and flocks what exists (the workdir
    folder and its ``.lock`` file, see ``hs_jax.store.workdir.lock``), never creates or writes a
    file, so it works on a read-only workdir. A search workdir used without ``hs_jax.run``
    (``run_search(workdir=...)`` alone) has no lock: its live run is not seen here, and reads
    still tell a pruned step from a damaged one (``verify_checkpoint``)."""
    path = os.path.abspath(os.fspath(path))
    base = os.path.basename(path.rstrip(os.sep))
    if base.isdigit() and os.path.isdir(os.path.join(path, META)):
        path = os.path.dirname(path)  # one step directory
    elif os.path.isdir(os.path.join(path, SEARCH_SUBDIR)) and not _has_step_dirs(path):
        path = os.path.join(path, SEARCH_SUBDIR)  # a run's workdir
    for folder in _run_dirs(path):
        lock_file = os.path.join(folder, LOCK_NAME)
        if _is_locked(folder, os.O_RDONLY | os.O_DIRECTORY) or _is_locked(lock_file, os.O_RDONLY):
            return workdir_lib.holder_of(Path(folder))
    return None


def _in_progress(live: str | None) -> str:
    return f"; run in progress ({live})" if live else ""


class _StepDamage(Exception):
    """A committed step that does not read back; the message says which item and why."""


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What reading one listed step gave: its value, damage (one line), or that it was pruned
    (deleted while, or before, it was read: a live search keeps only its newest steps)."""

    value: Any = None
    damage: str | None = None
    pruned: bool = False


def _signature(workdir: str, step: int) -> frozenset | None:
    """(path, size, mtime) of every file of a step folder; None when the folder is gone."""
    root = os.path.join(workdir, str(step))
    files = set()
    for folder, _, names in os.walk(root):
        for name in names:
            file = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(file)
                files.add((os.path.relpath(file, root), st.st_size, st.st_mtime_ns))
    return frozenset(files) if os.path.isdir(root) else None


def _vanishes(workdir: str, step: int, seconds: float = _PRUNE_WAIT_S) -> bool:
    """Whether a step folder is gone within ``seconds`` (orbax deletes a pruned step's files,
    then its folders: a read can fail half-way through a deletion)."""
    deadline = time.monotonic() + seconds
    while os.path.isdir(os.path.join(workdir, str(step))):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _read_committed(
    manager: ocp.CheckpointManager, workdir: str, step: int, read, live: str | None
) -> _Outcome:
    """``read(manager, step)`` on one committed step of a workdir that a live search may prune.

    A failed read is damage only when the step's files did not change during it. A step whose
    folder is gone (now, or within ``_PRUNE_WAIT_S`` when its files changed or its run is live)
    was pruned; one that changed but stayed, or a live run's, is read once more."""
    damage = None
    for _ in range(2):
        before = _signature(workdir, step)
        if before is None:
            return _Outcome(pruned=True)
        try:
            return _Outcome(value=read(manager, step))
        except _StepDamage as e:
            damage = str(e)
        after = _signature(workdir, step)
        if after is None:
            return _Outcome(pruned=True)
        if after == before and not live:
            break  # nothing moved under the read: the step itself is damaged
        if _vanishes(workdir, step):
            return _Outcome(pruned=True)
    return _Outcome(damage=damage)


def _meta_only(manager: ocp.CheckpointManager, step: int) -> dict:
    try:
        return _restore_meta(manager, step)
    except Exception as e:  # any damage: orbax, JSON, missing item or fields
        raise _StepDamage(f"meta: {_reason(e)}") from e


def _meta_and_arrays(
    manager: ocp.CheckpointManager, step: int
) -> tuple[dict, dict[str, np.ndarray]]:
    meta = _meta_only(manager, step)
    try:
        return meta, _restore_arrays(manager, step, meta)
    except Exception as e:  # orbax, tensorstore and checksum errors
        raise _StepDamage(f"state: {_reason(e)}") from e


# ----------------------------------------------------------------------------- summaries


def _has_step_dirs(path: str) -> bool:
    return any(name.isdigit() for name in os.listdir(path))


def _resolve(path: str | os.PathLike, step: int | None) -> tuple[str, int | None]:
    """(search workdir, step) for a search workdir, one step directory in it, or a run's
    workdir (``hs_jax.run``, whose checkpoints are in its ``search/`` folder)."""
    path = os.path.abspath(os.fspath(path))
    base = os.path.basename(path.rstrip(os.sep))
    if step is None and base.isdigit() and os.path.isdir(os.path.join(path, META)):
        path, step = os.path.dirname(path), int(base)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is a file, not a run's workdir")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint in {path}: no such directory")
    nested = os.path.join(path, SEARCH_SUBDIR)
    if not _has_step_dirs(path) and os.path.isdir(nested):
        path = nested
    return path, step


@contextlib.contextmanager
def _reader(workdir: str) -> Iterator[ocp.CheckpointManager]:
    """A read-only manager; opening it (which lists the committed steps and reads their
    metadata) is retried when a live search deletes a step under it."""
    for attempt in range(_ROUNDS):
        with contextlib.ExitStack() as stack:
            try:
                manager = stack.enter_context(_read_only_manager(workdir))
            except (OSError, ValueError):
                if attempt == _ROUNDS - 1:
                    raise
                time.sleep(0.05)
                continue
            yield manager
            return


def _listed_steps(
    manager: ocp.CheckpointManager, workdir: str, step: int | None, live: str | None = None
) -> list[int]:
    """The committed steps of ``workdir`` (orbax lists a step only once its folder is renamed
    into place; ``<step>.orbax-checkpoint-tmp*`` folders of saves in progress are not listed),
    or only ``step``."""
    steps = sorted(manager.all_steps())
    if not steps:
        moved = _moved_aside(workdir)
        note = f" (unreadable steps moved aside: {', '.join(moved)})" if moved else ""
        yet = " yet" if live else ""
        raise FileNotFoundError(f"no checkpoint in {workdir}{yet}{note}{_in_progress(live)}")
    if step is not None and step not in steps:
        raise FileNotFoundError(
            f"step {step} not in {workdir} (steps: {steps}){_in_progress(live)}"
        )
    return [step] if step is not None else steps


def _newest_readable(path: str, step: int | None, read) -> tuple[int, Any]:
    """(step, read(manager, step)) for ``step`` or the newest step that reads back.

    A damaged step is skipped with a warning (a named ``step`` raises); never moved aside: the
    search that owns the folder may still be running. A step pruned under the read means the
    listing is stale (orbax prunes the oldest steps first): the steps are listed again."""
    live = live_holder(path)
    with _reader(path) as manager:
        for _ in range(_ROUNDS):
            stale = False
            for s in reversed(_listed_steps(manager, path, step, live)):
                out = _read_committed(manager, path, s, read, live)
                if out.pruned and step is not None:
                    raise FileNotFoundError(
                        f"step {s} in {path} was deleted while it was read{_in_progress(live)}"
                    )
                if out.pruned:
                    stale = True
                    break
                if out.damage is None:
                    return s, out.value
                if step is not None:
                    raise NoUsableCheckpointError(
                        f"step {s} in {path} is unreadable ({out.damage})"
                    )
                logging.warning("checkpoint step %d in %s is unreadable (%s)", s, path, out.damage)
            if not stale:
                break
            manager.reload()
    raise NoUsableCheckpointError(f"no readable checkpoint step in {path}{_in_progress(live)}")


def read_meta(path: str | os.PathLike, step: int | None = None) -> tuple[str, int, dict]:
    """(checkpoint dir, step, meta): the JSON item of ``step`` or of the newest readable step,
    read without a model, without opening an array file and without writing anything.

    ``path``: a search workdir (latest readable step unless ``step``), one step directory in it
    (``workdir/<step>``), or the workdir of a whole run (``hs_jax.run``), whose checkpoints are
    in its ``search/`` folder. Damaged array files go unnoticed here: see ``verify_checkpoint``.
    Safe beside a live search: only committed steps are read, and a step it prunes meanwhile is
    skipped, never reported as damaged.
    """
    path, step = _resolve(path, step)
    step, meta = _newest_readable(path, step, _meta_only)
    return path, step, meta


def read_step(
    path: str | os.PathLike, step: int | None = None
) -> tuple[str, int, dict[str, Any], dict[str, np.ndarray]]:
    """(checkpoint dir, step, meta, flat arrays) of ``step`` or of the newest readable step, read
    without writing anything and checked against the recorded CRC32s.

    ``path``: as for ``read_meta``. Unlike a resume, a damaged step is skipped with a
    warning (a named ``step`` raises), never moved aside: the search that owns the folder may
    still be running (a step it prunes meanwhile is skipped, not reported).
    """
    _silence_closed_loop_reports()
    path, step = _resolve(path, step)
    step, (meta, arrays) = _newest_readable(path, step, _meta_and_arrays)
    return path, step, meta, arrays


def verify_checkpoint(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """Read every array of each committed step (or only ``step``) and check it against the
    CRC32s in its JSON item, without a model or template, changing nothing.

    ``path``: as for ``read_meta``. Returns ``{'workdir', 'live', 'steps': [{'step', 'ok',
    'reason'}], 'pruned': [steps], 'moved_aside': [names in corrupt/]}``; ``reason`` (None when
    ok) is one line saying which item is damaged and how. ``live``: the holder of the run's
    lock ('pid P on HOST since T', see ``live_holder``) while a run writes the workdir, else
    None. Beside a live search, the steps committed when the call starts are checked (listed
    again when the search pruned every one of them first); one the search prunes before or
    while it is read is listed in ``pruned``, not in ``steps`` (a named ``step`` pruned so
    raises FileNotFoundError). A step whose files stay unchanged
    while a read fails (checked twice when the run is live) is damaged, live run or not.
    """
    _silence_closed_loop_reports()
    path, step = _resolve(path, step)
    live = live_holder(path)
    results, pruned = [], []
    with _reader(path) as manager:
        for _ in range(_ROUNDS):
            for s in _listed_steps(manager, path, step, live):
                out = _read_committed(manager, path, s, _meta_and_arrays, live)
                if out.pruned and step is not None:
                    raise FileNotFoundError(
                        f"step {s} in {path} was deleted while it was read{_in_progress(live)}"
                    )
                if out.pruned:
                    pruned.append(s)
                else:
                    results.append({"step": s, "ok": out.damage is None, "reason": out.damage})
            if results:
                break
            manager.reload()  # every listed step was pruned: check the ones that replaced them
    return {
        "workdir": path,
        "live": live,
        "steps": results,
        "pruned": pruned,
        "moved_aside": _moved_aside(path),
    }
