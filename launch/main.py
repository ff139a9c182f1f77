"""Runs a Heterogeneous Swarms search.

  python -m launch.main --config=configs/demo.py --workdir=runs/demo

Any config field can be overridden, e.g. `--config.search.n_graphs=4`. Restarting with the same
workdir resumes the search from its latest checkpoint. A bad config value, flag or file is
reported in one line before anything is loaded (exit status 1); --verbose adds the traceback.

  python -m launch.main --config=configs/paper.py --config.model.spec=gemma-7b --dry_run \
    --devices=8 --device_memory_gib=16

prints the run's per-device memory (hs_jax.pipeline.memory_plan) and exits: no model is loaded, no
workdir is created. --devices defaults to this machine's device count.

Multi-process (TPU pod slices, GPU clusters): start the same command on every host with
`--config.distributed=True`; on TPU VMs, SLURM and Open MPI the processes find each other, else
add `--config.coordinator_address=<host0>:<port> --config.num_processes=<N>
--config.process_id=<i>` (hs_jax.runtime.distributed).
"""

from absl import flags
from ml_collections import config_flags

import hs_jax
from hs_jax.runtime.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Checkpoints and results go here.")
_DRY_RUN = flags.DEFINE_boolean(
    "dry_run", False, "Print the per-device memory of the run and exit (nothing loaded or written)."
)
_DEVICES = flags.DEFINE_integer(
    "devices", None, "--dry_run: the number of devices to plan for (default: this machine's).", 1
)
_DEVICE_MEMORY = flags.DEFINE_float(
    "device_memory_gib", None, "--dry_run: one device's memory in GiB, to say whether it fits.", 0
)


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    config = config_value(_CONFIG)
    if _DRY_RUN.value:
        from hs_jax.pipeline import memory_plan

        n_devices = _DEVICES.value
        if n_devices is None:
            import jax

            n_devices = jax.device_count()
        print(memory_plan.dry_run(config, n_devices, _DEVICE_MEMORY.value))
        return
    out = hs_jax.run(config, _WORKDIR.value)
    if isinstance(out, dict) and "cells" in out:  # config.seeds: a comparison's row
        from hs_jax.comparison import compare

        summary = compare.failure_summary(out["cells"])
        if summary:
            raise compare.CellsFailed(summary)


if __name__ == "__main__":
    run_main(main)
