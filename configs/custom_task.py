"""Any task file in the authors' format: name the file and its type.

  python -m launch.main --config=configs/custom_task.py:exact_match --workdir=runs/mine \
    --config.task.path=/path/to/mytask.json --config.experts.peft_dirs=/path/to/experts

The argument after ':' is the task type: multiple_choice, exact_match, abstain or judged.
"""

from hs_jax.config import base_config


def get_config(arg="exact_match"):
    c = base_config()
    c.task.name = "custom"
    c.task.type = arg
    c.task.path = ""
    c.experts.source = "peft"
    c.experts.peft_dirs = ""
    return c
