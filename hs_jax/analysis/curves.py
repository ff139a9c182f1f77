"""Utility against budget, and the search's optimisation curves (the paper's Figure 12).

- Budget curves: every method's best-so-far dev utility against the number of utility
  evaluations it has made, read from its archive (archive.jsonl: one row per system scored on
  dev, in the order scored). An evaluation without a finite utility counts towards the budget
  but improves nothing; before the first finite one the curve has no value (NaN). One panel
  per task, one line per run, so methods given the same budget compare at every point of it.
- Optimisation curves: for a Heterogeneous Swarms run (a history of per-iteration records
  with 'role' / 'weight' step records holding the swarm's 'utilities'; some baselines record
  their iterations the same way, as `hs_jax.pipeline.report.curves` reads them), the best and mean
  utility of each step's candidates per iteration; an iteration where the step did not run has
  NaN (a gap in the line).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hs_jax.pipeline.plots import save_figure
from hs_jax.swarm import history as history_lib  # noqa: E402

STEPS = (("role", "role step"), ("weight", "weight step"))


def best_so_far(rows: Iterable[Mapping[str, Any]]) -> list[float]:
    """The best finite dev utility after each archived evaluation (NaN until there is one)."""
    out, best = [], -math.inf
    for r in rows:
        u = r.get("dev_utility")
        if u is not None and math.isfinite(float(u)):
            best = max(best, float(u))
        out.append(best if best > -math.inf else math.nan)
    return out


def budget_summary(curve: Sequence[float]) -> dict[str, Any]:
    """Evaluations, the final best, and the first evaluation (1-based) that reached it."""
    finite = [k for k, u in enumerate(curve) if math.isfinite(u)]
    if not finite:
        return {"evaluations": len(curve), "best": None, "reached_at": None}
    final = curve[-1]
    return {
        "evaluations": len(curve),
        "best": final,
        "reached_at": next(k + 1 for k, u in enumerate(curve) if u == final),
    }


def plot_budget(
    panels: Mapping[str, Sequence[tuple[str, Sequence[float]]]],
    path: str | os.PathLike,
    *,
    reference: Mapping[str, float] | None = None,
) -> str:
    """One panel per task (`panels`: task -> [(label, best-so-far curve)]), best-so-far dev
    utility against evaluations; `reference[task]` adds a dashed line (the best single expert's
    dev utility)."""
    tasks = list(panels)
    fig, axes = plt.subplots(
        1, max(1, len(tasks)), figsize=(5.5 * max(1, len(tasks)), 3.8), squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=False):
        for label, curve in panels[task]:
            ax.step(np.arange(1, len(curve) + 1), curve, where="post", label=label)
        if reference and task in reference and reference[task] is not None:
            ax.axhline(reference[task], linestyle="--", color="gray", label="best single (dev)")
        ax.set_title(task)
        ax.set_xlabel("utility evaluations")
        ax.set_ylabel("best dev utility so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def is_search_history(history: Any) -> bool:
    """Whether a results.json history has per-iteration role/weight step records (the
    Heterogeneous Swarms search's shape)."""
    return (
        isinstance(history, list)
        and bool(history)
        and all(isinstance(r, Mapping) and ("role" in r or "weight" in r) for r in history)
    )


def optimisation_curves(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """{'role step' | 'weight step': {'best': [...], 'mean': [...]}}, one value per
    iteration (NaN where the step did not run); steps absent from every record are left out."""
    out = {}
    for key, title in STEPS:
        series: dict[str, list[float]] = {"best": [], "mean": []}
        present = False
        for record in history:
            point = history_lib.step_stats(record, key)
            present |= point is not None
            best, mean, _ = point if point is not None else (math.nan,) * 3
            series["best"].append(best)
            series["mean"].append(mean)
        if present and any(math.isfinite(v) for v in series["best"]):
            out[title] = series
    return out
