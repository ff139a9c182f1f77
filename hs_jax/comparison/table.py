"""The table of a comparison (`hs_jax.comparison.compare`): table.md, table.csv, comparison.png,
answers.png.

Built from cells.json's entries and each finished cell's results.json, so it can be rewritten
from the files alone (`write_tables`). Rows are methods, grouped by `MethodSpec.family` in the
paper's Table 1 order (`FAMILY_ORDER`; families it does not name follow, in order of first
appearance); columns are tasks.

The unit of replication is the seed. A method's cell on a task:
- its best system's test utility: with one seed, that run's utility and the 95% bootstrap
  interval over its test items; with several, the mean over seeds ± the sd over seeds and the
  interval of `stats.interval_over_seeds` (a two-level bootstrap, seeds then items, with a
  Student t reference over the seeds: pooling every seed's items as one sample ignores the
  seed-to-seed variance, which dominates here);
- in bold: the best mean among the cells of the task with the same seeds and the same test
  items (ties all bold); the average rank compares the same cells only (a cell alone in its
  group is neither bold nor ranked). When a task's cells differ in seeds, each cell says its
  seeds and the notes list the groups;
- † (‡): better (worse) than the run's best single expert: `stats.paired_over_seeds` over
  the seeds (each seed's system paired item by item with that seed's best single expert),
  p < `ALPHA` after Holm's correction over every such comparison of the table;
- a cell without a result says why: 'n/a: <reason>' (the method does not apply), 'failed:
  <error>' or 'pending' (not run yet: a comparison killed before it); a result from fewer
  seeds than planned says 'k/n seeds'.
Then the costs, as the mean per run over the method's finished runs: utility evaluations on
dev, generate calls, prompt + generated tokens (every generation the engine made, results.json
`cost`) and wall seconds.

One section per control in the comparison (`CONTROLS`: random search over the search's space,
self-consistency at the search's generated tokens, a constant answer): each method's test item
scores minus the control's, paired by seed and item over their common seeds
(`stats.paired_over_seeds`): difference, 95% interval, raw p and Holm-adjusted p over the
section's comparisons. The best-single section shows the same for the markers' tests.

Diagnostics (results.json `diagnostics`, `hs_jax.pipeline.diagnostics`): the share of the most
common final answer (a collapsed system is flagged), per-type utilities, the meta-agent designer's
fallback rate, DARE-TIES' relative SVD error, the single experts' dev utilities, the pool's
overlap with the scored items, self-consistency's samples and tokens; answers.png draws the
answer shares against the gold answers' most common share.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hs_jax import stats
from hs_jax.pipeline.plots import save_figure
from hs_jax.store import workdir as workdir_lib

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
# The controls every comparison holds, each with its own section when it is in the comparison.
CONTROLS = ("random_search", "self_consistency", "constant_answer")
CONTROL = CONTROLS[0]
ALPHA = 0.05
# Utilities closer than this are tied: methods report float32 or float64 means of the same item
# scores (0.3166666627 vs 0.3166666667 for 19/60), while two different utilities over at most
# 10^5 items differ by at least 1e-5.
TIE = 1e-6
REASON_WIDTH = 80
TABLE_MD, TABLE_CSV, PLOT, ANSWERS_PLOT = "table.md", "table.csv", "comparison.png", "answers.png"
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
    vs_single: stats.Paired | None
    costs: dict[str, float]
    items: tuple[str, ...]  # one signature of the test items per seed
    diagnostics: dict[str, Any]

    @property
    def group(self) -> tuple:
        """Cells with the same group are compared (bold, ranks): same seeds, same items."""
        return (self.seeds, self.items)


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


def items_signature(r: Mapping[str, Any]) -> str:
    """What identifies a run's test items: its task and the ids in scoring order (results.json
    `test_ids`; older results: the item count)."""
    ids = r.get("test_ids")
    blob = json.dumps([r.get("task"), ids if ids is not None else len(_system_items(r))])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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


def _collapsed_answer(answers: Mapping[str, Any]) -> tuple[str | None, float]:
    """A collapsed system's one answer and its share: of the items, or, where it collapsed on
    its readable answers ("Yes" to every yes/no question, unreadable text to the rest), of
    those (`diagnostics.answer_distribution`)."""
    if answers.get("collapsed_on") == "readable":
        return answers["read_top"], float(answers["read_top_share"])
    return answers["top"], float(answers["top_share"])


def _diagnostics(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The runs' diagnostics, summarised over seeds: the mean top-answer share, the seeds whose
    system collapsed, the mean per-type utilities, the method numbers' means."""
    diags = [r.get("diagnostics") or {} for r in runs]
    out: dict[str, Any] = {}
    answers = [d.get("answers") for d in diags]
    if answers and all(answers):
        out["top_share"] = float(np.mean([a["top_share"] for a in answers]))
        out["top"] = sorted({str(a["top"]) for a in answers if a["top"] is not None}) or [
            "nothing readable"
        ]
        collapsed = [(r, a) for r, a in zip(runs, answers, strict=True) if a.get("collapsed")]
        out["collapsed_seeds"] = [int(r["seed"]) for r, _ in collapsed]
        if collapsed:  # what the collapsed seeds answer, and how often (not all seeds' mean)
            out["collapsed_top"] = sorted({str(_collapsed_answer(a)[0]) for _, a in collapsed})
            out["collapsed_share"] = float(np.mean([_collapsed_answer(a)[1] for _, a in collapsed]))
            on_read = [a.get("collapsed_on") == "readable" for _, a in collapsed]
            out["collapsed_of"] = (
                "readable answers" if all(on_read) else "items or readable answers" if any(on_read)
                else "items"
            )  # fmt: skip
    gold = next((d.get("gold") for d in diags if d.get("gold")), None)
    if gold:
        out["gold"] = gold
    types: dict[str, list[float]] = {}
    for d in diags:
        for t, v in (d.get("per_type") or {}).items():
            types.setdefault(t, []).append(float(v["utility"]))
    if types:
        out["per_type"] = {t: float(np.mean(v)) for t, v in types.items()}
    for key in ("fallback_rate", "svd_rel_error_max", "svd_rel_error_mean"):
        values = [d[key] for d in diags if isinstance(d.get(key), int | float)]
        if values:
            out[key] = float(np.mean(values))
    return out


