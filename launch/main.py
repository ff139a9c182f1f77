"""Runs a Heterogeneous Swarms search.

  python -m launch.main --config=configs/demo.py --workdir=runs/demo

Any config field can be overridden, e.g. `--config.search.n_graphs=4`. Restarting with the same
workdir resumes the search from its latest checkpoint. A bad config value, flag or file is
reported in one line before anything is loaded (exit status 1); --verbose adds the traceback.
"""

from absl import flags
from ml_collections import config_flags

import hs_jax
from hs_jax.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Checkpoints and results go here.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    hs_jax.run(config_value(_CONFIG), _WORKDIR.value)


if __name__ == "__main__":
    run_main(main)
