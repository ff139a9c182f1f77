"""Checkpoints of a swarm search: orbax ``CheckpointManager`` with two named items per step.

Layout of ``workdir`` (one directory per saved step, written atomically by orbax)::

    workdir/<step>/state   arrays (orbax StandardSave): every leaf of the search state pytree
                           (both PSO swarms, the best expert weights, the jax key data), stored
                           under flat, sanitised key-path names
    workdir/<step>/meta    JSON (orbax JsonSave): config, numpy Generator state, histories, best
                           system, CRC32 of every array leaf, stop reason ...

``step`` is the number of completed search iterations. The search code owns the content of
both items; this module only stores, verifies and reloads them:

- **Integrity.** orbax only lists a step once it is fully written (a kill during a save leaves a
  temporary directory that is ignored and cleaned up). A step that was finished but later
  damaged (a deleted or truncated file) is caught either by orbax/tensorstore on read or by the
  CRC32 of each array leaf recorded in ``meta``; ``restore_latest`` then warns, deletes the
  damaged step and falls back to the previous one.
- **Identity.** ``meta['identity']`` holds whatever defines the run (config, expert
  fingerprint). Restoring with a different identity raises ``ConfigMismatchError`` naming each
  differing field, so a workdir is never silently continued with other settings.
- **No model needed to read.** ``summarize_checkpoint`` reads only the JSON item.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any

STATE = "state"
META = "meta"
# Where `hs_jax.run` keeps the search checkpoints inside a run's workdir.
SEARCH_SUBDIR = "search"
FORMAT_VERSION = 1


class ConfigMismatchError(ValueError):
    """The workdir was written by a run with a different identity (config or experts)."""


class NoUsableCheckpointError(RuntimeError):
    """Steps exist in the workdir but none of them could be restored."""


# ----------------------------------------------------------------------------- pytree <-> flat


def _leaf_name(index: int, path) -> str:
    """A file-system-safe, unique array name for one leaf: '<index>_<sanitised key path>'."""
    readable = re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")
    return f"{index:05d}_{readable}"[:200]


def flatten_state(tree: PyTree) -> dict[str, np.ndarray]:
    """Host copies of every leaf of ``tree`` under flat names (orbax sees only a flat dict)."""
    flat = {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(tree)):
        # np.array (not asarray) so the saved copy never aliases a buffer the search later
        # donates to a jitted step.
        flat[_leaf_name(i, path)] = np.array(jax.device_get(leaf))
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


def _flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out.update(_flatten_json(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def identity_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted names of the fields that differ between two JSON-like mappings, each with both
    values (``'seed: saved 0, now 1'``); empty when they agree."""
    a, b = _flatten_json(saved), _flatten_json(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            lines.append(f"{key}: not in the checkpoint, now {b[key]!r}")
        elif key not in b:
            lines.append(f"{key}: saved {a[key]!r}, not in the current run")
        elif not _same(a[key], b[key]):
            lines.append(f"{key}: saved {_short(a[key])}, now {_short(b[key])}")
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python scalars, recursively (JSON round trip exact)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# ----------------------------------------------------------------------------- manager


class Checkpointer:
    """Saves and restores (state pytree, meta dict) pairs per step in ``workdir``.

    ``save_every``: a step is written when ``step % save_every == 0`` or when forced (the search
    forces its final step). ``max_to_keep``: older steps are garbage collected by orbax (at least
    2 are kept so a damaged latest step has a fallback). Saves are synchronous: the search's next
    iteration costs model inference, far more than the save, and a finished ``save`` means the
    step is on disk.
    """

    def __init__(self, workdir: str | os.PathLike, *, save_every: int = 1, max_to_keep: int = 3):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max(2, max_to_keep),
            create=True,
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
        meta = dict(jsonable(meta))
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

    def _restore_step(self, step: int, template: PyTree) -> tuple[PyTree, dict]:
        flat_template = flatten_state(template)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(flat_template), META: ocp.args.JsonRestore()}
            ),
        )
        flat, meta = restored[STATE], restored[META]
        if not isinstance(meta, dict) or "checksums" not in meta:
            raise ValueError("meta item is incomplete")
        if set(flat) != set(meta["checksums"]):
            raise ValueError("state arrays do not match the recorded checksums' names")
        sums = checksums(flat)
        bad = sorted(k for k in sums if sums[k] != meta["checksums"][k])
        if bad:
            raise ValueError(f"checksum mismatch in {bad[:5]}")
        return unflatten_state(template, flat), meta

    def restore_latest(
        self, template: PyTree, identity: Mapping[str, Any] | None = None
    ) -> tuple[int, PyTree, dict] | None:
        """(step, state, meta) of the newest step that restores cleanly, or None for an empty
        workdir.

        ``template``: a pytree with the structure, dtypes and shardings of the saved state (e.g.
        a freshly initialised one). A step that fails to restore or verify is logged with an
        absl warning and deleted (its number would otherwise collide with the resumed run's next
        save), and the previous step is tried. ``identity``: compared with the saved
        ``meta['identity']``; a difference raises ``ConfigMismatchError`` naming the fields.
        """
        steps = self.all_steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                state, meta = self._restore_step(step, template)
            except Exception as e:  # any damage: orbax, tensorstore, JSON, checksum errors
                logging.warning(
                    "checkpoint step %d in %s is unreadable (%s: %s); deleting it and falling "
                    "back to the previous step",
                    step,
                    self.workdir,
                    type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "",
                )
                self._manager.delete(step)
                continue
            if identity is not None:
                diff = identity_diff(meta.get("identity", {}), jsonable(identity))
                if diff:
                    raise ConfigMismatchError(
                        f"workdir {self.workdir} was written by a different run; differing "
                        "fields:\n  " + "\n  ".join(diff)
                    )
            return step, state, meta
        raise NoUsableCheckpointError(
            f"none of the steps {steps} in {self.workdir} could be restored (see warnings)"
        )