def summarize(runs: Sequence[Mapping[str, Any]], seeds: Sequence[int], planned: int) -> Summary:
    """A method's finished runs of one task (one per seed, in seed order)."""
    utilities = [_number(r["best_system"].get("test_utility")) for r in runs]
    mean, sd = stats.mean_and_spread(utilities)
    system = [_system_items(r) for r in runs]
    single = [_single_items(r) for r in runs]
    interval = None
    if len(runs) == 1:
        given = runs[0]["best_system"].get("test_interval")
        interval = tuple(given) if given else None
    elif all(system):
        interval = stats.interval_over_seeds(system)
    vs_single = None
    if all(system) and all(len(a) == len(b) for a, b in zip(system, single, strict=True)):
        vs_single = stats.paired_over_seeds(system, single)
    costs = {k: _mean([run_costs(r)[k] for r in runs]) for k in COSTS}
    items = tuple(items_signature(r) for r in runs)
    return Summary(
        tuple(seeds), planned, mean, sd, interval, vs_single, costs, items, _diagnostics(runs)
    )


def vs_control(
    method_runs: Mapping[int, Mapping[str, Any]], control_runs: Mapping[int, Mapping[str, Any]]
) -> tuple[stats.Paired | None, list[int]]:
    """A method's test items vs a control's, paired by seed and item over their common seeds
    with the same items (`stats.paired_over_seeds`); None when no seed pairs up."""
    seeds = [
        s
        for s in sorted(set(method_runs) & set(control_runs))
        if _system_items(method_runs[s])
        and items_signature(method_runs[s]) == items_signature(control_runs[s])
        and len(_system_items(method_runs[s])) == len(_system_items(control_runs[s]))
    ]
    if not seeds:
        return None, []
    a = [_system_items(method_runs[s]) for s in seeds]
    b = [_system_items(control_runs[s]) for s in seeds]
    return stats.paired_over_seeds(a, b), seeds


