"""The sweep on real tiny runs and real processes (launch.sweep, hs_jax.sweep): a 3-trial sweep
on the journal file, grown to 4 by a rerun; the chosen trial's results.json equal to a plain
run with its settings; two workers on one journal with one SIGKILLed mid-trial; two workers
on one PostgreSQL study started from the system's binaries; a pruned real run."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_sweep import PAPER_GRID, _tiny_config

from hs_jax.sweep import space as space_lib
from hs_jax.sweep import study as study_lib

ROOT = Path(__file__).resolve().parents[1]


def _launch(workdir, *extra, env=None, wait=True):
    cmd = [
        sys.executable, "-m", "launch.sweep", "--config=configs/tiny.py", "--space=paper",
        f"--workdir={workdir}", "--config.outputs.plots=False",
        "--config.outputs.export_experts=False", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _trials(workdir, storage=None, name=None):
    import optuna

    workdir = Path(workdir)
    if storage is None:
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(workdir / "study.journal"))
        )
    return optuna.load_study(study_name=name or workdir.name, storage=storage).get_trials()


def _rows(workdir):
    return list(csv.DictReader((Path(workdir) / "summary.csv").read_text().splitlines()))


def _results(workdir, slot_dir):
    return json.loads((Path(workdir) / slot_dir / "results.json").read_text())


def _assert_exact(workdir, trials, n):
    """n slots, each complete once with its results.json, and no two slots alike."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n
    dirs = [t.user_attrs["workdir"] for t in complete]
    assert len(set(dirs)) == n  # one result per slot
    for t in complete:  # the study's value is the run's dev utility
        results = _results(workdir, t.user_attrs["workdir"])
        assert t.value == results["best_system"]["dev_utility"]
    assert sorted(r["workdir"] for r in _rows(workdir)) == sorted(dirs)
    assert {r["status"] for r in _rows(workdir)} == {"complete"}


def test_sweep_of_three_then_one_more_and_the_choice_is_a_plain_run(tmp_path):
    workdir = tmp_path / "sweep"
    out = _launch(workdir, "--trials=3")
    trials = _trials(workdir)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    _assert_exact(workdir, trials, 3)
    assert sorted(p.name for p in (workdir / "trials").iterdir()) == ["0000", "0001", "0002"]
    for t in trials:
        assert all(t.params[k] in g for k, g in PAPER_GRID.items())
    best = json.loads((workdir / "best.json").read_text())
    devs = [t.value for t in trials]
    assert best["dev_utility"] == max(devs) and best["slot"] == devs.index(max(devs))
    chosen = _results(workdir, best["workdir"])
    assert best["test"]["utility"] == chosen["best_system"]["test_utility"]
    assert best["test"]["interval"] == chosen["best_system"]["test_interval"]
    assert best["test"]["vs_best_single"] == chosen["vs_best_single"]
    for name in ("summary.md", "summary.csv", "best.json"):
        assert (workdir / name).stat().st_size > 0
    for picture in ("history.png", "importance.png"):
        assert (workdir / picture).read_bytes()[:4] == b"\x89PNG"
    md = (workdir / "summary.md").read_text()
    assert "3 of 3 trials finished: 3 complete" in md
    assert f"{sum(t.user_attrs['evaluations'] for t in trials)} utility evaluations" in md
    assert "The chosen trial (on dev only)" in out and "test utility" in out

    # A rerun asking for 4 runs exactly one more trial; the finished ones are left alone.
    stamps = {
        p.name: (p / "results.json").stat().st_mtime_ns for p in (workdir / "trials").iterdir()
    }
    _launch(workdir, "--trials=4")
    trials = _trials(workdir)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    _assert_exact(workdir, trials, 4)
    assert {
        p: (workdir / "trials" / p / "results.json").stat().st_mtime_ns for p in stamps
    } == stamps
    assert "4 of 4 trials finished" in (workdir / "summary.md").read_text()

    # The chosen trial's results.json is that of a plain run with its settings.
    from hs_jax.pipeline import runner

    c = space_lib.with_values(_tiny_config(), best["fields"])
    plain = runner.run(c, tmp_path / "plain")
    chosen.pop("seconds"), plain.pop("seconds")
    assert json.dumps(plain, sort_keys=True) == json.dumps(chosen, sort_keys=True)


