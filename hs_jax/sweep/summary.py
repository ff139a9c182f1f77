"""A sweep's report, from the study alone: summary.md, summary.csv, best.json, history.png
and importance.png in the sweep's workdir.

The trial chosen is the best on dev (ties: the lowest slot); its test utility, the 95%
interval and the paired test against the best single expert are those of its results.json,
shown once, for it alone (the table of trials shows no test number). What the choice cost is
every slot's evaluations and generations added up (a pruned trial's up to where it stopped),
and what pruning saved is estimated against the complete trials' mean. Everything is read
from the study's trials (their user attributes), so any worker on any host writes the same
report; each file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hs_jax.pipeline.plots import save_figure
from hs_jax.pipeline.report import verdict
from hs_jax.store import workdir as workdir_lib
from hs_jax.sweep import slots as slots_lib
from hs_jax.sweep.slots import COMPLETE, FAILED, PRUNED, QUEUED, RETRY, RUNNING

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
BEST_JSON = "best.json"
HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"


def _row(slot: int, chain: Sequence, max_retries: int) -> dict[str, Any]:
    last = chain[-1]
    a = last.user_attrs
    status = slots_lib.status(last, max_retries)
    value: float | None = None
    if status == COMPLETE:
        value = last.value
    elif last.intermediate_values:  # a pruned (or stopped) trial: its last report
        value = last.intermediate_values[max(last.intermediate_values)]
    pruned = a.get("pruned") or {}
    return {
        "slot": slot,
        "trial": last.number,
        "status": status,
        "retries": len(chain) - 1,
        "params": dict(last.params),
        "dev_utility": value,
        "evaluations": a.get("evaluations"),
        "iterations": a.get("iterations"),
        "seconds": a.get("seconds", pruned.get("seconds_here")),
        "cost": a.get("cost") or {},
        "workdir": a.get("workdir", ""),
        "worker": a.get("worker", ""),
        "error": a.get("error", "") if status in (FAILED, RETRY) else "",
        "test": a.get("test") if status == COMPLETE else None,
    }


def rows(study, max_retries: int) -> list[dict[str, Any]]:
    """One row per slot, in slot order."""
    chains = slots_lib.slots(study.get_trials()).items()
    return [_row(s, chain, max_retries) for s, chain in chains]


def best_row(table: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, int]:
    """The complete slot with the highest dev utility (the lowest slot among equals), and how
    many share that utility."""
    complete = [r for r in table if r["status"] == COMPLETE]
    if not complete:
        return None, 0
    top = max(r["dev_utility"] for r in complete)
    tied = [r for r in complete if r["dev_utility"] == top]
    return min(tied, key=lambda r: r["slot"]), len(tied)


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _total(table, key: str) -> int:
    return int(sum(r[key] or 0 for r in table))


def _cost_total(table, key: str) -> int:
    return int(sum(r["cost"].get(key) or 0 for r in table))


def _command(fields: Mapping[str, Any]) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in fields.items())


def _test_lines(test: Mapping[str, Any]) -> list[str]:
    interval = test.get("interval")
    span = f", 95% interval [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
    n = f" over {test['n_test']} test items" if test.get("n_test") else ""
    utility = _num(test.get("utility"))
    lines = [f"- test utility (reported once, for this trial alone): {utility}{span}{n}"]
    single, paired = test.get("best_single") or {}, test.get("vs_best_single")
    if paired:
        lo, hi = paired["interval"]
        lines.append(
            f"- vs the best single expert on dev ({single.get('name')}, test "
            f"{_num(single.get('test_utility'))}): {paired['difference']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}] on the same {paired['items']} items, paired bootstrap: "
            f"{verdict(paired)}"
        )
    return lines


def _pruning_lines(table, options) -> list[str]:
    if not options.prune:
        return ["- pruning: off (`--prune` stops trials below the median of earlier ones)"]
    pruned = [r for r in table if r["status"] == PRUNED]
    complete = [r for r in table if r["status"] == COMPLETE and r["evaluations"]]
    line = (
        f"- pruning: MedianPruner after {options.prune_startup} finished trials and "
        f"{options.prune_warmup} iterations; {len(pruned)} trials pruned"
    )
    if pruned and complete:
        mean = sum(r["evaluations"] for r in complete) / len(complete)
        spent = _total(pruned, "evaluations")
        saved = max(0.0, len(pruned) * mean - spent)
        whole = _total(table, "evaluations") + saved
        line += (
            f", after {spent} evaluations instead of about {len(pruned) * mean:.0f} (the "
            f"complete trials' mean, {mean:.1f}): about {saved:.0f} evaluations saved, "
            f"{saved / whole:.0%} of what the sweep would have spent"
        )
    return [line]


def markdown(study_name: str, table, options, storage: str, fields_of) -> str:
    best, ties = best_row(table)
    counts = {s: sum(r["status"] == s for r in table) for s in slots_lib.STATUSES}
    finished = counts[COMPLETE] + counts[PRUNED] + counts[FAILED]
    lines = [
        f"# Sweep `{study_name}`",
        "",
        f"{finished} of {options.trials} trials finished: {counts[COMPLETE]} complete, "
        f"{counts[PRUNED]} pruned, {counts[FAILED]} failed; {counts[RUNNING]} running, "
        f"{counts[QUEUED] + counts[RETRY]} to run again after a failure. Storage: {storage}; "
        f"sampler: {options.sampler}; objective: the run's dev utility, maximised.",
        "",
        "## The chosen trial (on dev only)",
        "",
    ]
    if best is None:
        lines += ["No trial has finished yet.", ""]
    else:
        tie = f" ({ties} trials share it: the lowest slot is taken)" if ties > 1 else ""
        shown = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        lines += [
            f"- slot {best['slot']} (trial {best['trial']}), dev utility "
            f"{_num(best['dev_utility'])}{tie}: {shown}",
            *_test_lines(best["test"] or {}),
            f"- its run: `{best['workdir']}` (results.json); the same run by hand: "
            "`python -m launch.main` with the sweep's --config and its overrides, and "
            f"`{_command(fields_of(best['params']))}`",
            "",
        ]
    lines += [
        "## What the choice cost",
        "",
        f"- {len(table)} trials, {_total(table, 'evaluations')} utility evaluations on dev in all "
        f"(pruned and failed trials up to where they stopped), "
        f"{_cost_total(table, 'generate_calls')} generate calls, "
        f"{_cost_total(table, 'prompt_tokens')} prompt + "
        f"{_cost_total(table, 'generated_tokens')} generated tokens (complete trials), "
        f"{sum(r['seconds'] or 0 for r in table):.0f} s of runs",
        *_pruning_lines(table, options),
        "",
        "## Trials",
        "",
    ]
    names = list(table[0]["params"]) if table else []
    head = [
        "slot",
        "trial",
        "status",
        "retries",
        *names,
        "dev utility",
        "evaluations",
        "iterations",
        "seconds",
        "workdir",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [
            r["slot"],
            r["trial"],
            r["status"] + (f" ({r['error']})" if r["error"] else ""),
            r["retries"],
        ]
        cells += [r["params"].get(n, "") for n in names]
        cells += [
            _num(r["dev_utility"]),
            _num(r["evaluations"]),
            _num(r["iterations"]),
            _num(r["seconds"], 3),
            f"`{r['workdir']}`",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Dev utility: a complete trial's objective; a pruned trial's best when it stopped. "
        "Test utilities are not shown per trial: the choice is made on dev.",
        "",
        f"![optimisation history]({HISTORY_PNG})  ![hyperparameter importance]({IMPORTANCE_PNG})",
        "",
    ]
    return "\n".join(lines)


def csv_text(table) -> str:
    names = list(table[0]["params"]) if table else []
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "slot",
            "trial",
            "status",
            "retries",
            *names,
            "dev_utility",
            "evaluations",
            "iterations",
            "seconds",
            "generate_calls",
            "prompt_tokens",
            "generated_tokens",
            "workdir",
            "worker",
            "error",
        ]
    )
    for r in table:
        c = r["cost"]
        writer.writerow(
            [
                r["slot"],
                r["trial"],
                r["status"],
                r["retries"],
                *[r["params"].get(n, "") for n in names],
                r["dev_utility"],
                r["evaluations"],
                r["iterations"],
                r["seconds"],
                c.get("generate_calls"),
                c.get("prompt_tokens"),
                c.get("generated_tokens"),
                r["workdir"],
                r["worker"],
                r["error"],
            ]
        )
    return out.getvalue()


# ----------------------------------------------------------------------------- pictures


def plot_history(table, path: Path) -> None:
    """Each slot's dev utility in slot order (pruned: its value when stopped), and the best
    so far."""
    import matplotlib.pyplot as plt  # after hs_jax.pipeline.plots chose the file-only backend
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    best_x, best_y, best = [], [], -math.inf
    for status, marker, color in ((COMPLETE, "o", "C0"), (PRUNED, "x", "0.5")):
        pts = [
            (r["slot"], r["dev_utility"])
            for r in table
            if r["status"] == status and r["dev_utility"] is not None
        ]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=color, label=status, zorder=3)
    for r in table:
        if r["status"] == COMPLETE and r["dev_utility"] is not None:
            best = max(best, r["dev_utility"])
            best_x.append(r["slot"])
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial (slot)")
    ax.set_ylabel("dev utility")
    ax.set_title("optimisation history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if best_x or any(r["status"] == PRUNED for r in table):
        ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def importances(study) -> tuple[dict[str, float], str]:
    """optuna's parameter importances (fANOVA) over the complete trials, or {} and why not."""
    import optuna

    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s): importance needs at least 2"
    values = {t.value for t in complete}
    if len(values) < 2:
        return {}, f"all {len(complete)} complete trials have the same dev utility"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except Exception as e:  # too few distinct parameter values, and the like
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {}, f"not computable: {first}"
    return dict(found), ""


