"""The Heterogeneous Swarms method ('hs') and its ablations, registered like every baseline.

'hs' (`heterogeneous_swarms`) scores the single experts (every method's baseline), then runs
the alternating search (`hs_jax.swarm.search`) against the run's scorer, checkpointed with its
costs in `workdir/search` and resumed automatically, and scores its best system on test. Its
ablations are 'hs' with one config switch changed (`MethodSpec.overrides`); those that score
fewer systems per iteration get the iterations that give them the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np
from absl import logging

from hs_jax.config import presets, schema
from hs_jax.methods import archive as archive_lib
from hs_jax.methods import live_curves
from hs_jax.methods.api import (
    MethodResult,
    clear_generation_cache,
    cost_snapshot,
    generation_cost,
    restore_costs,
    save_audit,
    score_singles,
)
from hs_jax.runtime import distributed
from hs_jax.setup.identity import RESTART_HINT
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm import search

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup


from hs_jax.methods.registry import MethodSpec, register


def heterogeneous_swarms(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """The Heterogeneous Swarms search (`search.run_search`), checkpointed in workdir/search
    and resumed from it, with its costs: the counters, the per-iteration costs, the test
    outputs and the archive's length are saved with each iteration and restored on resume, so
    work redone after a kill is counted once (and archived once); each iteration starts with
    an empty generation cache. Its live TensorBoard curves (`live_curves`: per iteration and
    per evaluation) go to workdir/tensorboard."""
    c, scorer = setup.config, setup.scorer
    singles = score_singles(setup)
    workdir_lib.kill_point("setup")  # test hook (4th): baseline scored, search not started

    test_outputs: dict[str, list[str]] = {}
    test_items: list[float] = []
    test_cost: dict[str, int] = {}

    def test_scorer(dag, assignment, weights):
        # From an empty generation cache, as `Evaluator.finish` measures every method's. The
        # best system's weights are a copy the search never scored with, so the scorer drops
        # its cache here anyway: clearing it changes none of the run's counters.
        clear_generation_cache(setup)
        before = cost_snapshot(setup)
        utility = float(scorer.score([(dag, assignment)], weights, setup.test)[0])
        test_cost.update(generation_cost(cost_snapshot(setup), before))
        node_outputs = scorer.last_run.node_outputs[0]
        test_outputs.update({str(node): outs for node, outs in sorted(node_outputs.items())})
        test_items[:] = [float(x) for x in scorer.last_item_scores[0]]
        save_audit(setup, workdir, lambda: scorer.audit_rows((dag, assignment), setup.test))
        return utility

    archive = archive_lib.Archive(workdir / archive_lib.ARCHIVE)
    curves = live_curves.LiveCurves(workdir)
    # The archive holds the evaluations 0 .. rows-1 of this search. It is brought in step with
    # where the search starts before anything is scored: the rows of the checkpoint it resumes
    # from (`on_resume`), or none when it starts from scratch (the first `score_dev`: a kill
    # before the first checkpoint leaves rows that the search scores again).
    archived = {"rows": 0, "iteration": 0, "synced": False}

    def sync_archive(rows: int, why: str) -> None:
        archived["rows"], archived["synced"] = rows, True
        dropped = distributed.on_primary(lambda: archive.truncate(rows))
        if dropped:
            logging.info("archive.jsonl: %d rows past %s dropped (scored again)", dropped, why)

    def score_dev(systems, weights):
        if not archived["synced"]:
            sync_archive(0, "the search's start (no checkpoint)")
        utilities = scorer.score(systems, weights, setup.dev)
        fp = archive_lib.weights_fingerprint(distributed.host_tree(weights))
        rows = [
            {
                "method": c.method,
                "evaluation": archived["rows"] + k,
                "step": "search",
                "iteration": archived["iteration"],
                "system": archive_lib.system_key(dag, a),
                "weights": fp,
                "dev_utility": float(u) if np.isfinite(u) else None,
                "cost": None,
            }
            for k, ((dag, a), u) in enumerate(zip(systems, utilities, strict=True))
        ]
        distributed.on_primary(lambda: archive.append(rows))
        curves.evaluations(archived["rows"], utilities, cost_snapshot(setup))
        archived["rows"] += len(rows)
        return utilities

    costs: list[dict[str, Any]] = []
    start_cost = cost_snapshot(setup)

    def extra_meta(record):
        # Cost of this iteration (its test scoring included): the counters' change since the
        # previous record. Saved with the iteration's checkpoint, with the test outputs.
        now = cost_snapshot(setup)
        before = costs[-1]["total"] if costs else start_cost
        costs.append({"iteration": record["iteration"], **{k: now[k] - before[k] for k in now}})
        costs[-1]["total"] = now
        # Drawn here rather than in a callback: this runs before the iteration's checkpoint,
        # so a kill never leaves a checkpointed iteration without its point.
        curves.iteration(record, costs[-1], evaluations=archived["rows"])
        return {
            "cost": now,
            "cost_per_iteration": costs,
            "test_outputs": test_outputs,
            "test_items": test_items,
            "test_cost": test_cost,
            "archive_rows": archived["rows"],
        }

    def on_resume(extra):
        if "archive_rows" in extra:
            # The rows past this checkpoint (the iteration being redone) come back identical.
            sync_archive(int(extra["archive_rows"]), "the checkpoint resumed from")
        else:
            logging.warning("the checkpoint does not say how many rows archive.jsonl held: kept")
            archived["rows"] = distributed.on_primary(lambda: len(archive.repair()))
            archived["synced"] = True
        if "cost" not in extra:
            logging.warning("the checkpoint holds no cost counters: costs cover this process")
            return
        restore_costs(setup, extra["cost"])
        costs[:] = extra["cost_per_iteration"]
        test_outputs.update(extra["test_outputs"])
        test_items[:] = extra.get("test_items", [])
        test_cost.update(extra.get("test_cost") or {})
        archived["iteration"] = len(costs)

    def end_of_iteration(record):
        # A fresh generation cache per iteration: what an iteration generates (its cost) then
        # does not depend on whether the process that runs it also ran the previous one.
        scorer.executor.clear_cache()
        scorer.check_executor.clear_cache()
        archived["iteration"] = record["iteration"] + 1
        delta = costs[-1]
        logging.info(
            "iteration %d cost: %d generate calls, %d rows, %d from cache, "
            "%d prompt + %d generated tokens",
            record["iteration"], delta["generate_calls"], delta["rows"],
            delta["cache_hits"], delta["prompt_tokens"], delta["generated_tokens"],
        )  # fmt: skip

    try:
        result = search.run_search(
            setup.experts,
            score_dev,
            schema.search_config(c),
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
    finally:
        curves.close()
    if not archived["synced"]:  # nothing scored, nothing resumed
        sync_archive(0, "the search's start (no checkpoint)")
    return MethodResult(
        **result.outcome(),
        test_outputs=test_outputs,
        cost=cost_snapshot(setup),
        cost_per_iteration=[{k: v for k, v in r.items() if k != "total"} for r in costs],
        singles=singles,
        test_items=list(test_items),
        evaluations=archived["rows"],
        test_cost=dict(test_cost),
    )


def _schedule(c: ml_collections.ConfigDict) -> str:
    """config.search.schedule as the door (`pipeline.door.resolve`) fills it in after the
    overrides."""

    if c.search.schedule:
        return str(c.search.schedule)
    return presets._PROTOCOL_SEARCH.get(c.protocol, {}).get("schedule", "hs_jax")


def search_budget(c: ml_collections.ConfigDict) -> int:
    """An ablation's budget: config.budget, or when 0 what 'hs' with these settings can spend
    at most (`method_api.default_budget`: max_iterations * (n_graphs + n_assignments), plus
    round 0 under the authors' schedule). Idempotent: once set, config.budget is kept."""
    if c.budget:
        return int(c.budget)
    rounds = int(c.search.max_iterations) + (1 if _schedule(c) == "authors" else 0)
    return rounds * int(c.search.n_graphs + c.search.n_assignments)


def full_budget_iterations(c: ml_collections.ConfigDict) -> int:
    """search.max_iterations of an ablation that scores fewer systems per iteration than 'hs',
    so that the most it can spend reaches config.budget (set by `search_budget`): the fewest
    iterations that do. Without the role step an iteration scores the M assignments only (the
    first also scores the role swarm's N initial graphs, unmoved, to pick the graph); without
    the weight step, the N graphs only. Both schedules ('authors' adds round 0)."""
    n, m = int(c.search.n_graphs), int(c.search.n_assignments)
    per_iteration = n * bool(c.search.role_step) + m * bool(c.search.weight_step)
    if per_iteration == 0:
        return int(c.search.max_iterations)
    once = 0 if c.search.role_step else n
    rounds = max(1, math.ceil((int(c.budget) - once) / per_iteration))
    return max(1, rounds - (1 if _schedule(c) == "authors" else 0))


_HS_METHODS: dict[str, MethodSpec] = {
    "hs": MethodSpec(heterogeneous_swarms, "heterogeneous swarms", "Heterogeneous Swarms"),
    # Fewer evaluations per iteration than 'hs': as many more iterations as give them the
    # same budget (`full_budget_iterations`).
    "hs_no_role": MethodSpec(
        heterogeneous_swarms, "ablation", "w/o role step",
        {"search.role_step": False, "budget": search_budget,
         "search.max_iterations": full_budget_iterations},
    ),
    "hs_no_weight": MethodSpec(
        heterogeneous_swarms, "ablation", "w/o weight step",
        {"search.weight_step": False, "budget": search_budget,
         "search.max_iterations": full_budget_iterations},
    ),
    "hs_dropout": MethodSpec(
        heterogeneous_swarms, "ablation", "dropout-R/W 0.2 / 0.2",
        {"search.dropout_role": 0.2, "search.dropout_weight": 0.2},
    ),
    "hs_prune": MethodSpec(
        heterogeneous_swarms, "ablation", "tau pruning at 0.5", {"search.prune_tau": 0.5}
    ),
    "hs_l1": MethodSpec(
        heterogeneous_swarms, "ablation", "L1 term lambda 0.05", {"search.l1_lambda": 0.05}
    ),
    "hs_authors": MethodSpec(
        heterogeneous_swarms, "ablation", "the authors' protocol preset",
        {"protocol": "authors"},
    ),
}  # fmt: skip

for _name, _spec in _HS_METHODS.items():
    register(_name, _spec)
