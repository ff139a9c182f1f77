"""The trained pool is written whole or not at all, in runs and in comparisons; a comparison
exits 1 naming its failed cells and removes what a killed comparison staged.

Kills come from the test hook hs_jax.store.workdir.kill_point: 'pool_write:<k>' SIGKILLs the writer
after the k-th expert's folder of a staged pool (hs_jax.experts.pool.write_pool), between two expert
files. A killed write leaves only its staging folder (removed by the next launch); a folder
without a completion record (an older hs_jax killed while writing in place) is moved aside to
`<folder>.incomplete-<UTC time>`, byte for byte, and the pool trained again; a whole pool of an
older hs_jax is adopted as it is. Every run that finishes is compared with an uninterrupted one.
"""

import hashlib
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hs_jax.store.workdir import KILL_ENV, TMP_MARK

ROOT = Path(__file__).resolve().parents[2]
POOL_RECORD = "hs_jax_pool.json"  # hs_jax.experts.pool.POOL_RECORD, written last
TRAIN_FIELDS = {
    "experts.source": "train", "experts.train_steps": 1, "experts.train_examples": 4,
    "experts.batch_per_expert": 1, "experts.max_len": 128, "outputs.plots": False,
    "outputs.export_experts": False,
}  # fmt: skip
TRAIN = [f"--config.{key}={value}" for key, value in TRAIN_FIELDS.items()]
EXPERTS = ("connectivity", "cycle", "shortest_path")  # the tiny config's question types


