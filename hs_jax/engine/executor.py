"""Run many multi-LLM systems over many questions with few, large, mixed-expert generate calls.

A system is a Dag plus an assignment of experts to its nodes. Running it on one question calls
the node experts in topological order; each node reads the question plus its parents' answers and
the end node's answer is the system's answer. Running N systems node by node would cost
N x n x |items| model calls (the authors' order of work). Instead the executor advances every
(system, node, item) row whose parents are finished in one *wave*: wave k holds the nodes at
topological level k of every system, so a role step over N graphs costs about (max depth) batched
calls per chunk of rows.

Rows with the same (expert, prompt) are generated once: inside a wave (entry nodes of different
graphs that sit on the same expert see the same prompt) and across waves and calls for as long as
the expert weights are unchanged (JFK draws repeat assignments). With greedy decoding this is
exact; a sampling engine must be run with ``cache=False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hs_jax.swarm.graph import Dag


@dataclasses.dataclass(frozen=True)
class System:
    """A multi-LLM system: ``assignment[node]`` is the expert that runs ``node`` of ``dag``."""

    dag: Dag
    assignment: tuple[int, ...]

    def __post_init__(self):
        assignment = tuple(int(e) for e in self.assignment)
        if len(assignment) != self.dag.n:
            raise ValueError(f"assignment {assignment} needs one expert per node ({self.dag.n})")
        object.__setattr__(self, "assignment", assignment)


class PromptFn(Protocol):
    def __call__(
        self, item: Any, parent_outputs: Sequence[str], *, is_end: bool, position: int
    ) -> str:
        """One node's prompt; ``position`` is the node's index in the topological order."""


@dataclasses.dataclass(frozen=True)
class Generation:
    """What a generate function returns for a batch of rows (same order as the prompts).

    prompt_tokens / generated_tokens: the batch's token counts as the model counted them
    (`scoring.SystemScorer` passes on the engine's `GenerationResult.costs`).
    """

    texts: list[str]
    prompt_tokens: int = 0
    generated_tokens: int = 0


GenerateFn = Callable[[list[str], list[int]], Generation]


@dataclasses.dataclass
class ExecutionStats:
    """This executor's own cost counters, accumulated over its runs.

    generate_calls: calls of the generate function; rows_requested: rows its runs asked for;
    rows_generated: rows sent to the generate function; cache_hits: rows answered from the
    (expert, prompt) cache (rows_requested = rows_generated + cache_hits with the cache on);
    prompt_tokens / generated_tokens: the generated rows' tokens. Generations made outside
    this executor (another executor, a judge) are not here: an engine counts all of its own
    (`Engine.costs`, hs_jax.engine.engine).
    """

    generate_calls: int = 0
    rows_requested: int = 0
    rows_generated: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ExecutionResult:
    """``answers[s][j]``: system s's answer to item j; ``node_outputs[s][node][j]``: all nodes';
    ``node_prompts[s][node][j]``: the prompt each node was given (for audits)."""

    answers: list[list[str]]
    node_outputs: list[dict[int, list[str]]]
    node_prompts: list[dict[int, list[str]]] = dataclasses.field(default_factory=list)


def _min_index_order(dag: Dag) -> tuple[int, ...]:
    return dag.topological_order


class Executor:
    """Runs systems over items through one injected generate function.

    Args:
      generate: ``(prompts, expert_ids) -> Generation``; one batched model call.
      prompt_fn: builds a node's prompt from the item and its parents' outputs.
      max_batch: rows per generate call; larger waves are split into chunks.
      cache: reuse outputs of identical (expert, prompt) rows; only exact for greedy decoding.
      order: the topological order whose positions ``prompt_fn`` receives (context tasks hand
        chunk i to position i); default ``Dag.topological_order``, the authors' protocol uses
        ``Dag.pass_order``. Waves always follow ``Dag.levels``.
    """

    def __init__(
        self,
        generate: GenerateFn,
        prompt_fn: PromptFn,
        *,
        max_batch: int = 64,
        cache: bool = True,
        order: Callable[[Dag], Sequence[int]] = _min_index_order,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._generate = generate
        self._prompt_fn = prompt_fn
        self._order = order
        self.max_batch = max_batch
        self.cache_enabled = cache
        self._cache: dict[tuple[int, str], str] = {}
        self.stats = ExecutionStats()

    def clear_cache(self) -> None:
        """Forget cached outputs; call whenever the expert weights change."""
        self._cache.clear()

    def run(
        self,
        systems: Sequence[System],
        items: Sequence[Any],
        *,
        per_system_items: Sequence[Sequence[Any]] | None = None,
    ) -> ExecutionResult:
        """Answers of every system on every item, wave by wave.

        ``per_system_items[s]`` (same length as ``items``), when given, replaces ``items`` for
        system s: a follow-up pass whose questions depend on each system's own answers (the
        authors' AbstainQA check) still runs all systems in the same waves.
        """
        if per_system_items is not None and len(per_system_items) != len(systems):
            raise ValueError(f"{len(per_system_items)} item lists for {len(systems)} systems")
        # Only nodes with a path to the end node run; their levels are the Dag's levels filtered.
        plans = []
        for system in systems:
            live = set(system.dag.reaching_end)
            levels = [[u for u in level if u in live] for level in system.dag.levels]
            position = {u: i for i, u in enumerate(self._order(system.dag))}
            plans.append(([lv for lv in levels if lv], position))
        outputs: list[dict[int, list[str]]] = [{} for _ in systems]
        prompts: list[dict[int, list[str]]] = [{} for _ in systems]
        depth = max((len(levels) for levels, _ in plans), default=0)
        for wave in range(depth):
            keys: list[tuple[int, str]] = []
            targets: list[tuple[int, int, int]] = []
            for s, (system, (levels, position)) in enumerate(zip(systems, plans, strict=True)):
                if wave >= len(levels):
                    continue
                dag = system.dag
                system_items = items if per_system_items is None else per_system_items[s]
                for node in levels[wave]:
                    outputs[s][node] = [""] * len(items)
                    prompts[s][node] = []
                    parents = dag.parents(node)
                    for j, item in enumerate(system_items):
                        prompt = self._prompt_fn(
                            item,
                            [outputs[s][p][j] for p in parents],
                            is_end=node == dag.end,
                            position=position[node],
                        )
                        prompts[s][node].append(prompt)
                        keys.append((system.assignment[node], prompt))
                        targets.append((s, node, j))
            for (s, node, j), text in zip(targets, self.generate_rows(keys), strict=True):
                outputs[s][node][j] = text
        answers = [outputs[s][system.dag.end] for s, system in enumerate(systems)]
        return ExecutionResult(answers=answers, node_outputs=outputs, node_prompts=prompts)

    def generate_rows(self, keys: list[tuple[int, str]]) -> list[str]:
        """Outputs of (expert, prompt) rows, chunked; with the cache each distinct row is
        generated once."""
        self.stats.rows_requested += len(keys)
        if not self.cache_enabled:
            return self._generate_chunks(keys)
        # Sorted by prompt length, chunks share length buckets and pad less.
        todo = sorted({k for k in keys if k not in self._cache}, key=lambda k: (len(k[1]), k))
        self._cache.update(zip(todo, self._generate_chunks(todo), strict=True))
        self.stats.cache_hits += len(keys) - len(todo)
        return [self._cache[k] for k in keys]

    def _generate_chunks(self, keys: list[tuple[int, str]]) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(keys), self.max_batch):
            chunk = keys[start : start + self.max_batch]
            result = self._generate([p for _, p in chunk], [e for e, _ in chunk])
            if len(result.texts) != len(chunk):
                raise RuntimeError(
                    f"generate returned {len(result.texts)} texts for {len(chunk)} prompts"
                )
            self.stats.generate_calls += 1
            self.stats.rows_generated += len(chunk)
            self.stats.prompt_tokens += result.prompt_tokens
            self.stats.generated_tokens += result.generated_tokens
            texts.extend(result.texts)
        return texts


def run_node_by_node(
    generate: GenerateFn, prompt_fn: PromptFn, systems: Sequence[System], items: Sequence[Any]
) -> ExecutionResult:
    """The authors' order of work: each system, each node in topological order, one generate call
    over all items, no sharing between systems. The reference for tests and benchmarks."""
    answers, node_outputs = [], []
    for system in systems:
        dag, live = system.dag, set(system.dag.reaching_end)
        outputs: dict[int, list[str]] = {}
        for position, node in enumerate(dag.topological_order):
            if node not in live:
                continue
            prompts = [
                prompt_fn(
                    item,
                    [outputs[p][j] for p in dag.parents(node)],
                    is_end=node == dag.end,
                    position=position,
                )
                for j, item in enumerate(items)
            ]
            outputs[node] = generate(prompts, [system.assignment[node]] * len(items)).texts
        answers.append(outputs[dag.end])
        node_outputs.append(outputs)
    return ExecutionResult(answers=answers, node_outputs=node_outputs)
