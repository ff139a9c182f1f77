"""What every method shares: its result, the single experts, and the `Evaluator` it scores with.

A method (`hs_jax.methods.METHODS`) gets the run's `Setup` and its workdir and returns a
`MethodResult`. Methods other than the search score their candidates through an `Evaluator`:

- every candidate is scored on dev by `setup.scorer` (the engine counts every generation, so
  costs are comparable across methods) with an empty generation cache per scoring call (what a
  call costs then depends on nothing scored before it, which keeps costs of resumed and
  uninterrupted runs equal);
- every candidate is appended to the archive (`hs_jax.methods.archive`), with its weights'
  fingerprint, dev utility and the call's cost;
- the budget (`budget`: utility evaluations on dev) is enforced: scoring past it is a bug of
  the method, and raises;
- the best candidate (strictly higher dev utility; ties keep the earlier one) is kept;
- on resume, the archived calls are replayed (utilities and costs) instead of scored, as long
  as the method asks for the same systems with the same weights in the same order (a method
  is a deterministic function of its seed and the utilities it is given); the first call that
  was not archived (or lost a row to a damaged line, `Archive.repair`) is scored, and the
  archive's rows from there are moved to archive.jsonl.diverged;
- every evaluation, scored or replayed, is a point of the live TensorBoard curves
  (`hs_jax.methods.live_curves`: its utility, the best so far, the run's costs).

`Evaluator.finish` scores the best system on the test split and returns the `MethodResult`,
with what that test scoring generated (`test_cost`, measured from an empty generation cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from hs_jax.config import schema
from hs_jax.engine.costs import GenerationCosts
from hs_jax.engine.executor import ExecutionStats
from hs_jax.methods import archive as archive_lib
from hs_jax.methods import live_curves
from hs_jax.runtime import distributed
from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm.graph import Dag
from hs_jax.swarm.search import BestSystem, Outcome

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

SINGLE = Dag(1, (), 0)  # one expert alone: the best-single baseline as a one-node system


class BudgetExceeded(RuntimeError):
    """A method asked for more utility evaluations than its budget (a bug of the method)."""


class NotApplicable(ValueError):
    """A method that does not apply to this setting (say data merge with random experts)."""


@dataclasses.dataclass(frozen=True)
class Singles:
    """Every expert alone on dev and test, the best of them on dev, and each expert's per-item
    test scores (for paired tests and the collaborative gain)."""

    dev: list[float]
    test: list[float]
    best: int
    test_items: list[list[float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class MethodResult(Outcome):
    """What a method found, in the terms results.json reports it (`search.Outcome`'s fields,
    then the method's own).

    best: the best system (`search.BestSystem`: dag, assignment, weights, dev utility, the
      iteration it was found at); its weights may be spread over the mesh.
    test_utility / test_outputs / test_items: its test utility, each node's test outputs and
      its per-item test scores.
    history: one record per iteration (results.json's `history`; `curves.png` reads its
      'role' / 'weight' steps when they are there).
    cost: the run's costs (results.json's `cost`, `cost_totals`); cost_per_iteration: the
      change per iteration.
    evaluations: utility evaluations on dev the method made (its budget's unit).
    kind: what `best` is: 'dag' (a DAG of experts with an assignment), or a method's own kind
      ('vote', 'ensemble') described by `details`.
    details: method-specific JSON (mixing weights, the designer's proposals, ...).
    test_cost: what scoring the best system on the test split generated, from an empty
      generation cache (`TEST_COST_FIELDS`: generate calls, rows, prompt and generated
      tokens; results.json's `best_system.test_cost`): what running the found system costs,
      the target of the self-consistency control. Empty when the method does not measure it.
    """

    test_outputs: dict[str, list[str]]
    cost: dict[str, Any]
    cost_per_iteration: list[dict[str, Any]]
    singles: Singles
    test_items: list[float] = dataclasses.field(default_factory=list)
    evaluations: int = 0
    kind: str = "dag"
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    test_cost: dict[str, int] = dataclasses.field(default_factory=dict)


TEST_PROMPTS = "test_prompts.jsonl"  # the audit trail of the best system on test


def save_audit(setup: Setup, workdir: str | os.PathLike, rows: Callable[[], list]) -> None:
    """With config.outputs.save_prompts, writes `rows()` (the best system's audit rows on
    test: every node call's prompt and output) to workdir/test_prompts.jsonl, on process 0."""
    if setup.config.outputs.save_prompts:
        made = rows()
        distributed.on_primary(lambda: workdir_lib.write_jsonl(Path(workdir) / TEST_PROMPTS, made))


# The engine's counters a `MethodResult.test_cost` reports.
TEST_COST_FIELDS = ("generate_calls", "rows", "prompt_tokens", "generated_tokens")


def generation_cost(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The engine's generations between two `cost_snapshot`s (`TEST_COST_FIELDS`)."""
    return {k: int(after[k]) - int(before.get(k, 0)) for k in TEST_COST_FIELDS}


def clear_generation_cache(setup: Setup) -> None:
    """Empties the executors' output caches: what the next scoring call generates then
    depends on nothing scored before it."""
    setup.scorer.executor.clear_cache()
    setup.scorer.check_executor.clear_cache()


def default_budget(c) -> int:
    """Utility evaluations on dev a budgeted method gets when config.budget is 0: what the
    Heterogeneous Swarms search can spend at most (N role + M weight evaluations per
    iteration, and under the authors' schedule the extra round 0)."""
    s = schema.search_config(c)
    rounds = s.max_iterations + (1 if s.schedule == "authors" else 0)
    return int(rounds * (s.n_graphs + s.n_assignments))


def budget_of(c) -> int:
    return int(c.budget) if c.budget else default_budget(c)


# Fields that do not change the single experts' scores (the method and how it searches).
_NOT_SINGLES = ("method", "seed", "budget", "baselines.", "search.", "singles_cache")


def _singles_key(setup: Setup) -> str:
    """What the singles' scores depend on: the config apart from the method's fields, the
    model's file identity, the task file's bytes and the pool's values."""
    from hs_jax.setup import identity as run_identity
    from hs_jax.store import checkpointing

    identity = {
        "config": workdir_lib.flat_config(setup.config, run_identity.FREE_FIELDS + _NOT_SINGLES),
        "model_file": run_identity.static_identity(setup.config)["model_file"],
        "task_file": workdir_lib.file_sha256(setup.task_file),
        # dev_limit / test_limit subsample the splits with the run's seed: the items themselves.
        "items": [[item.id for item in setup.dev], [item.id for item in setup.test]],
        "pool": workdir_lib.jsonable(checkpointing.fingerprint(setup.experts)),
    }
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def score_singles(setup: Setup) -> Singles:
    """Every expert alone, on the pool as loaded. A resumed run scores them again (same
    results); its cost is then replaced by the checkpointed or replayed counters.

    With config.singles_cache, the scores (and what they cost) are kept in that folder under a
    key of everything they depend on (`_singles_key`); a run that finds them adds their cost
    to its counters instead of generating again, so its costs are those of a run that scored
    them."""
    folder = setup.config.singles_cache
    if not folder:
        return _score_singles(setup)
    path = Path(folder).expanduser() / f"singles-{_singles_key(setup)}.json"
    if path.exists():
        kept = json.loads(path.read_text())
        restore_costs(setup, _add(cost_snapshot(setup), kept["cost"]))
        logging.info("single experts' scores read from %s", path)
        return Singles(**kept["singles"])
    before = cost_snapshot(setup)
    singles = _score_singles(setup)
    record = {"singles": dataclasses.asdict(singles), "cost": _delta(cost_snapshot(setup), before)}
    distributed.on_primary(lambda: _keep(path, record))
    return singles


def _keep(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_json(path, record)


def _score_singles(setup: Setup) -> Singles:
    singles = [(SINGLE, (i,)) for i in range(setup.experts.n_experts)]
    single_dev = setup.scorer.score(singles, setup.experts, setup.dev)
    single_test = setup.scorer.score(singles, setup.experts, setup.test)
    test_items = [[float(x) for x in u] for u in setup.scorer.last_item_scores]
    logging.info("single experts dev utility: %s", np.round(single_dev, 3).tolist())
    return Singles(
        dev=[float(u) for u in single_dev],
        test=[float(u) for u in single_test],
        best=int(np.argmax(single_dev)),
        test_items=test_items,
    )


def cost_snapshot(setup: Setup) -> dict[str, int]:
    """Every counter: the engine's (all generations) and the node executor's (rows asked,
    cache hits), as one flat dict (`cost_of`)."""
    engine = setup.scorer.costs.as_dict()
    stats = setup.scorer.stats.as_dict()
    return {
        **{k: engine[k] for k in engine},
        "rows_requested": stats["rows_requested"],
        "cache_hits": stats["cache_hits"],
        "node_rows": stats["rows_generated"],
    }


def restore_costs(setup: Setup, snapshot: dict[str, int]) -> None:
    """Sets the counters to a `cost_snapshot` (a resumed run continues them)."""
    engine_fields = GenerationCosts().as_dict()
    setup.scorer.costs = GenerationCosts(**{k: int(snapshot.get(k, 0)) for k in engine_fields})
    stats = ExecutionStats(
        rows_requested=int(snapshot.get("rows_requested", 0)),
        cache_hits=int(snapshot.get("cache_hits", 0)),
        rows_generated=int(snapshot.get("node_rows", 0)),
    )
    setup.scorer.executor.stats = stats


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: int(after[k]) - int(before.get(k, 0)) for k in after}


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in set(a) | set(b)}


class Evaluator:
    """Scores one method's candidates on dev (module docstring): budget, archive, best, replay."""

    def __init__(self, setup: Setup, workdir: Path, method: str, *, budget: int | None):
        self.setup = setup
        self.workdir = Path(workdir)
        self.method = method
        self.budget = budget
        self.archive = archive_lib.Archive(self.workdir / archive_lib.ARCHIVE)
        # The archived rows by evaluation index (a damaged line set aside leaves a gap: the
        # call it belonged to is scored again).
        rows = distributed.on_primary(self.archive.repair) or []
        self._replay: dict[int, dict[str, Any]] = {}
        for row in rows:
            if isinstance(row.get("evaluation"), int):
                self._replay.setdefault(row["evaluation"], row)
        self.evaluations = 0
        self.curves = live_curves.LiveCurves(self.workdir)
        self.best: BestSystem | None = None
        self._last_weights: tuple[Any, str] | None = None
        self.replayed = 0

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.evaluations

    def fingerprint(self, weights: Any) -> str:
        # Only the last weights are remembered (methods score one set many times in a row);
        # keeping every candidate stack alive would hold them all in memory.
        if self._last_weights is None or self._last_weights[0] is not weights:
            fp = archive_lib.weights_fingerprint(distributed.host_tree(weights))
            self._last_weights = (weights, fp)
        return self._last_weights[1]

    def consider(self, dag: Dag, assignment, weights: Any, utility: float, iteration: int = 0):
        """Offers a system already scored (say a single expert) as the best."""
        if np.isfinite(utility) and (self.best is None or utility > self.best.utility):
            self.best = BestSystem(dag, tuple(int(e) for e in assignment), weights, float(utility),
                                   iteration)  # fmt: skip

    def score(
        self, systems: Sequence[tuple[Dag, Sequence[int]]], weights: Any, *, step: str,
        iteration: int = 0,
    ) -> np.ndarray:  # fmt: skip
        """Dev utility of each system with these expert weights, [len(systems)] float64."""
        systems = [(dag, tuple(int(e) for e in a)) for dag, a in systems]
        if not systems:
            return np.zeros(0)
        if self.budget is not None and self.evaluations + len(systems) > self.budget:
            raise BudgetExceeded(
                f"method {self.method!r} asked for {self.evaluations + len(systems)} utility "
                f"evaluations, its budget is {self.budget}"
            )
        fp = self.fingerprint(weights)
        keys = [archive_lib.system_key(dag, a) for dag, a in systems]
        start = self.evaluations
        archived = [self._replay.get(start + k) for k in range(len(systems))]
        if all(
            r is not None and r["system"] == key and r["weights"] == fp
            for r, key in zip(archived, keys, strict=True)
        ):
            utilities = np.asarray([r["dev_utility"] for r in archived], float)
            call_cost = archived[0].get("cost") or {}
            restore_costs(self.setup, _add(cost_snapshot(self.setup), call_cost))
            self.replayed += len(systems)
        else:
            if any(e >= start for e in self._replay):
                # The archive goes another way from here (a run changed since, a torn call, a
                # damaged row): its rows from here on are not this run's, and are redone; they
                # are kept aside.
                logging.warning(
                    "%s: archive differs from row %d on; its rows from there are moved to %s "
                    "and rescored", self.method, start, self.archive.diverged_path(),
                )  # fmt: skip
                distributed.on_primary(lambda: self.archive.truncate(start, keep_rest=True))
                self._replay = {e: r for e, r in self._replay.items() if e < start}
            clear_generation_cache(self.setup)
            before = cost_snapshot(self.setup)
            utilities = np.asarray(self.setup.scorer.score(systems, weights, self.setup.dev), float)
            call_cost = _delta(cost_snapshot(self.setup), before)
            rows = [
                {
                    "method": self.method,
                    "evaluation": start + k,
                    "step": step,
                    "iteration": int(iteration),
                    "system": key,
                    "weights": fp,
                    "dev_utility": float(u) if np.isfinite(u) else None,
                    "cost": call_cost if k == 0 else None,
                }
                for k, (key, u) in enumerate(zip(keys, utilities, strict=True))
            ]
            distributed.on_primary(lambda: self.archive.append(rows))
            workdir_lib.kill_point("evaluation")  # test hook: after a scoring call, archived
        self.curves.evaluations(start, utilities, cost_snapshot(self.setup))
        self.evaluations += len(systems)
        for (dag, a), u in zip(systems, utilities, strict=True):
            self.consider(dag, a, weights, float(u), iteration)
        return utilities

    def finish(
        self,
        singles: Singles,
        *,
        history: list[dict[str, Any]],
        iterations: int,
        stop_reason: str,
        kind: str = "dag",
        details: dict[str, Any] | None = None,
    ) -> MethodResult:
        """Scores the best system on test (with its audit trail when config.outputs.
        save_prompts) and returns the method's result; its `test_cost` is that scoring's, from
        an empty generation cache (the singles' test outputs may still be cached)."""
        setup, best = self.setup, self.best
        self.curves.close()
        if best is None:
            raise RuntimeError(f"method {self.method!r} found no system with a finite utility")
        clear_generation_cache(setup)
        before = cost_snapshot(setup)
        test_utility = float(
            setup.scorer.score([(best.dag, best.assignment)], best.weights, setup.test)[0]
        )
        test_cost = generation_cost(cost_snapshot(setup), before)
        outputs = setup.scorer.last_run.node_outputs[0]
        test_outputs = {str(node): outs for node, outs in sorted(outputs.items())}
        test_items = [float(x) for x in setup.scorer.last_item_scores[0]]
        save_audit(
            setup,
            self.workdir,
            lambda: setup.scorer.audit_rows((best.dag, best.assignment), setup.test),
        )
        if self.replayed:
            logging.info("%s: %d archived evaluations replayed", self.method, self.replayed)
        return MethodResult(
            best=best,
            history=history,
            iterations=iterations,
            stop_reason=stop_reason,
            test_utility=test_utility,
            test_outputs=test_outputs,
            cost=cost_snapshot(setup),
            cost_per_iteration=[],
            singles=singles,
            test_items=test_items,
            evaluations=self.evaluations,
            kind=kind,
            details=dict(details or {}),
            test_cost=test_cost,
        )
