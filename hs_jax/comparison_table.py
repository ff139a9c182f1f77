"""The table of a comparison (`hs_jax.compare`): table.md, table.csv and comparison.png.

Built from cells.json's entries and each finished cell's results.json, so it can be rewritten
from the files alone (`write_tables`). Rows are methods, grouped by `MethodSpec.family` in the
paper's Table 1 order (`FAMILY_ORDER`; families it does not name follow, in order of first
appearance); columns are tasks.

A method's cell on a task:
- its best system's test utility. With one seed: that run's utility and its 95% bootstrap
  interval over test items (results.json `best_system.test_interval`). With several seeds:
  the mean ± sample sd over seeds, and the bootstrap interval of the pooled per-item test
  scores of all seeds (`stats.interval`; its center is the mean over seeds when the seeds have
  as many test items), which covers the items' noise, while the sd shows the seeds';
- in bold: the best mean on the task (ties all bold);
- † (‡): significantly better (worse) than the run's best single expert, p < `ALPHA` by the
  paired bootstrap over test items (results.json `vs_best_single` with one seed; with several,
  the paired bootstrap of the pooled item scores, each seed's system paired with its own best
  single on its own items);
- a cell without a result says why: 'n/a: <reason>' (the method does not apply), 'failed:
  <error>' or 'pending' (not run yet: a comparison killed before it); a result from fewer
  seeds than planned says 'k/n seeds'.
Then the average rank over the tasks the method has a result on (1 = best; ties share the
mean rank) and the costs, as the mean per run over the method's finished runs: utility
evaluations on dev, generate calls, prompt + generated tokens (every generation the engine
made, results.json `cost`) and wall seconds.

"vs random search": each method's test item scores minus the random-search control's
(`CONTROL`), same task, same seed, by the paired bootstrap (`stats.paired`): difference, 95%
interval, p. With several common seeds the seeds' items are pooled, each pair kept; a method
run once (with the config's seed) is paired with the control's run of that seed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hs_jax import stats
from hs_jax import workdir as workdir_lib

FAMILY_ORDER = (
    "trivial",
    "static weight",
    "dynamic weight",
    "ensemble",
    "static role",
    "dynamic role",
    "heterogeneous swarms",
    "control",
    "ablation",
)
CONTROL = "random_search"
ALPHA = 0.05
# Utilities closer than this are tied: methods report float32 or float64 means of the same item
# scores (0.3166666627 vs 0.3166666667 for 19/60), while two different utilities over at most
# 10^5 items differ by at least 1e-5.
TIE = 1e-6
REASON_WIDTH = 80
TABLE_MD, TABLE_CSV, PLOT = "table.md", "table.csv", "comparison.png"
COSTS = ("evaluations", "generate_calls", "prompt_tokens", "generated_tokens", "seconds")

Key = tuple[str, str, int]  # (method, task, seed)


@dataclasses.dataclass(frozen=True)
class Summary:
    """One method on one task over its finished seeds (module docstring)."""

    seeds: tuple[int, ...]
    planned: int
    mean: float
    sd: float
    interval: tuple[float, float] | None
    vs_single: dict[str, Any] | None
    costs: dict[str, float]


# ----------------------------------------------------------------------------- reading


def _number(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else float("nan")


def _mean(values: Sequence[float]) -> float:
    """The mean of the finite values, NaN when there is none."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _system_items(r: Mapping[str, Any]) -> list[float]:
    return [float(x) for x in r["best_system"].get("test_item_scores") or []]


def _single_items(r: Mapping[str, Any]) -> list[float]:
    rows = (r.get("single_experts") or {}).get("test_item_scores") or []
    best = (r.get("best_single") or {}).get("expert")
    return [float(x) for x in rows[best]] if isinstance(best, int) and best < len(rows) else []


def run_costs(r: Mapping[str, Any]) -> dict[str, float]:
    cost = r.get("cost") or {}
    return {
        "evaluations": _number(r.get("evaluations")),
        "generate_calls": _number(cost.get("generate_calls")),
        "prompt_tokens": _number(cost.get("prompt_tokens")),
        "generated_tokens": _number(cost.get("generated_tokens")),
        "seconds": _number(r.get("seconds")),
    }


def load_results(workdir: Path, entries: Sequence[Mapping[str, Any]]) -> dict[Key, dict]:
    """results.json of every finished cell, by (method, task, seed)."""
    out = {}
    for e in entries:
        if e["status"] == "done":
            r = workdir_lib.read_json(Path(workdir) / e["workdir"] / workdir_lib.RESULTS_JSON)
            if r is not None:
                out[(e["method"], e["task"], int(e["seed"]))] = r
    return out


