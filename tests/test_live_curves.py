"""Live TensorBoard curves (hs_jax.methods.live_curves), read back with TensorBoard's own reader.

Hand-made records first (no model): tags, steps and values, a resumed writer's restart, writer
errors and other processes. Then tiny runs end to end: the search's event files hold its
iterations (results.json's history and costs) and evaluations (archive.jsonl), a baseline's
its evaluations, also after a rerun that replays its archive. Utilities are a fixed hash of the
system (the tiny model's random experts score 0 everywhere); generation runs and is counted.
"""

import json
import logging
import math
import runpy
import zlib
from pathlib import Path

import numpy as np
import pytest

from hs_jax.methods import live_curves

ROOT = Path(__file__).resolve().parents[1]


def _read(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of one TensorBoard run folder: [(step, value)] in step order, as
    TensorBoard shows them (a restart drops the points it supersedes)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]
    }


def _f32(x) -> float:
    """What an event file keeps of a float (TensorBoard's simple_value is a float32)."""
    return float(np.float32(x))


def _record(t: int, role, weight, best, stall=0) -> dict:
    """A search record's JSON (hs_jax.swarm.history) with these utilities per step (None: the
    step did not run) and this all-time best."""
    from hs_jax import stats
    from hs_jax.swarm import history
    from hs_jax.swarm.graph import Dag

    dag = Dag(1, (), 0)

    def step(kind, u):
        if u is None:
            return history.Skipped("off")
        s = stats.best_mean_worst(u)
        common = dict(moved=True, utilities=tuple(u), weight_moves=t, **s)
        if kind == "role":
            return history.RoleStep(
                objective=tuple(u), dags=(dag,) * len(u), best_index=0, **common
            )
        return history.WeightStep(dag=dag, assignments=((0,),) * len(u), jfk=(0.0,), **common)

    return history.IterationRecord(
        iteration=t, role=step("role", role), weight=step("weight", weight), improved=False,
        best_utility=best, stall=stall, role_global_best=None, weight_global_best=None,
    ).to_json()  # fmt: skip


def test_a_callback_writes_each_records_points_at_its_iteration(tmp_path):
    records = [
        _record(0, [0.25, 0.5], [0.75, math.nan], 0.75),
        _record(1, [math.nan, math.nan], None, 0.75, stall=1),  # nothing finite in the role step
        _record(2, None, [1.0, 0.5], 1.0),
    ]
    curves = live_curves.LiveCurves(tmp_path)
    curves(records[0])  # as a run_search callback
    curves.iteration(records[1], {"generate_calls": 3, "generated_tokens": 40}, evaluations=8)
    curves.iteration(records[2])
    curves.close()
    got = _read(tmp_path / "tensorboard" / "iterations")
    assert got.pop("iteration/seconds")[0][0] == 0 and len(got) == 9
    assert got == {
        "iteration/best_utility": [(0, 0.75), (1, 0.75), (2, 1.0)],
        "iteration/role_best": [(0, 0.5)],
        "iteration/role_mean": [(0, 0.375)],
        "iteration/weight_best": [(0, 0.75), (2, 1.0)],
        "iteration/weight_mean": [(0, 0.75), (2, 0.75)],
        "iteration/stall": [(0, 0.0), (1, 1.0), (2, 0.0)],
        "iteration/evaluations": [(1, 8.0)],
        "iteration/generate_calls": [(1, 3.0)],
        "iteration/generated_tokens": [(1, 40.0)],
    }
    assert not (tmp_path / "tensorboard" / "evaluations").exists()


def test_evaluations_carry_their_utility_the_best_so_far_and_the_costs(tmp_path):
    from hs_jax.analysis.curves import best_so_far

    utilities = [[0.5, math.nan], [0.25, 0.75, 0.5]]
    curves = live_curves.LiveCurves(tmp_path)
    curves.evaluations(0, utilities[0], {"generate_calls": 2, "prompt_tokens": 10})
    curves.evaluations(2, utilities[1], {"generate_calls": 5, "prompt_tokens": 30})
    curves.close()
    got = _read(tmp_path / "tensorboard" / "evaluations")
    flat = utilities[0] + utilities[1]
    assert got["evaluation/utility"] == [(e, u) for e, u in enumerate(flat) if math.isfinite(u)]
    want = best_so_far({"dev_utility": u} for u in flat)
    assert got["evaluation/best_so_far"] == list(enumerate(want))
    assert got["evaluation/generate_calls"] == [(0, 2), (1, 2), (2, 5), (3, 5), (4, 5)]
    assert got["evaluation/prompt_tokens"] == [(0, 10), (1, 10), (2, 30), (3, 30), (4, 30)]
    assert "evaluation/generated_tokens" not in got  # not in the cost given


