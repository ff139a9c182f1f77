"""`launch.compare --tune_trials` (hs_jax.sweep.method_spaces): every method with a declared
space gets the same number of trials over it, chosen on dev, each trial of a budgeted method
with the tuned 'hs' cell's chosen run's evaluations, and the table counts every trial's
evaluations in the method's cost; a method without a space runs once."""

import csv
import io
import json

from test_compare import _tiny_config

from hs_jax.sweep import method_spaces


def test_every_declared_space_fits_the_config_of_its_method():
    from hs_jax import methods
    from hs_jax.pipeline import door
    from hs_jax.sweep import space as space_lib

    assert method_spaces.tunable("hs") and method_spaces.tunable("hs_no_role")
    assert not method_spaces.tunable("best_single") and not method_spaces.tunable("chain")
    for name in methods.METHODS:
        space = method_spaces.space_for(name)
        if space is None or name == "meta_agent":  # needs a designer the tiny config has not
            continue
        c = _tiny_config()
        c.method = name
        space_lib.check_space(c, space, door.open_config)


def test_compare_tunes_each_method_with_a_space_equally(tmp_path):
    from hs_jax.comparison import compare

    entries = compare.compare(
        _tiny_config(), tmp_path, method_list=["hs", "gpt_swarm", "best_single"],
        task_list=["nlgraph_gen"], seeds=[0], tune_trials=2, progress=False,
    )  # fmt: skip
    by = {e["method"]: e for e in entries}
    assert [by[m]["status"] for m in ("hs", "gpt_swarm", "best_single")] == ["done"] * 3
    assert by["hs"]["workdir"] == "nlgraph_gen/hs/tuned_seed_0" and by["hs"]["tuned"] == 2
    assert by["gpt_swarm"]["tuned"] == 2 and "tuned" not in by["best_single"]
    assert by["best_single"]["workdir"] == "nlgraph_gen/best_single/seed_0"

    hs_dir = tmp_path / by["hs"]["workdir"]
    hs = json.loads((hs_dir / "results.json").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(hs_dir.glob("trials/*/results.json"))]
    assert len(trials) == 2
    # The cell's cost is every trial's; its test numbers the chosen run's (chosen on dev).
    assert hs["evaluations"] == sum(t["evaluations"] for t in trials)
    calls = sum(t["cost"]["generate_calls"] for t in trials)
    assert hs["cost"]["generate_calls"] == calls
    chosen = json.loads((hs_dir / hs["tuning"]["chosen"]["workdir"] / "results.json").read_text())
    assert hs["best_system"] == chosen["best_system"]
    assert hs["tuning"]["run"]["evaluations"] == chosen["evaluations"]
    assert chosen["best_system"]["dev_utility"] == max(
        t["best_system"]["dev_utility"] for t in trials
    )
    # Each gpt_swarm trial had the budget of hs's chosen run.
    gs_dir = tmp_path / by["gpt_swarm"]["workdir"]
    assert by["gpt_swarm"]["budget"] == chosen["evaluations"]
    for path in gs_dir.glob("trials/*/results.json"):
        assert json.loads(path.read_text())["evaluations"] <= chosen["evaluations"]
    table = {
        r["method"]: r for r in csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text()))
    }
    assert float(table["hs"]["evaluations"]) == hs["evaluations"]

    # A rerun recomputes nothing: each sweep is complete.
    stamps = {
        p: p.stat().st_mtime_ns for p in tmp_path.glob("nlgraph_gen/*/*/trials/*/results.json")
    }
    again = compare.compare(
        _tiny_config(), tmp_path, method_list=["hs", "gpt_swarm", "best_single"],
        task_list=["nlgraph_gen"], seeds=[0], tune_trials=2, progress=False,
    )  # fmt: skip
    assert [e["status"] for e in again] == ["done"] * 3
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
