"""config.mesh.expert for real: a tiny run on the 8 CPU devices with the weight swarm split
along 'expert' ends with the results.json of the 1-device layout, the swarm is split, every
device generates its share of the rows (rows go over 'data' x 'expert'), and a pool that does
not divide the axis (4 experts on expert=8, 10 on expert=4 and expert=8) is padded with inert
particles and still ends with the 1-device results.

Every field of results.json but `seconds` is expected to be equal, not close: the PSO draws
its random scalars as one array from the key (never per shard) and its update is elementwise
per particle, so the swarm's positions are bitwise the same on any layout (checked below on
the final positions too); generation rows do not interact, and a row's tokens do not depend on
which device runs it. With mesh.model=2 the base model's kernels are split and row-parallel
products are summed across the two halves, a different order of float additions: the tiny
model's greedy tokens come out the same here, which is what the test pins (a larger model could
flip a near-tie, which is why config.mesh is part of a run's identity).
"""

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import hs_jax
from hs_jax.engine.placement import Placement
from hs_jax.pipeline import door
from hs_jax.runtime import distributed
from hs_jax.runtime.errors import ConfigError
from hs_jax.swarm import search

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {  # name: (data, expert, model, experts)
    "one device": (1, 1, 1, 4),
    "expert=2": (-1, 2, 1, 4),
    "expert=4": (-1, 4, 1, 4),
    "expert=8": (-1, 8, 1, 4),
    "data=2 expert=2 model=2": (2, 2, 2, 4),
    "10 experts, one device": (1, 1, 1, 10),
    "10 experts, expert=4": (-1, 4, 1, 10),
    "10 experts, expert=8": (-1, 8, 1, 10),
}
REFERENCE = {n: "10 experts, one device" if n.startswith("10") else "one device" for n in LAYOUTS}


def _tiny(data=1, expert=1, model=1, n=4):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.experts.n = n
    c.mesh.data, c.mesh.expert, c.mesh.model = data, expert, model
    return c


class _Capture:
    """Wraps search.run_search and _Loop.load: the swarm's shardings as the search returns it
    and as a resume restores it, and its final positions."""

    def __init__(self, monkeypatch):
        self.returned, self.restored, self.positions, self.rows = [], [], [], []
        run_search, load = search.run_search, search._Loop.load
        place_rows = Placement.rows

        def wrapped_run_search(*args, **kwargs):
            result = run_search(*args, **kwargs)
            self.returned.append(_shardings(result.weights.x))
            self.positions.append(distributed.host_tree(result.weights.positions))
            return result

        def wrapped_rows(placement, x):
            out = place_rows(placement, x)
            if placement.mesh is not None:  # (rows, devices holding rows, rows per device)
                shard_rows = {s.data.shape[0] for s in out.addressable_shards}
                self.rows.append((out.shape[0], _row_devices(out), shard_rows))
            return out

        def wrapped_load(loop, state, meta):
            load(loop, state, meta)
            self.restored.append(_shardings(loop.weights.x))

        monkeypatch.setattr(search, "run_search", wrapped_run_search)
        monkeypatch.setattr(Placement, "rows", wrapped_rows)
        monkeypatch.setattr(search._Loop, "load", wrapped_load)


def _row_devices(array) -> int:
    """How many distinct row blocks the devices hold (1: every device holds all rows)."""
    blocks = array.sharding.devices_indices_map(array.shape).values()
    return len({(index[0].start, index[0].stop) for index in blocks})


def _shardings(tree):
    """(spec, devices, rows per shard) of every leaf."""
    import jax

    return [
        (
            leaf.sharding.spec,
            len(leaf.sharding.device_set),
            leaf.addressable_shards[0].data.shape[0],
        )
        for leaf in jax.tree.leaves(tree)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each layout's finished workdir, results, swarm shardings and final positions."""
    out = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        capture = _Capture(monkeypatch)
        for name, layout in LAYOUTS.items():
            workdir = tmp_path_factory.mktemp("layout") / "run"
            capture.rows.clear()
            results = hs_jax.run(_tiny(*layout), workdir)
            out[name] = {
                "workdir": workdir,
                "results": results,
                "shardings": capture.returned[-1],
                "positions": capture.positions[-1],
                "rows": list(capture.rows),
            }
    return out


def _without_seconds(results):
    return json.dumps({k: v for k, v in results.items() if k != "seconds"}, sort_keys=True)


@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "one device"])
def test_every_layout_gives_the_one_device_results(runs, name):
    if name == REFERENCE[name]:
        pytest.skip("the reference itself")  # the 10-expert reference is in the list
    reference, run = runs[REFERENCE[name]], runs[name]
    assert _without_seconds(run["results"]) == _without_seconds(reference["results"])
    on_disk = json.loads((run["workdir"] / "results.json").read_text())
    assert _without_seconds(on_disk) == _without_seconds(reference["results"])
    for a, b in zip(run["positions"].layers, reference["positions"].layers, strict=True):
        for proj in a:
            for ab in ("a", "b"):
                np.testing.assert_array_equal(a[proj][ab], b[proj][ab])  # bitwise


