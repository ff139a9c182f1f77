"""One workdir, one run: concurrent launches, stale locks, changed settings, finished runs,
restarts, unusable checkpoints, duplicate expert names (hs_jax.store.workdir,
hs_jax.setup.identity)."""

import hashlib
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hs_jax
from hs_jax.models.gguf_io import PYPI_MODEL_NAME
from hs_jax.pipeline import door
from hs_jax.setup import assembly
from hs_jax.setup import identity as run_identity
from hs_jax.store import workdir as workdir_lib
from hs_jax.store.workdir import WorkdirBusyError, WorkdirError

ROOT = Path(__file__).resolve().parents[2]


def _tiny(**overrides):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return c


def _tree(root: Path) -> dict:
    """Every entry under root but the lock file: bytes, size and mtime of files, mtime of
    folders."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == workdir_lib.LOCK_NAME:
            continue
        st = p.stat()
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _without_seconds(results: dict) -> str:
    return json.dumps({k: v for k, v in results.items() if k != "seconds"}, sort_keys=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (in-process), never modified: tests work on copies."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    hs_jax.run(_tiny(), workdir)
    return workdir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def _half_finished(finished: Path, dst: Path) -> Path:
    """The finished run as it was after its first checkpoint (outputs and step 2 removed)."""
    workdir = _copy(finished, dst)
    for name in ("results.json", "best_dag.png", "curves.png"):
        (workdir / name).unlink()
    shutil.rmtree(workdir / "best_experts")
    shutil.rmtree(workdir / "search" / "2")
    return workdir


# ----------------------------------------------------------------------------- one writer


def _launch(workdir, *extra):
    cmd = [sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [*cmd, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _holder(workdir) -> int | None:
    """The pid written into the lock file (read only: probing the flock could refuse a run)."""
    try:
        return json.loads((workdir / workdir_lib.LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_concurrent_launches_one_runs_the_others_are_refused(tmp_path):
    """Two launches at once and a third 3 s later: one runs to the end, the others are refused
    at once, in one line naming the holder, and write nothing."""
    workdir = tmp_path / "run"
    a, b = _launch(workdir), _launch(workdir)
    time.sleep(3)
    while _holder(workdir) not in (a.pid, b.pid):  # the third comes once one holds the lock
        assert a.poll() is None or b.poll() is None
        time.sleep(0.1)
    c = _launch(workdir)
    outs = {p: p.communicate(timeout=600) for p in (a, b, c)}
    winners = [p for p in (a, b) if p.returncode == 0]
    assert len(winners) == 1, [(p.returncode, outs[p][1][-2000:]) for p in (a, b)]
    winner = winners[0]
    for loser in {a, b, c} - {winner}:
        assert loser.returncode == 1
        err = outs[loser][1].strip().splitlines()
        assert err[-1].startswith(f"launch.main: workdir {workdir} is in use by pid {winner.pid}")
        assert " since " in err[-1]
        assert "Traceback" not in outs[loser][1]
    holder = json.loads((workdir / workdir_lib.LOCK_NAME).read_text())
    assert holder["pid"] == winner.pid
    assert json.loads((workdir / "results.json").read_text())["iterations"] == 2


def test_a_stale_lock_is_not_obeyed(tmp_path, finished):
    """A lock file left by a killed holder (its flock died with it) does not block a run."""
    workdir = _copy(finished, tmp_path / "run")
    code = (
        "import os, signal, sys; from hs_jax.store import workdir as w\n"
        "with w.lock(sys.argv[1]): os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(workdir)], cwd=ROOT)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert json.loads((workdir / workdir_lib.LOCK_NAME).read_text())["pid"] == proc.pid
    with workdir_lib.lock(workdir):
        with pytest.raises(WorkdirBusyError, match=f"in use by pid {os.getpid()} on "):
            with workdir_lib.lock(workdir):
                pass
    assert hs_jax.run(_tiny(), workdir)["iterations"] == 2


# ----------------------------------------------------------------------------- identity


def _other_task(tmp_path, finished):
    other = tmp_path / "other_task.json"
    shutil.copy(finished / "task.json", other)
    return str(other)


def _edit_task(workdir):
    path = workdir / "task.json"
    data = json.loads(path.read_text())
    data["test"][0]["question"] += " "
    path.write_text(json.dumps(data, indent=1))


CHANGES = {
    "seed": ({"seed": 1}, "seed: saved 0, now 1"),
    "n_graphs": ({"search.n_graphs": 3}, "search.n_graphs: saved 2, now 3"),
    "experts.n": ({"experts.n": 4}, "experts.n: saved 3, now 4"),
    "task.path": ("other_task", "task.path: saved '', now "),
    "task_content": ("edit_task", "task_file.sha256: saved "),
    "task.gen.n_dev": ({"task.gen.n_dev": 4}, "task.gen.n_dev: saved 3, now 4"),
    "protocol": ({"protocol": "authors"}, "protocol: saved 'hs_jax', now 'authors'"),
    "length_buckets": ({"engine.length_buckets": (32, 4096)}, "engine.length_buckets: saved "),
    "model.spec": (
        {"model.spec": PYPI_MODEL_NAME},
        f"model.spec: saved 'tiny', now {PYPI_MODEL_NAME!r}",
    ),
}


@pytest.mark.parametrize("state", ["finished", "half_finished"])
@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_changed_setting_is_refused_touching_nothing(tmp_path, finished, state, change):
    overrides, line = change
    make = _copy if state == "finished" else _half_finished
    workdir = make(finished, tmp_path / "run")
    if overrides == "other_task":
        overrides = {"task.path": _other_task(tmp_path, finished)}
    elif overrides == "edit_task":
        _edit_task(workdir)
        overrides = {}
    before = _tree(workdir)
    with pytest.raises(WorkdirError) as e:
        hs_jax.run(_tiny(**overrides), workdir)
    message = str(e.value)
    assert line in message and "--config.restart=True" in message
    # One line per differing field, and only the changed ones.
    fields = [f.strip() for f in message.splitlines()[1:]]
    assert all(not f.startswith("search.checkpoint_every") for f in fields)
    assert _tree(workdir) == before


def test_free_fields_do_not_change_the_identity(tmp_path, finished):
    """Fields that do not change results (outputs, checkpoint cadence, the compilation cache)
    may differ: the finished run is returned."""
    workdir = _copy(finished, tmp_path / "run")
    c = _tiny(**{"outputs.plots": False, "search.checkpoint_every": 2, "search.max_to_keep": 5})
    c.engine.compilation_cache = ""
    expected = json.loads((workdir / "results.json").read_text())
    assert hs_jax.run(c, workdir) == expected


def test_a_run_recorded_before_a_field_existed_resumes_at_its_default(tmp_path, finished):
    """run.json of an older hs_jax lacks fields added since (engine.length_buckets): that run
    ran with the field's default, so the same config is the same run; another value is not."""
    workdir = _copy(finished, tmp_path / "run")
    record = json.loads((workdir / workdir_lib.RUN_JSON).read_text())
    del record["identity"]["config"]["engine.length_buckets"]
    workdir_lib.write_json(workdir / workdir_lib.RUN_JSON, record)
    expected = json.loads((workdir / "results.json").read_text())
    assert hs_jax.run(_tiny(), workdir) == expected
    with pytest.raises(WorkdirError, match="engine.length_buckets: not recorded by the saved"):
        hs_jax.run(_tiny(**{"engine.length_buckets": (32, 4096)}), workdir)


