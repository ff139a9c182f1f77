"""A whole demo run with the default shape buckets vs fine ones, compilations included.

bench/search.py times single steps after they have compiled; finer buckets pad less, but every
new (batch, length) shape compiles once, and a whole run meets more shapes than one step does.
This script runs the demo (`launch.main`, configs/demo.py on a trained pool) with the config's
buckets and with `hs_jax.engine.call_plan`'s fine ones (`--config.engine.batch_buckets`,
`--config.engine.length_buckets`), each twice in fresh processes and workdirs: first on an
empty persistent compilation cache, so it pays for every compilation it needs, as a run on a
new machine does, then again on the cache that run filled, as a repeated run. It reports each
run's wall time and peak memory and checks that all find the same system with the same
utilities.

  python -m bench.buckets --pool_dir=runs/demo/experts   # writes the 'buckets' section
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags

from bench import _common
from hs_jax.engine.call_plan import FINE_BATCH_BUCKETS, FINE_LENGTH_BUCKETS

_POOL = flags.DEFINE_string("pool_dir", None, "A trained pool (the demo's: runs/demo/experts).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the two runs go ('' = a temp dir).")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md.")
flags.mark_flag_as_required("pool_dir")

CACHES = ("cold", "warm")
SETTINGS = {
    "default": [],
    "fine": [
        f"--config.engine.batch_buckets={FINE_BATCH_BUCKETS}".replace(" ", ""),
        f"--config.engine.length_buckets={FINE_LENGTH_BUCKETS}".replace(" ", ""),
    ],
}


def run_demo(setting: str, workdir: Path, cache: Path) -> dict:
    """One demo run in a fresh process with the persistent compilation cache in `cache`:
    `_common.run_measured`'s record and its results.json."""
    argv = [
        sys.executable, "-m", "launch.main", "--config=configs/demo.py",
        f"--config.experts.pool_dir={_POOL.value}", f"--config.engine.compilation_cache={cache}",
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
    names = [f"{setting}_{cache}" for setting in SETTINGS for cache in CACHES]
    dirs = _common.fresh_workdirs(_WORKDIR.value, "hs_jax_buckets_", names)
    runs = {}
    for name, workdir in dirs.items():  # cold fills the setting's cache, warm then reads it
        setting = name.rsplit("_", 1)[0]
        runs[name] = run_demo(setting, workdir, workdir.parent / f"xla_{setting}")
    table = [
        "| buckets | compilation cache | process wall s | run s (results.json) | peak RSS MB | "
        "generate calls | prompt + generated tokens | best system (edges, end; assignment) | "
        "dev / test utility |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        r = run["results"]
        b, cost = r["best_system"], r["cost"]
        setting, cache = name.rsplit("_", 1)
        table.append(
            f"| {setting} | {cache} | {run['seconds']:.0f} | {r['seconds']:.0f} | "
            f"{run['peak_mb']:.0f} | {cost['generate_calls']} | {cost['prompt_tokens']} + "
            f"{cost['generated_tokens']} | {b['dag']['edges']}, {b['dag']['end']}; "
            f"{b['assignment']} | {b['dev_utility']:.3f} / {b['test_utility']:.3f} |"
        )
    same = len({_system(run["results"]) for run in runs.values()}) == 1
    root = next(iter(dirs.values())).parent
    programs = {
        setting: len(list((root / f"xla_{setting}").glob("jit_generate_tokens-*")))
        for setting in SETTINGS
    }
    description = (
        "The demo (`launch.main --config=configs/demo.py` on a trained pool: 3 search "
        "iterations, 12 dev and 36 test items), each run in a fresh process and workdir, with "
        "the config's buckets (batch "
        f"{tuple(_default_buckets())}, the engine's default length buckets) and with fine ones "
        f"(batch {FINE_BATCH_BUCKETS}; length every 16 tokens to 512, then the default ones). "
        "Compilation cache: 'cold' = an empty persistent cache, as on a new machine (the run "
        "compiles every shape and fills it); 'warm' = the next run with the same buckets on "
        "that cache, as a repeated run. Generate programs compiled (the cold run's cache "
        "entries; the runner caches every compilation of 1 s or more): default "
        f"{programs['default']}, fine {programs['fine']}. "
        f"Load average at the start {load_start}. Same system and utilities in every run: "
        f"{same}."
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
