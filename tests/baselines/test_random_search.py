"""The random-search control (hs_jax.baselines.random_search) end to end on the tiny config.

Utilities are replaced by a fixed pseudo-random function of the system (the tiny model's
random experts score 0 everywhere); the generation still runs and is counted.
"""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(budget):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = "random_search"
    c.budget = budget
    c.outputs.export_experts = False
    c.outputs.plots = False
    return c


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


def test_random_system_is_a_g_decoded_in_tree_with_a_random_assignment():
    from hs_jax.baselines.random_search import random_system

    rng = np.random.default_rng(0)
    systems = [random_system(4, rng, scale=1.0, top_p=0.8) for _ in range(50)]
    assert all(dag.n == 4 and dag.is_in_tree() and len(a) == 4 for dag, a in systems)
    assert all(0 <= e < 4 for _, a in systems for e in a)
    assert len({s for s in systems}) > 40  # fresh randomness per candidate
    again = np.random.default_rng(0)
    assert systems[:5] == [random_system(4, again, scale=1.0, top_p=0.8) for _ in range(5)]


@pytest.mark.parametrize("budget, calls", [(8, [4, 4]), (6, [4, 2])])
def test_spends_exactly_the_budget_in_search_sized_batches(tmp_path, fake_utilities, budget, calls):
    import hs_jax
    from hs_jax.graph import Dag

    results = hs_jax.run(_tiny_config(budget), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    assert len(rows) == budget == results["evaluations"]
    # One scoring call per batch of n_graphs + n_assignments = 4 (the last one what is left).
    sizes = [sum(r["iteration"] == t for r in rows) for t in range(len(calls))]
    assert sizes == calls and [r["cost"] is not None for r in rows].count(True) == len(calls)
    for r in rows:
        dag = Dag.from_dict(r["system"]["dag"])  # a valid Dag (checked on construction)
        assert dag.n == 3 and dag.is_in_tree()  # G-decode's shape: one end, all reach it
        assert len(r["system"]["assignment"]) == 3
        assert all(0 <= e < 3 for e in r["system"]["assignment"])
    best = max(rows, key=lambda r: r["dev_utility"])
    assert results["best_system"]["dev_utility"] == best["dev_utility"]
    assert results["best_system"]["assignment"] == best["system"]["assignment"]
    history = results["history"]
    assert [len(h["utilities"]) for h in history] == calls
    assert history[-1]["best_utility"] == best["dev_utility"]
    assert results["stop_reason"] == "budget"


def test_a_rerun_replays_the_archive_to_the_same_result(tmp_path, fake_utilities):
    """Deterministic from config.seed: after losing results.json, the rerun asks for the
    same systems, so the Evaluator replays every archived utility instead of scoring."""
    import hs_jax

    first = hs_jax.run(_tiny_config(8), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    (tmp_path / "run" / "results.json").unlink()
    again = hs_jax.run(_tiny_config(8), tmp_path / "run")
    assert _archive(tmp_path / "run") == rows
    for key in ("best_system", "history", "evaluations", "cost"):
        assert again[key] == first[key], key
