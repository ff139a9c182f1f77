"""`launch.main --dry_run`: the per-device memory table of the paper's Gemma-7B setting,
printed before anything is loaded or written.

The launcher runs as a subprocess with JAX_PLATFORMS set to a platform that does not exist, so
any use of a device (let alone loading a model) would fail it; 'gemma-7b' is a preset name, not
a file, so nothing could be loaded either; the workdir it names must not appear.
"""

import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hs_jax.pipeline import door, memory_plan

ROOT = Path(__file__).resolve().parents[1]
PAPER = [
    "--config=configs/paper.py:gsm8k",
    "--config.model.spec=gemma-7b",
    "--config.experts.n=10",
    "--dry_run",
]


def _dry_run(tmp_path, *flags):
    env = dict(os.environ, JAX_PLATFORMS="no_such_platform")
    cmd = [sys.executable, "-m", "launch.main", f"--workdir={tmp_path / 'run'}", *PAPER, *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - start


def _expected(devices: int, gib: float) -> str:
    """The table memory_plan.plan gives for the same config (resolved as the launcher does)."""
    c = runpy.run_path(str(ROOT / "configs" / "paper.py"))["get_config"]("gsm8k")
    c.model.spec, c.experts.n = "gemma-7b", 10
    return memory_plan.plan(door.resolve(c), devices).table(gib)


@pytest.mark.parametrize("gib, verdict", [(16, "does NOT fit in 16 GiB"), (80, "fits in 80 GiB")])
def test_the_table_is_printed_and_nothing_is_loaded_or_written(tmp_path, gib, verdict):
    proc, seconds = _dry_run(tmp_path, "--devices=8", f"--device_memory_gib={gib}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(_expected(8, gib) + "\n")
    assert "model gemma-7b, mesh data=8 x expert=1 x model=1 (8 devices)" in proc.stdout
    for part in ("base parameters", "weight swarm", "KV cache (8 rows x 2048+128 slots)"):
        assert part in proc.stdout
    assert verdict in proc.stdout
    # Without the paper's data and experts a launch would stop: the dry run says so.
    assert "a launch with this config would stop before loading anything:" in proc.stdout
    assert "config.task.path='data/eval/gsm8k.json': no such task file" in proc.stdout
    assert not (tmp_path / "run").exists()
    assert seconds < 30


def test_a_layout_the_devices_cannot_hold_is_one_line(tmp_path):
    proc, _ = _dry_run(tmp_path, "--devices=6", "--config.mesh.model=4")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "launch.main: config.mesh: 6 devices do not divide by expert=1 x model=4"
    ]
    assert not (tmp_path / "run").exists()