@pytest.mark.parametrize(
    "name, devices, per_shard",
    [
        ("one device", 1, 4),
        ("expert=2", 8, 2),
        ("expert=4", 8, 1),
        ("expert=8", 8, 1),  # 4 experts + 4 inert particles
        ("data=2 expert=2 model=2", 8, 2),
        ("10 experts, expert=4", 8, 3),  # 10 + 2 inert
        ("10 experts, expert=8", 8, 2),  # 10 + 6 inert
    ],
)
def test_the_weight_swarm_is_split_along_expert(runs, name, devices, per_shard):
    for spec, n_devices, rows in runs[name]["shardings"]:
        assert spec == P("expert") and n_devices == devices and rows == per_shard


@pytest.mark.parametrize(
    "name, row_devices",
    [
        ("expert=2", 8),  # data=4 x expert=2
        ("expert=4", 8),
        ("expert=8", 8),
        ("data=2 expert=2 model=2", 4),  # the 2 devices of a 'model' group share their rows
        ("10 experts, expert=8", 8),
    ],
)
def test_every_device_generates_its_share_of_the_rows(runs, name, row_devices):
    """Rows are split over 'data' x 'expert': each call's rows fall into data x expert blocks
    of equal size, one per device group, none repeated along 'expert'."""
    calls = runs[name]["rows"]
    assert calls
    for rows, blocks, per_device in calls:
        assert blocks == row_devices and per_device == {rows // row_devices}


@pytest.mark.parametrize("name, per_shard", [("expert=2", 2), ("10 experts, expert=4", 3)])
def test_a_resumed_run_restores_the_split_swarm(runs, tmp_path, monkeypatch, name, per_shard):
    """The checkpoint holds whole arrays (a padded swarm's padding too); a resume puts them
    back along 'expert' and ends as the uninterrupted run."""
    workdir = tmp_path / "run"
    shutil.copytree(runs[name]["workdir"], workdir, copy_function=shutil.copy2)
    for file in ("results.json", "best_dag.png", "curves.png"):
        (workdir / file).unlink()
    shutil.rmtree(workdir / "best_experts")
    shutil.rmtree(workdir / "search" / "2")
    capture = _Capture(monkeypatch)
    results = hs_jax.run(_tiny(*LAYOUTS[name]), workdir)
    assert capture.restored and all(
        spec == P("expert") and devices == 8 and rows == per_shard
        for spec, devices, rows in capture.restored[0]
    )
    assert _without_seconds(results) == _without_seconds(runs[REFERENCE[name]]["results"])


# ----------------------------------------------------------------------------- refusals


def test_an_expert_axis_that_does_not_divide_the_pool_is_accepted():
    door.check(door.resolve(_tiny(expert=2, n=3)))  # padded with one inert particle


@pytest.mark.parametrize(
    "layout, message",
    [
        ((-1, 3, 1), "config.mesh: 8 devices do not divide by expert=3 x model=1"),
        ((4, 2, 2), "config.mesh: data=4 x expert=2 x model=2 needs 16 devices, there are 8"),
    ],
)
def test_a_layout_the_devices_cannot_hold_is_refused_before_anything(tmp_path, layout, message):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        hs_jax.run(_tiny(*layout, n=6), workdir)
    assert str(info.value) == message
    assert not workdir.exists()


def test_the_launcher_names_the_layout_in_one_line(tmp_path):
    """A layout the devices cannot hold is known once JAX has its devices (JAX_PLATFORMS=cpu:
    no log line of JAX's own about platforms it could not find)."""
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--config=configs/tiny.py",
         f"--workdir={tmp_path / 'run'}", "--config.mesh.expert=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "launch.main: config.mesh: 8 devices do not divide by expert=3 x model=1"
    ]
    assert not (tmp_path / "run").exists()
