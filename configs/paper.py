"""The paper's setting on any of its 12 tasks, from the authors' task files.

  python -m launch.main --config=configs/paper.py:com2,/path/to/data/eval --workdir=runs/com2 \
    --config.model.spec=/path/to/gemma-7b-it --config.experts.peft_dirs=/path/to/experts

The argument after ':' is a registered task (mmlu, mmlu_pro, knowledge_crosswords, gsm8k,
nlgraph, gaia, qasper, ltp, abstain, com2, normad, abkg, wow), optionally followed by ',' and
the folder holding the task files (default data/eval). Add --config.protocol=authors to run the
authors' released protocol instead of hs_jax's (docs/FIDELITY.md).
"""

from hs_jax.config import paper_config


def get_config(arg="gsm8k"):
    task, _, data_dir = arg.partition(",")
    return paper_config(task, data_dir or None)
