"""Trivial baselines (the paper's Table 1): the best single expert, and a plurality vote.

- `best_single`: argmax over the experts of their dev utility (the singles every method scores
  first, `method_api.score_singles`); no further dev evaluation; its test score is
  `Evaluator.finish`'s.
- `prediction_merge`: every expert answers alone, and per item the answer most experts give
  wins (multiple choice and exact match only: answers that can be counted). The answers are
  read as the protocol reads them (`vote_key`); ties go to the answer of the expert with the
  best dev utility. The vote's output on an item is the raw output of the best-ranked expert
  that gave the winning answer, so the vote is scored by the protocol's own scoring code
  (`Protocol.score_outputs`), on dev and on test. Its cost is the singles' generations: the
  experts' outputs are the singles' own (same prompts, weights, greedy decoding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hs_jax import tasks
from hs_jax.config.task_choice import TaskChoice
from hs_jax.methods import archive as archive_lib
from hs_jax.methods.api import (
    SINGLE,
    Evaluator,
    MethodResult,
    NotApplicable,
    cost_snapshot,
    restore_costs,
    score_singles,
)
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.runtime import distributed
from hs_jax.swarm.search import BestSystem

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

VOTE_TYPES = ("multiple_choice", "exact_match")


def best_single(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """The expert with the best dev utility, alone (ties: the lower index)."""
    singles = score_singles(setup)
    evaluator = Evaluator(setup, workdir, setup.config.method, budget=0)
    for i, utility in enumerate(singles.dev):
        evaluator.consider(SINGLE, (i,), setup.experts, utility)
    record = {"iteration": 0, "single_dev": list(singles.dev)}
    return evaluator.finish(
        singles, history=[record], iterations=0, stop_reason="done",
        details={"expert": singles.best, "name": setup.names[singles.best]},
    )  # fmt: skip


# ----------------------------------------------------------------------------- the vote


def plurality_vote(keys: Sequence[Sequence[Hashable | None]], rank: Sequence[int]) -> list[int]:
    """Which expert's output each item takes under a plurality vote.

    keys[e][j]: the answer expert e gave to item j (None: no answer could be read; it does not
    vote). rank: the experts, best first (by dev utility). Per item the answer with the most
    votes wins; among answers with equally many votes, the one given by the best-ranked
    expert; the item then takes the output of the best-ranked expert that gave the winner.
    An item on which no expert gave an answer takes the best-ranked expert's output.
    Returns one expert index per item.
    """
    if not keys:
        raise ValueError("a vote needs at least one expert")
    if sorted(rank) != list(range(len(keys))):
        raise ValueError(f"rank {list(rank)} is not an order of the {len(keys)} experts")
    n_items = len(keys[0])
    if any(len(k) != n_items for k in keys):
        raise ValueError(f"every expert needs one answer per item ({[len(k) for k in keys]})")
    chosen = []
    for j in range(n_items):
        counts: dict[Hashable, int] = {}
        first: dict[Hashable, int] = {}  # answer -> best-ranked expert that gave it
        for e in rank:
            key = keys[e][j]
            if key is None:
                continue
            counts[key] = counts.get(key, 0) + 1
            first.setdefault(key, e)
        if not counts:
            chosen.append(int(rank[0]))
            continue
        position = {e: p for p, e in enumerate(rank)}
        winner = max(counts, key=lambda k: (counts[k], -position[first[k]]))
        chosen.append(int(first[winner]))
    return chosen


def _canonical(answer: str | None) -> Hashable | None:
    """One key per answer: numbers by value ('12.0' = '12'), text without case or outer
    spaces; an empty answer is none."""
    if answer is None:
        return None
    text = answer.strip()
    if not text:
        return None
    try:
        return ("number", Decimal(text).normalize())
    except (InvalidOperation, ValueError):
        return ("text", text.casefold())


def vote_key(protocol: tasks.Protocol, spec: tasks.TaskSpec, item, output: str):
    """The answer an output gives, as the vote counts it: the protocol's reading
    (`Protocol.parsed_answer`: the option letter, or the parsed number / yes-no / answer
    span). The authors' exact-match scoring reads no answer (it matches substrings), so there
    the hs_jax parsers read it for the count; the winner is still scored the authors' way."""
    if protocol.scoring == "authors" and not spec.has_choices:
        protocol = dataclasses.replace(protocol, scoring="hs_jax")
    return _canonical(protocol.parsed_answer(spec, item, output))


