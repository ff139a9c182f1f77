"""Damaged and mismatched search checkpoints never cost a file.

Every kind of damage to a finished step ends in a fallback to a good step (and the resumed run
then equals an uninterrupted one bitwise) or in a named refusal; damaged steps are moved into
``corrupt/``, byte for byte, never deleted. A changed config is refused before any array is read,
with the workdir byte-for-byte unchanged, whether or not it changes array shapes.
``launch.inspect_checkpoint`` fails in one line and ``--verify`` finds damaged arrays.
"""

import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.store import checkpointing
from hs_jax.swarm import graph, search

N_EXPERTS = 4
TARGET = graph.from_edges(4, [(0, 2), (1, 2), (2, 3)], end=3)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_GOAL = {"a": np.full((3, 2), 0.3, np.float32), "b": np.linspace(-1, 1, 5, dtype=np.float32)}


def _experts(n=N_EXPERTS):
    rng = np.random.default_rng(7)
    return {
        "a": jnp.asarray(rng.normal(size=(n, 3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32),
    }


class Scorer:
    """Synthetic utility of graph and weights (as in tests/test_checkpointing.py); ``fail_at``:
    raise on that call, a simulated kill (2 calls per iteration)."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, systems, weights):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        w = {k: np.asarray(v) for k, v in weights.items()}
        n = next(iter(w.values())).shape[0]
        dist = sum(np.sqrt(((w[k] - _GOAL[k]) ** 2).reshape(n, -1).sum(1)) for k in w)
        return np.array(
            [len(set(d.edges) & set(TARGET.edges)) - 0.1 * dist[list(a)].mean() for d, a in systems]
        )


def _cfg(**kw):
    # max_to_keep=10: no garbage collection of old steps within 5 iterations, so "no file is
    # lost" can be checked over whole runs (it is resume-free: not part of the identity).
    base = dict(n_graphs=4, n_assignments=3, max_iterations=5, patience=5, seed=3, max_to_keep=10)
    base.update(kw)
    return search.SearchConfig(**base)


def _run(cfg, workdir=None, scorer=None, experts=None, **kw):
    experts = _experts() if experts is None else experts
    return search.run_search(
        experts, scorer or Scorer(), cfg, workdir=workdir, progress=False, **kw
    )


def _assert_same(a: search.SearchResult, b: search.SearchResult):
    assert a.iterations == b.iterations and a.stop_reason == b.stop_reason
    assert json.dumps(a.history) == json.dumps(b.history)  # NaN-safe, exact float repr
    assert a.best.utility == b.best.utility and a.best.iteration == b.best.iteration
    assert a.best.dag == b.best.dag and a.best.assignment == b.best.assignment
    for ta, tb in ((a.best.weights, b.best.weights), (a.roles, b.roles), (a.weights, b.weights)):
        for x, y in zip(jax.tree.leaves(ta), jax.tree.leaves(tb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _files(root):
    """{relative path: sha256} of every file under root, except orbax's temporary directories
    of killed saves (incomplete writes orbax itself removes)."""
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if ".orbax-checkpoint-tmp" not in d]
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _tree(root):
    """Every directory and file under root with the files' hashes: equal means unchanged."""
    dirs = sorted(os.path.relpath(d, root) for d, _, _ in os.walk(root))
    return dirs, _files(root)


def _assert_nothing_lost(before, root):
    """Each file of ``before`` is still under root, byte for byte: in place, or in the same place
    within a step moved to corrupt/<step> or corrupt/<step>-<k>."""
    after = _files(root)
    moved = os.listdir(os.path.join(root, "corrupt")) if os.path.isdir(f"{root}/corrupt") else []
    for rel, digest in before.items():
        step, _, rest = rel.partition(os.sep)
        places = [rel] + [
            os.path.join("corrupt", name, rest) for name in moved if name.split("-")[0] == step
        ]
        assert any(after.get(p) == digest for p in places), f"{rel} was lost"


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run (no workdir) every resumed run must reproduce."""
    return _run(_cfg())


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """Pristine workdir of a run killed in iteration 4: steps 1, 2, 3 (tests work on copies)."""
    wd = str(tmp_path_factory.mktemp("killed") / "wd")
    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(), wd, Scorer(fail_at=7))
    assert sorted(os.listdir(wd)) == ["1", "2", "3"]
    return wd


def _copy(src, tmp_path, name="wd"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- damage


def _array_files(step_dir):
    """The OCDBT data files that hold a step's arrays (and their b-tree nodes)."""
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(os.path.join(step_dir, "state"))
        for f in names
        if os.path.basename(root) == "d"
    )
    assert files
    return files


def truncated_array(step_dir):
    for f in _array_files(step_dir):
        os.truncate(f, os.path.getsize(f) // 2)


def garbled_array(step_dir):
    rng = np.random.default_rng(0)
    for f in _array_files(step_dir):
        open(f, "wb").write(rng.bytes(os.path.getsize(f)))


def deleted_array(step_dir):
    for f in _array_files(step_dir):
        os.remove(f)


def flipped_array_bytes(step_dir):
    # Same size, one byte changed: OCDBT's own checksum of each file notices.
    for f in _array_files(step_dir):
        data = bytearray(open(f, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(f, "wb").write(bytes(data))


def checksum_mismatch(step_dir):
    # Intact, readable array files holding other values (those of the previous step): only the
    # CRC32s recorded in meta at save time can notice.
    state = os.path.join(step_dir, "state")
    shutil.rmtree(state)
    shutil.copytree(os.path.join(os.path.dirname(step_dir), "1", "state"), state)


def missing_meta_item(step_dir):
    shutil.rmtree(os.path.join(step_dir, "meta"))


def garbled_meta_json(step_dir):
    open(os.path.join(step_dir, "meta", "metadata"), "w").write('{"identity": {"config": ')


def meta_without_checksums(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    meta = json.loads(open(path).read())
    del meta["checksums"]
    open(path, "w").write(json.dumps(meta))


def missing_step_metadata(step_dir):
    # orbax's per-step _CHECKPOINT_METADATA (item handlers, timestamps): the data is intact and
    # orbax restores without it, so this step is good.
    os.remove(os.path.join(step_dir, "_CHECKPOINT_METADATA"))


DAMAGES = [
    truncated_array,
    garbled_array,
    deleted_array,
    flipped_array_bytes,
    checksum_mismatch,
    missing_meta_item,
    garbled_meta_json,
    meta_without_checksums,
]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint step")]


@pytest.mark.parametrize("damage", DAMAGES + [missing_step_metadata])
def test_damaged_latest_step_is_moved_aside_and_the_run_resumes_exactly(
    tmp_path, killed, reference, damage, caplog, monkeypatch
):
    wd = _copy(killed, tmp_path)
    damage(os.path.join(wd, "3"))
    before = _files(wd)
    reports = []
    monkeypatch.setattr(sys, "unraisablehook", reports.append)
    with caplog.at_level(logging.WARNING):
        resumed = _run(_cfg(), wd)
    time.sleep(0.2)  # late tensorstore callbacks of a failed read
    gc.collect()
    assert not [r for r in reports if "Event loop is closed" in str(r.exc_value)]
    _assert_same(resumed, reference)
    _assert_nothing_lost(before, wd)
    if damage is missing_step_metadata:
        assert resumed.resumed_from == 3 and not os.path.exists(os.path.join(wd, "corrupt"))
        return
    assert resumed.resumed_from == 2
    assert os.listdir(os.path.join(wd, "corrupt")) == ["3"]
    (line,) = _warnings(caplog)
    assert "\n" not in line and "step 3" in line and os.path.join(wd, "corrupt", "3") in line


def test_all_steps_damaged_are_moved_aside_and_refused_every_time(tmp_path, killed):
    wd = _copy(killed, tmp_path)
    for step, damage in zip("123", (garbled_meta_json, truncated_array, checksum_mismatch)):
        damage(os.path.join(wd, step))
    before = _files(wd)
    with pytest.raises(checkpointing.NoUsableCheckpointError) as err:
        _run(_cfg(), wd)
    msg = str(err.value)
    assert "\n" not in msg and "[1, 2, 3]" in msg and "corrupt" in msg
    assert "--config.restart=True" in msg
    assert sorted(os.listdir(wd)) == ["corrupt"]
    assert sorted(os.listdir(os.path.join(wd, "corrupt"))) == ["1", "2", "3"]
    _assert_nothing_lost(before, wd)
    # A rerun does not silently start over on top of the moved-aside steps either.
    tree = _tree(wd)
    with pytest.raises(checkpointing.NoUsableCheckpointError, match="restart"):
        _run(_cfg(), wd)
    assert _tree(wd) == tree


def test_moved_aside_steps_survive_garbage_collection_and_a_second_damage(
    tmp_path, killed, reference
):
    """Step 3 damaged twice (the second time after the resumed run rewrote it): both copies kept
    (corrupt/3, corrupt/3-1); orbax's max_to_keep collects old steps but never those."""
    wd = _copy(killed, tmp_path)
    garbled_meta_json(os.path.join(wd, "3"))
    first = _files(os.path.join(wd, "3"))

    def kill_after_iteration_3(record):
        if record["iteration"] == 2:  # history records count from 0: 3 iterations done
            raise KeyboardInterrupt("killed after the save of step 3")

    with pytest.raises(KeyboardInterrupt):
        _run(_cfg(max_to_keep=2), wd, callbacks=[kill_after_iteration_3])
    truncated_array(os.path.join(wd, "3"))
    second = _files(os.path.join(wd, "3"))
    resumed = _run(_cfg(max_to_keep=2), wd)
    assert resumed.resumed_from == 2
    _assert_same(resumed, reference)
    assert sorted(n for n in os.listdir(wd) if n.isdigit()) == ["4", "5"]  # 1, 2, 3 collected
    assert _files(os.path.join(wd, "corrupt", "3")) == first
    assert _files(os.path.join(wd, "corrupt", "3-1")) == second
    with checkpointing.Checkpointer(wd) as ckpt:
        assert ckpt.moved_aside() == ["3", "3-1"]


def test_equal_identity_with_other_shapes_is_damage_but_nothing_is_deleted(tmp_path):
    wd = str(tmp_path / "wd")
    identity = {"config": {"seed": 0}}
    with checkpointing.Checkpointer(wd) as ckpt:
        ckpt.save(1, {"x": np.arange(3.0)}, {"identity": identity})
    before = _files(wd)
    with checkpointing.Checkpointer(wd) as ckpt:
        with pytest.raises(checkpointing.NoUsableCheckpointError):
            ckpt.restore_latest({"x": np.zeros(4)}, identity)
        with pytest.raises(checkpointing.NoUsableCheckpointError, match="earlier"):
            ckpt.restore_latest({"x": np.zeros(4)}, identity)
    _assert_nothing_lost(before, wd)
    assert os.listdir(os.path.join(wd, "corrupt")) == ["1"]


# ----------------------------------------------------------------------------- changed config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("finished") / "wd")
    _run(_cfg(), wd)
    return wd


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(cfg=_cfg(n_graphs=3)), "config.n_graphs: saved 4, now 3"),  # other swarm shapes
        (dict(experts=_experts(5)), "experts.crc32"),  # other number of experts
        (dict(cfg=_cfg(seed=4)), "config.seed: saved 3, now 4"),  # same shapes
    ],
)
def test_changed_config_is_refused_with_the_workdir_unchanged(tmp_path, finished, change, field):
    wd = _copy(finished, tmp_path)
    tree = _tree(wd)
    for _ in range(2):  # a second rerun finds the same: nothing was replaced
        with pytest.raises(checkpointing.ConfigMismatchError) as err:
            _run(change.get("cfg", _cfg()), wd, experts=change.get("experts"))
        assert field in str(err.value) and "different run" in str(err.value)
        assert _tree(wd) == tree


def test_changed_config_is_refused_even_when_the_latest_step_is_damaged(tmp_path, killed):
    """Refusal comes first: the damaged latest step is not moved aside for another run."""
    wd = _copy(killed, tmp_path)
    truncated_array(os.path.join(wd, "3"))
    garbled_meta_json(os.path.join(wd, "2"))
    tree = _tree(wd)
    with pytest.raises(checkpointing.ConfigMismatchError, match="n_graphs"):
        _run(_cfg(n_graphs=3), wd)
    assert _tree(wd) == tree


# ----------------------------------------------------------------------------- inspect


def _inspect(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.inspect_checkpoint", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_inspect_checkpoint_errors_are_one_line_and_verify_finds_damaged_arrays(tmp_path, killed):
    rc, out, err = _inspect(f"--workdir={tmp_path / 'missing'}")
    assert rc == 1 and not out and err.count("\n") == 1
    assert err.startswith("inspect_checkpoint: no checkpoint in")

    wd = _copy(killed, tmp_path)
    truncated_array(os.path.join(wd, "3"))
    flipped_array_bytes(os.path.join(wd, "2"))
    tree = _tree(wd)
    # The summary reads JSON only: step 3 looks fine to it.
    rc, out, err = _inspect(f"--workdir={wd}")
    assert rc == 0 and "step: 3" in out and not err
    rc, out, err = _inspect(f"--workdir={wd}", "--verify")
    lines = out.splitlines()
    assert rc == 1 and lines[1] == "step 1: ok"
    assert lines[2].startswith("step 2: damaged (state: ") and "DATA_LOSS" in lines[2]
    assert lines[3].startswith("step 3: damaged (state: ")
    assert err == "inspect_checkpoint: damaged steps: [2, 3]\n"  # nothing else: no warnings
    assert _tree(wd) == tree

    garbled_meta_json(os.path.join(wd, "3"))
    rc, out, err = _inspect(f"--workdir={wd}", "--step=3")
    assert rc == 1 and not out and err.count("\n") == 1
    assert err.startswith("inspect_checkpoint: step 3 in ") and "unreadable (meta: " in err
    rc, _, err = _inspect(f"--workdir={wd}", "--step=3", "--verbose")
    assert rc == 1 and "Traceback" in err and "NoUsableCheckpointError" in err
    for text in (out, err):
        assert "read only" not in text and "Event loop" not in text
