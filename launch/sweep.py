"""Tunes a run's hyperparameters as the paper did: a sweep of runs, the best chosen on dev.

  python -m launch.sweep --config=configs/paper.py:gsm8k,/path/to/eval --space=paper \
    --trials=50 --workdir=runs/sweep_gsm8k --config.protocol=authors \
    --config.experts.peft_dirs=/path/to/experts

--config is a config file as for launch.main, with the same `--config.x=...` overrides; each
trial is that config with the trial's values set, run as `hs_jax.run` in
<workdir>/trials/<slot> (locked, resumed, every file of a run), scored by its dev utility.
--space: 'paper' (the paper's grid of PSO coefficients and step length, drawn uniformly, one
draw for both swarms) or a JSON / YAML file mapping config fields to a list of choices or a
range {low, high, log, step} (hs_jax/sweep/space.py). --sampler: random (the authors') or tpe.
--prune stops trials whose best dev utility falls below the median of earlier trials at the
same iteration (MedianPruner).

Storage: by default a journal file in --workdir (workers on this host, or on hosts sharing
it, can run the same command at once); --storage=postgresql://user@host/db shares one study
between workers on any hosts (pip install psycopg2-binary). A rerun continues the study up to
--trials; a worker that died leaves its trial failed, and it is run again with the same
settings in the same workdir, resuming its checkpoint (--max_retries times at most).

Writes summary.md, summary.csv, best.json, history.png and importance.png into --workdir: the
chosen trial (on dev), its test utility with the interval and the paired test against the
best single expert, and what the choice cost. A bad flag, config value or space entry is
reported in one line before anything is loaded.
"""

from absl import flags
from ml_collections import config_flags

from hs_jax.runtime.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "The study, its trials and summary.")
_SPACE = flags.DEFINE_string("space", "paper", "'paper' or a JSON / YAML space file.")
_TRIALS = flags.DEFINE_integer("trials", 50, "Trials of the study in all (a rerun adds up to it).")
_SAMPLER = flags.DEFINE_enum("sampler", "random", ["random", "tpe"], "How trials are drawn.")
_SEED = flags.DEFINE_integer("seed", None, "The sampler's seed (default: config.seed).")
_PRUNE = flags.DEFINE_boolean("prune", False, "Stop trials below the median (MedianPruner).")
_PRUNE_STARTUP = flags.DEFINE_integer(
    "prune_startup", 4, "--prune: finished trials before any is pruned.", lower_bound=0
)
_PRUNE_WARMUP = flags.DEFINE_integer(
    "prune_warmup", 1, "--prune: iterations of a trial before it can be pruned.", lower_bound=0
)
_STORAGE = flags.DEFINE_string(
    "storage", "", "'' (a journal file in --workdir) or postgresql://user@host/db."
)
_STUDY = flags.DEFINE_string("study_name", "", "The study's name ('' = the workdir's name).")
_RETRIES = flags.DEFINE_integer(
    "max_retries", 2, "Times a failed trial is run again.", lower_bound=0
)
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_s", 30, "--storage: seconds between a trial's heartbeats.", lower_bound=1
)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    config = config_value(_CONFIG)
    from hs_jax.sweep import space

    searched = space.read_space(_SPACE.value)  # a bad file in one line, before JAX loads
    from hs_jax.sweep import study

    options = study.SweepOptions(
        trials=_TRIALS.value,
        sampler=_SAMPLER.value,
        prune=_PRUNE.value,
        prune_startup=_PRUNE_STARTUP.value,
        prune_warmup=_PRUNE_WARMUP.value,
        storage=_STORAGE.value,
        study_name=_STUDY.value,
        max_retries=_RETRIES.value,
        heartbeat_s=_HEARTBEAT.value,
        seed=_SEED.value,
    )
    summary = study.run_sweep(config, _WORKDIR.value, searched, options)
    print(summary["text"])


if __name__ == "__main__":
    run_main(main)
