"""The comparison (hs_jax.comparison.compare, hs_jax.comparison.table, launch.compare): cells on
the tiny config with their budget and statuses, a method that does not apply and one that fails
reported in their cells while the rest completes, a SIGKILLed comparison resumed without
recomputing finished cells, and the table's numbers and formatting on synthetic results."""

import csv
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tiny_config():
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.outputs.plots = False
    c.outputs.export_experts = False
    return c


# ----------------------------------------------------------------------------- synthetic


def _results(method, seed, system, single, *, evaluations=8, seconds=2.0):
    """A results.json as hs_jax.pipeline.report writes it, reduced to what the table reads."""
    from hs_jax import stats

    return {
        "method": method,
        "seed": seed,
        "best_system": {
            "test_utility": sum(system) / len(system),
            "test_interval": list(stats.interval(system)),
            "test_item_scores": list(system),
        },
        "best_single": {"expert": 1},
        "vs_best_single": stats.paired(system, single).as_dict(),
        "single_experts": {"test_item_scores": [[0.0] * len(single), list(single)]},
        "evaluations": evaluations,
        "cost": {"generate_calls": 10, "prompt_tokens": 1000, "generated_tokens": 50},
        "seconds": seconds,
    }


def _entry(method, family, task, seed, status="done", reason=None):
    return {
        "method": method,
        "family": family,
        "summary": f"{method} summary",
        "task": task,
        "seed": seed,
        "workdir": f"{task}/{method}/seed_{seed}",
        "status": status,
        "reason": reason,
    }