# ----------------------------------------------------------------------------- numbers


def _pooled(runs: Sequence[Mapping[str, Any]], items) -> list[float] | None:
    """The runs' per-item scores end to end, or None when a run has none."""
    parts = [items(r) for r in runs]
    return [x for p in parts for x in p] if all(parts) else None


def summarize(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], planned: int) -> Summary:
    """A method's finished runs of one task (one per seed, in seed order)."""
    utilities = [_number(r["best_system"].get("test_utility")) for r in runs]
    mean, sd = stats.mean_and_spread(utilities)
    if len(runs) == 1:
        interval = runs[0]["best_system"].get("test_interval")
        interval = tuple(interval) if interval else None
        vs_single = runs[0].get("vs_best_single")
    else:
        system, single = _pooled(runs, _system_items), _pooled(runs, _single_items)
        interval = stats.interval(system) if system else None
        vs_single = None
        if system and single and len(system) == len(single):
            vs_single = stats.paired(system, single).as_dict()
    costs = {k: _mean([run_costs(r)[k] for r in runs]) for k in COSTS}
    return Summary(tuple(seeds), planned, mean, sd, interval, vs_single, costs)


def vs_control(
    method_runs: Mapping[int, Mapping[str, Any]], control_runs: Mapping[int, Mapping[str, Any]]
) -> tuple[stats.Paired | None, list[int]]:
    """The paired bootstrap of a method's test items vs the control's over their common seeds
    (items pooled, pairs kept); None when no seed pairs up (no run, or other items)."""
    seeds = [
        s
        for s in sorted(set(method_runs) & set(control_runs))
        if _system_items(method_runs[s])
        and len(_system_items(method_runs[s])) == len(_system_items(control_runs[s]))
    ]
    if not seeds:
        return None, []
    a = [x for s in seeds for x in _system_items(method_runs[s])]
    b = [x for s in seeds for x in _system_items(control_runs[s])]
    return stats.paired(a, b), seeds


def ranks(means: Mapping[str, float]) -> dict[str, float]:
    """1 = highest; tied methods share the mean of their ranks; NaN means are not ranked."""
    finite = {m: v for m, v in means.items() if np.isfinite(v)}
    out = {}
    for m, v in finite.items():
        above = sum(w > v + TIE for w in finite.values())
        tied = sum(abs(w - v) <= TIE for w in finite.values())
        out[m] = above + (tied + 1) / 2.0
    return out


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Table:
    """Everything the files show, computed once."""

    methods: list[str]
    families: dict[str, str]
    summaries: dict[str, str]
    tasks: list[str]
    cells: dict[tuple[str, str], Summary]  # (method, task) with a result
    missing: dict[tuple[str, str], str]  # (method, task) without one: why
    best: dict[str, float]
    avg_rank: dict[str, float]
    costs: dict[str, dict[str, float]]
    control: dict[tuple[str, str], tuple[stats.Paired | None, list[int]]]
    has_control: bool


def _family_key(families: Sequence[str]):
    seen = list(dict.fromkeys(families))

    def key(family: str) -> tuple[int, int]:
        if family in FAMILY_ORDER:
            return (0, FAMILY_ORDER.index(family))
        return (1, seen.index(family))

    return key


def _missing_text(group: Sequence[Mapping[str, Any]]) -> str:
    for status, label in (("not_applicable", "n/a"), ("failed", "failed")):
        reasons = [e.get("reason") or "" for e in group if e["status"] == status]
        if reasons:
            return f"{label}: {reasons[0]}"
    return "pending"


def build(entries: Sequence[Mapping[str, Any]], results: Mapping[Key, Mapping]) -> Table:
    """The table of cells.json's `entries` and the finished cells' `results`."""
    methods = list(dict.fromkeys(e["method"] for e in entries))
    families = {e["method"]: e.get("family") or "?" for e in entries}
    summaries_of = {e["method"]: e.get("summary") or "" for e in entries}
    fam_key = _family_key([families[m] for m in methods])
    methods.sort(key=lambda m: fam_key(families[m]))  # stable within a family
    task_list = list(dict.fromkeys(e["task"] for e in entries))
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["method"], e["task"]), []).append(e)

    cells, missing = {}, {}
    for (m, t), group in groups.items():
        seeds = sorted(int(e["seed"]) for e in group if (m, t, int(e["seed"])) in results)
        if seeds:
            cells[(m, t)] = summarize([results[(m, t, s)] for s in seeds], seeds, len(group))
        else:
            missing[(m, t)] = _missing_text(group)

    best, per_task_ranks = {}, {}
    for t in task_list:
        means = {m: cells[(m, t)].mean for m in methods if (m, t) in cells}
        finite = [v for v in means.values() if np.isfinite(v)]
        best[t] = max(finite) if finite else float("nan")
        per_task_ranks[t] = ranks(means)
    avg_rank = {}
    for m in methods:
        rs = [per_task_ranks[t][m] for t in task_list if m in per_task_ranks[t]]
        avg_rank[m] = float(np.mean(rs)) if rs else float("nan")
    costs = {}
    for m in methods:
        runs = [r for (mm, _, _), r in results.items() if mm == m]
        costs[m] = {k: _mean([run_costs(r)[k] for r in runs]) for k in COSTS}

    has_control = any(e["method"] == CONTROL for e in entries)
    control = {}
    for m in methods:
        if m == CONTROL:
            continue
        for t in task_list:
            mine = {s: r for (mm, tt, s), r in results.items() if mm == m and tt == t}
            theirs = {s: r for (mm, tt, s), r in results.items() if mm == CONTROL and tt == t}
            control[(m, t)] = vs_control(mine, theirs)
    return Table(
        methods, families, summaries_of, task_list, cells, missing, best, avg_rank, costs,
        control, has_control,
    )  # fmt: skip


