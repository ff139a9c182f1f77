"""What the machine can do, for strategies that only pay on some hardware.

The screened greedy head (hs_jax.models.screened_head) reads a bfloat16 copy of the head table
and certifies its choice in float32: the same tokens, faster where bfloat16 matmuls are native
(accelerators; CPUs with AVX-512 BF16 or AMX), slower where XLA emulates them (AVX2-only CPUs:
the bfloat16 pass then costs about what the float32 head does, and the certificate comes on
top). `screen_head_min_rows` picks it by the machine the engine runs on.
"""

from __future__ import annotations

import functools

import jax

# CPU flags under which bfloat16 matmuls run natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(platform: str | None = None) -> bool:
    """Whether bfloat16 matmuls are native on the default backend (or `platform`)."""
    platform = platform or jax.default_backend()
    if platform != "cpu":
        return True
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def screen_head_min_rows(platform: str | None = None) -> int | None:
    """The engine's default for the screened head: from 2 rows where bfloat16 is native, else
    off (None)."""
    return 2 if native_bf16(platform) else None
