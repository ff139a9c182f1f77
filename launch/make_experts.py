"""Builds a config's expert pool as PEFT folders, without running a search.

  python -m launch.make_experts --config=configs/demo.py --workdir=runs/pool

Same config files and overrides as launch.main. The folders go to config.experts.pool_dir, else
<workdir>/experts; already built experts are kept. A later search loads them with the same
workdir, with --config.experts.pool_dir=<folder>, or as any PEFT pool:
--config.experts.source=peft --config.experts.peft_dirs=<folder>. A bad config value, flag or
file is reported in one line before anything is loaded (exit status 1); --verbose adds the
traceback.
"""

from absl import flags
from ml_collections import config_flags

import hs_jax
from hs_jax.runtime.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Python config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/pool", "The pool (and a generated task) go here.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    for folder in hs_jax.make_pool(config_value(_CONFIG), _WORKDIR.value):
        print(folder)


if __name__ == "__main__":
    run_main(main)