def test_finished_run_is_returned_unchanged_without_loading_a_model(
    tmp_path, finished, monkeypatch
):
    workdir = _copy(finished, tmp_path / "run")
    before = _tree(workdir)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run loaded a model or a pool")

    monkeypatch.setattr(assembly, "load_base", refuse)
    monkeypatch.setattr(assembly, "build_experts", refuse)
    start = time.perf_counter()
    results = hs_jax.run(_tiny(), workdir)
    assert time.perf_counter() - start < 5
    assert results == json.loads((workdir / "results.json").read_text())
    assert results["best_system_test_outputs"] and results["cost_per_iteration"]
    assert results["dataset"] == "nlgraph_gen" and results["task"] == "nlgraph_gen"
    assert _tree(workdir) == before


def test_a_bad_generated_task_is_never_written(tmp_path):
    """task.gen.n_dev=0 fails before any task.json exists, so the workdir is not left broken."""
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config\.task\.gen\.n_dev=0"):
        hs_jax.run(_tiny(**{"task.gen.n_dev": 0}), workdir)
    assert not (workdir / "task.json").exists() and not (workdir / "run.json").exists()


def test_a_task_json_generated_otherwise_is_refused(tmp_path):
    """A task.json made with other task.gen settings (e.g. by make_pool) is not reused."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    source = run_identity.task_source(_tiny(**{"task.gen.n_test": 5}), workdir)
    assembly.write_task(_tiny(), source)
    before = _tree(workdir)
    with pytest.raises(WorkdirError, match=r"task\.gen\.n_test: saved 5, now 3"):
        hs_jax.run(_tiny(), workdir)
    assert _tree(workdir) == before


# ----------------------------------------------------------------------------- restart


def test_restart_moves_the_run_aside_and_starts_over(tmp_path, finished):
    workdir = _copy(finished, tmp_path / "run")
    (workdir / "experts").mkdir()  # a pool this config does not use ('random' source)
    (workdir / "experts" / "note.txt").write_text("kept, not deleted")
    (workdir / "mine.txt").write_text("not a run file")
    before = _tree(workdir)
    results = hs_jax.run(_tiny(restart=True), workdir)
    (previous,) = (workdir / "previous").iterdir()
    moved = _tree(previous)
    for rel, entry in before.items():  # every file of the old run is there, byte for byte
        if rel != "mine.txt" and entry[0] != "dir":
            assert moved[rel] == entry, rel
    assert (workdir / "mine.txt").read_text() == "not a run file"
    assert not (workdir / "experts").exists()
    old = json.loads((previous / "results.json").read_text())
    assert _without_seconds(results) == _without_seconds(old)


def test_restart_keeps_a_trained_pool_with_the_same_identity(tmp_path):
    """workdir/experts stays in place when the new run would train the same pool."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    c = door.resolve(_tiny(**{"experts.source": "train"}))
    static = run_identity.static_identity(c)
    source = run_identity.task_source(c, workdir)
    identity = {**static, "task_file": workdir_lib.bytes_identity(source.data)}
    for search_change, kept in ((3, True), (None, False)):
        (workdir / "experts" / "expert_0").mkdir(parents=True, exist_ok=True)
        saved = json.loads(json.dumps({"identity": identity}))
        if search_change is None:
            saved["identity"]["config"]["experts.rank"] = 4  # another pool
        else:
            saved["identity"]["config"]["search.n_graphs"] = search_change  # same pool
        workdir_lib.write_json(workdir / "run.json", saved)
        run_identity.start_over(c, workdir, static)
        assert (workdir / "experts").exists() == kept
        assert not (workdir / "run.json").exists()