def plot_importance(study, path: Path) -> dict[str, float]:
    import matplotlib.pyplot as plt

    found, why = importances(study)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if found:
        names = list(found)[::-1]
        ax.barh(names, [found[n] for n in names], color="C0")
        ax.set_xlabel("importance (fANOVA, share of the dev utility's variance)")
    else:
        ax.text(0.5, 0.5, f"hyperparameter importance: {why}", ha="center", va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title("hyperparameter importance")
    save_figure(fig, path)
    return found


# ----------------------------------------------------------------------------- the whole


def write(study, workdir: Path, options, storage: str, fields_of) -> dict[str, Any]:
    """Writes the sweep's report (module docstring) and returns what it says: 'line' (one
    line), 'text' (summary.md without its table), 'best' (the chosen slot's row or None),
    'best_dev', 'rows', 'importance', 'finished', 'evaluations'."""
    table = rows(study, options.max_retries)
    best, ties = best_row(table)
    text = markdown(study.study_name, table, options, storage, fields_of)
    workdir_lib.write_bytes(workdir / SUMMARY_MD, text.encode())
    workdir_lib.write_bytes(workdir / SUMMARY_CSV, csv_text(table).encode())
    plot_history(table, workdir / HISTORY_PNG)
    found = plot_importance(study, workdir / IMPORTANCE_PNG)
    evaluations = _total(table, "evaluations")
    if best is not None:
        workdir_lib.write_json(
            workdir / BEST_JSON,
            {
                **{
                    k: best[k]
                    for k in ("slot", "trial", "params", "dev_utility", "workdir", "test")
                },
                "fields": fields_of(best["params"]),
                "ties": ties,
                "trials": len(table),
                "evaluations": evaluations,
            },
        )
    finished = sum(slots_lib.done(r["status"]) for r in table)
    line = (
        f"{finished} of {options.trials} trials finished"
        + (
            f"; best slot {best['slot']} dev {_num(best['dev_utility'])}, test "
            f"{_num((best['test'] or {}).get('utility'))}"
            if best
            else ""
        )
        + f"; {evaluations} evaluations; {SUMMARY_MD} written"
    )
    return {
        "line": line,
        # What a person reads at the end: all but the table of trials.
        "text": text.split("## Trials")[0].rstrip() + f"\n\n(the trials: {workdir / SUMMARY_MD})",
        "best": best,
        "best_dev": None if best is None else best["dev_utility"],
        "rows": table,
        "importance": found,
        "finished": finished,
        "evaluations": evaluations,
    }
