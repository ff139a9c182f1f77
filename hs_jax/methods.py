"""The methods a run can use to find a system, selected by `config.method` (`METHODS`).

A method takes the run's `Setup` (hs_jax.run_setup: config, dev/test items, protocol, expert
pool, engine, scorer, mesh) and its workdir, and returns a `MethodResult`: what `hs_jax.report`
needs for results.json (the best system, its test utility and outputs, the history, the
iterations and stop reason, the costs, the single experts' utilities). The first and default
method is 'hs', the Heterogeneous Swarms search (`heterogeneous_swarms`).

A new method plugs in by
- a function `def my_method(setup, workdir, *, callbacks=(), progress=True) -> MethodResult`:
  it scores systems with `setup.scorer` (so costs are counted as for the search), writes
  what it checkpoints under `workdir` (resumed when the run is), calls each of `callbacks`
  with each iteration's record, and leaves every file other than its checkpoints to the
  report (it may write `test_prompts.jsonl` through `setup.scorer.audit_rows`, as 'hs' does);
- an entry `METHODS["my_method"] = my_method` here: `config.check_config` accepts only these
  names, and `config.method` is part of the run identity (run.json), so a workdir holds the
  results of one method.
The single experts (`score_singles`) are every method's baseline and are in every result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np
from absl import logging

from hs_jax import checkpointing, distributed, search
from hs_jax import workdir as workdir_lib
from hs_jax.executor import ExecutionStats
from hs_jax.graph import Dag
from hs_jax.run_identity import RESTART_HINT

if TYPE_CHECKING:
    from hs_jax.run_setup import Setup

SINGLE = Dag(1, (), 0)  # one expert alone: the best-single baseline as a one-node system


@dataclasses.dataclass(frozen=True)
class Singles:
    """Every expert alone on dev and test, and the best of them on dev."""

    dev: list[float]
    test: list[float]
    best: int


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """What a method found, in the terms results.json reports it.

    best: the best system (`search.BestSystem`: dag, assignment, weights, dev utility, the
      iteration it was found at); its weights may be spread over the mesh.
    test_utility / test_outputs: its test utility and each node's test outputs.
    history: one record per iteration (results.json's `history`; `curves.png` reads its
      'role' / 'weight' steps).
    costs: the scorer's counters at the end (results.json's `cost`) and per_iteration: the
      change per iteration (results.json's `cost_per_iteration`).
    """

    best: Any
    history: list[dict[str, Any]]
    iterations: int
    stop_reason: str
    test_utility: float | None
    test_outputs: dict[str, list[str]]
    cost: dict[str, Any]
    cost_per_iteration: list[dict[str, Any]]
    singles: Singles


def search_config(c: ml_collections.ConfigDict) -> search.SearchConfig:
    """The search's config; a bad value fails here, naming config.search, before any model is
    loaded or expert trained."""
    d = c.search.to_dict()
    d["seed"] = c.seed
    try:
        return search.SearchConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.search: {e}") from e


def score_singles(setup: Setup) -> Singles:
    """Every expert alone, on the pool as loaded (before any weight step). A resumed run
    scores them again (same results); its cost is then replaced by the checkpointed
    counters."""
    singles = [(SINGLE, (i,)) for i in range(setup.experts.n_experts)]
    single_dev = setup.scorer.score(singles, setup.experts, setup.dev)
    single_test = setup.scorer.score(singles, setup.experts, setup.test)
    logging.info("single experts dev utility: %s", np.round(single_dev, 3).tolist())
    return Singles(
        dev=[float(u) for u in single_dev],
        test=[float(u) for u in single_test],
        best=int(np.argmax(single_dev)),
    )


def heterogeneous_swarms(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """The Heterogeneous Swarms search (`search.run_search`), checkpointed in workdir/search
    and resumed from it, with its costs: the counters, the per-iteration costs and the test
    outputs are saved with each iteration and restored on resume, so work redone after a kill
    is counted once; each iteration starts with an empty generation cache."""
    c, scorer = setup.config, setup.scorer
    singles = score_singles(setup)
    workdir_lib.kill_point("setup")  # test hook (4th): baseline scored, search not started

    test_outputs: dict[str, list[str]] = {}

    def test_scorer(dag, assignment, weights):
        utility = float(scorer.score([(dag, assignment)], weights, setup.test)[0])
        node_outputs = scorer.last_run.node_outputs[0]
        test_outputs.update({str(node): outs for node, outs in sorted(node_outputs.items())})
        if c.outputs.save_prompts:
            rows = scorer.audit_rows((dag, assignment), setup.test)
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
            setup.experts,
            lambda systems, weights: scorer.score(systems, weights, setup.dev),
            search_config(c),
            workdir=str(workdir / checkpointing.SEARCH_SUBDIR),
            test_scorer=test_scorer,
            mesh=setup.mesh,
            callbacks=[end_of_iteration, *callbacks],
            extra_meta=extra_meta,
            on_resume=on_resume,
            progress=progress,
        )
    except checkpointing.NoUsableCheckpointError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise workdir_lib.WorkdirError(
            f"workdir {workdir}: no checkpoint can be restored ({reason}); {RESTART_HINT}"
        ) from e
    return MethodResult(
        best=result.best,
        history=result.history,
        iterations=result.iterations,
        stop_reason=result.stop_reason,
        test_utility=result.test_utility,
        test_outputs=test_outputs,
        cost=scorer.stats.as_dict(),
        cost_per_iteration=[{k: v for k, v in r.items() if k != "total"} for r in costs],
        singles=singles,
    )


METHODS: dict[str, Callable[..., MethodResult]] = {"hs": heterogeneous_swarms}