def test_a_resumed_writer_replaces_the_points_from_where_it_starts(tmp_path):
    """A killed run wrote iterations 0-3 and evaluations 0-5; the run resumed from iteration
    2 / evaluation 4 shows every step once, with its own values from there on. The
    evaluations' best so far goes on from the archived evaluations before the resumed one."""
    killed = live_curves.LiveCurves(tmp_path)
    for t in range(4):
        killed.iteration(_record(t, [0.1 * t], None, 0.1 * t))
    killed.evaluations(0, [0.5, 0.25, 0.125, 0.0, 0.0625, 0.03125])
    # The search truncates the archive to its checkpoint's rows (here 4) before it rescores.
    rows = [{"evaluation": e, "dev_utility": u} for e, u in enumerate([0.5, 0.25, None, 0.0])]
    (tmp_path / "archive.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    resumed = live_curves.LiveCurves(tmp_path)
    for t in (2, 3, 4):
        resumed.iteration(_record(t, [0.2 * t], None, 0.2 * t))
    resumed.evaluations(4, [0.0625, 0.75])
    resumed.close()
    folder = tmp_path / "tensorboard"
    assert len(list((folder / "iterations").iterdir())) == 2  # one event file per writer
    best = _read(folder / "iterations")["iteration/best_utility"]
    assert best == [(0, 0.0), (1, _f32(0.1)), (2, _f32(0.4)), (3, _f32(0.6)), (4, _f32(0.8))]
    got = _read(folder / "evaluations")
    assert got["evaluation/utility"] == [
        (0, 0.5), (1, 0.25), (2, 0.125), (3, 0.0), (4, 0.0625), (5, 0.75)
    ]  # fmt: skip
    assert got["evaluation/best_so_far"] == [(e, 0.5) for e in range(5)] + [(5, 0.75)]


def test_a_writer_error_is_logged_once_and_never_raised(tmp_path, caplog, monkeypatch):
    (tmp_path / "tensorboard").write_text("a file where the folder would go")
    curves = live_curves.LiveCurves(tmp_path)
    with caplog.at_level(logging.WARNING):
        for t in range(3):
            curves.iteration(_record(t, [0.5], [0.5], 0.5))
            curves.evaluations(2 * t, [0.5, 0.5])
    stopped = [r for r in caplog.records if "curves" in r.getMessage()]
    assert len(stopped) == 1 and "the run goes on" in stopped[0].getMessage()
    curves.close()

    # A write failing after the files are open (a full disk): the same, the files closed.
    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self, data):
        raise OSError(28, "No space left on device")

    other = tmp_path / "other"
    curves = live_curves.LiveCurves(other)
    curves.iteration(_record(0, [0.5], None, 0.5))
    monkeypatch.setattr(RecordWriter, "write", full)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        curves.iteration(_record(1, [0.5], None, 0.5))
        curves.evaluations(0, [0.5])
    assert ["No space left" in r.getMessage() for r in caplog.records].count(True) == 1
    assert curves._writers == {}
    monkeypatch.undo()
    assert _read(other / "tensorboard" / "iterations")["iteration/best_utility"] == [(0, 0.5)]


def test_only_process_0_writes(tmp_path, monkeypatch):
    from hs_jax.runtime import distributed

    monkeypatch.setattr(distributed, "is_primary", lambda: False)
    curves = live_curves.LiveCurves(tmp_path)
    curves.iteration(_record(0, [0.5], [0.5], 0.5))
    curves.evaluations(0, [0.5])
    curves.close()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- tiny runs


@pytest.fixture
def hashed_utilities(monkeypatch):
    """Every system's dev and test utility a fixed hash of it (the generation still runs)."""
    from hs_jax.engine import scoring
    from hs_jax.methods import archive

    real = scoring.SystemScorer.score

    def score(self, systems, weights, items):
        real(self, systems, weights, items)
        keys = [json.dumps(archive.system_key(d, a), sort_keys=True) for d, a in systems]
        return np.asarray([(zlib.crc32(k.encode()) % 1000) / 1000 for k in keys], float)

    monkeypatch.setattr(scoring.SystemScorer, "score", score)


