"""Launching the tiny config as a user would, for the reliability tests (imported by them)."""

import os
import subprocess
import sys
from pathlib import Path

from hs_jax.store.workdir import KILL_ENV

ROOT = Path(__file__).resolve().parents[2]


def launch(workdir, method="hs", kill=None):
    """`launch.main` on configs/tiny.py with `method` (no plots), killed at `kill` (a
    `kill_point` spec) when given; the finished subprocess."""
    cmd = [
        sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={workdir}",
        f"--config.method={method}", "--config.outputs.plots=False",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
