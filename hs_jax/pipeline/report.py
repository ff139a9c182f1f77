"""What a finished run reports: results.json, best_dag.png, curves.png, the best system's
experts as PEFT folders (best_experts/; HF model folders for full-weight experts), and the
summary printed at the end.

Every file is written by process 0, under a temporary name and renamed into place;
results.json is written last, so its presence means the run is complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging

from hs_jax import stats, tasks
from hs_jax.config.model_source import ModelSource
from hs_jax.config.pool_source import PoolSource
from hs_jax.experts import lora
from hs_jax.experts.full_models import FullExperts
from hs_jax.methods.api import MethodResult
from hs_jax.models.hf_writer import CONFIG_JSON, save_hf_dir
from hs_jax.pipeline import diagnostics, plots
from hs_jax.runtime import distributed
from hs_jax.setup.assembly import Setup
from hs_jax.store import workdir as workdir_lib


def _with_interval(scores: list[float]) -> dict[str, Any]:
    if not scores:
        return {"test_interval": None}
    return {"test_interval": list(stats.interval(scores))}


def results(setup: Setup, found: MethodResult, seconds: float) -> dict[str, Any]:
    """results.json of a run: the method, the task, the best system and the best single
    expert (dev and test utility, the test utility's 95% bootstrap interval and per-item
    scores), the paired test of the two on the test items, every single expert, the
    iterations, the costs, the best system's test outputs, the run's duration and the
    method's history."""
    c, best, singles, names = setup.config, found.best, found.singles, setup.names
    single_items = singles.test_items[singles.best] if singles.test_items else []
    comparison = None
    if found.test_items and single_items:
        comparison = stats.paired(found.test_items, single_items).as_dict()
    return {
        "method": c.method,
        "seed": c.seed,
        "task": setup.spec.name,
        "dataset": tasks.read_task_file(setup.task_file).get("dataset"),
        "protocol": c.protocol,
        "scoring": setup.protocol.scoring,
        "n_dev": len(setup.dev),
        "n_test": len(setup.test),
        # The test items' ids in scoring order: a comparison pairs methods item by item.
        "test_ids": [item.id for item in setup.test],
        "experts": names,
        # Dev and test items among the pool's training questions
        # (setup.assembly.check_train_overlap).
        "train_overlap": setup.train_overlap,
        "best_system": {
            "kind": found.kind,
            "dag": best.dag.to_dict(),
            "assignment": list(best.assignment),
            "dev_utility": best.utility,
            "test_utility": found.test_utility,
            **_with_interval(found.test_items),
            "test_item_scores": list(found.test_items),
            "iteration": best.iteration,
            "details": found.details,
            # What scoring it on test generated, from an empty cache (MethodResult.test_cost).
            "test_cost": found.test_cost or None,
        },
        "best_single": {
            "expert": singles.best,
            "name": names[singles.best],
            "dev_utility": singles.dev[singles.best],
            "test_utility": singles.test[singles.best],
            **_with_interval(single_items),
        },
        # best system - best single on the same test items (paired bootstrap).
        "vs_best_single": comparison,
        "single_experts": {
            "dev": list(singles.dev),
            "test": list(singles.test),
            "test_item_scores": [list(u) for u in singles.test_items],
        },
        "iterations": found.iterations,
        "stop_reason": found.stop_reason,
        "evaluations": found.evaluations,
        # Every generation the engine made (node calls, checks, judge), and the executor's rows
        # asked for and answered from its cache.
        "cost": found.cost,
        "cost_per_iteration": found.cost_per_iteration,
        "best_system_test_outputs": found.test_outputs,
        # Per-type utility, the answer distribution (a collapsed system), method numbers.
        "diagnostics": diagnostics.of_run(setup, found, found.test_items),
        "seconds": seconds,
        "history": found.history,
    }


def report(setup: Setup, found: MethodResult, workdir: Path, seconds: float) -> dict[str, Any]:
    """Writes the run's files (process 0), prints its summary and returns results.json."""
    summary = results(setup, found, seconds)
    # The best weights may be spread over other processes' devices: gathered (by all), written
    # (by process 0).
    best = dataclasses.replace(found.best, weights=distributed.host_tree(found.best.weights))
    distributed.on_primary(lambda: write_outputs(setup.config, workdir, summary, best, setup.names))
    if distributed.is_primary():
        print_summary(summary)
    return summary


def curves(history) -> dict[str, dict[str, list[float]]]:
    """Best, mean and worst utility of each step's swarm per iteration (curves.png), read by
    `hs_jax.swarm.history.step_stats` (the search's typed records, or a method's records that carry
    a step's utilities); a step no record has gets no curve."""
    from hs_jax.swarm.history import step_stats

    out: dict[str, dict[str, list[float]]] = {}
    for step, title in (("role", "role step"), ("weight", "weight step")):
        points = [p for p in (step_stats(record, step) for record in history) if p is not None]
        if points:
            best, mean, worst = (list(map(float, s)) for s in zip(*points, strict=True))
            out[title] = {"best": best, "mean": mean, "worst": worst}
    return out


