"""Chain and star (hs_jax.methods.static_role) end to end on the tiny config.

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
    from hs_jax.methods.static_role import expert_orders

    every = expert_orders(3, 20, np.random.default_rng(0))
    assert sorted(every) == sorted({tuple(p) for p in every}) and len(every) == 6
    some = expert_orders(4, 20, np.random.default_rng(0))
    assert len(some) == len(set(some)) == 20
    assert all(sorted(o) == [0, 1, 2, 3] for o in some)
    assert some == expert_orders(4, 20, np.random.default_rng(0))
    assert len(expert_orders(4, 24, np.random.default_rng(1))) == 24  # all 4! orders


# chain on 3 experts: all 3! = 6 orders (fewer than config.baselines.permutations = 20); star
# (which needs 4) on 4 experts: 20 distinct random orders of the 4! = 24.
@pytest.mark.parametrize("method, n, orders", [("chain", 3, 6), ("star", 4, 20)])
def test_best_of_every_order_on_dev_in_one_call(tmp_path, fake_utilities, method, n, orders):
    import hs_jax
    from hs_jax.methods import topologies
    from hs_jax.swarm.graph import Dag

    c = _tiny_config(method)
    c.experts.n = n
    results = hs_jax.run(c, tmp_path / "run")
    rows = _archive(tmp_path / "run")
    assert len(rows) == orders == results["evaluations"]
    assert len({tuple(r["system"]["assignment"]) for r in rows}) == orders
    build = getattr(topologies, method)
    for r in rows:
        assert sorted(r["system"]["assignment"]) == list(range(n))
        expected, _ = build(r["system"]["assignment"])
        assert Dag.from_dict(r["system"]["dag"]) == expected
    assert rows[0]["cost"] is not None and all(r["cost"] is None for r in rows[1:])  # one call
    best = max(rows, key=lambda r: r["dev_utility"])  # the first maximum
    assert results["best_system"]["assignment"] == best["system"]["assignment"]
    assert results["best_system"]["dev_utility"] == best["dev_utility"]
    assert results["method"] == method and results["best_system"]["test_utility"] is not None


@pytest.mark.parametrize("n", [2, 3])
def test_star_is_refused_below_four_experts(tmp_path, n):
    """At n = 3 the 1 -> (n-2) -> 1 star is the chain 1 -> 1 -> 1: not a method of its own."""
    import hs_jax
    from hs_jax.methods import METHODS

    c = _tiny_config("star")
    c.experts.n = n
    why = METHODS["star"].applies(c)
    assert why == (
        f"a 1 -> (n-2) -> 1 star needs at least 4 experts (at 3 it is the chain), the pool has {n}"
    )
    c4 = _tiny_config("star")
    c4.experts.n = 4
    assert METHODS["star"].applies(c4) is None
    with pytest.raises(ValueError, match="needs at least 4 experts"):
        hs_jax.run(c, tmp_path / "run")


def test_star_refuses_a_pool_whose_size_only_loading_tells(tmp_path, monkeypatch):
    """A pool whose size the config cannot tell (say PEFT folders found later) is refused by
    the method itself, with the same reason."""
    import hs_jax
    from hs_jax.config import pool_source
    from hs_jax.methods.api import NotApplicable

    monkeypatch.setattr(pool_source, "pool_size", lambda c: None)
    with pytest.raises(NotApplicable, match="needs at least 4 experts .* the pool has 3"):
        hs_jax.run(_tiny_config("star"), tmp_path / "run")
