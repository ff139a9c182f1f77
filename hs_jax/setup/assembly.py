"""What a run is set up with: task, protocol, base model, expert pool, engine, scorer, mesh.

`Setup` is that whole, as a method (`hs_jax.methods`) receives it. `hs_jax.pipeline.runner.run`
builds it step by step (the workdir records are written between the steps: run.json once task
and model have loaded, the pool's fingerprint once the pool is built); `assemble` makes the
last part (mesh, engine, scorer) once the pool is known. The loaders are shared with
`make_pool`, `hs_jax.pipeline.found_system` and the benchmarks.

Training data never meets scored data: generated training slices come from the generator's
'train' split, dev and test from its 'dev' and 'test' splits (`hs_jax.tasks.split_of`), and
`check_train_overlap` refuses, before any model loads, a run whose dev or test questions are
in the training record of any expert of its pool (`hs_jax.experts.pool.TRAINING_RECORD`).
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.sharding
import ml_collections
import numpy as np
from absl import logging

from hs_jax import tasks
from hs_jax.config import schema
from hs_jax.config.model_source import ModelSource
from hs_jax.config.pool_source import PoolSource
from hs_jax.config.task_choice import TaskChoice
from hs_jax.engine.engine import Engine
from hs_jax.engine.scoring import SystemScorer
from hs_jax.experts import full_models, lora
from hs_jax.experts.pool import (
    TRAINING_RECORD,
    Example,
    build_or_load_pool,
    pool_folders,
    pool_ready,
    read_training_record,
    write_pool,
)
from hs_jax.models import gemma_config as model_config
from hs_jax.models import tiny_vocab
from hs_jax.models.convert import init_params
from hs_jax.models.gemma_config import first_difference
from hs_jax.models.loading import load_model, resolve_model_path
from hs_jax.models.safetensors_io import load_hf_dir
from hs_jax.models.tokenizer import load_tokenizer
from hs_jax.runtime import host_allocator
from hs_jax.runtime.errors import ConfigError
from hs_jax.setup.identity import TaskSource, gen_config, task_source
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a method runs on: the resolved config, the task (spec, dev and test items,
    the task file), the protocol, the base model, the expert pool and its labels, and the
    engine and scorer on the run's mesh. The pool is a LoRA stack, or full-weight experts
    (experts.source='full'); both have a leading expert axis on every leaf. `train_overlap`:
    how many dev and test items are among the pool's training questions
    (`check_train_overlap`; None where the run did not check, e.g. a Setup built by hand)."""

    config: ml_collections.ConfigDict
    spec: tasks.TaskSpec
    dev: list
    test: list
    task_file: Path
    protocol: tasks.Protocol
    base_config: Any
    params: Any
    tokenizer: Any
    experts: lora.LoraStack | full_models.FullExperts
    names: list[str]
    engine: Engine
    scorer: SystemScorer
    mesh: jax.sharding.Mesh
    train_overlap: dict[str, Any] | None = None