def test_unusable_checkpoints_are_refused_naming_restart(tmp_path, finished):
    workdir = _half_finished(finished, tmp_path / "run")
    for step in (workdir / "search").iterdir():
        for f in (step / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"garbage")
    with pytest.raises(WorkdirError, match=r"no checkpoint can be restored.*--config\.restart"):
        hs_jax.run(_tiny(), workdir)
    assert not (workdir / "results.json").exists()


def test_a_workdir_of_an_older_version_is_refused(tmp_path, finished):
    workdir = _half_finished(finished, tmp_path / "run")
    (workdir / "run.json").unlink()
    before = _tree(workdir)
    with pytest.raises(WorkdirError, match=r"holds search but no run\.json.*--config\.restart"):
        hs_jax.run(_tiny(), workdir)
    assert _tree(workdir) == before


# ----------------------------------------------------------------------------- expert names


def test_duplicate_expert_base_names_get_distinct_names(tmp_path):
    """Folders A/expert_0 and B/expert_0 become experts A_expert_0 and B_expert_0, and the
    export keeps both apart."""
    import jax

    from hs_jax.experts import lora

    c = _tiny()
    base_cfg, _, _ = assembly.load_base(c)
    stack = lora.init_lora_stack(
        base_cfg, 2, c.experts.rank, c.experts.targets, jax.random.key(0), scheme="random",
        init_scale=c.experts.random_scale,
    )  # fmt: skip
    folders = [tmp_path / "A" / "expert_0", tmp_path / "B" / "expert_0"]
    for i, folder in enumerate(folders):
        lora.export_peft_adapter(stack, i, folder)
    c.experts.source = "peft"
    c.experts.peft_dirs = ",".join(map(str, folders))
    c.search.max_iterations = 1
    results = hs_jax.run(c, tmp_path / "run")
    assert results["experts"] == ["A_expert_0", "B_expert_0"]
    exported = sorted(p.name for p in (tmp_path / "run" / "best_experts").iterdir())
    used = sorted({results["experts"][e] for e in results["best_system"]["assignment"]})
    assert exported == used
    assert lora.unique_names([*folders, folders[0]]) == ["A_expert_0", "B_expert_0", "A_expert_0_2"]


