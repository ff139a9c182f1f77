"""A workdir written before the package moved into wings (hs_jax at 1124b38, the last flat
layout) resumes with today's code: tests/data/premove holds that code's tiny run killed right
after its first checkpoint (HS_JAX_TEST_KILL_AT=checkpoint_committed:1) and the results.json
and archive of the same run left uninterrupted. Resumed now, it ends with that run's results
(the system, utilities, outputs, history and costs; timing aside) and archive: neither
run.json, the checkpoints nor the archive carry a module path."""

import json
import shutil
from pathlib import Path

from tiny_runs import launch

DATA = Path(__file__).resolve().parents[1] / "data" / "premove"
TIMING = ("seconds",)


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_a_workdir_from_before_the_move_resumes_to_the_old_results(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(DATA / "killed_run", workdir)
    assert not (workdir / "results.json").exists()
    done = launch(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resum" in done.stderr.lower(), done.stderr[-3000:]  # from the old checkpoint
    now = json.loads((workdir / "results.json").read_text())
    before = json.loads((DATA / "uninterrupted_results.json").read_text())
    # Fields the answer diagnostics gained after the fixture was written (the readable
    # answers' top share, which kind of collapse): additions, every other value the same.
    for added in ("read_top", "read_top_share", "collapsed_on"):
        now["diagnostics"]["answers"].pop(added)
    assert _without_timing(now) == _without_timing(before)
    assert (workdir / "archive.jsonl").read_text() == (
        DATA / "uninterrupted_archive.jsonl"
    ).read_text()
