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
from hs_jax.executor import ExecutionStats, Executor, Generation, System
from hs_jax.graph import Dag

BASE_MODEL = -1  # expert id of the plain base model (the judge)


class SystemScorer:
    """Scores (Dag, assignment) systems on items of one task.

    Multiple choice and exact match: mean per-item accuracy of the end node's answers. AbstainQA:
    the end node's expert is asked whether its answer is right (one more batched wave) and the
    effective reliability is averaged. Judged tasks: the base model rates each answer 1-10 with
    the paper's judge prompt (`tasks.Judge`), normalised to 0-1.
    """

    def __init__(self, engine, spec: tasks.TaskSpec, templates: tasks.NodeTemplates, *, max_batch):
        self.engine = engine
        self.spec = spec
        self.templates = templates
        self._weights = None
        self.last_run = None
        self.executor = Executor(self._generate, self._prompt, max_batch=max_batch)
        # AbstainQA's yes/no self-checks: rows of their own, with their own token budget.
        self.check_executor = Executor(self._generate_check, self._prompt, max_batch=max_batch)
        self.judge = tasks.Judge(self._judge_generate, chat=templates.chat)

    @property
    def stats(self) -> ExecutionStats:
        return self.executor.stats

    def _prompt(self, item, parent_outputs, *, is_end, position):
        return tasks.item_node_prompt(
            item, parent_outputs, position=position, is_end=is_end, templates=self.templates
        )

    def _generate(self, prompts: list[str], expert_ids: list[int], max_new_tokens=None):
        out = self.engine.generate(
            prompts, expert_ids, max_new_tokens=max_new_tokens or self.spec.max_new_tokens
        )
        return Generation(
            texts=list(out.texts),
            prompt_tokens=sum(len(p) for p in out.prompt_tokens),
            generated_tokens=int(np.sum(out.num_tokens)),
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
        answers = self.last_run.answers
        if self.spec.type == "abstain":
            return self._abstain(systems, items, answers)
        if self.spec.type == "judged":
            return np.asarray(
                [float(np.mean(self.judge.score_items(items, a).scores)) for a in answers]
            )
        return np.asarray(
            [float(np.mean(tasks.score_outputs(self.spec, items, a))) for a in answers]
        )

    def _abstain(self, systems, items, answers) -> np.ndarray:
        # The self-check is one more wave: each system's end expert judges its own answer.
        keys = [
            [
                (
                    system.assignment[system.dag.end],
                    tasks.abstain_check_prompt(
                        tasks.format_question(item), answers[s][j], templates=self.templates
                    ),
                )
                for j, item in enumerate(items)
            ]
            for s, system in enumerate(systems)
        ]
        checks = self.check_executor.generate_rows([k for row in keys for k in row])
        n = len(items)
        return np.asarray(
            [
                float(np.mean(tasks.score_abstain(items, answers[s], checks[s * n : (s + 1) * n])))
                for s in range(len(systems))
            ]
        )