def test_table_numbers_and_formatting_on_synthetic_results(tmp_path):
    """Families in Table 1 order, mean ± sd over seeds with the pooled interval, bold best,
    the † / ‡ markers, average ranks, mean costs, the vs-random-search section, n/a, failed
    and pending cells, and the CSV's numbers."""
    from hs_jax import stats
    from hs_jax.comparison import table as ct

    n = 20
    ones, zeros = [1.0] * n, [0.0] * n
    half = [1.0, 0.0] * (n // 2)
    runs = {
        ("hs", "a", 0): _results("hs", 0, ones, zeros, seconds=4.0),
        ("hs", "a", 1): _results("hs", 1, half, zeros, seconds=2.0),
        ("hs", "b", 0): _results("hs", 0, half, half),
        ("hs", "b", 1): _results("hs", 1, half, half),
        ("random_search", "a", 0): _results("random_search", 0, half, zeros),
        ("random_search", "a", 1): _results("random_search", 1, zeros, zeros),
        ("random_search", "b", 0): _results("random_search", 0, ones, half),
        ("best_single", "a", 0): _results("best_single", 0, zeros, ones, evaluations=0),
    }
    entries = [
        _entry(m, {"hs": "heterogeneous swarms", "random_search": "control"}.get(m, "trivial"),
               t, s)
        for (m, t, s) in runs
    ]  # fmt: skip
    entries.append(_entry("random_search", "control", "b", 1, "failed", "RuntimeError: boom"))
    entries.append(_entry("best_single", "trivial", "b", 0, "pending"))
    entries.append(_entry("data_merge", "static weight", "a", 0, "not_applicable", "no data"))
    entries.append(_entry("data_merge", "static weight", "b", 0, "not_applicable", "no data"))
    for (m, t, s), r in runs.items():
        (tmp_path / t / m / f"seed_{s}").mkdir(parents=True)
        (tmp_path / t / m / f"seed_{s}" / "results.json").write_text(json.dumps(r))

    table = ct.write_tables(tmp_path, entries)
    assert table.methods == ["best_single", "data_merge", "hs", "random_search"]
    assert table.tasks == ["a", "b"]

    hs_a = table.cells[("hs", "a")]
    assert hs_a.seeds == (0, 1) and hs_a.mean == pytest.approx(0.75)
    assert hs_a.sd == pytest.approx(stats.mean_and_spread([1.0, 0.5])[1])
    # Seeds are the unit: the two-level interval and the paired test by seed and item.
    assert hs_a.interval == pytest.approx(stats.interval_over_seeds([ones, half]))
    assert hs_a.vs_single == stats.paired_over_seeds([ones, half], [zeros, zeros])
    assert hs_a.vs_single.seeds == 2
    assert table.cells[("random_search", "b")].planned == 2  # one of two seeds finished

    md = (tmp_path / "table.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in md.split("\n## ")}
    utility, section = sections["Test utility"], sections["vs random search"]
    rows = {line.split(" | ")[1]: line for line in utility.splitlines() if line.startswith("| ")}
    lo, hi = hs_a.interval
    # 2 seeds, t with 1 degree of freedom: not established, so no marker.
    assert table.vs_single[("hs", "a")].p_holm >= 0.05
    assert f"**0.750 ± {hs_a.sd:.3f}** [{lo:.3f}, {hi:.3f}] (seeds 0-1)" in rows["hs"]
    # best_single: one seed, 20 items all worse than its best single; Holm over 5 tests.
    assert table.vs_single[("best_single", "a")].p_holm == pytest.approx(5 / stats.RESAMPLES)
    assert "0.000 [0.000, 0.000] ‡ (seed 0)" in rows["best_single"]
    assert "**0.000" not in rows["best_single"]  # alone in its group: not compared
    assert "| pending |" in rows["best_single"]
    assert "n/a: no data" in rows["data_merge"]
    assert "(1/2 seeds)" in rows["random_search"]
    assert "1.000 [" in rows["random_search"] and "**1.000" not in rows["random_search"]
    assert "failed" not in rows["random_search"]  # a result from the other seed is shown
    assert "cells differ in seeds" in md and "seeds 0-1: hs, random_search" in md
    # Ranks within same-seed groups only: a = hs 0.75 vs random_search 0.25; b: none.
    assert table.avg_rank == pytest.approx(
        {"hs": 1.0, "random_search": 2.0, "best_single": float("nan"),
         "data_merge": float("nan")},
        nan_ok=True,
    )  # fmt: skip
    assert table.costs["hs"]["seconds"] == pytest.approx(2.5)  # mean over the 4 runs
    assert "| 1000 + 50 |" in rows["hs"]
    order = [line.split(" | ")[1] for line in utility.splitlines() if line.startswith("| ")]
    assert order[:6] == ["method", "---", "best_single", "data_merge", "hs", "random_search"]

    # vs random search: hs - random_search on task a, paired by seed (0 and 1) and item.
    expected = stats.paired_over_seeds([ones, half], [half, zeros])
    control_rows = {
        line.split(" | ")[1]: line for line in section.splitlines() if line.startswith("| ")
    }
    hs_row = control_rows["hs"]
    assert f"{expected.difference:+.3f}" in hs_row and "(seeds 0-1)" in hs_row
    assert stats.format_p(expected.p_value) in hs_row and "Holm" in hs_row
    # best_single ran seed 0 only: paired with the control's seed 0.
    assert table.controls["random_search"][("best_single", "a")].seeds == [0]
    assert "random_search" not in control_rows  # the control has no row of its own
    assert control_rows["data_merge"].endswith("| — | — |")
    # A p at the bootstrap's resolution is a bound, never "p = 0.0001".
    assert "p = 0.0001" not in md and "p < 0.0001" in md

    rows_csv = {r["method"]: r for r in csv.DictReader(io.StringIO(ct.csv_text(table)))}
    assert float(rows_csv["hs"]["a"]) == pytest.approx(0.75)
    assert float(rows_csv["hs"]["a_vs_random_difference"]) == pytest.approx(expected.difference)
    assert rows_csv["hs"]["a_vs_random_p_holm"] != ""
    assert rows_csv["data_merge"]["a_status"] == "n/a: no data"
    assert rows_csv["data_merge"]["a"] == "" and rows_csv["data_merge"]["avg_rank"] == ""
    assert float(rows_csv["best_single"]["evaluations"]) == 0
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_collapsed_systems_and_diagnostics_are_shown(tmp_path):
    """A system that answers one thing everywhere scores the class frequency: the notes, the
    per-type table and answers.png say so, next to the gold answers' share."""
    from hs_jax.comparison import table as ct

    n = 20
    gold = {"top": "No", "top_share": 0.5}
    collapsed = _results("gpt_swarm", 0, [1.0, 0.0] * (n // 2), [0.0] * n)
    collapsed["diagnostics"] = {
        "answers": {"top": "No", "top_share": 1.0, "distinct": 1, "unread": 0,
                    "collapsed": True},
        "gold": gold, "per_type": {"cycle": {"n": 10, "utility": 1.0},
                                   "edge": {"n": 10, "utility": 0.0}},
        "fallback_rate": 0.75,
    }  # fmt: skip
    healthy = _results("hs", 0, [1.0] * n, [0.0] * n)
    healthy["diagnostics"] = {
        "answers": {"top": "Yes", "top_share": 0.55, "distinct": 2, "unread": 0,
                    "collapsed": False},
        "gold": gold, "per_type": {"cycle": {"n": 10, "utility": 1.0},
                                   "edge": {"n": 10, "utility": 1.0}},
        "svd_rel_error_max": 0.6, "svd_rel_error_mean": 0.4,
    }  # fmt: skip
    healthy["train_overlap"] = {"dev": 0, "test": 0, "checked": "records"}
    yes_to_yes_no = _results("random_roles", 0, [1.0, 0.0] * (n // 2), [0.0] * n)
    yes_to_yes_no["diagnostics"] = {
        "answers": {"top": "yes", "top_share": 0.5, "distinct": 3, "unread": 10,
                    "read_top": "yes", "read_top_share": 1.0, "collapsed": True,
                    "collapsed_on": "readable"},
        "gold": gold,
    }  # fmt: skip
    runs = {("gpt_swarm", "a", 0): collapsed, ("hs", "a", 0): healthy,
            ("random_roles", "a", 0): yes_to_yes_no}  # fmt: skip
    entries = [_entry(m, "dynamic role", t, s) for (m, t, s) in runs]
    for (m, t, s), r in runs.items():
        (tmp_path / t / m / f"seed_{s}").mkdir(parents=True)
        (tmp_path / t / m / f"seed_{s}" / "results.json").write_text(json.dumps(r))
    ct.write_tables(tmp_path, entries)
    md = (tmp_path / "table.md").read_text()
    assert "collapsed systems" in md and "gpt_swarm (seed 0: 'No' for 100% of the items)" in md
    assert "'No', is 50% of the test items" in md
    assert "random_roles (seed 0: 'yes' for 100% of the readable answers)" in md
    assert "designer proposals replaced by random DAGs" in md and "75%" in md
    assert "relative SVD error mean 0.400, max 0.600" in md
    assert "0 in every cell (records)" in md
    assert "| a: cycle | a: edge | a: top answer |" in md
    assert "No 1.00 ⚠" in md
    assert (tmp_path / "answers.png").stat().st_size > 0


def test_ranks_share_ties():
    from hs_jax.comparison.table import ranks

    # The same 19/60 as a float32 mean and as a float64 mean is one utility.
    assert ranks({"a": float(np.float32(19 / 60)), "b": 19 / 60}) == {"a": 1.5, "b": 1.5}

    assert ranks({"a": 0.5, "b": 0.5, "c": 0.1, "d": float("nan")}) == {
        "a": 1.5,
        "b": 1.5,
        "c": 3.0,
    }


# ----------------------------------------------------------------------------- the plan


def test_plan_order_task_refs_and_shared_pools(tmp_path):
    """'hs' cells of a task first, seeds only for the seeded methods; task files named by
    their dataset; a trained pool shared by the cells that would train the same pool."""
    from hs_jax.comparison import compare
    from hs_jax.runtime.errors import UserError

    path = tmp_path / "my.json"
    item = {"question": "q", "answer": "Yes"}
    path.write_text(json.dumps({"dataset": "NLGraph", "dev": [item], "test": [item]}))
    refs = compare.task_refs(["nlgraph_gen", str(path)], "")
    assert refs == [
        compare.TaskRef("nlgraph_gen", "nlgraph_gen", ""),
        compare.TaskRef("nlgraph", "nlgraph", str(path)),
    ]
    with pytest.raises(UserError, match="'mmlu' reads .*mmlu.json, which is not a file"):
        compare.task_refs(["mmlu"], str(tmp_path))
    with pytest.raises(UserError, match="neither a task file nor a registered task"):
        compare.task_refs(["nope"], "")

    cells = compare.plan(
        ["random_search", "chain", "hs"], refs[:1], [1, 0], ["hs", "random_search"], 7
    )
    assert [(c.method, c.seed) for c in cells] == [
        ("hs", 0), ("hs", 1), ("random_search", 0), ("random_search", 1), ("chain", 7),
    ]  # fmt: skip
    assert cells[0].subdir() == "nlgraph_gen/hs/seed_0"
    # By default every method runs on every seed: cells differ in seeds only when asked.
    every = compare.plan(["chain", "hs"], refs[:1], [1, 0], compare.DEFAULT_SEEDED, 7)
    assert [(c.method, c.seed) for c in every] == [("hs", 0), ("hs", 1), ("chain", 0), ("chain", 1)]

    c = _tiny_config()
    c.experts.source = "train"
    cfg = {
        (m, s): compare.cell_config(c, compare.Cell(m, refs[0], s), tmp_path, None)
        for m, s in [("hs", 0), ("chain", 0), ("hs", 1), ("hs_authors", 0)]
    }
    pools = {k: v.experts.pool_dir for k, v in cfg.items()}
    assert pools[("hs", 0)] == pools[("chain", 0)]  # same seed and pool settings: one pool
    assert pools[("hs", 0)] != pools[("hs", 1)]  # the seed trains another pool
    assert pools[("hs", 0)] != pools[("hs_authors", 0)]  # so does the authors' protocol
    assert pools[("hs", 0)].startswith(str(tmp_path / "nlgraph_gen" / "pools"))
    assert compare.cell_config(c, cells[2], tmp_path, 5).budget == 5
    assert not compare.budgeted("hs_no_weight") and compare.budgeted("random_search")


# ----------------------------------------------------------------------------- on the tiny model


def _never_applies(c):
    return "a test method that never applies"


def _broken(setup, workdir, *, callbacks=(), progress=True):
    raise RuntimeError("a test method that always fails")


def test_compare_on_the_tiny_config(tmp_path):
    """hs (2 seeds), hs_no_weight, random_search (2 seeds, budget = hs's evaluations), the
    best single expert, a method that does not apply and one that fails: every cell reported,
    the table written."""
    from hs_jax import methods
    from hs_jax.comparison import compare
    from hs_jax.methods.registry import MethodSpec

    names = ["hs", "hs_no_weight", "random_search", "best_single", "t_never", "t_broken"]
    names = [m for m in names if m in methods.METHODS or m.startswith("t_")]
    methods.register("t_never", MethodSpec(_broken, "control", "never", applies=_never_applies))
    methods.register("t_broken", MethodSpec(_broken, "control", "always fails"))
    try:
        entries = compare.compare(
            _tiny_config(), tmp_path, method_list=names, task_list=["nlgraph_gen"],
            seeds=[0, 1], seeded=["hs", "random_search"], progress=False,
        )  # fmt: skip
        never = compare.Cell("t_never", compare.task_refs(["nlgraph_gen"], "")[0], 0)
        own = compare.run_cell(_tiny_config(), never, tmp_path, budget_from_hs=False)
        assert (own["budget"], own["budget_from"]) == (8, "config")  # default_budget: 2 x (2+2)
    finally:
        methods.METHODS.pop("t_never")
        methods.METHODS.pop("t_broken")

    status = {(e["method"], e["seed"]): e for e in entries}
    assert [e["method"] for e in entries[:2]] == ["hs", "hs"]  # HS first: the others' budget
    assert status[("t_never", 0)]["status"] == "not_applicable"
    assert status[("t_never", 0)]["reason"] == "a test method that never applies"
    assert status[("t_never", 0)]["budget_from"] == "hs"
    assert status[("t_broken", 0)]["status"] == "failed"
    assert "a test method that always fails" in status[("t_broken", 0)]["reason"]
    assert "RuntimeError" in (tmp_path / "nlgraph_gen/t_broken/seed_0/failed.txt").read_text()
    done = [e for e in entries if e["status"] == "done"]
    assert len(done) == len(entries) - 2
    if "random_search" in names:
        for seed in (0, 1):
            hs = json.loads((tmp_path / f"nlgraph_gen/hs/seed_{seed}/results.json").read_text())
            rs = status[("random_search", seed)]
            assert (rs["budget"], rs["budget_from"]) == (hs["evaluations"], "hs")
            assert rs["evaluations"] <= hs["evaluations"]

    assert json.loads((tmp_path / "cells.json").read_text()) == entries
    md = (tmp_path / "table.md").read_text()
    utility = md.split("## vs the best single expert")[0]
    rows = {line.split(" | ")[1]: line for line in utility.splitlines() if line.startswith("| ")}
    assert "## vs random search" in md and "Holm" in md
    for m in names:
        assert m in rows
    assert "n/a: a test method that never applies" in rows["t_never"]
    assert "failed: RuntimeError: a test method that always fails" in rows["t_broken"]
    assert " ± " in rows["hs"] and " ± " not in rows["hs_no_weight"]
    table_csv = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    assert {r["method"] for r in table_csv} == set(names)
    hs_row = next(r for r in table_csv if r["method"] == "hs")
    assert hs_row["nlgraph_gen_seeds"] == "2" and float(hs_row["generate_calls"]) > 0
    assert (tmp_path / "comparison.png").stat().st_size > 0


def _launch(workdir):
    cmd = [
        sys.executable, "-m", "launch.compare", "--config=configs/tiny.py",
        "--config.outputs.plots=False", "--config.outputs.export_experts=False",
        "--methods=hs,hs_no_weight", "--tasks=nlgraph_gen", "--seeds=0,1",
        f"--workdir={workdir}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _text(path):
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def test_killed_comparison_resumes_without_recomputing_finished_cells(tmp_path):
    first = tmp_path / "nlgraph_gen/hs/seed_0/results.json"
    proc = _launch(tmp_path)
    try:
        deadline = time.monotonic() + 400
        # The kill comes once the first cell is recorded as done in cells.json (its results.json
        # appears a moment before that record is rewritten).
        while not (first.exists() and '"status": "done"' in _text(tmp_path / "cells.json")):
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "the first cell did not finish"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.rglob("results.json")}
    assert first in finished and len(finished) < 3
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert cells[0]["status"] == "done" and cells[-1]["status"] == "pending"

    proc = _launch(tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert f"4 cells (2 methods x 1 tasks, seeds [0, 1] for all): {len(finished)} finished " \
        "earlier (not recomputed)" in err  # fmt: skip
    assert err.count("finished earlier: test utility") == len(finished)
    for path, stamp in finished.items():
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert [c["status"] for c in cells] == ["done"] * 4
    assert [c["finished_before"] for c in cells] == [p in finished for p in (
        tmp_path / c["workdir"] / "results.json" for c in cells)]  # fmt: skip
    assert (tmp_path / "table.md").exists() and (tmp_path / "table.csv").exists()
