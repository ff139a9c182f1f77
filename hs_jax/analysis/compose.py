"""The paper's analyses over finished workdirs, written to one folder (`analyze`).

  analysis.md     an overview of the runs, then one section per analysis (markdown tables)
  analysis.json   the same numbers (NaN written as null)
  cgain.png       collaborative gain per run (Figure 3)             [hs_jax.analysis.cgain]
  budget_curves.png, iteration_curves_<run>.png  best-so-far dev utility against
                  evaluations per task; each step's best/mean per iteration (Figure 12)
                                                                       [...curves]
  (topology: tables only: shapes, expert positions, sparsity / Table 3)   [...topology]
  scaling_pool.png, scaling_diversity.png  test utility against pool size / diversity
                  (Figures 6 and 5), when runs differ in them          [...scaling]
  roles: tables of judge-labelled roles (Figure 4's aggregates), only with a judge
                  (`generate`) and runs that saved test_prompts.jsonl  [...roles]

An analysis that cannot be made for a run (no per-item scores, no archive, ...) says so in its
section; nothing in the workdirs is written. Every file goes into `out` atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hs_jax.analysis import cgain, curves, markdown, roles, scaling, topology
from hs_jax.analysis.runs import AnalysisInputError, Run, load_runs, read_jsonl
from hs_jax.pipeline import plots
from hs_jax.runtime.errors import UserError
from hs_jax.store import workdir as workdir_lib

ANALYSES = ("cgain", "topology", "curves", "scaling", "roles")
AUDIT = "test_prompts.jsonl"


def parse_analyses(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'all' or a comma list of ANALYSES, in ANALYSES order."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names or "all" in names:
        return ANALYSES
    bad = [n for n in names if n not in ANALYSES]
    if bad:
        raise UserError(
            f"--analyses: unknown {', '.join(map(repr, bad))}; "
            f"choose 'all' or from {', '.join(ANALYSES)}"
        )
    return tuple(n for n in ANALYSES if n in names)


def unique_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell runs apart
    (runs/hs/seed_0 and runs/chain/seed_0 become hs/seed_0 and chain/seed_0)."""
    parts = [r.path.resolve().parts for r in runs]
    depth = 1
    while depth < max((len(p) for p in parts), default=1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            break
        depth += 1
    return ["/".join(p[-depth:]) for p in parts]


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


class _Doc:
    """analysis.md's text, analysis.json's data and the pictures, built section by section."""

    def __init__(self, out: Path):
        self.out, self.lines, self.data, self.pictures = out, [], {}, []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def picture(self, name: str, draw) -> None:
        with workdir_lib.atomic_path(self.out / name) as tmp:
            draw(tmp)
        self.pictures.append(name)
        self.add(f"![{name}]({name})", "")


def _overview(doc: _Doc, runs: Sequence[Run], labels: Sequence[str]) -> None:
    data = []
    for run, label in zip(runs, labels, strict=True):
        r, best = run.results, run.results["best_system"]
        vs = r.get("vs_best_single") or {}
        data.append({
            "run": label, "path": str(run.path), "method": run.method, "task": run.task,
            "seed": run.seed, "experts": len(run.experts), "kind": best.get("kind"),
            "dev_utility": best.get("dev_utility"), "test_utility": best.get("test_utility"),
            "test_interval": best.get("test_interval"),
            "best_single_test": r.get("best_single", {}).get("test_utility"),
            "vs_best_single": vs or None, "evaluations": r.get("evaluations"),
            "cost": r.get("cost"), "seconds": r.get("seconds"),
        })  # fmt: skip
    doc.data["runs"] = data
    vs = lambda key: lambda d: (d["vs_best_single"] or {}).get(key)
    columns = [
        ("run", "run"), ("method", "method"), ("task", "task"), ("seed", "seed"),
        ("experts", "experts"), ("dev", "dev_utility"), ("test", "test_utility"),
        ("test 95% CI", "test_interval"), ("best single test", "best_single_test"),
        ("test - best single", vs("difference")), ("p", vs("p_value")),
        ("evaluations", "evaluations"),
        ("generate calls", lambda d: (d["cost"] or {}).get("generate_calls")),
    ]  # fmt: skip
    doc.add("## Runs", "", markdown.records(columns, data), "")


def _cgain(doc: _Doc, runs, labels, solved_above: float) -> None:
    doc.add(
        "## Collaborative gain (C-Gain)",
        "",
        f"Test items bucketed by how many of the N single experts solve them (score > "
        f"{solved_above:g}); C-Gain = sum over k >= 1 of |B_k|/|D| (Acc(B_k) - k/N) "
        "(hs_jax/analysis/cgain.py).",
        "",
    )
    gains, data, rows, notes = [], {}, [], []
    for run, label in zip(runs, labels, strict=True):
        g = cgain.of_results(run.results, solved_above=solved_above)
        if isinstance(g, str):
            notes.append(f"- {label}: not computed ({g})")
            data[label] = {"skipped": g}
            continue
        gains.append((label, g))
        data[label] = g.as_dict()
        rows.append({"run": label, "method": run.method, "task": run.task, **data[label]})
    doc.data["cgain"] = data
    if rows:
        columns = [
            ("run", "run"), ("method", "method"), ("task", "task"), ("N", "n_experts"),
            ("items", "n_items"), ("C-Gain", "c_gain"), ("Acc(B_0)", "b0_accuracy"),
        ]  # fmt: skip
        doc.add(markdown.records(columns, rows), "")
        buckets = [
            ("k", "k"), ("items", "count"), ("system solves", "solved"),
            ("Acc(B_k)", "accuracy"), ("EA = k/N", "expected"), ("mean score", "mean_score"),
        ]  # fmt: skip
        for label, _ in gains:
            doc.add(f"### {label}", "", markdown.records(buckets, data[label]["buckets"]), "")
        doc.picture("cgain.png", lambda p: cgain.plot(gains, p))
    doc.add(*notes, "")


def _expert_name(run: Run, expert: int) -> str:
    names = run.experts
    return names[expert] if 0 <= expert < len(names) else f"expert_{expert}"


def _pool_label(names: Sequence[str]) -> str:
    distinct = len(set(names))
    return str(len(names)) if distinct == len(names) else f"{len(names)} ({distinct} distinct)"


def _topology(doc: _Doc, runs, labels) -> None:
    doc.add(
        "## Topology of the found systems",
        "",
        "Active nodes reach the end node; depth and position are the longest path to the end; "
        "mean fan-in is over active nodes with inputs (hs_jax/analysis/topology.py).",
        "",
    )
    data, rows, sparsity_in = {}, [], []
    by_task: dict[str, list] = defaultdict(list)
    for run, label in zip(runs, labels, strict=True):
        if run.results.get("best_system", {}).get("kind", "dag") != "dag":
            continue  # a vote or an ensemble: its one-node placeholder is no found structure
        dag, assignment = topology.system_of(run.results)
        t = topology.topology(dag)
        data[label] = {**t.as_dict(), "assignment": assignment}
        by_task[run.task].append((dag, [_expert_name(run, e) for e in assignment]))
        rows.append({"run": label, "method": run.method, "task": run.task, "dag": str(dag),
                     **data[label]})  # fmt: skip
        setting = topology.sparsity_setting(
            run.method, run.setting("search.prune_tau"), run.setting("search.l1_lambda", 0.0)
        )
        sparsity_in.append({
            "task": run.task, "pool": tuple(run.experts), "setting": setting,
            "test_utility": run.results["best_system"].get("test_utility"),
            "active_edges": t.active_edges, "depth": t.depth, "mean_fan_in": t.mean_fan_in,
            "prompt_tokens": (run.results.get("cost") or {}).get("prompt_tokens"),
        })  # fmt: skip
    columns = [
        ("run", "run"), ("method", "method"), ("task", "task"), ("nodes", "nodes"),
        ("active", "active_nodes"), ("edges", "active_edges"), ("depth", "depth"),
        ("max fan-in", "max_fan_in"), ("mean fan-in", "mean_fan_in"), ("dag", "dag"),
    ]  # fmt: skip
    doc.add(markdown.records(columns, rows), "")
    positions = {}
    for task, systems in sorted(by_task.items()):
        positions[task] = counts = topology.expert_positions(systems)
        depth = max((p for c in counts.values() for p in c), default=0)
        doc.add(
            f"### Expert positions: {task} ({len(systems)} systems)",
            "",
            "Position 0 is the end node; counts over the runs' best systems.",
            "",
            markdown.table(
                ["expert", *(f"pos {p}" for p in range(depth + 1))],
                [[name, *(c.get(p, 0) for p in range(depth + 1))] for name, c in counts.items()],
            ),
            "",
        )
    sparsity = topology.sparsity_table(sparsity_in)
    doc.data["topology"] = {"systems": data, "expert_positions": positions, "sparsity": sparsity}
    doc.add("### Sparsity (Table 3)", "")
    if not sparsity:
        doc.add("No run of method 'hs' or with search.prune_tau / search.l1_lambda set.", "")
        return
    columns = [
        ("task", "task"), ("experts", lambda r: _pool_label(r["pool"])), ("setting", "setting"),
        ("runs", "runs"), ("test", "test_utility"), ("edges", "active_edges"),
        ("edge reduction", lambda r: markdown.percent(r["edge_reduction"])),
        ("depth", "depth"), ("mean fan-in", "mean_fan_in"),
        ("prompt tokens", lambda r: markdown.cell(r["prompt_tokens"], 0)),
    ]  # fmt: skip
    doc.add(
        "Edge reduction is against the original run on the same task and pool (the paper's "
        "speedup). G-decode's in-trees always have n - 1 edges, so in hs_jax pruning and L1 "
        "show in depth, fan-in and the search's prompt tokens instead.",
        "",
        markdown.records(columns, sparsity),
        "",
    )


def _curves(doc: _Doc, runs, labels) -> None:
    doc.add(
        "## Utility against budget",
        "",
        "Best-so-far dev utility after each utility evaluation (archive.jsonl).",
        "",
    )
    panels: dict[str, list] = defaultdict(list)
    reference: dict[str, float] = {}
    data, rows, notes = {}, [], []
    for run, label in zip(runs, labels, strict=True):
        single_dev = run.results.get("best_single", {}).get("dev_utility")
        if single_dev is not None:
            reference[run.task] = max(reference.get(run.task, single_dev), single_dev)
        if not run.archive:
            notes.append(f"- {label}: no archive.jsonl rows")
            data[label] = {"skipped": "no archive rows"}
            continue
        curve = curves.best_so_far(run.archive)
        data[label] = {**curves.budget_summary(curve), "curve": curve}
        panels[run.task].append((f"{label} ({run.method})", curve))
        rows.append({"run": label, "method": run.method, "task": run.task, **data[label]})
    optimisation = {}
    for run, label in zip(runs, labels, strict=True):
        history = run.results.get("history")
        if curves.is_search_history(history):
            optimisation[label] = (run, curves.optimisation_curves(history))
    doc.data["curves"] = {
        "budget": data,
        "optimisation": {label: c for label, (_, c) in optimisation.items()},
    }
    if rows:
        columns = [
            ("run", "run"), ("method", "method"), ("task", "task"),
            ("evaluations", "evaluations"), ("best dev", "best"), ("reached at", "reached_at"),
        ]  # fmt: skip
        doc.add(markdown.records(columns, rows), "")
        doc.picture(
            "budget_curves.png", lambda p: curves.plot_budget(panels, p, reference=reference)
        )
    doc.add(*notes, "")
    doc.add(
        "### Per-iteration curves (Figure 12)",
        "",
        "Runs whose history holds per-iteration step records (the search's role / weight "
        "steps, and baselines that record their iterations the same way).",
        "",
    )
    for label, (run, c) in optimisation.items():
        if not c:
            continue
        ref = run.results.get("best_single", {}).get("dev_utility")
        reference_line = {"best single (dev)": ref} if ref is not None else None
        doc.add(f"{label}: best / mean utility of each step's swarm per iteration.", "")
        doc.picture(
            f"iteration_curves_{_file_name(label)}.png",
            lambda p, c=c, ref=reference_line: plots.plot_curves(c, p, reference=ref),
        )
    if not optimisation:
        doc.add("No run with per-iteration step records.", "")


def _scaling(doc: _Doc, runs, labels) -> None:
    doc.add("## Scaling with the expert pool", "")
    results = [run.results for run in runs]
    doc.data["scaling"] = {}
    studies = (
        ("pool size", scaling.pool_size_table, "experts in the pool", "scaling_pool.png"),
        ("diversity", scaling.diversity_table, "distinct experts x repeats",
         "scaling_diversity.png"),
    )  # fmt: skip
    for name, make_table, xlabel, figure in studies:
        rows = make_table(results)
        doc.data["scaling"][name] = rows
        doc.add(f"### Test utility against {name}", "")
        if not rows:
            doc.add(f"No task and method with runs that differ in {name}.", "")
            continue
        columns = [
            ("task", "task"), ("method", "method"), ("experts", "experts"), (name, "key"),
            ("runs", "runs"), ("test", "test_utility"), ("interval", "interval"),
            ("interval kind", "interval_kind"), ("best single test", "best_single_test"),
        ]  # fmt: skip
        if name == "pool size":
            columns.pop(2)  # the key is the pool size
        doc.add(markdown.records(columns, rows), "")
        doc.picture(figure, lambda p, r=rows, x=xlabel: scaling.plot(r, p, xlabel=x))


def _questions(run: Run) -> dict[Any, str]:
    """Test question by item position from the run's task file (config task.path, else the
    workdir's task.json); {} when it cannot be read (the entry prompts stand in)."""
    path = run.setting("task.path") or run.path / workdir_lib.TASK_JSON
    try:
        data = json.loads(Path(path).read_text())
        return {i: raw["question"] for i, raw in enumerate(data["test"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _roles(doc: _Doc, runs, labels, generate, judge_options) -> None:
    doc.add("## Roles of intermediate outputs (judge-labelled)", "")
    doc.data["roles"] = {}
    if generate is None:
        doc.add("Not run: no judge model (launch.analyze --judge_model).", "")
        return
    every = (*roles.ROLES, roles.UNPARSED)
    share = lambda role: lambda f: markdown.percent(f["fractions"][role])
    rows, notes = [], []
    for run, label in zip(runs, labels, strict=True):
        audit = run.path / AUDIT
        if not audit.exists():
            notes.append(f"- {label}: no {AUDIT} (run with --config.outputs.save_prompts=True)")
            continue
        dag, _ = topology.system_of(run.results)
        cases = roles.cases_from_audit(read_jsonl(audit), dag, questions=_questions(run))
        if not cases:
            notes.append(f"- {label}: the best system has no intermediate node")
            continue
        t = roles.tally(cases, roles.label_roles(cases, generate, **judge_options))
        doc.data["roles"][label] = t
        rows.append({"run": label, "method": run.method, "task": run.task, **t})
        by_position = [{"position": p, "fractions": f} for p, f in t["by_position"].items()]
        doc.add(
            f"### {label}: roles by position",
            "",
            markdown.records([("position", "position"), *((r, share(r)) for r in every)],
                             by_position),
            "",
        )  # fmt: skip
    if rows:
        columns = [("run", "run"), ("method", "method"), ("task", "task"),
                   ("outputs", "labelled"), *((r, share(r)) for r in every)]  # fmt: skip
        doc.add(markdown.records(columns, rows), "")
    doc.add(*notes, "")


def analyze(
    workdirs: str | Sequence[str],
    out: str | os.PathLike,
    *,
    analyses: str | Sequence[str] = "all",
    solved_above: float = cgain.SOLVED_ABOVE,
    generate: roles.GenerateFn | None = None,
    judge_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs the analyses over the finished runs `workdirs` names (a comma list of workdirs or
    folders holding them) and writes analysis.md, analysis.json and the pictures into `out`;
    returns analysis.json's content. `generate` is the judge for 'roles' (None: skipped)."""
    chosen = parse_analyses(analyses)
    runs = load_runs(workdirs)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AnalysisInputError(f"--out {out}: cannot create the folder ({e})") from e
    labels = unique_labels(runs)
    doc = _Doc(out)
    doc.add(
        "# Analysis of Heterogeneous Swarms runs",
        "",
        f"{len(runs)} finished runs; analyses: {', '.join(chosen)}.",
        "",
    )
    _overview(doc, runs, labels)
    if "cgain" in chosen:
        _cgain(doc, runs, labels, solved_above)
    if "topology" in chosen:
        _topology(doc, runs, labels)
    if "curves" in chosen:
        _curves(doc, runs, labels)
    if "scaling" in chosen:
        _scaling(doc, runs, labels)
    if "roles" in chosen:
        _roles(doc, runs, labels, generate, judge_options or {})
    data = markdown.jsonable({"analyses": list(chosen), **doc.data, "pictures": doc.pictures})
    workdir_lib.write_json(out / "analysis.json", data)
    workdir_lib.write_bytes(out / "analysis.md", ("\n".join(doc.lines).rstrip() + "\n").encode())
    return data
