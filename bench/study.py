"""The study of bench/RESULTS.md: does Heterogeneous Swarms beat its controls on the real model?

  python -m bench.study --workdir=/path/to/study            # runs (or resumes) every stage
  python -m bench.comparison --workdir=/path/to/study --name=study   # writes the section

Stages, each an ordinary `hs_jax.comparison.compare.compare` into the same workdir (a killed study
resumes where it stopped; finished cells are never recomputed), ordered so that a study cut short
has the most useful cells:
  0. the pool: 4 LoRA experts trained once on the generator's 'train' split (configs/study.py);
  1. seed by seed (0 to 4): `hs`, `random_search` (DAGs, assignments
     and expert weights, the search's space), `random_roles` (DAGs and assignments only),
     `self_consistency` (the best single expert sampled at `hs`'s generated tokens),
     `best_single`, `constant_answer`;
  2. the weight methods on seed 0;
  3. the two weight methods with the best seed-0 DEV utility (never chosen on test) on seeds
     1 and 2;
  4. every other method (role methods, ablations, prediction_merge) on seed 0.
The budgeted methods get the dev evaluations the `hs` cell of their seed spent.
"""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

from absl import app, flags, logging

import hs_jax
from hs_jax import methods
from hs_jax.comparison import compare
from hs_jax.config.model_source import ModelSource
from hs_jax.pipeline import diagnostics, found_system, memory_plan
from hs_jax.setup import assembly
from hs_jax.store import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The study's workdir.", required=True)
_STAGES = flags.DEFINE_string("stages", "0,1,2,3,4", "Stages to run (0: pool, 1-4: cells).")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds of the core methods (0 .. seeds-1).")
_REFRESH = flags.DEFINE_boolean(
    "refresh_diagnostics", False, "Recompute every finished cell's answer diagnostics."
)
_CORE_SEEDS = flags.DEFINE_string("core_seeds", "", "Stage 1 on these seeds only (e.g. '3,4').")
_PER_SEED = flags.DEFINE_boolean(
    "per_seed", False, "Print the per-seed table (test (dev) utility, wall minutes) and stop."
)

ROOT = Path(__file__).resolve().parents[1]
CORE = ("hs", "random_search", "random_roles", "self_consistency", "best_single",
        "constant_answer")  # fmt: skip
WEIGHT_FAMILIES = ("static weight", "dynamic weight")


def study_config(pool: str = ""):
    return runpy.run_path(str(ROOT / "configs" / "study.py"))["get_config"](pool)


def build_pool(workdir: Path) -> Path:
    """Stage 0: the pool's PEFT folders (trained once; present folders are loaded)."""
    pool = workdir / "pool"
    hs_jax.make_pool(study_config(), pool)
    return pool / "experts"


def _cells(workdir: Path, method_list, seeds) -> None:
    config = study_config(str(workdir / "pool" / "experts"))
    start = time.perf_counter()
    compare.compare(
        config, workdir, method_list=list(method_list), task_list=["nlgraph_gen"], seeds=seeds
    )
    logging.info("stage %s seeds %s: %.0f s", list(method_list), seeds, time.perf_counter() - start)


def weight_methods() -> list[str]:
    """The static and dynamic weight methods, in registry order."""
    return [n for n, spec in methods.METHODS.items() if spec.family in WEIGHT_FAMILIES]


def best_weight_methods(workdir: Path, k: int = 2) -> list[str]:
    """The k weight methods with the best seed-0 dev utility (ties: registry order)."""
    scored = []
    for name in weight_methods():
        r = workdir_lib.read_json(workdir / "nlgraph_gen" / name / "seed_0" / "results.json")
        if r is not None and r["best_system"].get("dev_utility") is not None:
            scored.append((-float(r["best_system"]["dev_utility"]), len(scored), name))
    return [name for _, _, name in sorted(scored)[:k]]


def per_seed_table(workdir: Path) -> str:
    """Markdown: one row per method, one column per seed, each cell 'test (dev), minutes' from
    the finished cells' results.json; methods in registry order, '-' where a cell is missing."""
    cells = {}
    for path in sorted(workdir.glob("*/*/seed_*/results.json")):
        r = json.loads(path.read_text())
        b = r["best_system"]
        dev = "-" if b.get("dev_utility") is None else f"{b['dev_utility']:.3f}"
        minutes = float(r.get("seconds") or 0.0) / 60
        cells[r["method"], int(r["seed"])] = f"{b['test_utility']:.3f} ({dev}), {minutes:.1f}"
    seeds = sorted({s for _, s in cells})
    rows = [
        "| method | " + " | ".join(f"seed {s}: test (dev), minutes" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for name in methods.METHODS:
        if any((name, s) in cells for s in seeds):
            row = " | ".join(cells.get((name, s), "-") for s in seeds)
            rows.append(f"| {name} | {row} |")
    return "\n".join(rows)


def refresh_diagnostics(workdir: Path) -> int:
    """Recomputes `diagnostics.answers` of every finished cell from its stored test outputs,
    task file and config (cells finished by an hs_jax whose answer key differed); returns
    how many results.json were rewritten (atomically). No model is loaded."""
    import types

    changed = 0
    for path in sorted(workdir.glob("*/*/seed_*/results.json")):
        r = json.loads(path.read_text())
        c = found_system.run_config(path.parent)
        spec, _, test = assembly.read_items(c, path.parent / workdir_lib.TASK_JSON)
        model_config = memory_plan.model_shapes(ModelSource.of(c).spec, "float32")  # no weights
        protocol = assembly.protocol_for(c, spec, model_config)
        setup = types.SimpleNamespace(spec=spec, protocol=protocol)
        end = r["best_system"]["dag"]["end"]
        outputs = diagnostics.final_outputs(
            r["best_system"]["kind"], end, r["best_system_test_outputs"]
        )
        if outputs is None or len(outputs) != len(test):
            continue
        answers = diagnostics.answers_of(setup, outputs, test)
        if answers != (r.get("diagnostics") or {}).get("answers"):
            r.setdefault("diagnostics", {})["answers"] = answers
            workdir_lib.write_json(path, r)
            changed += 1
    return changed


def main(argv):
    del argv
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    stages = {int(s) for s in _STAGES.value.split(",") if s.strip()}
    seeds = list(range(_SEEDS.value))
    if _CORE_SEEDS.value:
        seeds = [int(s) for s in _CORE_SEEDS.value.split(",")]
    if _PER_SEED.value:
        print(per_seed_table(workdir))
        return
    if _REFRESH.value:
        logging.info("diagnostics recomputed in %d cells", refresh_diagnostics(workdir))
        return
    if 0 in stages:
        build_pool(workdir)
    if 1 in stages:
        for seed in seeds:
            _cells(workdir, CORE, [seed])
    if 2 in stages:
        _cells(workdir, weight_methods(), [0])
    if 3 in stages:
        best = best_weight_methods(workdir)
        logging.info("the two weight methods with the best seed-0 dev utility: %s", best)
        workdir_lib.write_json(workdir / "study_weight_methods.json", {"methods": best})
        _cells(workdir, best, [1, 2])
    if 4 in stages:
        others = [m for m in methods.METHODS if m not in CORE and m not in weight_methods()]
        _cells(workdir, others, [0])
    print(json.dumps({"workdir": str(workdir), "stages": sorted(stages)}))


if __name__ == "__main__":
    app.run(main)
