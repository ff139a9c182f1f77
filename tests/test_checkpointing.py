"""Checkpoints of the swarm search: kill-and-resume equals an uninterrupted run bitwise, a damaged
latest step falls back to the previous one, another config is refused, summaries need no model."""

import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.store import checkpointing
from hs_jax.swarm import checkpoint_summary, graph, search

N_EXPERTS = 4
TARGET = graph.from_edges(4, [(0, 2), (1, 2), (2, 3)], end=3)


def _experts():
    rng = np.random.default_rng(7)
    return {
        "a": jnp.asarray(rng.normal(size=(N_EXPERTS, 3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(N_EXPERTS, 5)), jnp.float32),
    }


_GOAL = {"a": np.full((3, 2), 0.3, np.float32), "b": np.linspace(-1, 1, 5, dtype=np.float32)}


class Scorer:
    """Synthetic utility using graph and weights: edge overlap with TARGET minus the mean distance
    of the assigned experts to a goal. ``fail_at``: raise on that call (a simulated kill)."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, systems, weights):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        w = {k: np.asarray(v) for k, v in weights.items()}
        dist = sum(np.sqrt(((w[k] - _GOAL[k]) ** 2).reshape(N_EXPERTS, -1).sum(1)) for k in w)
        return np.array(
            [len(set(d.edges) & set(TARGET.edges)) - 0.1 * dist[list(a)].mean() for d, a in systems]
        )


def _steps(workdir):
    """Finished step directories (listed without opening an orbax manager, which would start
    its own background cleanup of temporary directories)."""
    return sorted(int(name) for name in os.listdir(workdir) if name.isdigit())


def _cfg(**kw):
    base = dict(n_graphs=4, n_assignments=3, max_iterations=5, patience=5, seed=3)
    base.update(kw)
    return search.SearchConfig(**base)


def _run(cfg, workdir=None, scorer=None, **kw):
    return search.run_search(
        _experts(), scorer or Scorer(), cfg, workdir=workdir, progress=False, **kw
    )


def _assert_same(a: search.SearchResult, b: search.SearchResult):
    assert a.iterations == b.iterations and a.stop_reason == b.stop_reason
    assert json.dumps(a.history) == json.dumps(b.history)  # NaN-safe, exact float repr
    assert a.best.utility == b.best.utility
    assert a.best.dag == b.best.dag and a.best.assignment == b.best.assignment
    assert a.best.iteration == b.best.iteration
    for x, y in zip(jax.tree.leaves(a.best.weights), jax.tree.leaves(b.best.weights), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for sa, sb in ((a.roles, b.roles), (a.weights, b.weights)):
        for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run (no workdir) every resumed run must reproduce."""
    return _run(_cfg())


@pytest.mark.parametrize("fail_at", [4, 7])  # calls per iteration: 2 (role + weight)
def test_kill_during_scoring_then_resume_equals_uninterrupted(tmp_path, reference, fail_at):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, Scorer(fail_at=fail_at))
    completed = (fail_at - 1) // 2  # iterations whose both steps finished before the kill
    assert _steps(wd)[-1] == completed
    resumed_scorer = Scorer()
    resumed = _run(_cfg(), wd, resumed_scorer)
    assert resumed.resumed_from == completed
    assert resumed_scorer.calls == 2 * (reference.iterations - completed)
    _assert_same(resumed, reference)


def test_kill_between_save_and_next_step_then_resume(tmp_path, reference):
    wd = str(tmp_path / "wd")

    def kill_after_iteration_2(record):
        if record["iteration"] == 2:
            raise KeyboardInterrupt("killed after the save of iteration 2")

    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, callbacks=[kill_after_iteration_2])
    resumed = _run(_cfg(), wd)
    assert resumed.resumed_from == 3
    _assert_same(resumed, reference)
    # A finished workdir returns the same result again without scoring anything.
    scorer = Scorer()
    again = _run(_cfg(), wd, scorer)
    assert scorer.calls == 0 and again.resumed_from == reference.iterations
    _assert_same(again, reference)


def test_sparse_checkpoints_resume_from_older_step(tmp_path, reference):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(checkpoint_every=2), wd, Scorer(fail_at=8))  # dies in iteration 3
    assert _steps(wd) == [2]
    # checkpoint_every / max_to_keep do not change results, so they may differ on resume.
    resumed = _run(_cfg(checkpoint_every=1), wd)
    assert resumed.resumed_from == 2
    _assert_same(resumed, reference)


def test_partial_save_from_a_kill_during_saving_is_ignored(tmp_path, reference):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, Scorer(fail_at=7))  # steps 1, 2, 3 written
    # What a kill in the middle of saving step 4 leaves: orbax's uncommitted temporary directory.
    shutil.copytree(os.path.join(wd, "3"), os.path.join(wd, "4.orbax-checkpoint-tmp-1234"))
    os.remove(os.path.join(wd, "4.orbax-checkpoint-tmp-1234", "commit_success.txt"))
    assert _steps(wd) == [1, 2, 3]
    resumed = _run(_cfg(), wd)
    assert resumed.resumed_from == 3
    _assert_same(resumed, reference)
    assert not any("tmp" in name for name in os.listdir(wd))


def _damage_delete_array_file(step_dir):
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if "/d/" in os.path.join(root, f)
    ]
    assert files
    for f in files:
        os.remove(f)