def test_a_worker_killed_mid_trial_leaves_no_duplicate_and_no_lost_result(tmp_path):
    """Two workers on one journal file; one dies (SIGKILL) after its trial's first checkpoint.
    The other marks that trial failed, runs it again in its workdir from the checkpoint, and
    the study ends with 3 slots, each with one result; a rerun has nothing left to do."""
    workdir = tmp_path / "sweep"
    killed = _launch(
        workdir, "--trials=3", env={"HS_JAX_TEST_KILL_AT": "checkpoint_committed:1"}, wait=False
    )
    other = _launch(workdir, "--trials=3", wait=False)
    killed_out, _ = killed.communicate(timeout=900)
    assert killed.returncode == -9, killed_out[-3000:]
    other_out, _ = other.communicate(timeout=900)
    assert other.returncode == 0, other_out[-4000:]
    trials = _trials(workdir)
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "died" in failed[0].user_attrs["error"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == failed[0].params
    assert retry[0].user_attrs["workdir"] == failed[0].user_attrs["workdir"]
    assert len(trials) == 4
    _assert_exact(workdir, trials, 3)
    # The retry resumed the dead worker's checkpoint rather than starting over.
    assert "resumed" in other_out
    rerun = _launch(workdir, "--trials=3")
    assert len(_trials(workdir)) == 4 and "3 of 3 trials finished" in rerun


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_binaries() -> str | None:
    initdb = shutil.which("initdb")
    if initdb is None:
        for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (folder / "initdb").exists():
                return str(folder)
        return None
    return str(Path(initdb).resolve().parent)


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of this machine's binaries in a temporary folder, on a unix socket
    there (as the unprivileged `postgres` user when run as root: the server refuses root)."""
    bindir = _pg_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)")
    pytest.importorskip(
        "psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)"
    )
    root = Path(tempfile.mkdtemp(prefix="hs_pg_"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        import pwd

        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to start the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]

    def run(*args):
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, timeout=120)

    data = root / "data"
    run(f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-c listen_addresses='' -k {root} -c fsync=off -c max_connections=50"
    run(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start")
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={root}"
    finally:
        run(f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    workdir = tmp_path / "sweep"
    args = ("--trials=4", f"--storage={postgres_url}", "--study_name=pg", "--heartbeat_s=5")
    workers = [_launch(workdir, *args, wait=False) for _ in range(2)]
    outs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outs)
    import optuna

    trials = _trials(workdir, optuna.storages.RDBStorage(postgres_url), "pg")
    assert len(trials) == 4 and [t.state.name for t in trials] == ["COMPLETE"] * 4
    _assert_exact(workdir, trials, 4)
    assert len({t.user_attrs["worker"] for t in trials}) in (1, 2)
    assert "postgres" in (workdir / "summary.md").read_text()


# ----------------------------------------------------------------------------- pruning, for real


def test_a_real_run_is_pruned_mid_search_and_kept(tmp_path):
    """The per-iteration callback reaches the run's search: a pruner that stops every trial
    after its first iteration stops the real tiny run there, its checkpoint kept, pruned.json
    written, and the slot done (a rerun does not run it again)."""
    import optuna

    class AfterFirstIteration(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return bool(trial.intermediate_values)

    c = _tiny_config()
    c.search.max_iterations = 3
    c.search.patience = 3
    space = space_lib.read_space("paper")
    options = study_lib.SweepOptions(trials=1, prune=True)
    out = study_lib.run_sweep(
        c, tmp_path / "sweep", space, options, progress=False, pruner=AfterFirstIteration()
    )
    slot = tmp_path / "sweep" / "trials" / "0000"
    note = json.loads((slot / "pruned.json").read_text())
    assert note["iterations_run"] == 1 and note["evaluations"] > 0
    assert not (slot / "results.json").exists() and (slot / "search").is_dir()
    assert out["rows"][0]["status"] == "pruned" and out["finished"] == 1
    trial = _trials(tmp_path / "sweep")[0]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    again = study_lib.run_sweep(c, tmp_path / "sweep", space, options, progress=False)
    assert len(_trials(tmp_path / "sweep")) == 1 and again["finished"] == 1