# ----------------------------------------------------------------------------- summaries


def _read_meta(workdir: str, step: int | None) -> tuple[int, dict]:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    manager = ocp.CheckpointManager(workdir, options=options, item_names=(STATE, META))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {workdir}")
        candidates = [step] if step is not None else list(reversed(steps))
        if step is not None and step not in steps:
            raise FileNotFoundError(f"step {step} not in {workdir} (steps: {steps})")
        for s in candidates:
            try:
                meta = manager.restore(s, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
                return s, meta[META]
            except Exception as e:
                if step is not None:
                    raise
                logging.warning("checkpoint step %d unreadable (%s); trying the previous one", s, e)
        raise NoUsableCheckpointError(f"no readable checkpoint in {workdir}")
    finally:
        manager.close()


def _has_step_dirs(path: str) -> bool:
    return any(name.isdigit() for name in os.listdir(path))


def summarize_checkpoint(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """Summary of a search checkpoint, read from its JSON item only (no model, no arrays).

    ``path``: a search workdir (latest readable step unless ``step``), one step directory in it
    (``workdir/<step>``), or the workdir of a whole run (``hs_jax.run``), whose checkpoints are
    in its ``search/`` folder. Returns iteration, whether the search finished and why, the best
    system (utility, iteration, DAG as JSON, assignment), a per-iteration table of utilities,
    and the saved identity (config).
    """
    path = os.path.abspath(os.fspath(path))
    base = os.path.basename(path.rstrip(os.sep))
    if step is None and base.isdigit() and os.path.isdir(os.path.join(path, META)):
        path, step = os.path.dirname(path), int(base)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint in {path}: no such directory")
    nested = os.path.join(path, SEARCH_SUBDIR)
    if not _has_step_dirs(path) and os.path.isdir(nested):
        path = nested  # a run's workdir (`hs_jax.run`): its checkpoints are one level down
    step, meta = _read_meta(path, step)
    history = meta.get("history", [])
    rows = []
    for rec in history:
        row = {"iteration": rec.get("iteration"), "best_so_far": rec.get("best_utility")}
        for phase in ("role", "weight"):
            part = rec.get(phase) or {}
            for stat in ("best", "mean", "worst"):
                row[f"{phase}_{stat}"] = part.get(stat) if part.get("ran") else None
        rows.append(row)
    best = meta.get("best") or {}
    return {
        "workdir": path,
        "step": step,
        "iteration": meta.get("iteration"),
        "finished": meta.get("stop_reason") is not None,
        "stop_reason": meta.get("stop_reason"),
        "best_utility": best.get("utility"),
        "best_iteration": best.get("iteration"),
        "best_dag": best.get("dag"),
        "best_assignment": best.get("assignment"),
        "test_utility": meta.get("test_utility"),
        "utilities": rows,
        "config": (meta.get("identity") or {}).get("config"),
    }
