"""The launcher end to end on the tiny config, including a kill and a resume through it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hs_jax.pipeline import door  # ANCHOR

ROOT = Path(__file__).resolve().parents[1]


def _launch(workdir, *extra, wait=True):
    cmd = [
        sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}",
        "--config.search.max_iterations=3", "--config.search.patience=3", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def _comparable(results):
    r = dict(results)
    # Only wall time differs: a resumed run restores the cost counters of its last checkpoint.
    r.pop("seconds")
    return json.dumps(r, sort_keys=True)  # NaN-safe


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    out = _launch(workdir)
    return workdir, out


def test_launcher_writes_every_output(uninterrupted):
    workdir, out = uninterrupted
    results = json.loads((workdir / "results.json").read_text())
    assert results["iterations"] == 3
    assert len(results["history"]) == 3
    best = results["best_system"]
    assert len(best["assignment"]) == best["dag"]["n"] == 3
    assert best["test_utility"] is not None
    assert results["cost"]["generate_calls"] > 0
    assert [c["iteration"] for c in results["cost_per_iteration"]] == [0, 1, 2]
    outputs = results["best_system_test_outputs"]
    assert str(best["dag"]["end"]) in outputs
    assert all(len(o) == results["n_test"] for o in outputs.values())
    for picture in ("best_dag.png", "curves.png"):
        assert (workdir / picture).read_bytes()[:4] == b"\x89PNG"
    exported = sorted(p.name for p in (workdir / "best_experts").iterdir())
    assert exported and all(
        (workdir / "best_experts" / e / "adapter_config.json").exists() for e in exported
    )
    assert "H-Swarms system" in out and "best single" in out


def _inspect(workdir):
    return subprocess.run(
        [sys.executable, "-m", "launch.inspect_checkpoint", f"--workdir={workdir}", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_inspect_reads_a_run_workdir_and_names_a_missing_one(uninterrupted, tmp_path):
    """The checkpoint CLI takes the workdir given to the launcher (checkpoints in search/) and
    says plainly, without a traceback, when a directory holds none."""
    workdir, _ = uninterrupted
    done = _inspect(workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    results = json.loads((workdir / "results.json").read_text())
    assert summary["workdir"] == str(workdir / "search") and summary["finished"]
    assert summary["best_utility"] == pytest.approx(results["best_system"]["dev_utility"])
    for missing in (tmp_path / "nowhere", tmp_path):
        failed = _inspect(missing)
        assert failed.returncode == 1
        assert f"no checkpoint in {missing}" in failed.stderr
        assert "Traceback" not in failed.stderr


def test_killed_run_resumes_to_the_same_results(uninterrupted, tmp_path):
    workdir, _ = uninterrupted
    proc = _launch(tmp_path, wait=False)
    deadline = time.time() + 900
    # Kill as soon as the first iteration's checkpoint is complete (orbax renames it into place).
    while not (tmp_path / "search" / "1").exists():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results.json").exists()
    out = _launch(tmp_path)
    assert "resumed" in out
    resumed = json.loads((tmp_path / "results.json").read_text())
    full = json.loads((workdir / "results.json").read_text())
    assert _comparable(resumed) == _comparable(full)


def test_bad_config_value_is_named(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--config.experts.source=nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "config.experts.source='nonsense'" in proc.stderr


def _tiny_config():
    import runpy

    return runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()


def test_bad_search_value_fails_before_any_work(tmp_path):
    """A bad search value is named before the model loads or the pool is trained: nothing is
    written into the workdir."""
    import hs_jax

    config = _tiny_config()
    config.search.n_graphs = 0
    with pytest.raises(ValueError, match=r"config\.search: n_graphs"):
        hs_jax.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_unknown_method_is_named_before_any_work_and_method_is_part_of_the_identity(tmp_path):
    """config.method must name an entry of hs_jax.methods.METHODS; it is recorded in the run's
    identity, so a workdir holds one method's run."""
    import hs_jax
    from hs_jax.methods import METHODS
    from hs_jax.setup import identity

    config = _tiny_config()
    assert config.method == "hs" and "hs" in METHODS
    static = identity.static_identity(door.resolve(config))
    assert static["config"]["method"] == "hs"
    config.method = "nope"
    with pytest.raises(ValueError, match=r"config\.method='nope': expected one of \('hs',"):
        hs_jax.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_model_is_named_as_a_model(tmp_path):
    import hs_jax

    config = _tiny_config()
    config.model.spec = str(tmp_path / "gone.gguf")
    with pytest.raises(FileNotFoundError, match=r"model .*gone\.gguf.* is neither"):
        hs_jax.run(config, tmp_path / "run")


