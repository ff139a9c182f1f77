"""Seconds-long smoke run for tests: a random tiny Gemma 3 with random LoRA experts.

python -m launch.main --config=configs/tiny.py --workdir=/tmp/hs_tiny
"""

from hs_jax.config import base_config


def get_config(arg=None):
    c = base_config()
    c.model.spec = "tiny"
    c.task.name = "nlgraph_gen"
    c.task.gen.n_dev = 3
    c.task.gen.n_test = 3
    c.task.gen.node_range = (4, 5)
    c.task.max_new_tokens = 3
    c.experts.source = "random"
    c.experts.n = 3
    c.experts.rank = 2
    c.search.n_graphs = 2
    c.search.n_assignments = 2
    c.search.max_iterations = 2
    c.search.patience = 2
    c.engine.max_batch = 16
    c.engine.batch_buckets = (16,)
    c.outputs.export_experts = True
    return c
