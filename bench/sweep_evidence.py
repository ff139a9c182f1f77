"""Issue 26's evidence in bench/RESULTS.md: does tuning (the paper's protocol) change the study's
verdict?

  python -m bench.sweep_evidence --hs=/path/to/hs_sweep --baseline=/path/to/dare_ties_sweep \
      --study=/path/to/study [--write]

Reads two finished `launch.sweep` workdirs on the study's pool and task (one for `hs` over the
paper's space, one for the best tunable baseline over its declared space) and the study's
workdir (`bench.study`), and writes section `sweep_evidence`: per sweep the trials, their wall
time, what pruning saved, the chosen settings (on dev) and the chosen trial's test utility; then
the chosen trials paired on the same test items with each other and with the study's untuned
seed-0 cells (paired bootstrap, Holm over the table's comparisons). Nothing is rerun.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from absl import app, flags

from bench import _common
from hs_jax import stats

_HS = flags.DEFINE_string("hs", None, "The hs sweep's workdir.", required=True)
_BASE = flags.DEFINE_string("baseline", None, "The baseline sweep's workdir.", required=True)
_STUDY = flags.DEFINE_string("study", None, "The study's workdir (bench.study).", required=True)
_TASK = flags.DEFINE_string("task", "nlgraph_gen", "The study's task folder.")
_WRITE = flags.DEFINE_bool("write", False, "Write the section into bench/RESULTS.md.")

# The study's controls the tuned hs is paired with (seed 0), where their cells exist.
CONTROLS = ("random_search", "self_consistency", "best_single", "constant_answer")


def _chosen(sweep: Path) -> Path:
    """The results.json of the sweep's chosen trial."""
    return sweep / json.loads((sweep / "best.json").read_text())["workdir"] / "results.json"


def _method(sweep: Path) -> str:
    return json.loads(_chosen(sweep).read_text())["method"]


def _trial_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def _scores(results: Path) -> tuple[list[float], list]:
    r = json.loads(results.read_text())
    return r["best_system"]["test_item_scores"], r["test_ids"]


def _spent(sweep: Path) -> int:
    """Dev evaluations of the whole sweep (every trial, pruned ones included)."""
    return int(json.loads((sweep / "best.json").read_text())["evaluations"])


def _pruning_line(sweep: Path) -> str:
    for line in (sweep / "summary.md").read_text().splitlines():
        if line.startswith("- pruning:"):
            return line[2:]
    return "pruning: no line in summary.md"


def _sweep_lines(name: str, sweep: Path) -> list[str]:
    best = json.loads((sweep / "best.json").read_text())
    rows = _trial_rows(sweep)
    status = {s: sum(r["status"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    seconds = sum(float(r["seconds"] or 0) for r in rows)
    settings = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    test = best["test"]
    lo, hi = test["interval"]
    return [
        f"- **{name}** (`{sweep}`): {len(rows)} trials ({status['complete']} complete, "
        f"{status['pruned']} pruned, {status['failed']} failed), {best['evaluations']} dev "
        f"evaluations, {seconds / 60:.1f} min of runs (the trials' own wall time).",
        f"  - {_pruning_line(sweep)}",
        f"  - chosen on dev: trial {best['trial']} ({settings}), dev {best['dev_utility']:.4f}"
        f" ({best['ties']} trial(s) share it; the lowest slot is taken); test "
        f"{test['utility']:.4f} [{lo:.4f}, {hi:.4f}] over {test['n_test']} items.",
    ]


def _fmt(p: stats.Paired, adjusted: float | None) -> str:
    lo, hi = p.interval
    holm = "-" if adjusted is None else stats.format_p(adjusted).removeprefix("p = ")
    raw = stats.format_p(p.p_value).removeprefix("p = ")
    return f"{p.difference:+.4f} | [{lo:+.4f}, {hi:+.4f}] | {raw} | {holm}"


def evidence(hs: Path, baseline: Path, study: Path, task: str) -> str:
    """The section's text."""
    base = _method(baseline)
    if _method(hs) != "hs" or base == "hs":
        raise ValueError(f"{hs} must be the hs sweep and {baseline} another method's")
    tuned = {"hs": _scores(_chosen(hs)), base: _scores(_chosen(baseline))}
    spent = {f"tuned {m}": _spent(sweep) for m, sweep in (("hs", hs), (base, baseline))}
    cells = {}
    for method in ("hs", base, *CONTROLS):
        path = study / task / method / "seed_0" / "results.json"
        if path.exists():
            cells[method] = _scores(path)
            spent[method] = int(json.loads(path.read_text())["evaluations"])
    ids = tuned["hs"][1]
    for name, (_, other) in [*tuned.items(), *cells.items()]:
        if other != ids:
            raise ValueError(f"{name}: not the same test items as the tuned hs trial")
    pairs = [
        (f"tuned hs - tuned {base}", "tuned hs", f"tuned {base}"),
        ("tuned hs - untuned hs (study, seed 0)", "tuned hs", "hs"),
        (f"tuned {base} - untuned {base} (study, seed 0)", f"tuned {base}", base),
    ]
    pairs += [(f"tuned hs - {c} (study, seed 0)", "tuned hs", c) for c in CONTROLS if c in cells]
    scores = {
        **{f"tuned {m}": v[0] for m, v in tuned.items()},
        **{m: v[0] for m, v in cells.items()},
    }
    tests = [stats.paired(scores[a], scores[b]) for _, a, b in pairs]
    adjusted = stats.holm([t.p_value for t in tests])
    table = [
        "| comparison (same test items) | dev evaluations | difference | 95% interval | p "
        "| Holm p |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {spent[a]} / {spent[b]} | {_fmt(t, q)} |"
            for (name, a, b), t, q in zip(pairs, tests, adjusted, strict=True)
        ),
    ]
    lines = [
        *_sweep_lines("hs", hs),
        *_sweep_lines(base, baseline),
        "",
        *table,
    ]
    description = (
        "The paper's tuning protocol on the study's pool and task (real Gemma 3 270M, the "
        "pool of configs/study.py, the generated NLGraph task; `launch.sweep`, random sampling, "
        "one seed per trial): `hs` over the paper's grid with pruning, and the study's best "
        "tunable baseline over its declared space (`sweep/method_spaces.py`). Each sweep "
        "chooses its trial on dev alone; the chosen trials' test outputs are then paired item "
        "by item with each other and with the study's untuned seed-0 cells (paired bootstrap; "
        "Holm over this table's comparisons). Dev evaluations: the whole sweep's (every trial, "
        "pruned ones too) for a tuned method, the cell's own for a study cell; where the two "
        "differ, the row is not a same-budget comparison (the study's random_search control "
        "had the budget of one untuned hs run). One seed: these are single replicates, not the "
        "study's seed-level statistics."
    )
    title = "Tuning as the paper did: sweeps on the study's pool and task"
    header = _common.header(title, description, "jax", "optuna")
    return "\n".join([header, "", *lines])


def main(argv):
    del argv
    text = evidence(Path(_HS.value), Path(_BASE.value), Path(_STUDY.value), _TASK.value)
    print(text)
    if _WRITE.value:
        _common.write_section("sweep_evidence", text)


if __name__ == "__main__":
    app.run(main)
