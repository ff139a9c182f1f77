"""The sweep's parts in one process (hs_jax.sweep): the paper's space draws only its grid, a
space file's mistakes named in one line, and the study's bookkeeping (claim, retry, pruning,
the choice on dev, the summary) with a deterministic toy run in place of a real one, so each
rule is checked exactly; tests/test_sweep_workers.py runs the real tiny runs and processes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_compare import _tiny_config

from hs_jax.runtime.errors import ConfigError, UserError
from hs_jax.sweep import space as space_lib
from hs_jax.sweep import study as study_lib
from hs_jax.sweep import summary as summary_lib

ROOT = Path(__file__).resolve().parents[1]

PAPER_GRID = {
    "phi_v": {0.1, 0.2, 0.3},
    "phi_p": {0.1, 0.2, 0.3, 0.4, 0.5},
    "phi_g": {0.2, 0.3, 0.4, 0.5, 0.6},
    "phi_w": {0.01, 0.05, 0.1},
    "step": {0.5, 0.6, 0.7, 0.8, 0.9, 1.0},
}


def _number(v):
    return isinstance(v, int | float) and not isinstance(v, bool)


def _asked(sampler, space, n):
    """`n` draws of `space` from `sampler` in an in-memory study, told a toy value each."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    draws = []
    for _ in range(n):
        trial = study.ask()
        params = space_lib.suggest(trial, space)
        draws.append(params)
        study.tell(trial, sum(float(v) for v in params.values() if _number(v)))
    return draws


# ----------------------------------------------------------------------------- the space


def test_paper_space_draws_only_the_papers_grid_and_all_of_it():
    space = space_lib.read_space("paper")
    fields = space_lib.field_values(space, {p.name: 0.5 for p in space})
    # One draw for both swarms: each coefficient sets the role and the weight swarm's field.
    assert set(fields) == {
        f"search.{s}.{k}" for s in ("roles_pso", "weights_pso") for k in PAPER_GRID
    }
    draws = _asked(study_lib._sampler("random", 0), space, 600)
    for name, grid in PAPER_GRID.items():
        seen = {d[name] for d in draws}
        assert seen == grid, name  # nothing outside the grid, every value of it drawn
        # Uniform over the list: each value near its share (600 draws, at least half of it).
        counts = [sum(d[name] == v for d in draws) for v in grid]
        assert min(counts) > 0.5 * len(draws) / len(grid)
    # TPE stays on the grid too.
    for d in _asked(study_lib._sampler("tpe", 0), space, 25):
        assert all(d[k] in PAPER_GRID[k] for k in PAPER_GRID)


def test_draws_depend_on_the_seed_and_trial_number_not_the_worker():
    space = space_lib.read_space("paper")
    first = _asked(study_lib._sampler("random", 3), space, 20)
    again = _asked(study_lib._sampler("random", 3), space, 20)  # another worker, same seed
    other = _asked(study_lib._sampler("random", 4), space, 20)
    assert first == again and first != other


def test_space_file_forms_round_trip(tmp_path):
    text = {
        "search.n_graphs": {"low": 2, "high": 4},
        "baselines.lorahub_l1": {"low": 0.001, "high": 0.1, "log": True},
        "search.weights_pso.step": {"low": 0.5, "high": 1.0, "step": 0.25},
        "phi_g": {"fields": ["search.roles_pso.phi_g", "search.weights_pso.phi_g"],
                  "choices": [0.2, 0.4]},
        "task.answer_prefix": ["", "Answer:"],
    }  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(text))
    (tmp_path / "s.yaml").write_text(
        "search.n_graphs: {low: 2, high: 4}\nbaselines.lorahub_l1: {low: 0.001, high: 0.1, "
        "log: true}\nsearch.weights_pso.step: {low: 0.5, high: 1.0, step: 0.25}\n"
        "phi_g: {fields: [search.roles_pso.phi_g, search.weights_pso.phi_g], "
        "choices: [0.2, 0.4]}\ntask.answer_prefix: ['', 'Answer:']\n"
    )
    space = space_lib.read_space(str(tmp_path / "s.json"))
    assert space == space_lib.read_space(str(tmp_path / "s.yaml"))
    assert space_lib.parse_space(space_lib.to_json(space)) == space
    assert space[0].is_int and not space[1].is_int
    space_lib.check_space(_tiny_config(), space, study_lib.door.open_config)
    for d in _asked(study_lib._sampler("random", 0), space, 40):
        assert isinstance(d["search.n_graphs"], int) and 2 <= d["search.n_graphs"] <= 4
        assert 0.001 <= d["baselines.lorahub_l1"] <= 0.1
        assert d["search.weights_pso.step"] in (0.5, 0.75, 1.0)
        assert d["phi_g"] in (0.2, 0.4) and d["task.answer_prefix"] in ("", "Answer:")


