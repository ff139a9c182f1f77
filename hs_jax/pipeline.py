"""A whole Heterogeneous Swarms search, from model files to results (`hs_jax.run`).

Steps: load the base model and tokenizer; load the task (or generate it); build or load the
expert pool; score every expert alone (the best-single baseline); run the search with the
multi-LLM executor as its utility (checkpointed in `workdir/search`, resumed automatically);
evaluate the best system on the test split; write `results.json`, `best_dag.png`, `curves.png`
and the best system's experts as PEFT folders. The launcher and the Colab notebooks call this.
"""

from __future__ import annotations

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

from hs_jax import checkpointing, lora, plots, search, sharding, tasks
from hs_jax import config as config_lib
from hs_jax.engine import Engine
from hs_jax.experts import Example, SFTConfig, build_or_load_pool
from hs_jax.graph import Dag
from hs_jax.models import config as model_config
from hs_jax.models.convert import init_params
from hs_jax.models.loading import load_model, resolve_model_path
from hs_jax.models.tokenizer import load_tokenizer
from hs_jax.utility import SystemScorer

SINGLE = Dag(1, (), 0)  # one expert alone: the best-single baseline as a one-node system


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


def load_items(c: ml_collections.ConfigDict, workdir: Path):
    """(spec, dev items, test items, task file). Generated tasks are written into the workdir
    first, so every run reads its items through the same validating loader."""
    path = Path(c.task.path) if c.task.path else None
    if path is None:
        if c.task.name != "nlgraph_gen":
            raise ValueError(f"config.task.path is empty: task {c.task.name!r} needs a data file")
        path = workdir / "task.json"
        if not path.exists():
            tasks.write_dataset(
                path, c.task.gen.n_dev, c.task.gen.n_test, seed=c.seed, config=_gen_config(c)
            )
    spec = task_spec(c, path)
    dev_limit, test_limit = c.task.dev_limit or None, c.task.test_limit or None
    dev = tasks.load_task(path, "dev", spec=spec, limit=dev_limit, seed=c.seed)
    test = tasks.load_task(path, "test", spec=spec, limit=test_limit, seed=c.seed)
    return spec, dev, test, path


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


def build_experts(c, workdir: Path, base_cfg, params, tokenizer, spec, dev, test) -> lora.LoraStack:
    """The pool as one LoraStack (leading expert axis)."""
    if c.experts.source == "peft":
        dirs = [d for d in c.experts.peft_dirs.split(",") if d]
        if len(dirs) == 1 and not os.path.exists(os.path.join(dirs[0], lora.ADAPTER_CONFIG)):
            dirs = sorted(str(p.parent) for p in Path(dirs[0]).glob(f"*/{lora.ADAPTER_CONFIG}"))
        if not dirs:
            raise FileNotFoundError(f"no PEFT adapters found in {c.experts.peft_dirs!r}")
        return lora.load_peft_pool(dirs, base_cfg)
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
    # Only fine-tuning reads the task (its question types are the experts' slices).
    spec, dev, test, _ = load_items(c, workdir) if c.experts.source == "train" else (None,) * 4
    base_cfg, params, tokenizer = load_base(c)
    experts = build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
    names = expert_names(experts)
    folders = [str(pool_dir_of(c, workdir) / name) for name in names]
    for i, folder in enumerate(folders):
        if not os.path.exists(os.path.join(folder, lora.ADAPTER_WEIGHTS)):
            lora.export_peft_adapter(experts, i, folder, base_model_name_or_path=c.model.spec)
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


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Runs (or resumes) the search described by `config` in `workdir`; returns results.json."""
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
        jax.distributed.initialize()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    spec, dev, test, task_file = load_items(c, workdir)
    logging.info(
        "task %s: %d dev / %d test items from %s", spec.name, len(dev), len(test), task_file
    )
    base_cfg, params, tokenizer = load_base(c)
    experts = build_experts(c, workdir, base_cfg, params, tokenizer, spec, dev, test)
    names = expert_names(experts)
    mesh = sharding.make_mesh(data=c.mesh.data, model=c.mesh.model)
    engine = Engine(
        base_cfg, params, tokenizer, experts=experts, mesh=mesh, max_batch=c.engine.max_batch,
        max_prompt_len=c.engine.max_prompt_len, batch_buckets=tuple(c.engine.batch_buckets),
    )  # fmt: skip
    protocol = protocol_for(c, spec)
    scorer = SystemScorer(engine, spec, protocol, max_batch=c.engine.max_batch)

    # Best single expert, on the pool as loaded (before any weight step).
    singles = [(SINGLE, (i,)) for i in range(experts.n_experts)]
    single_dev = scorer.score(singles, experts, dev)
    single_test = scorer.score(singles, experts, test)
    best_single = int(np.argmax(single_dev))
    logging.info("single experts dev utility: %s", np.round(single_dev, 3).tolist())

    test_outputs = {}

    def test_scorer(dag, assignment, weights):
        utility = float(scorer.score([(dag, assignment)], weights, test)[0])
        node_outputs = scorer.last_run.node_outputs[0]
        test_outputs.update({str(node): outs for node, outs in sorted(node_outputs.items())})
        if c.outputs.save_prompts:
            write_jsonl(workdir / "test_prompts.jsonl", scorer.audit_rows((dag, assignment), test))
        return utility

    costs = []

    def log_cost(record):
        # Cost of this iteration: the counters' change since the previous record.
        now = scorer.stats.as_dict()
        before = costs[-1]["total"] if costs else start_cost
        delta = {k: now[k] - before[k] for k in now}
        costs.append({"iteration": record["iteration"], **delta, "total": now})
        logging.info(
            "iteration %d cost: %d generate calls, %d rows generated (%d from cache), "
            "%d prompt + %d generated tokens",
            record["iteration"], delta["generate_calls"], delta["rows_generated"],
            delta["cache_hits"], delta["prompt_tokens"], delta["generated_tokens"],
        )  # fmt: skip

    start_cost = scorer.stats.as_dict()
    result = search.run_search(
        experts,
        lambda systems, weights: scorer.score(systems, weights, dev),
        search_config,
        workdir=str(workdir / checkpointing.SEARCH_SUBDIR),
        test_scorer=test_scorer,
        callbacks=[log_cost],
    )
    best = result.best
    summary = {
        "task": spec.name,
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
    _write_outputs(c, workdir, summary, best, names)
    _print_summary(summary)
    return summary


def write_jsonl(path: Path, rows) -> None:
    """One JSON object per line, written to a temporary file first and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


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
    with open(workdir / "results.json", "w") as f:
        json.dump(summary, f, indent=1, default=float)
    if c.outputs.plots:
        plots.plot_dag(
            best.dag, workdir / "best_dag.png", assignment=best.assignment, expert_names=names,
            title=f"best system: dev {best.utility:.3f}",
        )  # fmt: skip
        plots.plot_curves(
            _curves(summary["history"]),
            workdir / "curves.png",
            reference={"best single (dev)": summary["best_single"]["dev_utility"]},
        )
    if c.outputs.export_experts:
        for expert in sorted(set(best.assignment)):
            lora.export_peft_adapter(
                best.weights, expert, workdir / "best_experts" / names[expert],
                base_model_name_or_path=c.model.spec,
            )  # fmt: skip
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