def ranks(means: Mapping[str, float]) -> dict[str, float]:
    """1 = highest; tied methods share the mean of their ranks; NaN means are not ranked."""
    finite = {m: v for m, v in means.items() if np.isfinite(v)}
    out = {}
    for m, v in finite.items():
        above = sum(w > v + TIE for w in finite.values())
        tied = sum(abs(w - v) <= TIE for w in finite.values())
        out[m] = above + (tied + 1) / 2.0
    return out


@dataclasses.dataclass(frozen=True)
class Test:
    """One paired comparison of the table, with its Holm-adjusted p."""

    paired: stats.Paired | None
    seeds: list[int]
    p_holm: float | None = None


def _adjust(tests: dict[Any, Test]) -> dict[Any, Test]:
    """The same tests with Holm-adjusted p over all of them (one family)."""
    keys = list(tests)
    raw = [tests[k].paired.p_value if tests[k].paired is not None else None for k in keys]
    adjusted = stats.holm(raw)
    return {k: dataclasses.replace(tests[k], p_holm=a) for k, a in zip(keys, adjusted)}


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
    best: dict[tuple[str, tuple], float]  # (task, group) -> the best mean of that group
    groups: dict[str, list[tuple]]  # task -> its cells' groups, largest first
    avg_rank: dict[str, float]
    costs: dict[str, dict[str, float]]
    vs_single: dict[tuple[str, str], Test]
    controls: dict[str, dict[tuple[str, str], Test]]  # control -> (method, task) -> test
    results: dict[Key, dict]


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


def _groups(cells: Mapping[tuple[str, str], Summary], task: str) -> list[tuple]:
    """The task's groups of comparable cells, the largest first (ties: more seeds first)."""
    count: dict[tuple, int] = {}
    for (_, t), s in cells.items():
        if t == task:
            count[s.group] = count.get(s.group, 0) + 1
    return sorted(count, key=lambda g: (-count[g], -len(g[0]), g[0]))


