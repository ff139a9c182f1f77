"""The utility function f: a system's score on a task split, through the engine and executor.

`SystemScorer.score(systems, expert_weights, items)` is what the search's `score_systems` and
the test-split scorer call. It swaps new expert weights into the engine (no recompilation) and
drops the executor's output cache only when the weights really changed, so the role step's
graphs and a repeated JFK assignment share every generation they can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hs_jax import tasks
from hs_jax.engine.costs import GenerationCosts
from hs_jax.engine.executor import ExecutionStats, Executor, Generation, System
from hs_jax.swarm.graph import Dag

BASE_MODEL = -1  # expert id of the plain base model (the judge)


class SystemScorer:
    """Scores (Dag, assignment) systems on items of one task under one protocol.

    Multiple choice and exact match: mean per-item correctness of the end node's answers (read
    by the protocol's parsers). AbstainQA: the answer is checked (hs_jax: the end node's expert
    answers a yes/no question alone; authors: the whole graph answers a true/false question about
    the proposed letter) and the effective reliability is averaged. Judged tasks: the base model
    rates each answer 1-10 (`tasks.Judge`), normalised to 0-1.

    After each `score`, `last_run` holds every node's prompts and outputs, `last_check` the
    AbstainQA check pass (prompts and outputs per system and item) and `last_item_scores` the
    per-item scores per system: `audit_rows` turns them into the audit trail.

    Costs: `stats` is the node executor's account (`ExecutionStats`: its rows, cache hits and
    the calls and tokens it generated); `costs` is every generation of the engine, the node
    calls, AbstainQA's checks and the judge's ratings together (`costs.GenerationCosts`).
    """

    def __init__(self, engine, spec: tasks.TaskSpec, protocol: tasks.Protocol, *, max_batch):
        self.engine = engine
        self.spec = spec
        self.protocol = protocol
        self._weights = None
        self.last_run = None
        self.last_check = None
        self.last_item_scores: list[np.ndarray] = []
        order = protocol.order
        self.executor = Executor(
            self._generate, protocol.node_prompt, max_batch=max_batch, order=order
        )
        # AbstainQA's checks: rows of their own, with their own token budget.
        self.check_executor = Executor(
            self._generate_check, protocol.node_prompt, max_batch=max_batch, order=order
        )
        template = tasks.AUTHORS_JUDGE_TEMPLATE if protocol.authors else tasks.JUDGE_TEMPLATE
        self.judge = tasks.Judge(
            self._judge_generate,
            template=template,
            chat=protocol.templates.chat,
            chat_format=protocol.templates.chat_format,
        )

    @property
    def stats(self) -> ExecutionStats:
        """The node executor's counters (its own rows and cache hits)."""
        return self.executor.stats

    @property
    def costs(self) -> GenerationCosts:
        """Every generation of the engine so far (node calls, checks, judge), counted there."""
        return self.engine.costs

    @costs.setter
    def costs(self, value: GenerationCosts) -> None:
        # A resumed run continues the counters of its checkpoint.
        self.engine.costs = value

    def _generate(self, prompts: list[str], expert_ids: list[int], max_new_tokens=None):
        out = self.engine.generate(
            prompts, expert_ids, max_new_tokens=max_new_tokens or self.spec.max_new_tokens
        )
        return Generation(
            texts=list(out.texts),
            prompt_tokens=out.costs.prompt_tokens,
            generated_tokens=out.costs.generated_tokens,
        )

    def _generate_check(self, prompts: list[str], expert_ids: list[int]):
        return self._generate(prompts, expert_ids, max_new_tokens=self.spec.check_max_new_tokens)

    def _judge_generate(self, prompts: Sequence[str]) -> list[str]:
        return self._generate(list(prompts), [BASE_MODEL] * len(prompts)).texts

    def set_weights(self, expert_weights: Any) -> None:
        """Use these expert weights from now on (a no-op when they are the ones in use)."""
        if expert_weights is not self._weights:
            self.engine.set_experts(expert_weights)
            self.executor.clear_cache()
            self.check_executor.clear_cache()
            self._weights = expert_weights

    def score(
        self, systems: Sequence[tuple[Dag, tuple[int, ...]]], expert_weights: Any, items
    ) -> np.ndarray:
        """Utility of every system on `items`, [len(systems)] float64."""
        self.set_weights(expert_weights)
        systems = [System(dag, tuple(a)) for dag, a in systems]
        self.last_run = self.executor.run(systems, items)  # every node's output, for analysis
        self.last_check = None
        answers = self.last_run.answers
        if self.spec.type == "abstain":
            per_item = self._abstain(systems, items, answers)
        elif self.spec.type == "judged":
            per_item = [np.asarray(self.judge.score_items(items, a).scores) for a in answers]
        else:
            per_item = [self.protocol.score_outputs(self.spec, items, a) for a in answers]
        self.last_item_scores = per_item
        return np.asarray([float(np.mean(u)) for u in per_item])

    def _abstain(self, systems, items, answers) -> list[np.ndarray]:
        protocol = self.protocol
        if protocol.abstain_reruns_graph:
            # The authors' check: every system runs again on a true/false question about the
            # letter it proposed.
            proposed = [
                [
                    tasks.CheckItem(item, protocol.choice(item, answers[s][j]) or "Z")
                    for j, item in enumerate(items)
                ]
                for s in range(len(systems))
            ]
            run = self.check_executor.run(systems, items, per_system_items=proposed)
            checks = run.answers
            end_prompts = [run.node_prompts[s][system.dag.end] for s, system in enumerate(systems)]
            self.last_check = {"run": run, "prompts": end_prompts, "outputs": checks}
        else:
            # hs_jax's check is one more wave: each system's end expert judges its own answer.
            keys = [
                [
                    (system.assignment[system.dag.end], protocol.check_prompt(item, answers[s][j]))
                    for j, item in enumerate(items)
                ]
                for s, system in enumerate(systems)
            ]
            flat = self.check_executor.generate_rows([k for row in keys for k in row])
            n = len(items)
            checks = [flat[s * n : (s + 1) * n] for s in range(len(systems))]
            prompts = [[p for _, p in row] for row in keys]
            self.last_check = {"run": None, "prompts": prompts, "outputs": checks}
        scores = []
        for s in range(len(systems)):
            correct = protocol.score_outputs(self.spec, items, answers[s]) == 1.0
            abstained = [not protocol.keeps_answer(c) for c in checks[s]]
            scores.append(tasks.reliability_scores(correct, abstained))
        return scores

    def audit_rows(self, system: tuple[Dag, tuple[int, ...]], items, index: int = 0) -> list[dict]:
        """One JSON-able row per node call of system `index` of the last `score`: item id, node,
        parents, expert, the exact prompt text, the output; the end node adds the parsed answer,
        whether it is right and the item's score (AbstainQA: +1 / -1 / 0 after the check).
        AbstainQA check calls follow with `"pass": "check"`."""
        dag, assignment = system
        run, spec, protocol = self.last_run, self.spec, self.protocol
        rows = []
        for j, item in enumerate(items):
            for node in protocol.order(dag):
                if node not in run.node_prompts[index]:
                    continue  # no path to the end node: never run
                row = {
                    "id": item.id,
                    "item": item.index,  # the position in the split: ids may repeat
                    "pass": "answer",
                    "node": node,
                    "parents": list(dag.parents(node)),
                    "expert": int(assignment[node]),
                    "prompt": run.node_prompts[index][node][j],
                    "output": run.node_outputs[index][node][j],
                }
                if node == dag.end:
                    row["answer"] = protocol.parsed_answer(spec, item, row["output"])
                    if spec.type != "judged":
                        row["correct"] = bool(protocol.correct(spec, item, row["output"]))
                    row["score"] = float(self.last_item_scores[index][j])
                rows.append(row)
            if self.last_check is not None:
                rows.extend(self._check_rows(dag, assignment, item, j, index))
        return rows

    def _check_rows(self, dag, assignment, item, j, index) -> list[dict]:
        check = self.last_check
        if check["run"] is None:
            nodes = [dag.end]
            prompt = {dag.end: check["prompts"][index][j]}
            output = {dag.end: check["outputs"][index][j]}
        else:
            run = check["run"]
            nodes = [u for u in self.protocol.order(dag) if u in run.node_prompts[index]]
            prompt = {u: run.node_prompts[index][u][j] for u in nodes}
            output = {u: run.node_outputs[index][u][j] for u in nodes}
        rows = []
        for node in nodes:
            row = {
                "id": item.id,
                "item": item.index,
                "pass": "check",
                "node": node,
                "parents": [] if check["run"] is None else list(dag.parents(node)),
                "expert": int(assignment[node]),
                "prompt": prompt[node],
                "output": output[node],
            }
            if node == dag.end:
                row["kept"] = self.protocol.keeps_answer(output[node])
            rows.append(row)
        return rows
