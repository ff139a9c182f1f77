"""Compares methods on tasks: one run per method x task x seed, then a Table-1 style table.

  python -m launch.compare --config=configs/tiny.py --methods=all --tasks=nlgraph_gen \
    --seeds=0,1,2 --workdir=runs/compare

--config is a config file as for launch.main, with the same `--config.x=...` overrides; every
cell is that config with config.method, config.seed and the task set, run as
`hs_jax.run(config, <workdir>/<task>/<method>/seed_<k>)`. --methods: 'all' or a comma list of
names of hs_jax.methods.METHODS. --tasks: a comma list of task files or registered task names
(default: the config's task; a registered task other than nlgraph_gen reads
<--data_dir>/<its file>, --data_dir defaulting to the folder of config.task.path, else
data/eval). Every method runs once per seed of --seeds (--seeded_methods=a,b: only those, the
others once with config.seed; the table then compares a cell only with cells of the same
seeds). --budget_from_hs gives the budgeted methods the utility
evaluations the 'hs' cell of the same task and seed spent. --tune_trials=K tunes every method
with a declared space (hs_jax/sweep/method_spaces.py) with K runs each, chosen on dev, the
trials' evaluations counted in its cost (<workdir>/<task>/<method>/tuned_seed_<k>).

The same command resumes a killed comparison: finished cells are not recomputed, the
unfinished one resumes. Writes cells.json, table.md, table.csv and comparison.png into
--workdir (hs_jax.comparison.compare and hs_jax.comparison.table describe them). A method that does
not apply, or a cell that fails, is reported in its cell; the rest runs. The exit status is 1 when
a cell failed, with one line naming the failed cells (0 when every cell is done or does not
apply).
"""

from absl import flags
from ml_collections import config_flags

from hs_jax.comparison import compare
from hs_jax.runtime.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/tiny.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "The cells' runs and the table go here.")
_METHODS = flags.DEFINE_string("methods", "all", "'all' or a comma list of method names.")
_TASKS = flags.DEFINE_string(
    "tasks", "", "Comma list of task files or registered task names ('' = the config's task)."
)
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Seeds of the seeded methods.")
_SEEDED = flags.DEFINE_string(
    "seeded_methods",
    ",".join(compare.DEFAULT_SEEDED),
    "Methods run once per seed of --seeds ('all': every method); the others run with config.seed.",
)
_BUDGET_FROM_HS = flags.DEFINE_boolean(
    "budget_from_hs", True, "Budgeted methods get the evaluations the 'hs' cell spent."
)
_TUNE_TRIALS = flags.DEFINE_integer(
    "tune_trials",
    0,
    "Tune every method with a declared space (hs_jax/sweep/method_spaces.py) with this many "
    "trials, chosen on dev; their cost is counted in the table (0 = run each method once).",
    lower_bound=0,
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    "",
    "Folder of the registered tasks' files ('' = config.task.path's, else data/eval).",
)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    config = config_value(_CONFIG)
    entries = compare.compare(
        config,
        _WORKDIR.value,
        method_list=compare.method_names(_METHODS.value),
        task_list=[t.strip() for t in _TASKS.value.split(",") if t.strip()],
        seeds=compare.parse_seeds(_SEEDS.value),
        seeded=[m.strip() for m in _SEEDED.value.split(",") if m.strip()],
        budget_from_hs=_BUDGET_FROM_HS.value,
        data_dir=_DATA_DIR.value,
        tune_trials=_TUNE_TRIALS.value,
    )
    summary = compare.failure_summary(entries)
    if summary:
        raise compare.CellsFailed(summary)


if __name__ == "__main__":
    run_main(main)
