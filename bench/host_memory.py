"""Generate calls with glibc's default malloc vs `hs_jax.runtime.host_allocator.reuse_freed_memory`.

The same workload runs in two fresh processes (the allocator must be set before JAX starts, so
one process cannot measure both): the real Gemma 3 270M (float32, the config's model), three
random LoRA experts, prompts of random words padded to one length bucket, greedy, 4 new tokens;
one call per shape compiles, then --repeats timed calls. Per call: wall time, minor page faults
(getrusage; each is a page touched for the first time since the kernel handed it out) and the
generated tokens, which must be identical in both processes.

  python -m bench.host_memory          # writes the 'host_memory' section of bench/RESULTS.md
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from bench import _common

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "The run's config.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per shape (the fastest is used).")
_ROWS = flags.DEFINE_list("rows", ["8", "32", "64"], "Rows per call.")
_WORDS = flags.DEFINE_integer("words", 100, "Words per prompt.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure in this process, print JSON.")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md.")

PAGE = resource.getpagesize()


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child() -> dict:
    """This process's measurements (the allocator is whatever `reuse_freed_memory` decides from
    the environment the parent gave)."""
    from hs_jax.runtime import host_allocator

    status = host_allocator.reuse_freed_memory()
    import jax
    import numpy as np

    from hs_jax.experts import lora
    from hs_jax.setup import assembly

    c = _CONFIG.value
    config, params, tokenizer = assembly.load_base(c)
    experts = lora.init_lora_stack(
        config, 3, c.experts.rank, tuple(c.experts.targets), jax.random.key(0),
        scheme="random", init_scale=0.002,
    )  # fmt: skip
    c.engine.max_batch = max(int(r) for r in _ROWS.value)
    engine = assembly.make_engine(c, (config, params, tokenizer), experts, mesh=None)
    words = np.array("the quick brown fox jumps over a lazy dog and then".split())
    rng = np.random.default_rng(0)
    shapes = []
    for rows in (int(r) for r in _ROWS.value):
        prompts = [" ".join(rng.choice(words, _WORDS.value)) for _ in range(rows)]
        ids = [i % 3 for i in range(rows)]
        engine.generate(prompts, ids, max_new_tokens=4)  # compiles
        calls = []
        for _ in range(_REPEATS.value):
            faults, start = _faults(), time.perf_counter()
            out = engine.generate(prompts, ids, max_new_tokens=4)
            calls.append((time.perf_counter() - start, _faults() - faults))
        shapes.append(
            {
                "rows": rows,
                "prompt_tokens": int(sum(len(p) for p in out.prompt_tokens)),
                "seconds": min(t for t, _ in calls),
                "fault_mb": float(np.median([f for _, f in calls])) * PAGE / 1e6,
                "texts": list(out.texts),
            }
        )
    return {"status": status, "shapes": shapes, "peak_rss_mb": _common.peak_rss_mb()}


def _run_child(setting: str) -> dict:
    env = {**os.environ, "HS_JAX_HOST_MALLOC": "glibc" if setting == "default" else "reuse"}
    argv = [sys.executable, "-m", "bench.host_memory", "--child", "--nowrite"]
    argv += [a for a in sys.argv[1:] if not a.startswith(("--child", "--write", "--nowrite"))]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(child()), flush=True)
        return
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    default, tuned = _run_child("default"), _run_child("tuned")
    if tuned["status"] != "applied":
        raise SystemExit(f"reuse_freed_memory did not apply: {tuned['status']}")
    table = [
        "| rows | prompt tokens | glibc ms | reused ms | speed-up | glibc MB first-touched "
        "per call | reused MB | same tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d, t in zip(default["shapes"], tuned["shapes"], strict=True):
        table.append(
            f"| {d['rows']} | {d['prompt_tokens']} | {d['seconds'] * 1e3:.0f} | "
            f"{t['seconds'] * 1e3:.0f} | {d['seconds'] / t['seconds']:.2f}x | "
            f"{d['fault_mb']:.0f} | {t['fault_mb']:.0f} | {d['texts'] == t['texts']} |"
        )
    description = (
        "Engine.generate on Gemma 3 270M (float32), 3 random LoRA experts, prompts of "
        f"{_WORDS.value} random words, greedy, 4 new tokens: glibc's default malloc "
        "(`HS_JAX_HOST_MALLOC=glibc`) vs reused buffers (hs_jax's default, "
        "`hs_jax.runtime.host_allocator`: one arena, no mmap for large blocks, no heap "
        "trimming), each in "
        f"a fresh process. Times: the fastest of {_REPEATS.value} calls after one that "
        "compiles; MB first-touched = the median call's minor page faults x the page size. "
        f"Load average at the start {load_start}. Peak RSS: glibc "
        f"{default['peak_rss_mb']:.0f} MB, reused {tuned['peak_rss_mb']:.0f} MB."
    )
    _common.publish(
        "host_memory", "Host memory: XLA's CPU buffers reused", description, table, "jax",
        "numpy", write=_WRITE.value,
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
