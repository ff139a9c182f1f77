"""Any task file in the authors' format.

  python -m launch.main --config=configs/custom_task.py:exact_match --workdir=runs/mine \
    --config.task.path=/path/to/mytask.json --config.experts.peft_dirs=/path/to/experts

The argument after ':' is the task type: multiple_choice, exact_match, abstain or judged. It may
be left out when the file's `dataset` field names a registered task (gsm8k, mmlu, com2, ...):
that task's type, token budget and per-dataset prompt rules then apply.
"""

from hs_jax.config import base_config


def get_config(arg=""):
    c = base_config()
    c.task.name = "custom"
    c.task.type = arg or ""
    c.task.path = ""
    c.experts.source = "peft"
    c.experts.peft_dirs = ""
    return c
