"""The paper's setting on the authors' gsm8k file.

  python -m launch.main --config=configs/gsm8k.py:/path/to/data/eval --workdir=runs/gsm8k \
    --config.model.spec=/path/to/gemma-7b-it --config.experts.peft_dirs=/path/to/experts

The argument after ':' is the folder holding the task files (default data/eval); the experts
folder holds one PEFT adapter folder per expert (the paper's 10 Gemma-7B experts).
"""

from hs_jax.config import paper_config


def get_config(arg=None):
    return paper_config("gsm8k", arg)
