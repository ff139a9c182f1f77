"""The comparison of every method on the real model, as bench/RESULTS.md reports it.

  python -m launch.compare --config=configs/demo.py --config.task.gen.n_test=200 \
    --methods=all --tasks=nlgraph_gen --seeds=0,1,2 --workdir=runs/compare_nlgraph
  python -m bench.comparison --workdir=runs/compare_nlgraph --name=nlgraph \
    --compare_command="python -m launch.compare ..."

reads a comparison workdir (finished or not: cells still pending are shown as pending), rebuilds
its table from the cells' results.json (`hs_jax.comparison.table`), runs the analyses over the
finished cells (`hs_jax.analysis`: C-Gain), copies the pictures into bench/figures/ and writes
the section `comparison_<name>` of bench/RESULTS.md: sizes, the table with intervals, paired
tests and costs, the control comparison and the collaborative gain. It measures nothing itself:
the numbers are those of the comparison command.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from absl import app, flags

from bench import _common
from hs_jax import analysis
from hs_jax.comparison import table as comparison_table

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch.compare workdir.", required=True)
_NAME = flags.DEFINE_string("name", None, "Section name: comparison_<name>.", required=True)
_COMMAND = flags.DEFINE_string("compare_command", "", "The launch.compare command that ran.")
_WRITE = flags.DEFINE_boolean("write", True, "Write bench/RESULTS.md (else print).")

FIGURES = Path(__file__).resolve().parent / "figures"


def _sizes(workdir: Path, entries) -> str:
    for entry in entries:
        path = workdir / entry["workdir"] / "results.json"
        if entry["status"] == "done" and path.exists():
            r = json.loads(path.read_text())
            return (
                f"{r['n_dev']} dev / {r['n_test']} test items of task {r['task']} "
                f"({r['dataset']}), {len(r['experts'])} experts ({', '.join(r['experts'])}), "
                f"protocol {r['protocol']}"
            )
    return "no finished cell yet"


def _cgain_table(result: dict) -> list[str]:
    rows = ["| run | C-Gain | Acc(B_0) | items in B_0 / B_1 / ... |", "|---|---:|---:|---|"]
    for label, c in sorted(result.get("cgain", {}).items()):
        counts = " / ".join(str(b["count"]) for b in c["buckets"])
        rows.append(f"| {label} | {c['c_gain']:+.3f} | {c['b0_accuracy']:.3f} | {counts} |")
    return rows


def main(argv):
    del argv
    workdir = Path(_WORKDIR.value)
    entries = json.loads((workdir / "cells.json").read_text())
    table = comparison_table.build(entries, comparison_table.load_results(workdir, entries))
    done = sum(e["status"] == "done" for e in entries)
    out = workdir / "analysis"
    result = analysis.analyze(str(workdir), out, analyses=("cgain", "curves"))
    FIGURES.mkdir(exist_ok=True)
    name = _NAME.value
    pictures = []
    comparison_table.plot(table, FIGURES / f"comparison_{name}.png")
    pictures.append(f"comparison_{name}.png")
    if comparison_table.plot_answers(table, FIGURES / f"answers_{name}.png"):
        pictures.append(f"answers_{name}.png")
    for picture in ("cgain.png", "budget_curves.png"):
        if (out / picture).exists():
            shutil.copy(out / picture, FIGURES / f"{Path(picture).stem}_{name}.png")
            pictures.append(f"{Path(picture).stem}_{name}.png")
    text = "\n".join(
        [
            _common.header(
                f"Comparison on the real Gemma 3 270M: {name}",
                f"Every method through the same engine, scorer and cost counters: "
                f"{_sizes(workdir, entries)}. {done} of {len(entries)} cells finished when this "
                "section was written; the others are shown as pending. Each cell: test utility "
                "with its 95% interval (one seed: the bootstrap over test items; several: mean "
                "± sd over seeds and the two-level bootstrap, seeds then items, with a t "
                "reference over the seeds); † / ‡: better / worse than that run's best single "
                "expert, paired by seed and item, Holm-adjusted p < 0.05.",
                "jax",
                command_line=_COMMAND.value or "launch.compare (command not given)",
            ),
            "",
            comparison_table.markdown(table).split("\n", 1)[1].strip(),
            "",
            "Collaborative gain of each finished run (paper section 6: test items bucketed by "
            "how many single experts solve them, C-Gain = sum over k >= 1 of |B_k|/|D| "
            "(Acc(B_k) - k/N); hs_jax/analysis/cgain.py):",
            "",
            *_cgain_table(result),
            "",
            "Pictures: " + ", ".join(f"[{p}](figures/{p})" for p in pictures) + ".",
            "",
            f"Report: `python -m bench.comparison --workdir=<it> --name={name}`",
        ]
    )
    if _WRITE.value:
        _common.write_section(f"comparison_{name}", text)
    print(text)


if __name__ == "__main__":
    app.run(main)