def write_outputs(c: ml_collections.ConfigDict, workdir: Path, summary, best, names) -> None:
    """Pictures and exported experts first, results.json last (its presence marks a finished
    run); each written under a temporary name and renamed into place."""
    if c.outputs.plots and summary["best_system"]["kind"] == "dag":
        with workdir_lib.atomic_path(workdir / "best_dag.png") as tmp:
            plots.plot_dag(
                best.dag, tmp, assignment=best.assignment, expert_names=names,
                title=f"best system: dev {best.utility:.3f}",
            )  # fmt: skip
        workdir_lib.kill_point("outputs")  # test hook: between two output files
    if c.outputs.plots and curves(summary["history"]):
        with workdir_lib.atomic_path(workdir / "curves.png") as tmp:
            plots.plot_curves(
                curves(summary["history"]),
                tmp,
                reference={"best single (dev)": summary["best_single"]["dev_utility"]},
            )
        workdir_lib.kill_point("outputs")
    if c.outputs.export_experts:
        with workdir_lib.atomic_path(workdir / "best_experts") as tmp:
            for expert in sorted(set(best.assignment)):
                if isinstance(best.weights, FullExperts):
                    source = PoolSource.of(c).model_folders()[expert]
                    export_full_expert(best.weights, expert, tmp / names[expert], source)
                else:
                    lora.export_peft_adapter(
                        best.weights, expert, tmp / names[expert],
                        base_model_name_or_path=ModelSource.of(c).spec,
                    )  # fmt: skip
                workdir_lib.kill_point("outputs")
    workdir_lib.write_json(workdir / workdir_lib.RESULTS_JSON, summary)
    logging.info("results written to %s", workdir)


def export_full_expert(experts: FullExperts, i: int, folder: Path, source: str) -> str:
    """Full-weight expert i (experts.source='full') as an HF model folder (config.json +
    model.safetensors), the format it was loaded from: it has no LoRA factors to export as a
    PEFT folder. The model folder it was loaded from (`source`) gives the config.json fields
    the architecture does not hold (`hf_writer.CARRIED_FIELDS`: the context length, the special
    token ids)."""
    source_json = json.loads((Path(source) / CONFIG_JSON).read_text())
    return save_hf_dir(
        experts.config, experts.params_for(i), folder, source_config_json=source_json
    )


def _system_label(method: str) -> str:
    return "H-Swarms system" if method == "hs" else f"{method} system"


def verdict(paired: dict[str, Any] | None, alpha: float = 0.05) -> str:
    """A plain reading of a paired test: 'better, p = ...', 'worse, p = ...' or 'not
    established at p < alpha'."""
    if not paired or paired.get("p_value") is None:
        return "no paired test"
    p, d = paired["p_value"], paired["difference"]
    if p < alpha and d != 0:
        return f"{'better' if d > 0 else 'worse'}, {stats.format_p(p)}"
    return f"not established at p < {alpha:g} ({stats.format_p(p)})"


def print_summary(s: dict[str, Any]) -> None:
    """The run's result in a few lines: the best single expert and the system found, dev and
    test with the test utility's 95% interval, the paired test of the two on the same test
    items with a plain verdict, and a warning for a collapsed system."""
    b, single = s["best_system"], s["best_single"]

    def cell(u: float | None) -> str:
        return "n/a" if u is None else f"{u:.3f}"

    def span(interval) -> str:
        return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""

    label = _system_label(s.get("method", "hs"))
    rows = [
        (f"best single ({single['name']})", single["dev_utility"], single["test_utility"],
         single.get("test_interval")),
        (label, b["dev_utility"], b["test_utility"], b.get("test_interval")),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}s} {'dev':>7s} {'test':>7s}  95% interval (test)"]
    lines += [
        f"{name:{width}s} {cell(dev):>7s} {cell(test):>7s}  {span(interval)}"
        for name, dev, test, interval in rows
    ]
    paired = s.get("vs_best_single")
    if paired:
        lo, hi = paired["interval"]
        lines.append(
            f"{label} - best single on the same {paired['items']} test items: "
            f"{paired['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], paired bootstrap: "
            f"{verdict(paired)}"
        )
    answers = (s.get("diagnostics") or {}).get("answers")
    if answers and answers.get("collapsed_on") == "readable":
        lines.append(
            f"warning: {answers['read_top_share']:.0%} of the system's readable test answers "
            f"are {answers['read_top']!r} and {answers['unread']} outputs are unreadable: it "
            "answers (almost) one thing to everything it answers"
        )
    elif answers and answers.get("collapsed"):
        lines.append(
            f"warning: {answers['top_share']:.0%} of the system's test answers are "
            f"{answers['top']!r}: it answers (almost) one thing to everything"
        )
    print(
        f"\n{s['task']}: {s['iterations']} iterations ({s['stop_reason']}), "
        f"{s['seconds']:.0f} s; {s.get('n_dev', '?')} dev / {s.get('n_test', '?')} test items\n"
        + "\n".join(lines)
        + "\n"
    )
