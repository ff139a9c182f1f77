"""The paper's setting on the authors' knowledge_crosswords file.

  python -m launch.main --config=configs/knowledge_crosswords.py:/path/to/data/eval \
    --workdir=runs/knowledge_crosswords \
    --config.model.spec=/path/to/gemma-7b-it --config.experts.peft_dirs=/path/to/experts

The argument after ':' is the folder holding the task files (default data/eval); the experts
folder holds one PEFT adapter folder per expert (the paper's 10 Gemma-7B experts).
"""

from hs_jax.config import paper_config


def get_config(arg=None):
    return paper_config("knowledge_crosswords", arg)
