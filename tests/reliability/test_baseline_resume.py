"""Baselines resume from their archive: SIGKILL a baseline's run after a scoring call, relaunch
it, and it ends with the results.json (costs included) and the archive of an uninterrupted run;
the Heterogeneous Swarms search, which resumes from its checkpoints, archives every system once.

The kills use the test hook of hs_jax.store.workdir.kill_point ('evaluation': after each archived
scoring call of a `method_api.Evaluator`; 'weight_step': after the search's weight step).
"""

import json
import signal

import pytest
from tiny_runs import launch


def _results(workdir):
    r = json.loads((workdir / "results.json").read_text())
    r.pop("seconds")
    return json.dumps(r, sort_keys=True)


def _archive(workdir):
    return (workdir / "archive.jsonl").read_text().splitlines()


def _killed_then_finished(workdir, method, kill):
    proc = launch(workdir, method, kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (workdir / "results.json").exists()
    proc = launch(workdir, method)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "method, kill",
    [("random_search", "evaluation:2"), ("gpt_swarm", "evaluation:2"),
     ("greedy_soup", "evaluation:2"), ("meta_agent", "evaluation:2"),
     # After its one archived dev evaluation, before the test samples: sampled again with the
     # same keys, the same results and costs.
     ("self_consistency", "evaluation:1")],
)  # fmt: skip
def test_a_killed_baseline_ends_as_an_uninterrupted_one(tmp_path, method, kill):
    whole = tmp_path / "whole"
    assert launch(whole, method).returncode == 0
    killed = tmp_path / "killed"
    _killed_then_finished(killed, method, kill)
    assert _results(killed) == _results(whole)
    assert _archive(killed) == _archive(whole)


def test_the_search_archives_every_system_once_across_a_kill(tmp_path):
    whole = tmp_path / "whole"
    assert launch(whole, "hs").returncode == 0
    rows = [json.loads(r) for r in _archive(whole)]
    results = json.loads((whole / "results.json").read_text())
    assert len(rows) == results["evaluations"] > 0
    assert [r["evaluation"] for r in rows] == list(range(len(rows)))
    killed = tmp_path / "killed"
    _killed_then_finished(killed, "hs", "weight_step:2")
    assert _archive(killed) == _archive(whole)
    assert _results(killed) == _results(whole)
