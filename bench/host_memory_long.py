"""A whole comparison in one process with glibc's default malloc vs reused host buffers.

`bench.host_memory` measures single generate calls. What reuse costs shows only in a long
process: `hs_jax.runtime.host_allocator` keeps freed blocks in the heap and never trims it, and
every comparison cell loads the model again, trains or merges adapters and frees them. This script
runs the same `launch.compare` twice, each in a fresh process (the allocator is set before JAX
starts) with its own fresh workdir and the persistent compilation cache off (the second run
would otherwise skip the first one's compilations): once with glibc's defaults
(``HS_JAX_HOST_MALLOC=glibc``), once with reused buffers (``reuse``, hs_jax's default). It
samples the process's resident memory every half second and reads its peak (ru_maxrss of the
finished child), notes which cell was running from cells.json, and checks that both runs'
cells give the same test utilities and costs.

  python -m bench.host_memory_long --pool_dir=runs/demo/experts
      # writes the 'host_memory_long' section of bench/RESULTS.md and
      # bench/figures/host_memory_long.png
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags

from bench import _common

_POOL = flags.DEFINE_string("pool_dir", None, "A trained pool (the demo's: runs/demo/experts).")
_METHODS = flags.DEFINE_string(
    "methods",
    "hs,random_search,best_single,uniform_soup,dare_ties,greedy_soup,model_swarms,chain",
    "The comparison's methods (one cell each, seed 0).",
)
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the two comparisons run ('' = a temp dir).")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md and the picture.")
flags.mark_flag_as_required("pool_dir")

FIGURE = Path(__file__).resolve().parent / "figures" / "host_memory_long.png"
SETTINGS = ("glibc", "reuse")


def _cells(workdir: Path) -> list[dict]:
    try:
        return json.loads((workdir / "cells.json").read_text())
    except (OSError, ValueError):
        return []


def _settled(cells: list[dict]) -> int:
    return sum(c.get("status") != "pending" for c in cells)


def run_comparison(setting: str, workdir: Path) -> dict:
    """One comparison in a fresh process: `_common.run_measured`'s record (RSS samples with the
    cells settled so far) and the cells' results."""
    env = {**os.environ, "HS_JAX_HOST_MALLOC": setting}
    argv = [
        sys.executable, "-m", "launch.compare", "--config=configs/demo.py",
        f"--config.experts.pool_dir={_POOL.value}", "--config.engine.compilation_cache=",
        f"--methods={_METHODS.value}", "--tasks=nlgraph_gen", "--seeds=0",
        f"--workdir={workdir}",
    ]  # fmt: skip
    run = _common.run_measured(
        argv, env, workdir.with_suffix(".log"), sample=lambda: _settled(_cells(workdir))
    )
    cells = []
    for cell in _cells(workdir):
        results = workdir / cell["workdir"] / "results.json"
        done = cell["status"] == "done"
        cells.append({**cell, "results": json.loads(results.read_text()) if done else {}})
    return {**run, "cells": cells}


def _cell_peaks(run: dict) -> list[float]:
    """Per cell, the largest RSS sampled while it ran (cells in the order they settled)."""
    peaks = [0.0] * len(run["cells"])
    for _, rss, settled in run["samples"]:
        if settled < len(peaks):
            peaks[settled] = max(peaks[settled], rss)
    return peaks


def _outcome(cell: dict) -> tuple:
    """What must not depend on the allocator: the test utility and every cost counter."""
    return (cell["status"], cell.get("test_utility"), json.dumps(cell["results"].get("cost")))


def _plot(runs: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for setting, run in runs.items():
        t = [s[0] / 60 for s in run["samples"]]
        ax.plot(t, [s[1] / 1024 for s in run["samples"]], label=setting, lw=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (GB)")
    ax.set_title("one comparison process: HS_JAX_HOST_MALLOC=glibc vs reuse")
    ax.legend()
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    plt.close(fig)


def main(argv):
    del argv
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    dirs = _common.fresh_workdirs(_WORKDIR.value, "hs_jax_memory_", SETTINGS)
    runs = {}
    for setting, workdir in dirs.items():
        workdir.mkdir()
        runs[setting] = run_comparison(setting, workdir)
    glibc, reuse = runs["glibc"], runs["reuse"]
    peaks = {s: _cell_peaks(r) for s, r in runs.items()}
    table = [
        "| cell | method | status | glibc s | reuse s | glibc peak RSS MB | reuse peak RSS MB | "
        "same utility and costs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    same = 0
    for i, (d, r) in enumerate(zip(glibc["cells"], reuse["cells"], strict=True)):
        equal = _outcome(d) == _outcome(r)
        same += equal
        table.append(
            f"| {i + 1} | {d['method']} | {d['status']} | "
            f"{d['results'].get('seconds', float('nan')):.0f} | "
            f"{r['results'].get('seconds', float('nan')):.0f} | {peaks['glibc'][i]:.0f} | "
            f"{peaks['reuse'][i]:.0f} | {equal} |"
        )
    table.append(
        f"| all | | | {glibc['seconds']:.0f} | {reuse['seconds']:.0f} | "
        f"{glibc['peak_mb']:.0f} (peak) | {reuse['peak_mb']:.0f} (peak) | "
        f"{same}/{len(glibc['cells'])} |"
    )
    description = (
        f"`launch.compare` of {len(glibc['cells'])} cells (methods {_METHODS.value}; seed 0; "
        "task nlgraph_gen of configs/demo.py on a trained demo pool), run twice in fresh "
        "processes: glibc's default malloc (`HS_JAX_HOST_MALLOC=glibc`), then reused "
        "buffers (`HS_JAX_HOST_MALLOC=reuse`, hs_jax's default; "
        "`hs_jax.runtime.host_allocator`). Each "
        "in its own fresh workdir, the persistent compilation cache off. Seconds: each cell's "
        "own (results.json) and the whole process; peak RSS: the largest of the half-second "
        "samples while the cell ran, and the process's ru_maxrss. Load average at the start "
        f"{load_start}. Picture: [host_memory_long.png](figures/host_memory_long.png)."
    )
    _common.publish(
        "host_memory_long", "Host memory over a whole comparison", description, table, "jax",
        "numpy", write=_WRITE.value,
    )  # fmt: skip
    if _WRITE.value:
        _plot(runs)


if __name__ == "__main__":
    app.run(main)
