"""Runs a Heterogeneous Swarms search.

  python -m launch.main --config=configs/demo.py --workdir=runs/demo

Any config field can be overridden, e.g. `--config.search.n_graphs=4`. Restarting with the same
workdir resumes the search from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

import hs_jax

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Checkpoints and results go here.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    hs_jax.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