class _OnlyOrbaxWarnings(std_logging.Filter):
    """orbax logs every step of every save at INFO; keep its warnings, drop the rest."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax() -> None:
    for handler in (logging.get_absl_handler(), *std_logging.getLogger().handlers):
        if not any(isinstance(f, _OnlyOrbaxWarnings) for f in handler.filters):
            handler.addFilter(_OnlyOrbaxWarnings())


# ----------------------------------------------------------------------------- task, protocol


def task_spec(c: ml_collections.ConfigDict, path: Path) -> tasks.TaskSpec:
    """The task's spec: a registered task named by config.task.name, else the registered task
    the file's `dataset` field names (so any config, configs/tiny.py included, gets that task's
    type, budget and per-dataset rules), else config.task.type. Named after the dataset."""
    dataset = tasks.read_task_file(path).get("dataset")
    task = TaskChoice.of(c)
    name = task.name
    if name not in tasks.TASKS or tasks.TASKS[name].filename is None:
        name = tasks.registered_name(dataset) or name
    if name in tasks.TASKS and (name != task.name or tasks.TASKS[name].filename is not None):
        spec = tasks.get_spec(name)
        if task.type and task.type != spec.type:
            raise ValueError(
                f"config.task.type={task.type!r}: {path} holds dataset {dataset!r}, the "
                f"registered {spec.type} task {name!r}; leave task.type empty"
            )
    elif task.type:
        spec = tasks.make_spec(str(dataset or task.name), task.type)
    elif name in tasks.TASKS:  # the generated task's rules, labelled by the file's dataset
        spec = dataclasses.replace(tasks.get_spec(name), name=str(dataset or name))
    else:
        raise ValueError(
            f"config.task.type is empty and {path} names dataset {dataset!r}, which is not a "
            f"registered task ({', '.join(sorted(tasks.TASKS))}): set task.type"
        )
    if task.max_new_tokens:
        spec = dataclasses.replace(spec, max_new_tokens=task.max_new_tokens)
    elif c.protocol == "authors" and spec.type == "abstain":
        spec = dataclasses.replace(spec, max_new_tokens=tasks.AUTHORS_ABSTAIN_MAX_NEW_TOKENS)
    return spec


def protocol_for(
    c: ml_collections.ConfigDict, spec: tasks.TaskSpec, model_config: Any
) -> tasks.Protocol:
    """The prompts and answer reading of `config.protocol` for this task. Chat prompts are in
    the chat format of the base model's family (`tasks.chat_format(model_config)`): the model's
    config is required, so no caller can build prompts in another family's format by leaving
    it out (`memory_plan.model_shapes` gives it without loading weights)."""
    dataset = spec.name if spec.name in tasks.TASKS else ""
    fmt = tasks.chat_format(model_config)
    if c.protocol == "authors":
        templates = tasks.authors_templates(dataset, chat=c.task.chat_template, chat_format=fmt)
        templates = dataclasses.replace(templates, answer_prefix=c.task.answer_prefix)
    else:
        templates = tasks.NodeTemplates(
            answer_prefix=c.task.answer_prefix, chat=bool(c.task.chat_template), chat_format=fmt
        )
    return tasks.Protocol(
        name=c.protocol,
        task_type=spec.type,
        dataset=dataset,
        templates=templates,
        scoring=c.task.scoring or c.protocol,
    )


def read_items(c: ml_collections.ConfigDict, path: Path):
    """(spec, dev items, test items) of the task file at `path`."""
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
        read_items(c, tmp)


def load_items(c: ml_collections.ConfigDict, workdir: Path, source: TaskSource | None = None):
    """(spec, dev items, test items, task file). Generated tasks are written into the workdir
    first (atomically), so every run reads its items through the same validating loader."""
    source = source or task_source(c, workdir)
    if source.pending:
        write_task(c, source)
    spec, dev, test = read_items(c, source.path)
    return spec, dev, test, source.path


# ----------------------------------------------------------------------------- model, pool


def load_base(c: ml_collections.ConfigDict, mesh=None):
    """(GemmaConfig, params, tokenizer). 'tiny' is a random tiny Gemma 3 with the real
    tokenizer's vocabulary, 'tiny:<family>' one of that family with its tiny tokenizer (tests
    and smoke runs). A loaded model goes straight into `mesh`'s
    parameter shardings, tensor by tensor (`models.load_model`)."""
    model = ModelSource.of(c)
    dtype = model.dtype()
    if not model.is_tiny:
        resolve_model_path(model.spec)  # a missing model is named as such, not as a tokenizer
    if model.is_tiny and model.tokenizer_spec == model.spec:  # 'tiny:<family>'
        tokenizer = tiny_vocab.tiny_tokenizer(model.tiny_family)
    else:
        tokenizer = load_tokenizer(model.tokenizer_spec)
    if model.is_tiny:
        cfg = model_config.tiny_config(model.tiny_family, param_dtype=dtype).replace(
            vocab_size=len(tokenizer)
        )
        return cfg, init_params(cfg, seed=c.seed), tokenizer
    cfg, params = load_model(model.spec, param_dtype=dtype, mesh=mesh)
    return cfg, params, tokenizer


def _pool_names(c: ml_collections.ConfigDict) -> list[str]:
    """The experts of a trained pool: one per question type of task.gen.types, then
    mixed_<i> for experts beyond the types."""
    types = list(gen_config(c).types)
    return [types[i] if i < len(types) else f"mixed_{i}" for i in range(PoolSource.of(c).n)]


def _training_items(c, dev, test) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """(expert names, each expert's generated training items): expert i's items are of
    question type i (a mix for experts beyond the types), drawn from the generator's 'train'
    split, so they share no question with any run's dev or test items; this run's dev and
    test questions are excluded too, a second guard (a task.path file of the generated task
    was not drawn by split)."""
    if not TaskChoice.of(c).generated:
        raise ValueError(
            "experts.source='train' builds pools only for the generated task (task.name="
            "'nlgraph_gen'); for other tasks set experts.source='peft' and experts.peft_dirs"
        )
    types = list(gen_config(c).types)
    names = _pool_names(c)
    seen = {item.question for item in [*dev, *test]}
    pieces = []
    for i, name in enumerate(names):
        gen = gen_config(c)
        if name in types:
            gen = tasks.GraphGenConfig(node_range=gen.node_range, types=(name,))
        seed = np.random.SeedSequence([c.seed, 17, i])
        pieces.append(
            tasks.generate_items(
                PoolSource.of(c).train_examples, seed=seed, split="train", config=gen, exclude=seen
            )
        )
    return names, pieces


def _training_slices(c, spec, protocol, dev, test) -> tuple[list[str], list[list[Example]]]:
    """One generated training slice per expert (`_training_items`): expert i learns question
    type i (the last experts, if more than the types, learn a mix). Half of the examples show
    the expert 'previous responses' (right or wrong) so it also learns its middle/end-node
    role. Each example keeps its question, for the pool's training record."""
    names, pieces = _training_items(c, dev, test)
    rng = np.random.default_rng(c.seed + 1)
    slices = []
    for raw in pieces:
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
            examples.append(
                Example(prompt=prompt, answer=" " + item["answer"], question=item["question"])
            )
        slices.append(examples)
    return names, slices


def _trained_questions(c, workdir: Path, dev, test) -> tuple[list[str], list] | None:
    """(the pool's expert folders, each expert's training-question hashes, None where not
    known), or None for a pool nothing was trained for ('random', 'full'). A trained pool on
    disk and PEFT folders are read from their training records; a pool about to be trained
    (absent, or not whole: then moved aside here, `experts.pool_ready`), from the slices it
    will be trained (and recorded) on."""
    source = PoolSource.of(c).kind
    if source in ("random", "full"):
        return None
    if source == "peft":
        folders = PoolSource.of(c).peft_folders()
    else:
        directory, names = pool_dir_of(c, workdir), _pool_names(c)
        folders = pool_folders(directory, names)
        if not pool_ready(directory, names):
            _, pieces = _training_items(c, dev, test)
            hashes = [{tasks.question_hash(item["question"]) for item in raw} for raw in pieces]
            return folders, hashes
    records = [read_training_record(folder) for folder in folders]
    return folders, [None if r is None else set(r["question_sha256"]) for r in records]


def check_train_overlap(c, workdir: Path, dev, test) -> dict[str, Any]:
    """How many of the run's dev and test items an expert of its pool was trained on:
    results.json's `train_overlap`, {'dev', 'test', 'checked', 'experts_with_record'}.

    checked = 'not trained' (random or full-weight experts: 0 and 0), 'no record' (no expert
    says what it was trained on: None and None) or 'records' (counted over the
    `experts_with_record` experts that say; the others are unknown). Needs no model, so a run
    on training questions is refused (ConfigError, one line naming the counts and the folders)
    before one loads, unless config.experts.allow_train_overlap.
    """
    trained = _trained_questions(c, workdir, dev, test)
    if trained is None:
        return {"dev": 0, "test": 0, "checked": "not trained", "experts_with_record": 0}
    folders, hashes = trained
    known = [(folder, h) for folder, h in zip(folders, hashes, strict=True) if h is not None]
    if not known:
        logging.warning(
            "the expert pool has no training records (%s): whether it was trained on this "
            "run's dev or test items is not known", ", ".join(folders),
        )  # fmt: skip
        return {"dev": None, "test": None, "checked": "no record", "experts_with_record": 0}
    trained_on = set().union(*(h for _, h in known))
    scored = {split: [tasks.question_hash(it.question) for it in items]
              for split, items in (("dev", dev), ("test", test))}  # fmt: skip
    counts = {split: sum(h in trained_on for h in hs) for split, hs in scored.items()}
    summary = {**counts, "checked": "records", "experts_with_record": len(known)}
    if counts["dev"] or counts["test"]:
        both = {*scored["dev"], *scored["test"]}
        culprits = ", ".join(folder for folder, h in known if h & both)
        if not PoolSource.of(c).allow_train_overlap:
            raise ConfigError(
                f"config.experts.allow_train_overlap=False: {counts['dev']} dev and "
                f"{counts['test']} test items of this run are training questions of the expert "
                f"pool ({culprits}: {TRAINING_RECORD}); score other items (task.gen.seed, "
                "task.path) or use another pool, or set experts.allow_train_overlap=True"
            )
        logging.warning(
            "experts.allow_train_overlap: %d dev and %d test items are training questions "
            "of %s", counts["dev"], counts["test"], culprits,
        )  # fmt: skip
    return summary


def expert_names(experts: lora.LoraStack | full_models.FullExperts) -> list[str]:
    """One label per expert: the pool's folder names, or expert_<i> for unnamed experts."""
    return list(experts.names) or [f"expert_{i}" for i in range(experts.n_experts)]


def pool_dir_of(c: ml_collections.ConfigDict, workdir: Path) -> Path:
    """Where a trained (or exported random) pool lives: config.experts.pool_dir, else
    workdir/experts."""
    return PoolSource.of(c).folder(workdir)


def _folder_labels(folders: list[str]) -> list[str]:
    """One label per model folder: its name, made unique with its index where names repeat."""
    names = [Path(f).resolve().name for f in folders]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def load_model_folders(folders, base_cfg, base_name: str) -> full_models.FullExperts:
    """HF model folders as full-weight experts, in the base model's param dtype, labelled by
    folder name; a folder of another architecture than the base model's (`base_name`) is
    refused (one line naming the folder and the first field that differs) before the next
    loads."""
    folders = [str(f) for f in folders]
    params_list = []
    for folder in folders:
        cfg, params = load_hf_dir(folder, param_dtype=base_cfg.param_dtype)
        if differs := first_difference(cfg, base_cfg):
            name, mine, base = differs
            raise ValueError(
                f"config.experts.model_dirs: {folder} is not the base model's architecture: "
                f"{name} = {mine!r}, the base model ({base_name}) has {base!r}"
            )
        params_list.append(params)
    return full_models.stack_params(params_list, base_cfg, names=_folder_labels(folders))


def load_full_pool(c, base_cfg) -> full_models.FullExperts:
    """experts.source='full': the HF model folders of experts.model_dirs, stacked."""
    folders = PoolSource.of(c).model_folders()
    return load_model_folders(folders, base_cfg, ModelSource.of(c).spec)


def build_experts(
    c, workdir: Path, base_cfg, params, tokenizer, spec, dev, test
) -> lora.LoraStack | full_models.FullExperts:
    """The pool as one LoraStack, or as FullExperts for experts.source='full' (leading expert
    axis either way)."""
    pool = PoolSource.of(c)
    if pool.kind == "peft":
        return lora.load_peft_pool(pool.peft_folders(), base_cfg)
    if pool.full:
        return load_full_pool(c, base_cfg)
    if pool.kind == "random":
        return lora.init_lora_stack(
            base_cfg, pool.n, pool.rank, pool.targets, jax.random.key(c.seed),
            scheme="random", init_scale=pool.random_scale,
        )  # fmt: skip
    names, slices = _training_slices(c, spec, protocol_for(c, spec, base_cfg), dev, test)
    sft = schema.sft_config(c)  # checked at the door (pipeline.door.check)
    return build_or_load_pool(
        pool_dir_of(c, workdir), base_cfg, params, tokenizer, slices, names, sft,
        base_model_name_or_path=ModelSource.of(c).spec, task=TaskChoice.of(c).name,
    )  # fmt: skip


def make_pool(c: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[str]:
    """Builds the expert pool of the opened config `c` (`hs_jax.make_pool` opens it at the
    door) as PEFT folders, without a search; returns them.

    source='train' fine-tunes the pool (skipped when it is already there whole, as in `run`);
    source='random' exports random experts (smoke tests). The folders go to
    config.experts.pool_dir, else workdir/experts, written whole or not at all
    (`experts.write_pool`; a folder there that is not a whole pool is moved aside and the pool
    built again); a later `run` with the same workdir or pool_dir loads them instead of
    training, and any run can take them with experts.source='peft',
    experts.peft_dirs=<that folder>.
    """
    pool = PoolSource.of(c)
    if pool.given:
        kind, given = pool.given_as()
        raise ValueError(
            f"config.experts.source={pool.kind!r}: the pool already exists as {kind} "
            f"folders ({given!r}); make_pool builds 'train' or 'random' pools"
        )
    workdir = workdir_lib.make_workdir(workdir)
    with workdir_lib.lock(workdir):
        workdir_lib.remove_temp_files(workdir, skip=(checkpointing.SEARCH_SUBDIR,))
        # Only fine-tuning reads the task (its question types are the experts' slices).
        spec, dev, test, _ = load_items(c, workdir) if pool.trained else (None,) * 4
        base_cfg, params, tokenizer = load_base(c)
        experts = build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
        names, directory = expert_names(experts), pool_dir_of(c, workdir)
        folders = pool_folders(directory, names)
        if not pool_ready(directory, names):  # 'train' has written it: 'random' writes here
            write_pool(directory, experts, names, base_model_name_or_path=ModelSource.of(c).spec)
    logging.info("expert pool: %s", ", ".join(folders))
    return folders


# ----------------------------------------------------------------------------- the whole


def engine_settings(c) -> dict[str, Any]:
    """config.engine's batch size, prompt length and shape buckets, as the Engine takes them
    (the one reader of those fields: the engine and the dry run's memory plan use it)."""
    e = c.engine
    return {
        "max_batch": int(e.max_batch),
        "max_prompt_len": int(e.max_prompt_len),
        "batch_buckets": tuple(e.batch_buckets),
        "length_buckets": tuple(e.length_buckets),
    }


def use_compilation_cache(c) -> None:
    """Points JAX's persistent compilation cache at config.engine.compilation_cache ('' = off),
    so a repeated run or load skips compiling; before the first compile."""
    if c.engine.compilation_cache:
        jax.config.update(
            "jax_compilation_cache_dir", os.path.expanduser(c.engine.compilation_cache)
        )
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def eos_ids_for(model_config: Any, tokenizer: Any) -> list[int] | None:
    """The tokens that end a row of the run's model: the tokenizer's stop ids (`stop_token_ids`,
    else its EOS) and the end-of-turn tokens of the family's chat format (`tasks.turn_end_ids`),
    so an instruction-tuned model's turn ends where its template says, whatever tokenizer
    loaded it. None for Gemma: the engine's default, the tokenizer's own stop ids (a tokenizer
    without `stop_token_ids` stops Gemma at <eos> alone, as hs_jax always has)."""
    fmt = tasks.chat_format(model_config)
    if fmt.name == tasks.GEMMA_CHAT.name:
        return None
    ids = getattr(tokenizer, "stop_token_ids", None)
    if ids is None:
        ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return list(dict.fromkeys([*(int(i) for i in ids), *tasks.turn_end_ids(fmt, tokenizer)]))


def make_engine(c, base: tuple, experts: Any, mesh) -> Engine:
    """The run's engine: the base model (config, params, tokenizer) and `experts` on `mesh`, at
    config.engine's batch size, prompt length and shape buckets; rows end at `eos_ids_for`."""
    eos_ids = eos_ids_for(base[0], base[2])
    return Engine(*base, experts=experts, mesh=mesh, eos_ids=eos_ids, **engine_settings(c))


def in_model_format(protocol: tasks.Protocol, model_config: Any) -> tasks.Protocol:
    """`protocol` with its chat prompts in the chat format of `model_config`'s family (itself
    when they already are, or when there is no model config)."""
    if model_config is None:
        return protocol
    fmt = tasks.chat_format(model_config)
    if protocol.templates.chat_format == fmt:
        return protocol
    templates = dataclasses.replace(protocol.templates, chat_format=fmt)
    return dataclasses.replace(protocol, templates=templates)


def make_scorer(c, engine: Engine, spec: tasks.TaskSpec, protocol: tasks.Protocol) -> SystemScorer:
    """The utility f of systems on `engine`, in calls of at most config.engine.max_batch rows.
    Node prompts and the judge's are in the chat format of the engine's model
    (`in_model_format`), whatever format `protocol` was built with."""
    protocol = in_model_format(protocol, getattr(engine, "config", None))
    return SystemScorer(engine, spec, protocol, max_batch=engine_settings(c)["max_batch"])


def assemble(
    c,
    task: tuple,
    task_file: Path,
    base: tuple,
    experts: Any,
    mesh: jax.sharding.Mesh,
    train_overlap: dict[str, Any] | None = None,
) -> Setup:
    """The Setup of a run whose task (spec, dev, test), base model (config, params, tokenizer)
    and pool have loaded: the engine on `mesh`, the protocol and the scorer; `train_overlap`
    is what `check_train_overlap` found."""
    spec, dev, test = task
    base_cfg, params, tokenizer = base
    logging.info(
        "mesh %s over %d devices of %d process(es); host allocator: %s",
        dict(mesh.shape), mesh.devices.size, jax.process_count(),
        host_allocator.reuse_freed_memory(),
    )  # fmt: skip
    engine = make_engine(c, base, experts, mesh)
    protocol = protocol_for(c, spec, base_cfg)
    scorer = make_scorer(c, engine, spec, protocol)
    return Setup(
        config=c, spec=spec, dev=dev, test=test, task_file=task_file, protocol=protocol,
        base_config=base_cfg, params=params, tokenizer=tokenizer, experts=experts,
        names=expert_names(experts), engine=engine, scorer=scorer, mesh=mesh,
        train_overlap=train_overlap,
    )  # fmt: skip


# ----------------------------------------------------------------------------- data merge


def data_merge_adapter(setup: Setup, directory: Path) -> lora.LoraStack:
    """The data-merge baseline's adapter (hs_jax.methods.static_weight): one LoRA expert
    fine-tuned on the union of the pool's training slices (`_training_slices`), with the pool's
    settings and seed; each step takes as many rows as one step of the pool (n x
    batch_per_expert), so it gets the pool's training compute. Saved as a PEFT folder in
    `directory` and loaded from there when present (`build_or_load_pool`)."""
    c = setup.config
    _, slices = _training_slices(c, setup.spec, setup.protocol, setup.dev, setup.test)
    pool = schema.sft_config(c)
    sft = dataclasses.replace(pool, batch_per_expert=pool.batch_per_expert * len(slices))
    union = [example for piece in slices for example in piece]
    return build_or_load_pool(
        directory, setup.base_config, setup.params, setup.tokenizer, [union], ["data_merge"], sft,
        base_model_name_or_path=ModelSource.of(c).spec, task=TaskChoice.of(c).name,
    )  # fmt: skip