# ----------------------------------------------------------------------------- helpers


def test_atomic_path_leaves_nothing_on_failure_and_temp_files_are_removed(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), workdir_lib.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    workdir_lib.write_json(target, {"a": 1})
    folder = tmp_path / "best_experts"
    for content in ("one", "two"):  # a folder replaces a folder
        with workdir_lib.atomic_path(folder) as tmp:
            (tmp / "x").mkdir(parents=True)
            (tmp / "x" / "f").write_text(content)
    assert (folder / "x" / "f").read_text() == "two"
    stale = [tmp_path / f"results{workdir_lib.TMP_MARK}99.json", tmp_path / "search" / "k"]
    stale[1].mkdir(parents=True)
    stale[0].write_text("")
    (stale[1] / f"a{workdir_lib.TMP_MARK}1").write_text("")  # orbax's folder: skipped
    assert workdir_lib.remove_temp_files(tmp_path, skip=("search",)) == [stale[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_experts", "out.json", "search"]


def test_identity_diff_names_fields_and_accepts_later_defaults():
    saved = {"seed": 0, "search": {"n_graphs": 2}}
    now = {"seed": 1, "search": {"n_graphs": 2}, "new_field": 7}
    assert workdir_lib.identity_diff(saved, now, defaults={"new_field": 7}) == [
        "seed: saved 0, now 1"
    ]
    assert workdir_lib.identity_diff(saved, now) == [
        "new_field: not recorded by the saved run, now 7",
        "seed: saved 0, now 1",
    ]
    # A field only the saved side has: ignored for a config field removed from hs_jax since,
    # a difference everywhere else (a checkpoint's identity, a pool's fingerprint).
    gone = {"seed": 0, "old_field": 3}
    assert workdir_lib.identity_diff(gone, {"seed": 0}, removed_ok=True) == []
    assert workdir_lib.identity_diff(gone, {"seed": 0}, saved_as="the checkpoint") == [
        "old_field: saved 3, not in this run"
    ]
    assert workdir_lib.identity_diff({"a": 1}, {"a": 1, "b": 2}, saved_as="the checkpoint") == [
        "b: not recorded by the checkpoint, now 2"
    ]