def _tiny(method="hs", **fields):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.outputs.export_experts = False
    c.outputs.plots = False
    for name, value in fields.items():
        c[name] = value
    return c


def _archive(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


def _check_evaluations(workdir: Path, results: dict) -> dict:
    from hs_jax.analysis.curves import best_so_far

    rows = _archive(workdir)
    assert [r["evaluation"] for r in rows] == list(range(results["evaluations"]))
    got = _read(workdir / "tensorboard" / "evaluations")
    steps = list(range(len(rows)))
    assert [s for s, _ in got["evaluation/utility"]] == steps
    assert got["evaluation/utility"] == [(r["evaluation"], _f32(r["dev_utility"])) for r in rows]
    assert len({v for _, v in got["evaluation/utility"]}) > 1  # systems told apart
    assert got["evaluation/best_so_far"] == [(e, _f32(b)) for e, b in enumerate(best_so_far(rows))]
    for field in live_curves.COST_FIELDS:
        points = got[f"evaluation/{field}"]
        assert [s for s, _ in points] == steps
        values = [v for _, v in points]
        assert values == sorted(values) and 0 < values[-1] <= results["cost"][field]
    return got


def test_a_search_writes_its_iterations_and_evaluations(tmp_path, hashed_utilities):
    import hs_jax

    workdir = tmp_path / "run"
    results = hs_jax.run(_tiny(), workdir)
    history, costs = results["history"], results["cost_per_iteration"]
    iterations = [h["iteration"] for h in history]
    assert iterations == [0, 1] == [c["iteration"] for c in costs]
    got = _read(workdir / "tensorboard" / "iterations")
    assert {tag: [s for s, _ in points] for tag, points in got.items()} == {
        f"iteration/{name}": iterations
        for name in (
            "best_utility", "role_best", "role_mean", "weight_best", "weight_mean", "stall",
            "evaluations", "generate_calls", "prompt_tokens", "generated_tokens", "seconds",
        )
    }  # fmt: skip
    assert got["iteration/best_utility"] == [
        (t, _f32(h["best_utility"])) for t, h in enumerate(history)
    ]
    for step in ("role", "weight"):
        assert got[f"iteration/{step}_best"] == [
            (t, _f32(h[step]["best"])) for t, h in enumerate(history)
        ]
        assert got[f"iteration/{step}_mean"] == [
            (t, _f32(h[step]["mean"])) for t, h in enumerate(history)
        ]
    assert got["iteration/stall"] == [(t, h["stall"]) for t, h in enumerate(history)]
    for field in live_curves.COST_FIELDS:
        assert got[f"iteration/{field}"] == [(c["iteration"], c[field]) for c in costs]
    per_iteration = 4  # n_graphs + n_assignments of the tiny config
    assert got["iteration/evaluations"] == [(t, per_iteration * (t + 1)) for t in iterations]
    assert all(v > 0 for _, v in got["iteration/seconds"])
    evaluations = _check_evaluations(workdir, results)
    assert evaluations["evaluation/best_so_far"][-1][1] == _f32(history[-1]["best_utility"])
    cumulative = evaluations["evaluation/generated_tokens"][-1][1]
    assert (
        cumulative
        == results["cost"]["generated_tokens"]
        - results["best_system"]["test_cost"]["generated_tokens"]
    )


def test_a_baseline_writes_its_evaluations_also_when_it_replays_them(tmp_path, hashed_utilities):
    """random_search scores through the Evaluator; a rerun of the same run (results.json
    gone) replays its archive and writes the same points again, after a restart at 0."""
    import hs_jax

    workdir = tmp_path / "run"
    results = hs_jax.run(_tiny("random_search", budget=6), workdir)
    first = _check_evaluations(workdir, results)
    assert not (workdir / "tensorboard" / "iterations").exists()
    (workdir / "results.json").unlink()
    again = hs_jax.run(_tiny("random_search", budget=6), workdir)
    assert len(list((workdir / "tensorboard" / "evaluations").iterdir())) == 2
    assert _check_evaluations(workdir, again) == first