def _launch(module, workdir, *flags, kill=None):
    cmd = [sys.executable, "-m", module, "--config=configs/tiny.py", f"--workdir={workdir}"]
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run(
        [*cmd, *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


# The kill of the first launch and the flags of the rerun that finishes.
KILLS = {"rerun": ("pool_write:1", []), "restart": ("pool_write:2", ["--config.restart=True"])}


def _killed(proc, kill):
    assert proc.returncode == -signal.SIGKILL, (kill, proc.returncode, proc.stderr[-4000:])
    assert f"{KILL_ENV}: SIGKILL at pool_write" in proc.stderr


def _comparable(workdir):
    results = json.loads((workdir / "results.json").read_text())
    results.pop("seconds")
    return json.dumps(results, sort_keys=True)


def _pool(folder):
    """sha256 of every file of a pool but its completion record (which holds a time)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != POOL_RECORD
    }


def _temporary(root):
    return [str(p) for p in root.rglob("*") if TMP_MARK in p.name]


def _incomplete(folder):
    return sorted(folder.parent.glob(f"{folder.name}.incomplete-*"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A tiny run with a trained pool, never killed."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = _launch("launch.main", workdir, *TRAIN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


# ----------------------------------------------------------------------------- in a run


@pytest.mark.parametrize("kill, rerun", KILLS.values(), ids=KILLS.keys())
def test_a_run_killed_between_two_expert_files_finishes_as_an_uninterrupted_one(
    uninterrupted, tmp_path, kill, rerun
):
    _killed(_launch("launch.main", tmp_path, *TRAIN, kill=kill), kill)
    assert not (tmp_path / "experts").exists()  # the pool is absent, not half there
    assert any(TMP_MARK in p.name for p in tmp_path.iterdir())  # only its staging folder
    proc = _launch("launch.main", tmp_path, *TRAIN, *rerun)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _comparable(tmp_path) == _comparable(uninterrupted)
    assert _pool(tmp_path / "experts") == _pool(uninterrupted / "experts")
    assert (tmp_path / "experts" / POOL_RECORD).is_file()
    assert not _temporary(tmp_path) and not _incomplete(tmp_path / "experts")


def test_a_half_written_pool_is_moved_aside_and_rebuilt(uninterrupted, tmp_path):
    """The state a kill left in an older hs_jax, which wrote experts in place: every
    expert's weights, no adapter_config.json, no completion record. It used to fail every
    rerun ('missing adapter_config.json')."""
    planted = {}
    for name in EXPERTS:
        (tmp_path / "experts" / name).mkdir(parents=True)
        weights = uninterrupted / "experts" / name / "adapter_model.safetensors"
        shutil.copy2(weights, tmp_path / "experts" / name)
        planted[f"{name}/adapter_model.safetensors"] = _pool(weights.parent)[weights.name]
    proc = _launch("launch.main", tmp_path, *TRAIN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    [aside] = _incomplete(tmp_path / "experts")
    assert _pool(aside) == planted  # moved as it was, nothing deleted
    assert "not a complete expert pool" in proc.stderr and str(aside) in proc.stderr
    assert _comparable(tmp_path) == _comparable(uninterrupted)
    assert _pool(tmp_path / "experts") == _pool(uninterrupted / "experts")


# ----------------------------------------------------------------------------- make_pool


def _tiny():
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.outputs.plots = False
    return c


def _older_pool(workdir):
    """A random pool as an older hs_jax wrote it: one folder per expert, no pool record."""
    import jax

    from hs_jax.experts import lora
    from hs_jax.setup.assembly import load_base

    c = _tiny()
    base_cfg, _, _ = load_base(c)
    stack = lora.init_lora_stack(
        base_cfg, 3, c.experts.rank, c.experts.targets, jax.random.key(c.seed),
        scheme="random", init_scale=c.experts.random_scale,
    )  # fmt: skip
    for i in range(3):
        folder = workdir / "experts" / f"expert_{i}"
        lora.export_peft_adapter(stack, i, folder, base_model_name_or_path=c.model.spec)
    return _pool(workdir / "experts")


def test_make_pool_adopts_a_whole_pool_of_an_older_hs_jax(tmp_path):
    import hs_jax

    before = _older_pool(tmp_path)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "experts").rglob("*") if p.is_file()}
    hs_jax.make_pool(_tiny(), tmp_path)
    assert (tmp_path / "experts" / POOL_RECORD).is_file()
    assert _pool(tmp_path / "experts") == before
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not written again
    assert not _incomplete(tmp_path / "experts")


def test_make_pool_moves_a_damaged_pool_aside_and_writes_it_again(tmp_path):
    import hs_jax

    before = _older_pool(tmp_path)
    config = tmp_path / "experts" / "expert_1" / "adapter_config.json"
    config.write_text(config.read_text()[:40])  # cut mid-write
    damaged = _pool(tmp_path / "experts")
    hs_jax.make_pool(_tiny(), tmp_path)
    [aside] = _incomplete(tmp_path / "experts")
    assert _pool(aside) == damaged
    assert _pool(tmp_path / "experts") == before  # the same random experts, whole
    assert (tmp_path / "experts" / POOL_RECORD).is_file()
    # A pool with its record but a file of another size (damaged later) is not whole either.
    weights = tmp_path / "experts" / "expert_0" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    hs_jax.make_pool(_tiny(), tmp_path)
    assert len(_incomplete(tmp_path / "experts")) == 2
    assert _pool(tmp_path / "experts") == before


# ----------------------------------------------------------------------------- in a comparison

COMPARE = ["--methods=hs", "--tasks=nlgraph_gen", "--seeds=0", *TRAIN]


@pytest.mark.parametrize("kill, rerun", KILLS.values(), ids=KILLS.keys())
def test_a_comparison_killed_in_the_shared_pool_write_finishes(
    uninterrupted, tmp_path, kill, rerun
):
    _killed(_launch("launch.compare", tmp_path, *COMPARE, kill=kill), kill)
    pools = tmp_path / "nlgraph_gen" / "pools"
    [staged] = pools.iterdir()
    assert TMP_MARK in staged.name  # the shared pool is absent, only its staging folder
    proc = _launch("launch.compare", tmp_path, *COMPARE, *rerun)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert [c["status"] for c in cells] == ["done"]
    [pool] = pools.iterdir()
    assert (pool / POOL_RECORD).is_file()
    assert _pool(pool) == _pool(uninterrupted / "experts")
    assert not _temporary(tmp_path)


def test_a_half_written_shared_pool_is_moved_aside_and_the_comparison_exits_0(
    uninterrupted, tmp_path
):
    """An older hs_jax's half-written shared pool made every later cell fail, and the
    comparison still exited 0."""
    from hs_jax.comparison import compare

    c = _tiny()
    for key, value in TRAIN_FIELDS.items():  # the command line's overrides
        section, field = key.split(".")
        c[section][field] = value
    cell = compare.Cell("hs", compare.task_refs(["nlgraph_gen"], "")[0], 0)
    pool = Path(compare.cell_config(c, cell, tmp_path, None).experts.pool_dir)
    for name in EXPERTS:
        (pool / name).mkdir(parents=True)
        shutil.copy2(uninterrupted / "experts" / name / "adapter_model.safetensors", pool / name)
    proc = _launch("launch.compare", tmp_path, *COMPARE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [c["status"] for c in json.loads((tmp_path / "cells.json").read_text())] == ["done"]
    [aside] = _incomplete(pool)
    assert sorted(p.name for p in aside.iterdir()) == list(EXPERTS)
    assert _pool(pool) == _pool(uninterrupted / "experts")


def test_launch_compare_exits_1_naming_failed_cells_and_removes_stale_staged_files(tmp_path):
    """A failed cell (a damaged run.json) makes the exit status 1 with one line naming it; a
    cell that does not apply does not; what a killed comparison staged is removed."""
    cell = tmp_path / "nlgraph_gen" / "hs" / "seed_0"
    cell.mkdir(parents=True)
    (cell / "run.json").write_text("{")
    stale = [
        tmp_path / f"cells{TMP_MARK}99999.json",
        tmp_path / f"table{TMP_MARK}99999.md",
        tmp_path / "nlgraph_gen" / "pools" / f"0123456789ab{TMP_MARK}99999" / "expert_0" / "x",
        tmp_path / "singles" / f"singles-0{TMP_MARK}99999.json",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("left by a killed comparison")
    flags = ["--tasks=nlgraph_gen", "--seeds=0"]
    proc = _launch("launch.compare", tmp_path, "--methods=hs,data_merge", *flags)
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("launch.compare:")]
    assert lines == [lines[-1]] and proc.stderr.rstrip().endswith(lines[-1])
    assert lines[0].startswith(
        "launch.compare: 1 of 2 cells failed: nlgraph_gen/hs/seed_0 (WorkdirError: "
    ), lines
    assert "data_merge" not in lines[0]
    assert not any(path.exists() for path in stale)
    assert not _temporary(tmp_path)
    statuses = {c["method"]: c["status"] for c in json.loads((tmp_path / "cells.json").read_text())}
    assert statuses == {"hs": "failed", "data_merge": "not_applicable"}

    proc = _launch("launch.compare", tmp_path, "--methods=data_merge", *flags)
    assert proc.returncode == 0, proc.stderr[-4000:]  # not applicable is not a failure
