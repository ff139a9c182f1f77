"""The default demo: the real Gemma 3 270M (PyPI package, no hub), a pool of LoRA experts
fine-tuned on the built-in NLGraph-style task (one question type each), a small search, and a
held-out generated test split. About 7 minutes on an idle 2-core CPU, pool building included.

  python -m launch.main --config=configs/demo.py --workdir=runs/demo
"""

from hs_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.task.name = "nlgraph_gen"
    c.task.gen.n_dev = 12
    c.task.gen.n_test = 36
    c.task.gen.node_range = (4, 5)
    c.task.max_new_tokens = 4  # answers are "Yes", "No" or a number
    c.task.answer_prefix = "Answer:"  # a base model answers after a cue

    c.experts.source = "train"
    c.experts.n = 3  # one expert per question type: connectivity, cycle, shortest_path
    c.experts.train_steps = 30
    c.experts.train_examples = 24
    c.experts.batch_per_expert = 2
    c.experts.last_layers = 6  # adapt the top third: a cheaper backward pass on a CPU

    # N = M = 5: with 3 nodes per graph the wave executor then needs at most 3 generate calls
    # where the node-by-node order needs 15 (see bench/search.py).
    c.search.n_graphs = 5
    c.search.n_assignments = 5
    c.search.max_iterations = 3
    c.search.patience = 2
    c.engine.max_batch = 64
    return c