BAD_SPACES = [
    ({"search.phi_v": [0.1]}, "--space search.phi_v: config.search.phi_v: no such config field"),
    ({"search.n_graphs": {"low": 5, "high": 2}}, "search.n_graphs: a range needs numbers low <"),
    ({"search.n_graphs": {"low": 1, "high": 4, "lg": 1}}, "search.n_graphs: unknown key(s) ['lg']"),
    ({"search.n_graphs": []}, "search.n_graphs: choices must be a non-empty list"),
    ({"search.roles_pso.phi_v": [0.1, 0.1]}, "search.roles_pso.phi_v: choices repeat a value"),
    ({"baselines.lorahub_l1": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"seeds": ["0,1"]}, "config.seeds: a sweep sets it, a trial cannot"),
    (
        {"a": {"fields": ["search.n_graphs"], "choices": [2]}, "search.n_graphs": [3]},
        "search.n_graphs is set by both a and search.n_graphs",
    ),
    ({"search.roles_pso.phi_v": [0.1, -1.0]}, "--space search.roles_pso.phi_v=-1.0: config."),
    ({"search.n_graphs": [2, "x"]}, "--space search.n_graphs='x': config.search.n_graphs='x'"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPACES)
def test_a_bad_space_entry_is_named(spec, message):
    with pytest.raises((UserError, ConfigError)) as e:
        study_lib.check(_tiny_config(), space_lib.parse_space(spec), study_lib.SweepOptions(2))
    assert message in str(e.value)


def test_launcher_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "bad.json").write_text('{"search.n_graphs": {"low": 1}}')
    for args, expected in [
        ([f"--space={tmp_path / 'bad.json'}"], "a range needs both 'low' and 'high'"),
        ([f"--space={tmp_path / 'none.json'}"], "neither 'paper' nor a file"),
        (["--storage=redis://x"], "--storage=redis://x: expected a postgresql://"),
        (["--trials=0"], "--trials=0: must be >= 1"),
        (["--config.seeds=0,1"], "config.seeds='0,1': a trial is one run"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "launch.sweep", "--config=configs/tiny.py",
             f"--workdir={tmp_path / 'w'}", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr[-2000:]
        lines = [line for line in out.stderr.splitlines() if line.startswith("launch.sweep:")]
        assert len(lines) == 1 and expected in lines[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()  # refused before anything was written


# ----------------------------------------------------------------------------- the study, toy runs


class ToyRuns:
    """Stands in for `runner.run_opened`: a run whose best dev utility after iteration i is
    10 * phi_v * (i + 1) / 5, reported per iteration through the callbacks as the search does;
    `fail_slots` raise once, as a crashed run would."""

    def __init__(self, fail_slots=()):
        self.calls, self.fail_slots = [], set(fail_slots)

    def __call__(self, c, workdir, *, callbacks=()):
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.calls.append(workdir.name)
        if int(workdir.name) in self.fail_slots:
            self.fail_slots.discard(int(workdir.name))
            raise RuntimeError("injected failure")
        u = 10 * c.search.roles_pso.phi_v
        for i in range(5):
            with open(workdir / "archive.jsonl", "a") as f:
                f.write("{}\n{}\n")
            for callback in callbacks:
                callback({"iteration": i, "best_utility": u * (i + 1) / 5})
        results = {
            "best_system": {"dev_utility": u, "test_utility": u / 2, "test_interval": [0, u]},
            "best_single": {"name": "expert_0", "test_utility": 0.0},
            "vs_best_single": None, "n_test": 3, "evaluations": 10, "iterations": 5,
            "stop_reason": "max_iterations", "seconds": 0.01,
            "cost": {"generate_calls": 1, "prompt_tokens": 2, "generated_tokens": 3},
        }  # fmt: skip
        (workdir / "results.json").write_text(json.dumps(results))
        return results


SPACE = {"search.roles_pso.phi_v": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}


def _study(workdir):
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "study.journal"))
    )
    return optuna.load_study(study_name=workdir.name, storage=storage)


def _toy_sweep(monkeypatch, workdir, runs, **options):
    monkeypatch.setattr(study_lib.runner, "run_opened", runs)
    space = space_lib.parse_space(SPACE)
    return study_lib.run_sweep(
        _tiny_config(), workdir, space, study_lib.SweepOptions(**options), progress=False
    )