# ----------------------------------------------------------------------------- text


def _short(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 3] + "..."


def _num(x: float, digits: int = 0) -> str:
    if not np.isfinite(x):
        return "—"
    if float(x).is_integer():
        return f"{int(x)}"
    return f"{x:.{max(digits, 1)}f}"


def _rank(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "—"


def _marker(s: Summary) -> str:
    v = s.vs_single
    if not v or v.get("p_value") is None or v["p_value"] >= ALPHA:
        return ""
    return " †" if v["difference"] > 0 else (" ‡" if v["difference"] < 0 else "")


def utility_text(table: Table, method: str, task: str, *, markdown: bool = True) -> str:
    """One cell of the utility table (module docstring)."""
    s = table.cells.get((method, task))
    if s is None:
        return _short(table.missing.get((method, task), ""))
    value = "n/a" if not np.isfinite(s.mean) else f"{s.mean:.3f}"
    if len(s.seeds) > 1 and np.isfinite(s.sd):
        value += f" ± {s.sd:.3f}"
    if markdown and np.isfinite(s.mean) and abs(s.mean - table.best[task]) <= TIE:
        value = f"**{value}**"
    if s.interval:
        value += f" [{s.interval[0]:.3f}, {s.interval[1]:.3f}]"
    value += _marker(s)
    if len(s.seeds) < s.planned:
        value += f" ({len(s.seeds)}/{s.planned} seeds)"
    return value


def control_text(table: Table, method: str, task: str) -> str:
    paired, seeds = table.control.get((method, task), (None, []))
    if paired is None:
        if (method, task) not in table.cells:
            return "—"
        return "no paired control run"
    lo, hi = paired.interval
    seeds_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds"
    return (
        f"{paired.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {paired.p_value:.3g} ({seeds_text})"
    )


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(table: Table) -> str:
    """table.md: the utility table, the legend, the 'vs random search' section."""
    head = ["family", "method", *table.tasks, "avg rank", "evaluations", "generate calls",
            "tokens (prompt + generated)", "seconds"]  # fmt: skip
    lines = [
        "# Method comparison",
        "",
        f"Tasks: {', '.join(table.tasks)}. Test utility of each method's best system "
        "(hs_jax.comparison_table).",
        "",
        "## Test utility",
        "",
        _row(head),
        _row(["---", "---", *["---"] * len(table.tasks), *["---:"] * 5]),
    ]
    previous = None
    for m in table.methods:
        family = table.families[m] if table.families[m] != previous else ""
        previous = table.families[m]
        c = table.costs[m]
        tokens = (
            f"{_num(c['prompt_tokens'])} + {_num(c['generated_tokens'])}"
            if np.isfinite(c["prompt_tokens"])
            else "—"
        )
        lines.append(
            _row([
                family, m,
                *[utility_text(table, m, t) for t in table.tasks],
                _rank(table.avg_rank[m]), _num(c["evaluations"], 1),
                _num(c["generate_calls"]), tokens, f"{c['seconds']:.1f}"
                if np.isfinite(c["seconds"]) else "—",
            ])
        )  # fmt: skip
    lines += [
        "",
        "Each cell: test utility with its 95% bootstrap interval over test items; with several "
        "seeds, mean ± sd over seeds and the interval of the seeds' pooled item scores. Bold: "
        f"best on the task. † / ‡: better / worse than the run's best single expert, paired "
        f"bootstrap p < {ALPHA}. Costs: mean per finished run (utility evaluations on dev, "
        "every generate call and token, wall seconds). 'k/n seeds': k of n runs finished.",
        "",
        "Methods: "
        + "; ".join(f"`{m}`: {table.summaries[m] or table.families[m]}" for m in table.methods)
        + ".",
        "",
        "## vs random search",
        "",
    ]
    if not table.has_control:
        lines.append(f"The control `{CONTROL}` is not in this comparison.")
        return "\n".join(lines) + "\n"
    lines += [
        "Test utility minus the random-search control's, same task and seed: difference, 95% "
        "interval and p of the paired bootstrap over test items.",
        "",
        _row(["family", "method", *table.tasks]),
        _row(["---", "---", *["---"] * len(table.tasks)]),
    ]
    previous = None
    for m in table.methods:
        if m == CONTROL:
            continue
        family = table.families[m] if table.families[m] != previous else ""
        previous = table.families[m]
        lines.append(_row([family, m, *[control_text(table, m, t) for t in table.tasks]]))
    return "\n".join(lines) + "\n"


def csv_text(table: Table) -> str:
    """table.csv: one row per method, numbers unformatted (NaN and missing left empty)."""

    def v(x: Any) -> Any:
        return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else x

    head = ["method", "family", "summary"]
    for t in table.tasks:
        head += [t, f"{t}_sd", f"{t}_lo", f"{t}_hi", f"{t}_seeds", f"{t}_p_vs_best_single",
                 f"{t}_status", f"{t}_vs_random_difference", f"{t}_vs_random_lo",
                 f"{t}_vs_random_hi", f"{t}_vs_random_p"]  # fmt: skip
    head += ["avg_rank", *COSTS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for m in table.methods:
        row = [m, table.families[m], table.summaries[m]]
        for t in table.tasks:
            s = table.cells.get((m, t))
            paired, _ = table.control.get((m, t), (None, []))
            if s is None:
                row += ["", "", "", "", 0, "", table.missing.get((m, t), "")]
            else:
                lo, hi = s.interval or (None, None)
                p = (s.vs_single or {}).get("p_value")
                row += [v(s.mean), v(s.sd), v(lo), v(hi), len(s.seeds), v(p), "done"]
            if paired is None:
                row += ["", "", "", ""]
            else:
                row += [paired.difference, *paired.interval, paired.p_value]
        row += [v(table.avg_rank[m]), *[v(table.costs[m][k]) for k in COSTS]]
        writer.writerow(row)
    return out.getvalue()


# ----------------------------------------------------------------------------- the picture


def plot(table: Table, path: str | Path) -> None:
    """comparison.png: one panel per task, a bar per method (colored by family) with its
    interval."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    n = max(len(table.tasks), 1)
    cols = min(n, 3)
    rows = -(-n // cols)
    width = max(4.0, 0.45 * len(table.methods) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False)
    fams = list(dict.fromkeys(table.families[m] for m in table.methods))
    colors = {f: plt.cm.tab10(k % 10) for k, f in enumerate(fams)}
    x = np.arange(len(table.methods))
    for k, t in enumerate(table.tasks):
        ax = axes[k // cols][k % cols]
        heights, low, high = [], [], []
        for m in table.methods:
            s = table.cells.get((m, t))
            h = s.mean if s is not None and np.isfinite(s.mean) else 0.0
            lo, hi = s.interval if s is not None and s.interval else (h, h)
            heights.append(h)
            low.append(max(h - lo, 0.0))
            high.append(max(hi - h, 0.0))
        ax.bar(x, heights, color=[colors[table.families[m]] for m in table.methods])
        ax.errorbar(x, heights, yerr=[low, high], fmt="none", ecolor="black", capsize=3)
        ax.axhline(0.0, color="gray", linewidth=0.5)
        for i, m in enumerate(table.methods):
            if (m, t) not in table.cells:
                ax.text(i, 0.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_xticks(x, table.methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(t)
        ax.set_ylabel("test utility")
    for k in range(len(table.tasks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f]) for f in fams]
    fig.legend(handles, fams, loc="lower center", ncol=min(len(fams), 5), fontsize=8)
    fig.tight_layout(rect=(0.0, 0.1 / rows, 1.0, 1.0))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tables(workdir: str | Path, entries: Sequence[Mapping[str, Any]]) -> Table:
    """table.md, table.csv and comparison.png in `workdir`, each written atomically."""
    workdir = Path(workdir)
    table = build(entries, load_results(workdir, entries))
    workdir_lib.write_bytes(workdir / TABLE_MD, markdown(table).encode("utf-8"))
    workdir_lib.write_bytes(workdir / TABLE_CSV, csv_text(table).encode("utf-8"))
    with workdir_lib.atomic_path(workdir / PLOT) as tmp:
        plot(table, tmp)
    return table
