"""Chain and star (hs_jax.baselines.static_role) end to end on the tiny config.

The tiny model's random experts score 0 on everything, so the runs replace each system's
utility by a fixed pseudo-random function of the system (the generation still runs and is
counted): which system is chosen is then observable.
"""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(method):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.outputs.export_experts = False
    c.outputs.plots = False
    return c


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


def test_expert_orders_are_distinct_all_when_few_and_seeded():
    from hs_jax.baselines.static_role import expert_orders

    every = expert_orders(3, 20, np.random.default_rng(0))
    assert sorted(every) == sorted({tuple(p) for p in every}) and len(every) == 6
    some = expert_orders(4, 20, np.random.default_rng(0))
    assert len(some) == len(set(some)) == 20
    assert all(sorted(o) == [0, 1, 2, 3] for o in some)
    assert some == expert_orders(4, 20, np.random.default_rng(0))
    assert len(expert_orders(4, 24, np.random.default_rng(1))) == 24  # all 4! orders


@pytest.mark.parametrize("method", ["chain", "star"])
def test_best_of_every_order_on_dev_in_one_call(tmp_path, fake_utilities, method):
    import hs_jax
    from hs_jax.baselines import topologies
    from hs_jax.graph import Dag

    results = hs_jax.run(_tiny_config(method), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    # 3 experts: all 3! = 6 orders (fewer than config.baselines.permutations = 20), each once.
    assert len(rows) == 6 == results["evaluations"]
    assert len({tuple(r["system"]["assignment"]) for r in rows}) == 6
    build = getattr(topologies, method)
    for r in rows:
        assert sorted(r["system"]["assignment"]) == [0, 1, 2]
        expected, _ = build(r["system"]["assignment"])
        assert Dag.from_dict(r["system"]["dag"]) == expected
    assert rows[0]["cost"] is not None and all(r["cost"] is None for r in rows[1:])  # one call
    best = max(rows, key=lambda r: r["dev_utility"])  # the first maximum
    assert results["best_system"]["assignment"] == best["system"]["assignment"]
    assert results["best_system"]["dev_utility"] == best["dev_utility"]
    assert results["method"] == method and results["best_system"]["test_utility"] is not None


def test_star_is_refused_for_two_experts(tmp_path):
    import hs_jax
    from hs_jax.methods import METHODS

    c = _tiny_config("star")
    c.experts.n = 2
    assert "at least 3 experts" in METHODS["star"].applies(c)
    assert METHODS["star"].applies(_tiny_config("star")) is None
    with pytest.raises(ValueError, match="at least 3 experts"):
        hs_jax.run(c, tmp_path / "run")
