"""The default demo: the real Gemma 3 270M (PyPI package, no hub), a pool of LoRA experts
fine-tuned on the built-in NLGraph-style task (one question type each), a small search, and a
held-out generated test split. About 20 minutes on a 2-core CPU, pool building included.

  python -m launch.main --config=configs/demo.py --workdir=runs/demo
"""

from hs_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.task.name = "nlgraph_gen"
    c.task.gen.n_dev = 16
    c.task.gen.n_test = 48
    c.task.gen.node_range = (5, 7)
    c.task.max_new_tokens = 6  # answers are "Yes", "No" or a number
    c.task.answer_prefix = "Answer:"  # a base model answers after a cue

    c.experts.source = "train"
    c.experts.n = 4  # connectivity, cycle, shortest_path, one mixed
    c.experts.train_steps = 40
    c.experts.train_examples = 24
    c.experts.batch_per_expert = 2

    c.search.n_graphs = 4
    c.search.n_assignments = 4
    c.search.max_iterations = 3
    c.search.patience = 2
    c.engine.max_batch = 64
    return c