def test_pruning_stops_trials_below_the_median_and_the_choice_is_on_dev(tmp_path, monkeypatch):
    workdir = tmp_path / "toy"
    runs = ToyRuns()
    out = _toy_sweep(
        monkeypatch, workdir, runs, trials=10, prune=True, prune_startup=2, prune_warmup=0
    )
    study = _study(workdir)
    trials = study.get_trials()
    assert len(trials) == 10
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert pruned and len(complete) >= 2
    for t in pruned:  # the median rule, checked against the trials finished before it
        step = max(t.intermediate_values)
        earlier = [c.intermediate_values[step] for c in complete if c.number < t.number]
        earlier += [
            p.intermediate_values[step]
            for p in pruned
            if p.number < t.number and step in p.intermediate_values
        ]
        assert t.intermediate_values[step] < sorted(earlier)[len(earlier) // 2] + 1e-12
        note = json.loads((workdir / "trials" / f"{t.number:04d}" / "pruned.json").read_text())
        assert note["iterations_run"] == step + 1 < 5
        assert note["evaluations"] == 2 * (step + 1)  # archive.jsonl's rows when it stopped
        assert not (workdir / "trials" / f"{t.number:04d}" / "results.json").exists()
    best = max(complete, key=lambda t: (t.value, -t.number))
    chosen = json.loads((workdir / "best.json").read_text())
    assert chosen["trial"] == best.number and chosen["dev_utility"] == best.value
    assert chosen["test"]["utility"] == best.value / 2
    assert chosen["fields"] == {"search.roles_pso.phi_v": best.params["search.roles_pso.phi_v"]}
    assert (
        chosen["evaluations"]
        == out["evaluations"]
        == sum(t.user_attrs["evaluations"] for t in trials)
    )
    md = (workdir / "summary.md").read_text()
    assert f"{len(pruned)} trials pruned" in md and "evaluations saved" in md
    assert md.count("test utility") == 1  # the chosen trial's only
    rows = list(__import__("csv").DictReader((workdir / "summary.csv").read_text().splitlines()))
    assert [r["status"] for r in rows] == [
        "pruned" if t.state.name == "PRUNED" else "complete" for t in trials
    ]
    for picture in ("history.png", "importance.png"):
        assert (workdir / picture).read_bytes()[:4] == b"\x89PNG"
    assert set(out["importance"]) == {"search.roles_pso.phi_v"}


def test_a_failed_trial_is_run_again_with_its_settings_in_its_workdir(tmp_path, monkeypatch):
    workdir = tmp_path / "toy"
    runs = ToyRuns(fail_slots={1})
    with pytest.raises(RuntimeError, match="injected failure"):
        _toy_sweep(monkeypatch, workdir, runs, trials=3)
    assert runs.calls == ["0000", "0001"]
    out = _toy_sweep(monkeypatch, workdir, runs, trials=3)  # the rerun
    # A slot is named by the trial it started as: the retry (trial 2) runs in 0001.
    assert runs.calls == ["0000", "0001", "0001", "0003"]
    trials = _study(workdir).get_trials()
    assert [(t.number, t.state.name) for t in trials] == [
        (0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "COMPLETE"),
    ]  # fmt: skip
    assert trials[2].params == trials[1].params
    assert trials[2].system_attrs["failed_trial"] == 1
    assert trials[1].user_attrs["error"] == "RuntimeError: injected failure"
    assert [r["slot"] for r in out["rows"]] == [0, 1, 3]
    assert [r["retries"] for r in out["rows"]] == [0, 1, 0]
    # Nothing more to do: a rerun with the same size runs nothing; a larger one adds slots.
    _toy_sweep(monkeypatch, workdir, runs, trials=3)
    assert len(runs.calls) == 4
    _toy_sweep(monkeypatch, workdir, runs, trials=4)
    assert runs.calls[4:] == ["0004"] and len(_study(workdir).get_trials()) == 5


def test_retries_are_bounded_and_another_definition_is_refused(tmp_path, monkeypatch):
    workdir = tmp_path / "toy"

    class Always(ToyRuns):
        def __call__(self, c, workdir, *, callbacks=()):
            self.calls.append(Path(workdir).name)
            raise RuntimeError("always")

    runs = Always()
    for _ in range(3):  # the first try and max_retries=2 more
        with pytest.raises(RuntimeError):
            _toy_sweep(monkeypatch, workdir, runs, trials=1, max_retries=2)
    out = _toy_sweep(monkeypatch, workdir, runs, trials=1, max_retries=2)
    assert runs.calls == ["0000"] * 3 and out["rows"][0]["status"] == "failed"
    assert out["finished"] == 1 and out["best"] is None
    c = _tiny_config()
    c.search.n_graphs = 3
    monkeypatch.setattr(study_lib.runner, "run_opened", runs)
    with pytest.raises(UserError, match="config.search.n_graphs: saved 2, now 3"):
        study_lib.run_sweep(
            c, workdir, space_lib.parse_space(SPACE), study_lib.SweepOptions(1), progress=False
        )


def test_best_row_takes_the_lowest_slot_among_equals():
    rows = [
        {"slot": s, "status": st, "dev_utility": u}
        for s, st, u in [(0, "complete", 0.5), (1, "pruned", 0.9), (2, "complete", 0.7),
                         (3, "complete", 0.7), (4, "failed", None)]
    ]  # fmt: skip
    best, ties = summary_lib.best_row(rows)
    assert (best["slot"], ties) == (2, 2)
    assert summary_lib.best_row([r for r in rows if r["status"] != "complete"]) == (None, 0)


def test_intermediate_reads_each_methods_record():
    assert study_lib.intermediate({"iteration": 0, "best_utility": 0.5, "best": 0.1}) == 0.5
    assert study_lib.intermediate({"iteration": 0, "best": 0.25}) == 0.25
    assert study_lib.intermediate({"iteration": 0, "best_utility": None}) is None
    assert study_lib.intermediate({"iteration": 0, "best_utility": math.nan}) is None