def build(entries: Sequence[Mapping[str, Any]], results: Mapping[Key, Mapping]) -> Table:
    """The table of cells.json's `entries` and the finished cells' `results`."""
    methods = list(dict.fromkeys(e["method"] for e in entries))
    families = {e["method"]: e.get("family") or "?" for e in entries}
    summaries_of = {e["method"]: e.get("summary") or "" for e in entries}
    fam_key = _family_key([families[m] for m in methods])
    methods.sort(key=lambda m: fam_key(families[m]))  # stable within a family
    task_list = list(dict.fromkeys(e["task"] for e in entries))
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        grouped.setdefault((e["method"], e["task"]), []).append(e)

    cells, missing = {}, {}
    for (m, t), group in grouped.items():
        seeds = sorted(int(e["seed"]) for e in group if (m, t, int(e["seed"])) in results)
        if seeds:
            cells[(m, t)] = summarize([results[(m, t, s)] for s in seeds], seeds, len(group))
        else:
            missing[(m, t)] = _missing_text(group)

    best, groups, per_task_ranks = {}, {}, {}
    for t in task_list:
        groups[t] = _groups(cells, t)
        per_task_ranks[t] = {}
        for g in groups[t]:
            means = {m: cells[(m, t)].mean for m in methods if cells.get((m, t), None) and
                     cells[(m, t)].group == g}  # fmt: skip
            finite = [v for v in means.values() if np.isfinite(v)]
            # A cell alone in its group is compared with nothing: no bold, no rank.
            best[(t, g)] = max(finite) if len(finite) > 1 else float("nan")
            if len(finite) > 1:
                per_task_ranks[t].update(ranks(means))
    avg_rank = {}
    for m in methods:
        rs = [per_task_ranks[t][m] for t in task_list if m in per_task_ranks[t]]
        avg_rank[m] = float(np.mean(rs)) if rs else float("nan")
    costs = {}
    for m in methods:
        runs = [r for (mm, _, _), r in results.items() if mm == m]
        costs[m] = {k: _mean([run_costs(r)[k] for r in runs]) for k in COSTS}

    vs_single = _adjust({
        key: Test(s.vs_single, list(s.seeds)) for key, s in cells.items()
    })  # fmt: skip
    controls = {}
    for control in CONTROLS:
        if not any(e["method"] == control for e in entries):
            continue
        tests = {}
        for m in methods:
            if m == control:
                continue
            for t in task_list:
                mine = {s: r for (mm, tt, s), r in results.items() if mm == m and tt == t}
                theirs = {s: r for (mm, tt, s), r in results.items() if mm == control and tt == t}
                tests[(m, t)] = Test(*vs_control(mine, theirs))
        controls[control] = _adjust(tests)
    return Table(
        methods, families, summaries_of, task_list, cells, missing, best, groups, avg_rank,
        costs, vs_single, controls, dict(results),
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


def seeds_text(seeds: Sequence[int]) -> str:
    seeds = sorted(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


def _marker(test: Test | None) -> str:
    if test is None or test.paired is None or test.p_holm is None or test.p_holm >= ALPHA:
        return ""
    d = test.paired.difference
    return " †" if d > 0 else (" ‡" if d < 0 else "")


def utility_text(table: Table, method: str, task: str, *, markdown: bool = True) -> str:
    """One cell of the utility table (module docstring)."""
    s = table.cells.get((method, task))
    if s is None:
        return _short(table.missing.get((method, task), ""))
    value = "n/a" if not np.isfinite(s.mean) else f"{s.mean:.3f}"
    if len(s.seeds) > 1 and np.isfinite(s.sd):
        value += f" ± {s.sd:.3f}"
    if markdown and np.isfinite(s.mean) and abs(s.mean - table.best[(task, s.group)]) <= TIE:
        value = f"**{value}**"
    if s.interval:
        value += f" [{s.interval[0]:.3f}, {s.interval[1]:.3f}]"
    value += _marker(table.vs_single.get((method, task)))
    if len(s.seeds) < s.planned:
        value += f" ({len(s.seeds)}/{s.planned} seeds)"
    if len(table.groups[task]) > 1:
        value += f" ({seeds_text(s.seeds)})"
    return value


def paired_text(test: Test | None, has_cell: bool) -> str:
    """A paired comparison: difference [interval], raw p, Holm p (seeds)."""
    if test is None or test.paired is None:
        return "no paired run" if has_cell else "—"
    paired = test.paired
    lo, hi = paired.interval
    holm = "" if test.p_holm is None else f", Holm {stats.format_p(test.p_holm)}"
    return (
        f"{paired.difference:+.3f} [{lo:+.3f}, {hi:+.3f}], {stats.format_p(paired.p_value)}"
        f"{holm} ({seeds_text(test.seeds)})"
    )


def control_text(table: Table, method: str, task: str, control: str = CONTROL) -> str:
    tests = table.controls.get(control, {})
    return paired_text(tests.get((method, task)), (method, task) in table.cells)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _group_notes(table: Table) -> list[str]:
    """One line per task whose cells differ in seeds or items."""
    lines = []
    for t in table.tasks:
        if len(table.groups[t]) < 2:
            continue
        parts = []
        for g in table.groups[t]:
            members = [m for m in table.methods if (m, t) in table.cells and
                       table.cells[(m, t)].group == g]  # fmt: skip
            parts.append(f"{seeds_text(g[0])}: {', '.join(members)}")
        lines.append(
            f"- {t}: cells differ in seeds (or items); bold and ranks compare within each group "
            f"only: " + "; ".join(parts) + "."
        )
    return lines


def _diagnostic_lines(table: Table) -> list[str]:
    """The notes that say what the utilities alone do not (module docstring)."""
    lines = []
    for t in table.tasks:
        runs = {m: r for (m, tt, _), r in sorted(table.results.items()) if tt == t}
        any_run = next(iter(runs.values()), None)
        if any_run is not None:
            dev = (any_run.get("single_experts") or {}).get("dev") or []
            names = any_run.get("experts") or [f"expert_{i}" for i in range(len(dev))]
            lines.append(
                f"- {t}: the single experts' dev utilities (every method sees them first, on "
                f"{any_run.get('n_dev', '?')} dev items): "
                + ", ".join(f"{n} {u:.3f}" for n, u in zip(names, dev))
                + "."
            )
        gold = next(
            (s.diagnostics["gold"] for (m, tt), s in table.cells.items() if tt == t
             and "gold" in s.diagnostics), None,
        )  # fmt: skip
        collapsed = []
        for m in table.methods:
            s = table.cells.get((m, t))
            if s is not None and s.diagnostics.get("collapsed_seeds"):
                d = s.diagnostics
                collapsed.append(
                    f"{m} ({seeds_text(d['collapsed_seeds'])}: "
                    f"'{'/'.join(d['collapsed_top'])}' for {d['collapsed_share']:.0%} of the "
                    f"{d.get('collapsed_of', 'items')})"
                )
        if collapsed:
            tail = (
                f"; the gold answers' most common one, '{gold['top']}', is "
                f"{gold['top_share']:.0%} of the test items"
                if gold
                else ""
            )
            lines.append(
                f"- {t}: collapsed systems (one answer for at least 90% of the test items, or "
                f"of the items it gave a readable answer to: a utility near a class frequency, "
                f"not reasoning): {', '.join(collapsed)}{tail}."
            )
        for m in table.methods:
            d = table.cells.get((m, t)) or Summary((), 0, 0, 0, None, None, {}, (), {})
            d = d.diagnostics
            if "fallback_rate" in d:
                lines.append(
                    f"- {t}: {m}'s designer proposals replaced by random DAGs (unparseable or "
                    f"repeated): {d['fallback_rate']:.0%}."
                )
            if "svd_rel_error_max" in d:
                lines.append(
                    f"- {t}: {m}'s merged delta run as a rank-r LoRA: relative SVD error mean "
                    f"{d['svd_rel_error_mean']:.3f}, max {d['svd_rel_error_max']:.3f}."
                )
        overlaps = [
            (m, s, r.get("train_overlap"))
            for (m, tt, s), r in sorted(table.results.items())
            if tt == t and r.get("train_overlap")
        ]
        if overlaps:
            bad = [
                f"{m} seed {s}: {o.get('dev')} dev / {o.get('test')} test"
                for m, s, o in overlaps
                if (o.get("dev") or 0) or (o.get("test") or 0)
            ]
            checks = sorted({str(o.get("checked")) for _, _, o in overlaps})
            lines.append(
                f"- {t}: items the pool was trained on, among the scored ones: "
                + ("; ".join(bad) if bad else f"0 in every cell ({', '.join(checks)})")
                + "."
            )
        for (m, tt, s), r in sorted(table.results.items()):
            details = r["best_system"].get("details") or {}
            if tt == t and m == "self_consistency" and "k" in details:
                target = details.get("target_tokens_per_item")
                mine = _number(details.get("test_tokens_per_item"))
                lines.append(
                    f"- {t}: self_consistency seed {s}: k = {details['k']} samples of the best "
                    f"single expert ({details.get('k_from', '?')}), {_num(mine, 1)} generated "
                    "tokens per test item"
                    + (f"; the hs run it controls for: {target:.1f}" if target else "")
                    + "."
                )
    return lines


def _per_type_section(table: Table) -> list[str]:
    types = {
        t: list(dict.fromkeys(
            k for (m, tt), s in table.cells.items() if tt == t
            for k in s.diagnostics.get("per_type", {})
        ))
        for t in table.tasks
    }  # fmt: skip
    columns = [(t, k) for t in table.tasks for k in types[t]]
    if not columns or all(len(types[t]) < 2 for t in table.tasks):
        return []
    lines = [
        "## Per question type and answers",
        "",
        "Test utility per question type (mean over seeds) and the share of the most common "
        "final answer (⚠: one answer for at least 90% of the items).",
        "",
        _row(["method", *[f"{t}: {k}" for t, k in columns],
              *[f"{t}: top answer" for t in table.tasks]]),
        _row(["---", *["---:"] * (len(columns) + len(table.tasks))]),
    ]  # fmt: skip
    for m in table.methods:
        row = [m]
        for t, k in columns:
            s = table.cells.get((m, t))
            v = s.diagnostics.get("per_type", {}).get(k) if s else None
            row.append("—" if v is None else f"{v:.3f}")
        for t in table.tasks:
            s = table.cells.get((m, t))
            d = s.diagnostics if s else {}
            if "top_share" in d:
                flag = " ⚠" if d.get("collapsed_seeds") else ""
                row.append(f"{'/'.join(d['top'])} {d['top_share']:.2f}{flag}")
            else:
                row.append("—")
        lines.append(_row(row))
    return [*lines, ""]


def _comparison_section(
    table: Table, title: str, intro: str, tests: Mapping[tuple[str, str], Test], skip: str = ""
) -> list[str]:
    lines = [f"## {title}", "", intro, "", _row(["family", "method", *table.tasks]),
             _row(["---", "---", *["---"] * len(table.tasks)])]  # fmt: skip
    previous = None
    for m in table.methods:
        if m == skip:
            continue
        family = table.families[m] if table.families[m] != previous else ""
        previous = table.families[m]
        lines.append(
            _row([family, m, *[paired_text(tests.get((m, t)), (m, t) in table.cells)
                               for t in table.tasks]])
        )  # fmt: skip
    return [*lines, ""]


def markdown(table: Table) -> str:
    """table.md: the utility table, the legend, one section per comparison, the diagnostics."""
    head = ["family", "method", *table.tasks, "avg rank", "evaluations", "generate calls",
            "tokens (prompt + generated)", "seconds"]  # fmt: skip
    lines = [
        "# Method comparison",
        "",
        f"Tasks: {', '.join(table.tasks)}. Test utility of each method's best system "
        "(hs_jax.comparison.table).",
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
        "Each cell: test utility with its 95% interval; one seed: the bootstrap over test items; "
        "several: mean ± sd over seeds and the two-level (seeds, then items) bootstrap interval "
        "with a t reference over the seeds. Bold: best among the cells with the same seeds and "
        "items. † / ‡: better / worse than the run's best single expert, paired by seed and "
        f"item, Holm-adjusted p < {ALPHA} over the table's {len(table.vs_single)} such "
        "comparisons. Costs: mean per finished run (utility evaluations on dev, every generate "
        "call and token, wall seconds). 'k/n seeds': k of n runs finished.",
        *_group_notes(table),
        "",
        "Methods: "
        + "; ".join(f"`{m}`: {table.summaries[m] or table.families[m]}" for m in table.methods)
        + ".",
        "",
    ]
    lines += _comparison_section(
        table, "vs the best single expert",
        "Test utility minus the run's best single expert's (chosen on dev), paired by seed and "
        "item: difference, 95% interval, raw p and Holm-adjusted p over this section.",
        table.vs_single,
    )  # fmt: skip
    for control, tests in table.controls.items():
        lines += _comparison_section(
            table, f"vs {control.replace('_', ' ')}",
            f"Test utility minus the control `{control}`'s, same task, paired by seed and item "
            "over the seeds both have: difference, 95% interval, raw p and Holm-adjusted p over "
            "this section's comparisons.",
            tests, skip=control,
        )  # fmt: skip
    absent = [c for c in CONTROLS if c not in table.controls]
    if absent:
        lines += [f"Controls not in this comparison: {', '.join(f'`{c}`' for c in absent)}.", ""]
    lines += _per_type_section(table)
    notes = _diagnostic_lines(table)
    if notes:
        lines += ["## Diagnostics", "", *notes, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def csv_text(table: Table) -> str:
    """table.csv: one row per method, numbers unformatted (NaN and missing left empty)."""

    def v(x: Any) -> Any:
        return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else x

    def test_columns(test: Test | None) -> list[Any]:
        if test is None or test.paired is None:
            return ["", "", "", "", ""]
        p = test.paired
        return [p.difference, *p.interval, p.p_value, v(test.p_holm)]

    head = ["method", "family", "summary"]
    for t in table.tasks:
        head += [
            t,
            f"{t}_sd",
            f"{t}_lo",
            f"{t}_hi",
            f"{t}_seeds",
            f"{t}_p_vs_best_single",
            f"{t}_p_holm_vs_best_single",
            f"{t}_top_answer_share",
            f"{t}_status",
        ]
        for control in table.controls:
            short = control.replace("_search", "").replace("_answer", "")
            head += [f"{t}_vs_{short}_{k}" for k in ("difference", "lo", "hi", "p", "p_holm")]
    head += ["avg_rank", *COSTS]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)
    for m in table.methods:
        row = [m, table.families[m], table.summaries[m]]
        for t in table.tasks:
            s = table.cells.get((m, t))
            if s is None:
                row += ["", "", "", "", 0, "", "", "", table.missing.get((m, t), "")]
            else:
                lo, hi = s.interval or (None, None)
                test = table.vs_single.get((m, t))
                p = test.paired.p_value if test and test.paired else None
                row += [v(s.mean), v(s.sd), v(lo), v(hi), len(s.seeds), v(p),
                        v(test.p_holm if test else None),
                        v(s.diagnostics.get("top_share")), "done"]  # fmt: skip
            for tests in table.controls.values():
                row += test_columns(tests.get((m, t)))
        row += [v(table.avg_rank[m]), *[v(table.costs[m][k]) for k in COSTS]]
        writer.writerow(row)
    return out.getvalue()


# ----------------------------------------------------------------------------- the pictures


def _panels(n: int, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    cols = min(max(n, 1), 3)
    rows = -(-max(n, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    return plt, fig, axes, cols


def plot(table: Table, path: str | Path) -> None:
    """comparison.png: one panel per task, a bar per method (colored by family) with its
    interval."""
    width = max(4.0, 0.45 * len(table.methods) + 1.5)
    plt, fig, axes, cols = _panels(len(table.tasks), width, 4.2)
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f]) for f in fams]
    rows = -(-max(len(table.tasks), 1) // cols)
    fig.legend(handles, fams, loc="lower center", ncol=min(len(fams), 5), fontsize=8)
    save_figure(fig, path, rect=(0.0, 0.1 / rows, 1.0, 1.0))


def plot_answers(table: Table, path: str | Path) -> bool:
    """answers.png: per task, each method's share of its most common final answer (mean over
    seeds), against the gold answers' most common share (what always answering it scores) and
    the collapse line. False (nothing written) when no cell has answers to count."""
    if not any("top_share" in s.diagnostics for s in table.cells.values()):
        return False
    height = max(3.0, 0.28 * len(table.methods) + 1.2)
    plt, fig, axes, cols = _panels(len(table.tasks), 5.5, height)
    y = np.arange(len(table.methods))
    for k, t in enumerate(table.tasks):
        ax = axes[k // cols][k % cols]
        shares, colors = [], []
        for m in table.methods:
            d = table.cells[(m, t)].diagnostics if (m, t) in table.cells else {}
            shares.append(d.get("top_share", 0.0))
            colors.append("tab:red" if d.get("collapsed_seeds") else "tab:blue")
        ax.barh(y, shares, color=colors)
        gold = next((s.diagnostics["gold"] for (m, tt), s in table.cells.items()
                     if tt == t and "gold" in s.diagnostics), None)  # fmt: skip
        if gold:
            ax.axvline(gold["top_share"], color="black", linestyle="--", linewidth=1,
                       label=f"gold '{gold['top']}' share")  # fmt: skip
        ax.axvline(0.9, color="tab:red", linestyle=":", linewidth=1, label="collapse (0.9)")
        ax.set_yticks(y, table.methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the most common final answer (test)")
        ax.set_title(t)
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)
    return True


def write_tables(workdir: str | Path, entries: Sequence[Mapping[str, Any]]) -> Table:
    """table.md, table.csv, comparison.png and answers.png in `workdir`, each written
    atomically."""
    workdir = Path(workdir)
    table = build(entries, load_results(workdir, entries))
    workdir_lib.write_bytes(workdir / TABLE_MD, markdown(table).encode("utf-8"))
    workdir_lib.write_bytes(workdir / TABLE_CSV, csv_text(table).encode("utf-8"))
    with workdir_lib.atomic_path(workdir / PLOT) as tmp:
        plot(table, tmp)
    if any("top_share" in s.diagnostics for s in table.cells.values()):
        with workdir_lib.atomic_path(workdir / ANSWERS_PLOT) as tmp:
            plot_answers(table, tmp)
    return table