def vote_type_of(c) -> str | None:
    """The task type known from the config alone (None when the task file will tell)."""
    return TaskChoice.of(c).known_type


def _not_votable(task_type: str) -> str:
    return f"a plurality vote needs countable answers ({', '.join(VOTE_TYPES)}), not {task_type}"


def prediction_merge_applies(c) -> str | None:
    task_type = vote_type_of(c)
    return None if task_type in (None, *VOTE_TYPES) else _not_votable(task_type)


def _answers(setup: Setup, items) -> list[list[str]]:
    """Every expert's output on `items`: answers[e][j]."""
    systems = [(SINGLE, (i,)) for i in range(setup.experts.n_experts)]
    setup.scorer.score(systems, setup.experts, items)
    return [list(a) for a in setup.scorer.last_run.answers]


def _vote(setup: Setup, items, outputs: list[list[str]], rank: list[int]):
    """(chosen expert per item, the voted outputs, their per-item scores)."""
    keys = [
        [vote_key(setup.protocol, setup.spec, item, out) for item, out in zip(items, outs)]
        for outs in outputs
    ]
    chosen = plurality_vote(keys, rank)
    voted = [outputs[e][j] for j, e in enumerate(chosen)]
    return chosen, voted, setup.protocol.score_outputs(setup.spec, items, voted)


def prediction_merge(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """The experts' plurality vote per item (module docstring)."""
    c = setup.config
    if setup.spec.type not in VOTE_TYPES:  # a task type the config alone could not tell
        raise NotApplicable(_not_votable(setup.spec.type))
    singles = score_singles(setup)
    # The experts' outputs are the singles' own: read back from the executor's cache (or, when
    # the singles' scores came from config.singles_cache, generated again); the singles' cost
    # already counts these generations, so the counters are put back afterwards.
    before = cost_snapshot(setup)
    dev_outputs, test_outputs = _answers(setup, setup.dev), _answers(setup, setup.test)
    restore_costs(setup, before)
    rank = [int(e) for e in np.argsort(-np.asarray(singles.dev), kind="stable")]
    dev_chosen, _, dev_items = _vote(setup, setup.dev, dev_outputs, rank)
    test_chosen, test_voted, test_items = _vote(setup, setup.test, test_outputs, rank)
    dev_utility = float(np.mean(dev_items))

    # One archived evaluation: the vote on dev. Weights: the pool as loaded.
    archive = archive_lib.Archive(workdir / archive_lib.ARCHIVE)
    row = {
        "method": c.method, "evaluation": 0, "step": "vote", "iteration": 0,
        "system": {**archive_lib.system_key(SINGLE, (rank[0],)), "vote": rank},
        "weights": archive_lib.weights_fingerprint(distributed.host_tree(setup.experts)),
        "dev_utility": dev_utility if np.isfinite(dev_utility) else None, "cost": None,
    }  # fmt: skip

    def write_row():
        archive.truncate(0)  # a rerun after a kill votes again from scratch
        archive.append([row])

    distributed.on_primary(write_row)
    details = {
        "vote": "plurality over the experts' parsed answers; ties: best dev expert",
        "rank": rank,
        "dev_chosen_expert": dev_chosen,
        "test_chosen_expert": test_chosen,
        "test_differs_from_best_single": int(sum(e != rank[0] for e in test_chosen)),
    }
    return MethodResult(
        # A placeholder for export: the best single expert's slot (the vote has no weights).
        best=BestSystem(SINGLE, (rank[0],), setup.experts, dev_utility, 0),
        history=[{"iteration": 0, "step": "vote", "dev_utility": dev_utility}],
        iterations=1,
        stop_reason="done",
        test_utility=float(np.mean(test_items)),
        test_outputs={"0": test_voted},
        cost=cost_snapshot(setup),
        cost_per_iteration=[],
        singles=singles,
        test_items=[float(x) for x in test_items],
        evaluations=1,
        kind="vote",
        details=details,
    )


register("best_single", MethodSpec(best_single, "trivial", "the best single expert on dev"))
register(
    "prediction_merge",
    MethodSpec(
        prediction_merge, "trivial", "plurality vote of the experts' answers",
        applies=prediction_merge_applies,
    ),
)  # fmt: skip
