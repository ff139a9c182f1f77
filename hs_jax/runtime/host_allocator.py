"""Host memory for XLA's CPU buffers: reused from the heap, not faulted in fresh on every call.

Every device call on the CPU backend allocates its temporaries (the KV cache, the prefill's
activations: about 1 GB for 64 rows of a 128-token prompt on Gemma 3 270M) with glibc's
malloc, from the thread that runs it. glibc serves such a block by a fresh `mmap` whenever it
is larger than the mmap threshold (at most 32 MB by default) or is asked for from a thread's own
arena (whose heaps are at most 64 MB), and `munmap`s it on free; so every call touches its
buffers' pages for the first time again, and the kernel zeroes each page on that first touch.
bench/RESULTS.md (section host_memory) measured 6.4 GB of such first touches per 64-row call.
By default (``HS_JAX_HOST_MALLOC`` unset or ``reuse``) `reuse_freed_memory` sets three malloc
parameters so that freed blocks stay in the main heap and are handed out again: one arena
(M_ARENA_MAX), a mmap threshold above any buffer (M_MMAP_THRESHOLD) and no trimming of the
heap's top (M_TRIM_THRESHOLD). ``HS_JAX_HOST_MALLOC=glibc`` keeps glibc's defaults.

What it costs and buys, measured (bench/RESULTS.md, sections host_memory and
host_memory_long): most calls after the first touch no fresh pages, the same tokens, up to
1.13x faster calls; over a whole comparison (8 cells, each loading the model again) the same
results and costs, 8% less wall time and the same peak memory (6.9 vs 6.8 GB). The heap is never
handed back, so the process holds its peak until it ends instead of falling back between
calls, and threads share one arena lock. Not every call finds a fitting freed block: an
aligned block does not always fit the hole its predecessor left, and the heap grows by another
block first (tests/test_host_memory.py saw 1 to 6 of 7 calls still fault their temporaries in).

It must run before JAX starts its CPU client: a thread keeps the arena it first allocated
from, so once XLA's worker threads exist the setting no longer reaches them. The launchers
call it first thing (`hs_jax.runtime.errors.run_main`), `hs_jax.run` before it touches a device; a
notebook or test session that has already used JAX keeps glibc's defaults (nothing is wrong,
the calls only pay the page faults). It does nothing off glibc and on accelerator hosts (whose
hot buffers live in device memory).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import sys

from absl import logging

# mallopt parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# The largest threshold glibc takes (an int): 2 GB, above the temporaries of the shapes measured.
_NEVER = 2**31 - 1
ENV = "HS_JAX_HOST_MALLOC"

_STATUS: str | None = None


def _glibc():
    """glibc's handle, or None off glibc (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def _accelerator_installed() -> bool:
    """Whether JAX may pick a non-CPU platform: JAX_PLATFORMS names one first, or a TPU or
    PJRT plugin (CUDA, ROCm) is installed. Decided without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() != "cpu"
    if importlib.util.find_spec("libtpu") is not None:
        return True
    return bool(importlib.metadata.entry_points(group="jax_plugins"))


def _jax_started() -> bool:
    """Whether a JAX backend (and so XLA's thread pool) exists already."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bridge.backends_are_initialized()


def reuse_freed_memory() -> str:
    """Sets glibc's malloc to reuse freed blocks unless ``HS_JAX_HOST_MALLOC=glibc`` (module
    docstring), once per process; returns what was done: 'applied', 'off (...)' or
    'skipped: <why>'."""
    global _STATUS
    if _STATUS is not None:
        return _STATUS
    setting = os.environ.get(ENV, "") or "reuse"
    if setting == "glibc":
        status = f"off ({ENV}=glibc: glibc's defaults)"
    elif setting != "reuse":
        status = f"skipped: {ENV}={setting!r} is neither 'reuse' nor 'glibc'"
        logging.warning("%s; glibc's defaults kept", status)
    elif _jax_started():
        status = "skipped: JAX had started (its threads keep their arenas)"
    elif _accelerator_installed():
        status = "skipped: an accelerator platform is installed"
    elif (libc := _glibc()) is None:
        status = "skipped: not glibc"
    else:
        ok = all(
            libc.mallopt(param, value) == 1
            for param, value in (
                (M_ARENA_MAX, 1),
                (M_MMAP_THRESHOLD, _NEVER),
                (M_TRIM_THRESHOLD, _NEVER),
            )
        )
        status = "applied" if ok else "skipped: mallopt refused a parameter"
    _STATUS = status
    return status
