"""Multi-process runs: every process runs the same program, process 0 alone writes files.

A run on a TPU pod slice, a GPU cluster or several CPU processes is one JAX program per process
(SPMD): each process executes the whole of `hs_jax.run`, the device programs span every
process's devices (one global mesh), and the host-side work (tokenising, G-decode, JFK draws,
answer parsing) is repeated on every process. Files are another matter: one workdir, one
writer. This module gives the runner and the search the pieces for that:

- `initialize(config)`: `jax.distributed.initialize` with `config.coordinator_address`,
  `config.num_processes` and `config.process_id` (each left at ''/0/-1 is detected from the
  cluster: TPU VMs, SLURM, Open MPI). It must run before anything touches a device. On CPU,
  the cross-process collectives are gloo, jax's default (`jax_cpu_collectives_implementation`).
- `on_primary(fn)`: process 0 runs `fn` (a workdir check, a file write) and every process gets
  its JSON-able result, or raises its error: a refusal on process 0 (workdir busy, another run
  in it) stops every process with the same message instead of leaving the others waiting in a
  collective. It is also a barrier: nothing after it runs before process 0's `fn` is done.
- `assert_same(what, value)`: every process checks that the others computed the same value
  (a sha256 of its JSON, gathered from all processes); the search calls it for each
  iteration's decoded DAGs, JFK assignments and utilities, so host-side randomness that drifted
  between processes stops the run, naming the step, instead of silently desynchronising them.
- `host(x)`: a numpy copy of an array that may span other processes' devices (gathered).

With a single process all of these are plain calls (no collective, no copy).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from hs_jax.runtime.errors import ConfigError, UserError


class PrimaryError(RuntimeError):
    """Process 0 failed in `on_primary` with an error that is not a user error; the other
    processes raise this with its message."""


def initialize(c) -> None:
    """`jax.distributed.initialize` from the config's coordinator fields (module docstring).
    Must be called before the first device is used."""
    kwargs: dict[str, Any] = {}
    if c.coordinator_address:
        kwargs["coordinator_address"] = c.coordinator_address
    if c.num_processes:
        kwargs["num_processes"] = c.num_processes
    if c.process_id >= 0:
        kwargs["process_id"] = c.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # jax's own check of the arguments (e.g. no cluster detected)
        raise ConfigError(
            f"config.distributed=True: {e} (set config.coordinator_address, num_processes and "
            "process_id where the cluster is not detected)"
        ) from e
    logging.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def multi() -> bool:
    """Whether this run spans several processes."""
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the workdir."""
    return jax.process_index() == 0


def _broadcast_bytes(data: bytes) -> bytes:
    """Process 0's `data` on every process (others pass b''). Padded to a power of two so a
    handful of compiled broadcast programs serve every call."""
    from jax.experimental import multihost_utils

    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    padded = 1 << max(4, (size - 1).bit_length())
    buffer = np.zeros(padded, np.uint8)
    if is_primary():
        buffer[:size] = np.frombuffer(data, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return out[:size].tobytes()


def on_primary(fn: Callable[[], Any]) -> Any:
    """`fn()` on process 0; its JSON-able result on every process, or its error raised on every
    process (a user error as a UserError with the same message, so the launchers still print
    one line; anything else as PrimaryError). Single process: just `fn()`."""
    if not multi():
        return fn()
    outcome: dict[str, Any] = {}
    error = None
    if is_primary():
        try:
            outcome = {"ok": fn()}
        except Exception as e:
            from hs_jax.runtime.errors import is_user_error

            error = e
            outcome = {"error": str(e), "user": is_user_error(e), "type": type(e).__name__}
    shared = json.loads(_broadcast_bytes(json.dumps(outcome).encode()) or b"{}")
    if error is not None:
        raise error
    if "error" in shared:
        cls = UserError if shared["user"] else PrimaryError
        raise cls(f"process 0 stopped the run: {shared['type']}: {shared['error']}")
    return shared["ok"]


def on_primary_keeping(fn: Callable[[], Any], share: Callable[[Any], Any]) -> tuple[Any, Any]:
    """`on_primary` for a result only part of which every process needs: (`fn()` on process 0,
    None elsewhere; `share(fn())`, JSON-able, on every process). Process 0 keeps what is too
    big or too local to send (a task file's bytes) while the others get the decision."""
    kept = None

    def run_and_share():
        nonlocal kept
        kept = fn()
        return share(kept)

    shared = on_primary(run_and_share)
    return kept, shared


def barrier(name: str) -> None:
    """Every process waits here until all have reached it (no-op for one process)."""
    if multi():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def digest(value: Any) -> np.ndarray:
    """sha256 of `value`'s canonical JSON (numpy values as lists), as 32 uint8."""
    text = json.dumps(_plain(value), sort_keys=True, allow_nan=True)
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _plain(value.tolist())
    return value


# Number of agreement checks made by this process (tests and logs read it).
checks = 0


def assert_same(
    what: str,
    value: Any,
    why: str = "host-side computation is not reproducible across processes",
    error: type[Exception] = AssertionError,
) -> None:
    """Raises `error` (on every process) unless every process passes an equal `value`
    (JSON-able or numpy); `why` says what a difference means. No-op for one process."""
    global checks
    if not multi():
        return
    from jax.experimental import multihost_utils

    mine = digest(value)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 32]
    checks += 1
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise error(
            f"processes disagree on {what}: process(es) {differ} differ from process 0 ({why})"
        )


def host(x: Any) -> np.ndarray:
    """A numpy copy of `x`; an array spread over other processes' devices is gathered first
    (a collective: every process must make the same call)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.array(multihost_utils.process_allgather(x, tiled=True))
    return np.array(jax.device_get(x))


def host_tree(tree: Any) -> Any:
    """`host` of every leaf of a pytree (the same structure, numpy leaves)."""
    return jax.tree.map(host, tree)
