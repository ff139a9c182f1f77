"""The search's typed history (hs_jax.swarm.history): records round-trip through JSON exactly, and a
small real search writes the same history, key for key and value for value, as the code before
the typed records (tests/data/search_history.json, written by it), so results.json files and
checkpoints written before read the same; the checkpoint summary reads the typed records. The
'authors' history was written again when the authors' schedule took round 0's best system from
the graphs only (their code's rule): its round-0 best went from a JFK assignment's to the best
graph's; the two other histories are the old code's."""

import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.swarm import checkpoint_summary, graph, history, pso, search

GOLDEN = Path(__file__).parent / "data" / "search_history.json"


def _problem():
    """3 experts: utility = edges shared with a fixed DAG - 0.1 x the mean distance of the
    assigned experts from a hidden target; NaN for some systems (a failed system)."""
    n = 3
    target = graph.Dag(n, ((0, 2), (1, 2)), 2)
    goal = jnp.arange(n * 2, dtype=jnp.float32).reshape(n, 2) / 4
    experts = {"w": jnp.zeros((n, 2), jnp.float32)}

    def score(systems, weights):
        w = np.asarray(weights["w"], np.float64)
        dist = np.abs(w - np.asarray(goal)).sum(-1)
        out = []
        for dag, a in systems:
            if dag.end == 0 and a[0] == 1:
                out.append(np.nan)
                continue
            out.append(len(set(dag.edges) & set(target.edges)) - 0.1 * dist[list(a)].mean())
        return np.array(out, float)

    return experts, score


# Both schedules, dropout (skipped steps), the L1 term, restarts, and a run without role step.
CONFIGS = {
    "hs_jax": dict(schedule="hs_jax", dropout_role=0.4, dropout_weight=0.4, l1_lambda=0.01),
    "authors": dict(
        schedule="authors", top_p=0.0, dropout_weight=0.3,
        roles_pso=pso.PSOConfig(restart_patience=0.5, patience=2, restart_rule="authors"),
    ),
    "no_role": dict(role_step=False),
}  # fmt: skip


def _histories(workdir=None):
    experts, score = _problem()
    out = {}
    for name, kw in CONFIGS.items():
        cfg = search.SearchConfig(
            n_graphs=3, n_assignments=2, max_iterations=4, patience=3, seed=3, **kw
        )
        wd = None if workdir is None else str(workdir / name)
        out[name] = search.run_search(experts, score, cfg, workdir=wd, progress=False).history
    return out


@pytest.fixture(scope="module")
def histories():
    return _histories()


def test_a_real_search_writes_the_history_it_wrote_before(histories):
    assert json.dumps(histories, indent=1) == GOLDEN.read_text()


def test_the_golden_history_covers_every_kind_of_step():
    records = [r for h in json.loads(GOLDEN.read_text()).values() for r in h]
    steps = [r[k] for r in records for k in ("role", "weight")]
    assert {s["ran"] for s in steps} == {True, False}
    assert {s["reason"] for s in steps if not s["ran"]} == {"off", "dropout"}
    assert any(math.isnan(u) for s in steps if s["ran"] for u in s["utilities"])


def test_from_json_to_json_round_trips_exactly(histories):
    for records in histories.values():
        for d in records:
            typed = history.IterationRecord.from_json(d)
            assert json.dumps(typed.to_json()) == json.dumps(d)
            assert list(typed.to_json()) == list(d)  # the same keys in the same order
            again = history.IterationRecord.from_json(json.loads(json.dumps(typed.to_json())))
            assert json.dumps(again.to_json()) == json.dumps(d)


def test_typed_fields():
    records = [
        history.IterationRecord.from_json(r)
        for h in json.loads(GOLDEN.read_text()).values()
        for r in h
    ]
    for r in records:
        assert isinstance(r.role, history.RoleStep | history.Skipped)
        assert isinstance(r.weight, history.WeightStep | history.Skipped)
        if r.role.ran:
            assert all(isinstance(d, graph.Dag) for d in r.role.dags)
            assert len(r.role.dags) == len(r.role.utilities) == len(r.role.objective)
        if r.weight.ran:
            assert isinstance(r.weight.dag, graph.Dag)
            assert all(len(a) == r.weight.dag.n for a in r.weight.assignments)
        assert r.step("role") is r.role and r.step("weight") is r.weight
    with pytest.raises(ValueError, match="step must be one of"):
        records[0].step("both")


def test_a_malformed_record_fails_naming_the_missing_field():
    d = json.loads(GOLDEN.read_text())["hs_jax"][0]
    del d["stall"]
    with pytest.raises(KeyError, match="stall"):
        history.IterationRecord.from_json(d)


def test_is_search_record():
    d = json.loads(GOLDEN.read_text())["hs_jax"][0]
    assert history.is_search_record(d)
    assert not history.is_search_record({"iteration": 0, "utilities": [0.5], "best": 0.5})
    # Both steps with 'ran' but not the rest of a search record: a method's own record.
    own = {"role": {"ran": True, "utilities": [0.5, None]}, "weight": {"ran": False}}
    assert not history.is_search_record(own)
    assert history.step_stats(own, "role") == (0.5, 0.5, 0.5)
    assert all(math.isnan(x) for x in history.step_stats(own, "weight"))
    assert history.step_stats({"role": {"utilities": [0.25]}}, "role") == (0.25, 0.25, 0.25)


def test_analysis_curves_read_the_records_as_the_report_does():
    from hs_jax.analysis import curves
    from hs_jax.pipeline import report

    records = json.loads(GOLDEN.read_text())["hs_jax"]
    drawn, read = report.curves(records), curves.optimisation_curves(records)
    for title, series in read.items():
        assert json.dumps(series) == json.dumps({k: drawn[title][k] for k in ("best", "mean")})


def test_checkpoint_round_trip_and_summary(tmp_path, histories):
    """Checkpointed runs return the same history; the summary's table reads the records."""
    assert json.dumps(_histories(tmp_path)) == json.dumps(histories)  # NaN == NaN in JSON
    summary = checkpoint_summary.summarize_checkpoint(tmp_path / "hs_jax")
    want = [
        {
            "iteration": r["iteration"],
            "best_so_far": r["best_utility"],
            **{
                f"{phase}_{stat}": r[phase][stat] if r[phase]["ran"] else None
                for phase in ("role", "weight")
                for stat in ("best", "mean", "worst")
            },
        }
        for r in histories["hs_jax"]
    ]
    assert json.dumps(summary["utilities"]) == json.dumps(want)


def test_curves_read_the_search_records_and_other_methods_step_utilities():
    from hs_jax.pipeline import report

    records = json.loads(GOLDEN.read_text())["hs_jax"]
    drawn = report.curves(records)
    for step, title in (("role", "role step"), ("weight", "weight step")):
        want = [r[step]["best"] if r[step]["ran"] else math.nan for r in records]
        assert json.dumps(drawn[title]["best"]) == json.dumps(want)
    # A baseline's own records: a role step's utilities (None = a failed system), no weight.
    own = [
        {"iteration": 0, "role": {"ran": True, "utilities": [0.5, None, 0.25]}},
        {"iteration": 1, "role": {"ran": True, "utilities": [None]}},
        {"iteration": 2, "utilities": [1.0]},
    ]
    drawn = report.curves(own)
    assert list(drawn) == ["role step"]
    assert json.dumps(drawn["role step"]) == json.dumps(
        {"best": [0.5, math.nan], "mean": [0.375, math.nan], "worst": [0.25, math.nan]}
    )
