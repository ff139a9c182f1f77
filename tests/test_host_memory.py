"""hs_jax.runtime.host_allocator: when the allocator setting applies, and that it stops the
per-call page faults of XLA's CPU temporaries (each case in a fresh process: the setting is per
process and must come before JAX starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A program whose temporaries are about 68 MB (the [4096, 4096] product), above glibc's
# largest dynamic mmap threshold (32 MB): by default every call maps and faults them in anew.
_PROBE = textwrap.dedent(
    """
    import json, resource
    from hs_jax.runtime import host_allocator as host_memory
    status = host_memory.reuse_freed_memory()
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.tanh(jnp.sin(x) @ jnp.cos(x).T) @ x)
    x = jnp.ones((4096, 64))
    temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
    mb = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        mb.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                  * resource.getpagesize() / 1e6)
    print(json.dumps({"status": status, "temp_mb": temp / 1e6, "fault_mb": mb,
                      "again": host_memory.reuse_freed_memory()}))
    """
)

# What the setting decided, in a process that has not started JAX.
_STATUS = (
    "import json\nfrom hs_jax.runtime import host_allocator as host_memory\n"
    "print(json.dumps({'status': host_memory.reuse_freed_memory()}))"
)


def _run(code: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "HS_JAX_HOST_MALLOC"}
    environ.update(env, PYTHONPATH=str(ROOT), JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import platform

    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="the setting exists on glibc only")
def test_reused_buffers_are_not_faulted_in_again():
    tuned, default = _run(_PROBE), _run(_PROBE, HS_JAX_HOST_MALLOC="glibc")
    assert tuned["status"] == tuned["again"] == "applied"  # the default
    assert _run(_PROBE, HS_JAX_HOST_MALLOC="reuse")["status"] == "applied"
    assert default["status"] == "off (HS_JAX_HOST_MALLOC=glibc: glibc's defaults)"
    assert tuned["temp_mb"] > 40
    # By default every call touches its temporaries' pages for the first time again ...
    assert min(default["fault_mb"][1:]) > 0.5 * default["temp_mb"]
    # ... reused, later calls find a freed block that fits and touch (almost) nothing new. Not
    # every one does: an aligned block does not always fit the hole its predecessor left, so the
    # heap may grow by another block first (1 to 6 of these 7 calls still faulted in 8 probes).
    assert min(tuned["fault_mb"][1:]) < 0.05 * tuned["temp_mb"]


def test_too_late_once_jax_has_started():
    status = _run("import jax\njax.devices()\n" + _STATUS)["status"]
    assert status == "skipped: JAX had started (its threads keep their arenas)"


def test_not_for_accelerator_platforms():
    status = _run(_STATUS, JAX_PLATFORMS="tpu,cpu")["status"]
    assert status == "skipped: an accelerator platform is installed"


def test_an_unknown_setting_keeps_glibcs_defaults_and_says_so():
    status = _run(_STATUS, HS_JAX_HOST_MALLOC="resue")["status"]
    assert status == "skipped: HS_JAX_HOST_MALLOC='resue' is neither 'reuse' nor 'glibc'"
