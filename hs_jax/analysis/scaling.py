"""Test utility against the expert pool: its size (the paper's Figure 6) and its diversity
(Figure 5).

Runs are grouped by task and method; within a group, by a property of the pool results.json
records (`experts`, the pool's names):

- pool size: the number of experts;
- diversity: "a x b" for a pool of a distinct experts each present b times (the paper's 1x10,
  2x5, 5x2, 10x1), read from the names: a PEFT pool's names are its folder names, so a folder
  listed twice is one expert repeated. A pool whose size a does not divide is "a of n".

Pool size is compared over pools of distinct experts, diversity at a fixed pool size (the
paper's 10); a group is tabled only when its runs differ in that property. Each point is the
mean test utility of its runs (seeds) with an interval: one run, its 95% bootstrap interval
over test items (results.json `best_system.test_interval`); several runs, mean +- one standard
deviation over them (`hs_jax.stats.mean_and_spread`). The best single expert's mean test
utility is shown alongside.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402

from hs_jax import stats  # noqa: E402
from hs_jax.pipeline.plots import save_figure


def pool_size(results: Mapping[str, Any]) -> tuple[int, str]:
    """(sort key, label) of a run's pool size."""
    n = len(results["experts"])
    return n, str(n)


def diversity(results: Mapping[str, Any]) -> tuple[int, str]:
    """(sort key, label) of a run's pool diversity: 'a x b' (module docstring)."""
    names = list(results["experts"])
    a, n = len(set(names)), len(names)
    return a, (f"{a}x{n // a}" if a and n % a == 0 else f"{a} of {n}")


def _distinct(results: Mapping[str, Any]) -> bool:
    return len(set(results["experts"])) == len(results["experts"])


def _point(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tests = [r["best_system"].get("test_utility") for r in group]
    singles = [r.get("best_single", {}).get("test_utility") for r in group]
    mean, sd = stats.mean_and_spread(tests)
    if len(group) == 1:
        interval = group[0]["best_system"].get("test_interval")
        kind = "bootstrap 95%"
    else:
        interval = [mean - sd, mean + sd]
        kind = "mean +- sd"
    single_mean, _ = stats.mean_and_spread(singles)
    return {
        "runs": len(group),
        "test_utility": mean,
        "interval": list(interval) if interval is not None else None,
        "interval_kind": kind,
        "best_single_test": single_mean,
    }


def _table(runs, group: Callable, key: Callable) -> list[dict[str, Any]]:
    """One row per group and key value, for the groups (`group(run)`: a tuple of fields, or
    None to leave the run out) whose runs differ in `key`."""
    groups: dict[tuple, dict[tuple[int, str], list]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        g = group(r)
        if g is not None:
            groups[g][key(r)].append(r)
    rows = []
    for g, by_key in sorted(groups.items()):
        if len(by_key) < 2:
            continue
        for (order, label), members in sorted(by_key.items()):
            rows.append({**dict(g), "key": label, "order": order, **_point(members)})
    return rows


def pool_size_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Figure 6: per task and method, a row per pool size, over pools of distinct experts
    (a pool with repeats belongs to the diversity study)."""
    return _table(
        runs,
        lambda r: (("task", r["task"]), ("method", r["method"])) if _distinct(r) else None,
        pool_size,
    )


def diversity_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Figure 5: per task, method and pool size (fixed, as in the paper), a row per diversity."""
    return _table(
        runs,
        lambda r: (("task", r["task"]), ("method", r["method"]), ("experts", len(r["experts"]))),
        diversity,
    )


def plot(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, xlabel: str) -> str:
    """One panel per task: test utility (with its interval) against the key, one line per
    method, and the best single expert dashed."""
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(
        1, max(1, len(tasks)), figsize=(5 * max(1, len(tasks)), 3.8), squeeze=False
    )
    for ax, task in zip(axes[0], tasks, strict=False):
        mine = [r for r in rows if r["task"] == task]
        labels = sorted({(r["order"], r["key"]) for r in mine})
        x_of = {lab: k for k, (_, lab) in enumerate(labels)}
        for series in sorted({(r["method"], r.get("experts")) for r in mine}, key=str):
            method, experts = series
            pts = [r for r in mine if (r["method"], r.get("experts")) == series]
            name = method if experts is None else f"{method}, {experts} experts"
            xs = [x_of[r["key"]] for r in pts]
            ys = [r["test_utility"] for r in pts]
            lo = [y - (r["interval"] or [y, y])[0] for y, r in zip(ys, pts, strict=True)]
            hi = [(r["interval"] or [y, y])[1] - y for y, r in zip(ys, pts, strict=True)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=name)
            ax.plot(
                xs,
                [r["best_single_test"] for r in pts],
                linestyle="--",
                color="gray",
                label=f"best single ({name})",
            )
        ax.set_xticks(range(len(labels)), [lab for _, lab in labels])
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test utility")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)
