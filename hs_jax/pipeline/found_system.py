"""Use the system a search found: `load_system(workdir)` answers new questions with it.

A run's best system is a DAG, an assignment of experts to its nodes and the experts' weights.
`load_system` rebuilds exactly what the run's test scoring used (the base model of
`assembly.load_base`, an `Engine` with the run's engine and mesh settings, the protocol's node
prompts, the `Executor` of a `SystemScorer`), so the loaded system's outputs on the run's test
items are results.json's `best_system_test_outputs`, node for node. Where it comes from:

- a finished run (results.json present, no `step`): results.json's DAG and assignment and the
  PEFT folders in `best_experts/` of the experts the system uses (only those are loaded, zero-
  padded to the pool's rank as in the run; the training pool is not built; full-weight experts,
  experts.source='full', are HF model folders there). A run written with
  `outputs.export_experts=False` falls back to its last checkpoint;
- `step=N`, or a run without results.json yet (killed, or still running): the step's best
  DAG and assignment (its meta) and its best expert weights, restored against a template built
  from the run's pool (`assembly.build_experts`: the pool is loaded, or regenerated from the
  seed, never trained). Checkpoints are only read (`read_checkpoint`), every array checked
  against its recorded CRC32, so a running search is never disturbed; beside a live run only
  committed steps are read, a step it prunes meanwhile is skipped (not called damaged), and a
  warning says "run in progress (pid ...)".

The config is the run's own: `config` when given (checked against run.json, field by field),
else rebuilt from `<workdir>/run.json` (the fields that do not change results, FREE_FIELDS,
take their defaults).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from hs_jax import config as config_lib
from hs_jax import tasks
from hs_jax.config import mesh_layout
from hs_jax.config.model_source import ModelSource
from hs_jax.config.pool_source import PoolSource
from hs_jax.engine.executor import System
from hs_jax.experts import lora
from hs_jax.methods.api import SINGLE
from hs_jax.pipeline import door
from hs_jax.runtime import sharding
from hs_jax.setup import assembly, identity
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm.graph import Dag

Question = str | Mapping[str, Any] | tasks.Item
BEST_EXPERTS = "best_experts"


# ----------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass(frozen=True)
class CheckpointStep:
    """One step of a search checkpoint, read-only: its JSON item and its arrays as saved.

    `arrays` maps the saved flat names (`<index>_<key path>`, see `checkpointing`) to numpy
    arrays. The search state's top-level entries are 'roles' and 'weights' (the two swarms'
    `pso.PSOState`), 'best_weights' (the best system's expert stack) and 'key'.
    """

    workdir: str
    step: int
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def part(self, entry: str) -> dict[str, np.ndarray]:
        """The arrays of one top-level entry, named by the rest of their key path, in saved
        order: part('roles') -> {'x': [N, n, n], 'v': ..., 'p_util': [N], ...}; part('key')
        -> {'key': [2]}."""
        out = {}
        for name in sorted(self.arrays):
            path = name.split("_", 1)[1]
            if path == entry or path.startswith(entry + "_"):
                out[path[len(entry) + 1 :] or entry] = self.arrays[name]
        return out

    def restore(self, entry: str, template: Any) -> Any:
        """One top-level entry in `template`'s tree structure; shapes and dtypes must match."""
        values = list(self.part(entry).values())
        leaves, treedef = jax.tree.flatten(template)
        if len(values) != len(leaves):
            raise checkpointing.ConfigMismatchError(
                f"step {self.step} in {self.workdir}: {entry!r} holds {len(values)} arrays, the "
                f"run's pool has {len(leaves)} (another config?)"
            )
        for i, (value, leaf) in enumerate(zip(values, leaves, strict=True)):
            if value.shape != np.shape(leaf) or value.dtype != jnp.result_type(leaf):
                raise checkpointing.ConfigMismatchError(
                    f"step {self.step} in {self.workdir}: {entry!r} array {i} is "
                    f"{value.dtype}{list(value.shape)}, the run's pool has "
                    f"{jnp.result_type(leaf)}{list(np.shape(leaf))} (another config?)"
                )
        return jax.tree.unflatten(treedef, [jnp.asarray(v) for v in values])


def read_checkpoint(path: str | os.PathLike, step: int | None = None) -> CheckpointStep:
    """A checkpoint step (default: the latest readable one), read without writing anything.

    `path`: as for `checkpointing.read_meta` (a run's workdir, its search/ folder
    or one step directory). Unlike a resume, a damaged step is skipped (with a warning), not
    moved aside: the search that owns the folder may still be running.
    """
    assembly.quiet_orbax()
    return CheckpointStep(*checkpointing.read_step(path, step))


# ----------------------------------------------------------------------------- config


def run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run used, rebuilt from its run.json (FREE_FIELDS at their defaults)."""
    flat = _saved_config(Path(workdir))
    if flat is None:
        raise workdir_lib.WorkdirError(
            f"{workdir} has no {workdir_lib.RUN_JSON}: pass the config the run used "
            "(load_system(workdir, config), or --config=... on the command line)"
        )
    c = config_lib.base_config()
    known = workdir_lib.flatten(c.to_dict())
    c.update_from_flattened_dict({k: v for k, v in flat.items() if k in known})
    return door.resolve(c)


def _saved_config(workdir: Path) -> dict[str, Any] | None:
    """The flat config recorded in run.json, or None (no run.json, or one without it)."""
    saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON) or {}
    return (saved.get("identity") or {}).get("config")


def _checked_config(config, workdir: Path) -> ml_collections.ConfigDict:
    """The resolved, checked config; one given alongside a run.json must be that run's."""
    if config is None:
        return run_config(workdir)
    c = door.resolve(config)
    door.check(c)
    saved = _saved_config(workdir)
    if saved is not None:
        defaults = config_lib.base_config()
        defaults.protocol = c.protocol
        diff = workdir_lib.identity_diff(
            saved,
            workdir_lib.flat_config(c, identity.FREE_FIELDS),
            defaults=workdir_lib.flat_config(door.resolve(defaults), identity.FREE_FIELDS),
            removed_ok=True,
        )
        if diff:
            raise workdir_lib.WorkdirError(
                f"the config differs from the run in {workdir} (pass none to use the run's "
                "own); differing fields:\n  " + "\n  ".join(diff)
            )
    return c


# ----------------------------------------------------------------------------- the system


@dataclasses.dataclass
class _Run:
    """What every system of one run shares: config, workdir, base model, task."""

    config: ml_collections.ConfigDict
    workdir: Path
    base: tuple  # (GemmaConfig, params, tokenizer)
    spec: tasks.TaskSpec
    protocol: tasks.Protocol
    dev: list[tasks.Item]
    test: list[tasks.Item]

    def pool(self) -> Any:
        """The run's pool as it started the search (loaded or regenerated, never trained)."""
        c = self.config
        if PoolSource.of(c).trained:
            folder = assembly.pool_dir_of(c, self.workdir)
            if len(list(folder.glob(f"*/{lora.ADAPTER_WEIGHTS}"))) < PoolSource.of(c).n:
                raise FileNotFoundError(
                    f"the run's trained expert pool is not (all) in {folder}; load_system "
                    "does not train one"
                )
        return assembly.build_experts(
            self.config, self.workdir, *self.base, self.spec, self.dev, self.test
        )


class FoundSystem:
    """A multi-LLM system of a run, ready to answer questions (module docstring).

    Attributes: `dag`, `assignment` (the expert of each node, as an index into
    `expert_names`, the run's pool), `source` (where the system was read from), `config`,
    `spec` and `protocol` (the run's task and prompts), `test_items` (the run's test split).
    """

    def __init__(self, run: _Run, dag: Dag, assignment, expert_names, experts, source: str):
        self._run = run
        self.dag = dag
        self.assignment = tuple(int(e) for e in assignment)
        self.expert_names = list(expert_names)
        self.source = source
        # `experts` holds only the experts used, in pool order: a monotone renumbering keeps
        # the executor's row order (sorted by expert id among equal lengths) that of the run.
        self._ids = self.assignment
        if experts.n_experts < len(self.expert_names):
            local = {e: k for k, e in enumerate(sorted(set(self.assignment)))}
            self._ids = tuple(local[e] for e in self.assignment)
        c = run.config
        mesh = sharding.make_mesh(**mesh_layout.answer_axes(c))
        engine = assembly.make_engine(c, run.base, experts, mesh)
        self._executor = assembly.make_scorer(c, engine, run.spec, run.protocol).executor

    config = property(lambda self: self._run.config)
    spec = property(lambda self: self._run.spec)
    protocol = property(lambda self: self._run.protocol)
    test_items = property(lambda self: list(self._run.test))
    # Cost counters of every answer() so far (generate calls, rows, tokens).
    stats = property(lambda self: self._executor.stats)

    def __repr__(self) -> str:
        experts = [self.expert_names[e] for e in self.assignment]
        return f"FoundSystem({self.dag}, experts per node {experts}, from {self.source})"

    def live_nodes(self) -> list[int]:
        """The nodes that run (those with a path to the end node), in topological order."""
        live = set(self.dag.reaching_end)
        return [u for u in self.dag.topological_order if u in live]

    def answer(self, questions: Sequence[Question], *, return_node_outputs: bool = False):
        """The system's answers (the end node's outputs), one per question, in one batched run.

        A question is a task item, a plain string, or a dict with 'question' and optionally
        'choices' (letter -> text, or a list lettered A, B, ...) and 'context_chunks'. With
        `return_node_outputs`: (answers, {node: outputs per question}) over `live_nodes()`.
        AbstainQA: the answer pass only (the self-check that decides abstention is not run).
        """
        if isinstance(questions, str | Mapping | tasks.Item):
            raise TypeError("answer() takes a list of questions")
        items = [self._item(q, i) for i, q in enumerate(questions)]
        run = self._executor.run([System(self.dag, self._ids)], items)
        if not return_node_outputs:
            return run.answers[0]
        return run.answers[0], {u: run.node_outputs[0][u] for u in self.live_nodes()}

    def _item(self, question: Question, index: int) -> tasks.Item:
        if isinstance(question, tasks.Item):
            return question
        if isinstance(question, str):
            question = {"question": question}
        if not isinstance(question, Mapping) or not isinstance(question.get("question"), str):
            raise ValueError(
                f"question {index}: expected a string, a task item or a dict with a "
                f"'question' string, got {question!r}"
            )
        choices = question.get("choices")
        if isinstance(choices, Sequence) and not isinstance(choices, str):
            choices = {chr(ord("A") + k): str(text) for k, text in enumerate(choices)}
        chunks = question.get("context_chunks")
        # The task file's few-shot prefix, shared by all its items, belongs to every prompt.
        icl = self._run.test[0].icl_prompt if self._run.test else None
        return tasks.Item(
            index=index, id=question.get("id", index), question=question["question"],
            answer="", choices=dict(choices) if choices else None,
            context_chunks=tuple(chunks) if chunks else None, icl_prompt=icl,
        )  # fmt: skip

    def single_expert(self, expert: int | None = None) -> FoundSystem:
        """A one-node system of one expert of the pool as the run scored it before the search
        (default: the run's best single expert): the baseline the found system is compared
        with. Builds the pool (`assembly.build_experts`)."""
        if expert is None:
            results = workdir_lib.read_json(self._run.workdir / workdir_lib.RESULTS_JSON)
            if results is None:
                raise workdir_lib.WorkdirError(
                    f"{self._run.workdir} has no {workdir_lib.RESULTS_JSON} yet: name the expert"
                )
            expert = int(results["best_single"]["expert"])
        pool = self._run.pool()
        return FoundSystem(
            self._run, SINGLE, (expert,), assembly.expert_names(pool), pool,
            f"expert {expert} of the pool",
        )  # fmt: skip


def load_system(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
) -> FoundSystem:
    """The best system of the run in `workdir` (module docstring): from results.json and
    best_experts/, or from checkpoint `step` (default for an unfinished run: the latest
    readable step). `config`: the config the run used (None: read from run.json)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"{workdir} is a file, not a run's workdir")
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    c = _checked_config(config, workdir)
    results = workdir_lib.read_json(workdir / workdir_lib.RESULTS_JSON)
    finished = results is not None and step is None
    if finished and not (workdir / BEST_EXPERTS).is_dir():
        logging.info("%s has no %s/: reading its last checkpoint", workdir, BEST_EXPERTS)
        finished = False
    live = None if finished else checkpointing.live_holder(workdir)
    in_progress = f"; run in progress ({live})" if live else ""
    if not finished and not (workdir / checkpointing.SEARCH_SUBDIR).is_dir():
        raise FileNotFoundError(
            f"{workdir} holds no search: no {workdir_lib.RESULTS_JSON} and no checkpoint in "
            f"{checkpointing.SEARCH_SUBDIR}/{' yet' if live else ''}{in_progress}"
        )
    ckpt = None if finished else read_checkpoint(workdir / checkpointing.SEARCH_SUBDIR, step)
    if live:
        logging.warning(
            "run in progress (%s): using its committed checkpoint step %d", live, ckpt.step
        )
    source = identity.task_source(c, workdir)
    if source.pending:
        raise workdir_lib.WorkdirError(f"{workdir} has no {workdir_lib.TASK_JSON}")
    spec, dev, test, _ = assembly.load_items(c, workdir, source)
    assembly.use_compilation_cache(c)  # as hs_jax.run: a repeated load skips compilation
    base = assembly.load_base(c, sharding.make_mesh(**mesh_layout.answer_axes(c)))
    run = _Run(c, workdir, base, spec, assembly.protocol_for(c, spec, base[0]), dev, test)
    if finished:
        best, names = results["best_system"], results["experts"]
        used = sorted(set(best["assignment"]))
        folders = [workdir / BEST_EXPERTS / names[e] for e in used]
        if PoolSource.of(c).full:  # exported as HF model folders (hs_jax.pipeline.report)
            experts = assembly.load_model_folders(folders, run.base[0], ModelSource.of(c).spec)
        else:
            experts = _padded(lora.load_peft_pool(folders, run.base[0]), _pool_rank(workdir))
        return FoundSystem(
            run, Dag.from_dict(best["dag"]), best["assignment"], names, experts, "results.json"
        )
    best = ckpt.meta.get("best")
    if best is None:
        raise checkpointing.NoUsableCheckpointError(
            f"step {ckpt.step} in {ckpt.workdir} holds no best system yet"
        )
    pool = run.pool()
    diff = workdir_lib.identity_diff(
        ckpt.meta["identity"].get("experts", {}),
        workdir_lib.jsonable(checkpointing.fingerprint(pool)),
        saved_as="the checkpoint",
    )
    if diff:
        raise checkpointing.ConfigMismatchError(
            f"step {ckpt.step} in {ckpt.workdir} was searched with another pool than this "
            "config builds; differing fields:\n  " + "\n  ".join(diff[:5])
        )
    weights = ckpt.restore("best_weights", pool)
    return FoundSystem(
        run, Dag.from_dict(best["dag"]), best["assignment"], assembly.expert_names(pool),
        weights, f"checkpoint step {ckpt.step}{in_progress}",
    )  # fmt: skip


def _pool_rank(workdir: Path) -> int:
    """The pool's padded LoRA rank, as run.json's pool fingerprint records it (0: unknown)."""
    saved = workdir_lib.read_json(workdir / workdir_lib.RUN_JSON) or {}
    shapes = (saved.get("pool_fingerprint") or {}).get("shapes", {})
    return max((shape[-1] for name, (_, shape) in shapes.items() if name.endswith("_a")), default=0)


def _padded(stack: lora.LoraStack, rank: int) -> lora.LoraStack:
    """`stack` zero-padded to `rank` (exact: padded components add 0). The exported experts
    are trimmed to their own rank; padded back, every matmul has the run's shapes, so the
    outputs are the run's to the bit."""
    if rank <= stack.rank:
        return stack

    def pad(x, axis):
        return jnp.pad(x, [(0, rank - x.shape[axis]) if i == axis else (0, 0) for i in range(3)])

    layers = tuple(
        {proj: {"a": pad(f["a"], 2), "b": pad(f["b"], 1)} for proj, f in layer.items()}
        for layer in stack.layers
    )
    return stack.replace(layers=layers)