def test_make_pool_writes_peft_folders_that_load_back_to_the_pool(tmp_path):
    """launch.make_experts' library call: the pool as PEFT folders that import back to the same
    stack, kept as they are by a second call; a PEFT-sourced config has nothing to build."""
    import jax
    import numpy as np

    import hs_jax
    from hs_jax.experts import lora
    from hs_jax.setup.assembly import load_base

    config = _tiny_config()
    folders = hs_jax.make_pool(config, tmp_path)
    assert folders == [str(tmp_path / "experts" / f"expert_{i}") for i in range(3)]
    base_cfg, _, _ = load_base(config)
    loaded = lora.load_peft_pool(folders, base_cfg)
    made = lora.init_lora_stack(
        base_cfg, 3, config.experts.rank, config.experts.targets, jax.random.key(config.seed),
        scheme="random", init_scale=config.experts.random_scale,
    )  # fmt: skip
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(made), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    weights = tmp_path / "experts" / "expert_0" / lora.ADAPTER_WEIGHTS
    before = weights.stat().st_mtime_ns
    assert hs_jax.make_pool(config, tmp_path) == folders
    assert weights.stat().st_mtime_ns == before

    config.experts.source = "peft"
    config.experts.peft_dirs = str(tmp_path / "experts")
    with pytest.raises(ValueError, match="already exists as PEFT folders"):
        hs_jax.make_pool(config, tmp_path)


def test_summary_table_aligns_long_expert_names(capsys):
    from hs_jax.pipeline.report import print_summary

    print_summary(
        {
            "task": "t",
            "iterations": 3,
            "stop_reason": "patience",
            "seconds": 1.0,
            "best_system": {"dev_utility": 0.5, "test_utility": None},
            "best_single": {
                "name": "a_rather_long_expert",
                "dev_utility": 1 / 3,
                "test_utility": 0.25,
            },
        }
    )
    header, single, system = capsys.readouterr().out.strip().splitlines()[-3:]
    assert single.split()[-2:] == ["0.333", "0.250"] and system.split()[-2:] == ["0.500", "n/a"]
    # The value columns end where the header's do (the interval column follows).
    end = header.index("test") + len("test")
    assert single[:end].endswith("0.250") and system[:end].endswith("n/a")


def test_summary_gives_intervals_and_a_plain_verdict(capsys):
    """A new user must not read 0.417 vs 0.361 as a win: the summary prints the intervals, the
    paired test on the same items and its verdict, and warns of a collapsed system."""
    from hs_jax.pipeline.report import print_summary, verdict

    summary = {
        "task": "t", "iterations": 3, "stop_reason": "patience", "seconds": 1.0,
        "n_dev": 12, "n_test": 36,
        "best_system": {"dev_utility": 0.5, "test_utility": 0.417,
                        "test_interval": [0.25, 0.583]},
        "best_single": {"name": "cycle", "dev_utility": 0.333, "test_utility": 0.361,
                        "test_interval": [0.194, 0.528]},
        "vs_best_single": {"difference": 0.056, "interval": [-0.139, 0.25], "p_value": 0.69,
                           "items": 36},
        "diagnostics": {"answers": {"top": "No", "top_share": 0.97, "collapsed": True}},
    }  # fmt: skip
    print_summary(summary)
    out = capsys.readouterr().out
    assert "[0.250, 0.583]" in out and "[0.194, 0.528]" in out
    assert "12 dev / 36 test items" in out
    assert "+0.056 [-0.139, +0.250]" in out
    assert "not established at p < 0.05 (p = 0.69)" in out
    assert "97% of the system's test answers are 'No'" in out
    summary["diagnostics"]["answers"] = {
        "top": "yes", "top_share": 0.5, "unread": 18, "read_top": "yes", "read_top_share": 1.0,
        "collapsed": True, "collapsed_on": "readable",
    }  # fmt: skip
    print_summary(summary)
    assert "100% of the system's readable test answers are 'yes' and 18 outputs are " in (
        capsys.readouterr().out
    )
    assert verdict({"difference": 0.1, "p_value": 0.01}) == "better, p = 0.01"
    assert verdict({"difference": -0.1, "p_value": 1e-4}) == "worse, p < 0.0001"
    assert verdict(None) == "no paired test"
