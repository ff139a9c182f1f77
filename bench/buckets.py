"""A whole demo run with the default shape buckets vs fine ones, compilations included.

bench/search.py times single steps after they have compiled; finer buckets pad less, but every
new (batch, length) shape compiles once, and a whole run meets more shapes than one step does.
This script runs the demo (`launch.main`, configs/demo.py on a trained pool) twice, each in a
fresh process and workdir with the persistent compilation cache off, so each pays for every
compilation it needs, as a run on a new machine does: once with the config's buckets, once with
bench/search.py's fine ones (`--config.engine.batch_buckets`, `--config.engine.length_buckets`).
It reports the whole run's wall time and peak memory and checks that both find the same system
with the same utilities.

  python -m bench.buckets --pool_dir=runs/demo/experts   # writes the 'buckets' section
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags

from bench import _common
from hs_jax.call_plan import FINE_BATCH_BUCKETS, FINE_LENGTH_BUCKETS

_POOL = flags.DEFINE_string("pool_dir", None, "A trained pool (the demo's: runs/demo/experts).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the two runs go ('' = a temp dir).")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md.")
flags.mark_flag_as_required("pool_dir")

SETTINGS = {
    "default": [],
    "fine": [
        f"--config.engine.batch_buckets={FINE_BATCH_BUCKETS}".replace(" ", ""),
        f"--config.engine.length_buckets={FINE_LENGTH_BUCKETS}".replace(" ", ""),
    ],
}


def run_demo(setting: str, workdir: Path) -> dict:
    """One demo run in a fresh process: `_common.run_measured`'s record and its results.json."""
    argv = [
        sys.executable, "-m", "launch.main", "--config=configs/demo.py",
        f"--config.experts.pool_dir={_POOL.value}", "--config.engine.compilation_cache=",
        f"--workdir={workdir}", *SETTINGS[setting],
    ]  # fmt: skip
    run = _common.run_measured(argv, dict(os.environ), workdir.with_suffix(".log"))
    return {**run, "results": json.loads((workdir / "results.json").read_text())}


def _system(results: dict) -> tuple:
    b = results["best_system"]
    return (json.dumps(b["dag"]), tuple(b["assignment"]), b["dev_utility"], b["test_utility"])


def main(argv):
    del argv
    load_start = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    dirs = _common.fresh_workdirs(_WORKDIR.value, "hs_jax_buckets_", list(SETTINGS))
    runs = {setting: run_demo(setting, workdir) for setting, workdir in dirs.items()}
    table = [
        "| buckets | process wall s | run s (results.json) | peak RSS MB | generate calls | "
        "prompt + generated tokens | best system (edges, end; assignment) | dev / test utility |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting, run in runs.items():
        r = run["results"]
        b, cost = r["best_system"], r["cost"]
        table.append(
            f"| {setting} | {run['seconds']:.0f} | {r['seconds']:.0f} | {run['peak_mb']:.0f} | "
            f"{cost['generate_calls']} | {cost['prompt_tokens']} + {cost['generated_tokens']} | "
            f"{b['dag']['edges']}, {b['dag']['end']}; {b['assignment']} | "
            f"{b['dev_utility']:.3f} / {b['test_utility']:.3f} |"
        )
    same = _system(runs["default"]["results"]) == _system(runs["fine"]["results"])
    description = (
        "The demo (`launch.main --config=configs/demo.py` on a trained pool: 3 search "
        "iterations, 12 dev and 36 test items), run twice, each in a fresh process and workdir "
        "with the persistent compilation cache off: the config's buckets (batch "
        f"{tuple(_default_buckets())}, the engine's default length buckets) and fine ones "
        f"(batch {FINE_BATCH_BUCKETS}; length every 16 tokens to 512, then the default ones). "
        f"Load average at the start {load_start}. Same system and utilities: {same}."
    )
    _common.publish(
        "buckets", "Shape buckets over a whole run", description, table, "jax",
        write=_WRITE.value,
    )  # fmt: skip


def _default_buckets() -> tuple[int, ...]:
    from configs import demo

    return tuple(demo.get_config().engine.batch_buckets)


if __name__ == "__main__":
    app.run(main)