def _damage_truncate_meta(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _damage_flip_array_bytes(step_dir):
    # Same size, different content: only the recorded CRC32 can notice.
    def loads(f):
        return json.loads(open(f).read())

    meta = loads(os.path.join(step_dir, "meta", "metadata"))
    assert meta["checksums"]
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if "/d/" in os.path.join(root, f)
    ]
    for f in files:
        data = bytearray(open(f, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(f, "wb").write(bytes(data))


@pytest.mark.parametrize(
    "damage", [_damage_delete_array_file, _damage_truncate_meta, _damage_flip_array_bytes]
)
def test_damaged_latest_step_falls_back_to_previous(tmp_path, reference, damage):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, Scorer(fail_at=7))  # steps 1, 2, 3 written
    damage(os.path.join(wd, "3"))
    with mock.patch.object(checkpointing.logging, "warning") as warn:
        resumed = _run(_cfg(), wd)
    assert warn.called and "step 3" in (warn.call_args[0][0] % warn.call_args[0][1:])
    assert resumed.resumed_from == 2
    _assert_same(resumed, reference)


def test_all_steps_damaged_is_an_error(tmp_path):
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, Scorer(fail_at=5))  # steps 1, 2
    for step in ("1", "2"):
        _damage_truncate_meta(os.path.join(wd, step))
    with pytest.raises(checkpointing.NoUsableCheckpointError):
        _run(_cfg(), wd)


def test_workdir_of_another_config_is_refused_naming_fields(tmp_path):
    wd = str(tmp_path / "wd")
    _run(_cfg(max_iterations=2), wd)
    with pytest.raises(checkpointing.ConfigMismatchError) as err:
        _run(_cfg(max_iterations=2, seed=4, top_p=0.5), wd)
    msg = str(err.value)
    assert "seed: saved 3, now 4" in msg and "top_p: saved 0.8, now 0.5" in msg
    assert "n_graphs" not in msg
    with pytest.raises(checkpointing.ConfigMismatchError, match=r"roles_pso\.phi_g"):
        _run(_cfg(max_iterations=2, roles_pso=search.pso.PSOConfig(phi_g=0.5)), wd)
    other_experts = jax.tree.map(lambda x: x + 1.0, _experts())
    with pytest.raises(checkpointing.ConfigMismatchError, match=r"experts\.crc32"):
        search.run_search(
            other_experts, Scorer(), _cfg(max_iterations=2), workdir=wd, progress=False
        )


def test_summary_needs_no_model_and_cli_prints_it(tmp_path, reference):
    wd = str(tmp_path / "wd")
    result = _run(_cfg(), wd, test_scorer=lambda dag, assignment, w: 0.25)
    assert result.test_utility == 0.25
    summary = checkpoint_summary.summarize_checkpoint(wd)
    assert summary["iteration"] == result.iterations and summary["finished"]
    assert summary["stop_reason"] == result.stop_reason
    assert summary["best_utility"] == result.best.utility
    assert graph.Dag.from_dict(summary["best_dag"]) == result.best.dag
    assert tuple(summary["best_assignment"]) == result.best.assignment
    assert summary["test_utility"] == 0.25
    assert [r["iteration"] for r in summary["utilities"]] == list(range(result.iterations))
    for row, rec in zip(summary["utilities"], result.history, strict=True):
        assert row["role_best"] == rec["role"]["best"]
        assert row["weight_mean"] == rec["weight"]["mean"]
    assert summary["config"]["seed"] == 3

    older = checkpoint_summary.summarize_checkpoint(os.path.join(wd, "3"))
    assert older["step"] == 3 and older["iteration"] == 3 and not older["finished"]
    assert len(older["utilities"]) == 3

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "launch.inspect_checkpoint", f"--workdir={wd}", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["best_utility"] == result.best.utility
    text = subprocess.run(
        [sys.executable, "-m", "launch.inspect_checkpoint", f"--workdir={wd}", "--step=4"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "step: 4" in text and "best dag" in text


def test_resume_with_weight_swarm_sharded_over_8_devices(tmp_path):
    """The weight swarm laid out along an 'expert' mesh axis resumes onto the same sharding and
    ends bitwise equal to an unsharded uninterrupted run."""
    devices = jax.devices()
    assert len(devices) == 8  # tests/conftest.py
    mesh = jax.sharding.Mesh(np.array(devices), ("expert",))
    rng = np.random.default_rng(0)
    experts = {"a": jnp.asarray(rng.normal(size=(8, 4, 3)), jnp.float32)}

    def score(systems, weights):
        d = np.asarray(jnp.sum(weights["a"] ** 2, axis=(1, 2)))  # [8]
        return np.array([-d[list(a)].mean() for _, a in systems])

    calls = [0]

    def killed_at_5(systems, weights):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt("simulated kill")
        return score(systems, weights)

    cfg = _cfg(max_iterations=4)
    wd = str(tmp_path / "wd")
    with pytest.raises(KeyboardInterrupt):
        search.run_search(experts, killed_at_5, cfg, workdir=wd, mesh=mesh, progress=False)
    resumed = search.run_search(experts, score, cfg, workdir=wd, mesh=mesh, progress=False)
    reference = search.run_search(experts, score, cfg, progress=False)
    assert resumed.resumed_from == 2
    assert resumed.weights.x["a"].sharding.spec == jax.sharding.PartitionSpec("expert")
    _assert_same(resumed, reference)


def test_an_orphaned_tensorstore_read_error_is_not_logged_twice(caplog):
    """A second failed array read of one restore is garbage-collected unretrieved; asyncio's
    report of it is dropped, any other unretrieved error is not."""
    import logging

    from hs_jax.store import checkpointing

    checkpointing._silence_closed_loop_reports()
    log = logging.getLogger("asyncio")
    for kind in ("Task", "Future"):  # a gathered read's task, or its future
        for exc in (ValueError("OUT_OF_RANGE: Error opening a chunk"), ValueError("a bug")):
            log.error(f"{kind} exception was never retrieved\nfuture: <{kind}>", exc_info=exc)
    texts = [r.exc_info[1] for r in caplog.records if r.name == "asyncio"]
    assert [str(e) for e in texts] == ["a bug", "a bug"]
