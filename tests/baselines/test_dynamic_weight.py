"""The dynamic-weight baselines (hs_jax.methods.dynamic_weight) on the tiny config.

The tiny model's random experts score 0 everywhere, so besides runs with the real utilities
(fields, budget, determinism, patience), some runs replace the utility by a function of the
weights a system runs with: minus the squared distance of its expert to the midpoint of
experts 0 and 1 of the pool. Then the greedy soup of experts 0 and 1 is perfect and adding
expert 2 hurts, which makes the methods' choices checkable; generation still runs and is
counted.
"""

import json
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
N = 3  # experts in the tiny pool


def _tiny_config(method, budget):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.budget = budget
    c.outputs.export_experts = False
    c.outputs.plots = False
    return c


def _run(c, workdir):
    import hs_jax

    return hs_jax.run(c, workdir)


@pytest.fixture
def distance_utilities(monkeypatch):
    """Utility of (SINGLE, (k,)) = -|slot k - (expert 0 + expert 1) / 2|^2 of the pool scored
    first (the singles)."""
    from hs_jax.engine import scoring

    real = scoring.SystemScorer.score
    target = {}

    def score(self, systems, weights, items):
        real(self, systems, weights, items)
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(weights)]
        if not target:
            target["leaves"] = [(x[0] + x[1]) / 2 for x in leaves]
        return np.asarray(
            [
                -sum(np.sum((x[a[0]] - t) ** 2) for x, t in zip(leaves, target["leaves"]))
                for _, a in systems
            ]
        )

    monkeypatch.setattr(scoring.SystemScorer, "score", score)


def _random_stack(n=N):
    from hs_jax.experts import lora
    from hs_jax.models import gemma_config

    cfg = gemma_config.tiny_config("gemma3")
    return lora.init_lora_stack(cfg, n, 2, ("q_proj", "down_proj"), jax.random.key(1),
                                scheme="random")  # fmt: skip


def test_composition_with_one_hot_weights_is_the_expert_and_uniform_is_the_average():
    from hs_jax.experts import lora
    from hs_jax.methods.dynamic_weight import remix, uniform_weights

    stack = _random_stack()
    one_hot = np.eye(N, dtype=np.float32)[[2, 0]]  # slot 0 <- expert 2, slot 1 <- expert 0
    mixed = remix(stack, one_hot)
    assert jax.tree.structure(mixed) == jax.tree.structure(stack)
    for got, want in zip(jax.tree.leaves(mixed), jax.tree.leaves(stack), strict=True):
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[2]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[2]), np.asarray(want[2]))  # untouched
    soup = lora.expert(remix(stack, uniform_weights([0, 2], N)[None]), 0)
    for got, want in zip(jax.tree.leaves(soup), jax.tree.leaves(stack), strict=True):
        np.testing.assert_allclose(np.asarray(got[0]), (want[0] + want[2]) / 2, rtol=1e-6)


def test_lorahub_objective_subtracts_the_l1_norm_and_counts_non_finite_as_worst():
    from hs_jax.methods.dynamic_weight import objective

    w = np.array([[0.5, -0.5, 0.0], [1.0, 1.0, 1.0]])
    got = objective(np.array([0.4, np.nan]), w, 0.05)
    np.testing.assert_allclose(got, [0.35, -np.inf])


def _without_seconds(results):
    return {k: v for k, v in results.items() if k != "seconds"}


@pytest.mark.parametrize("method", ["greedy_soup", "lorahub", "model_swarms"])
def test_method_runs_within_its_budget_and_is_deterministic(method, tmp_path):
    """results.json names the method, its utilities are finite, it spends at most its budget,
    and a second run in another workdir gives the same results.json (time aside)."""
    from hs_jax.methods import METHODS

    assert METHODS[method].family == "dynamic weight"
    first = _run(_tiny_config(method, 6), tmp_path / "a")
    assert first["method"] == method
    assert 0 < first["evaluations"] <= 6
    best = first["best_system"]
    assert np.isfinite(best["dev_utility"]) and np.isfinite(best["test_utility"])
    assert best["dag"]["n"] == 1 and len(best["assignment"]) == 1
    assert first["history"] and all("iteration" in r for r in first["history"])
    rows = (tmp_path / "a" / "archive.jsonl").read_text().splitlines()
    assert len(rows) == first["evaluations"]
    assert all(json.loads(r)["method"] == method for r in rows)
    second = _run(_tiny_config(method, 6), tmp_path / "b")
    assert _without_seconds(first) == _without_seconds(second)


def test_greedy_soup_keeps_an_expert_only_when_the_soup_does_not_drop(distance_utilities, tmp_path):
    r = _run(_tiny_config("greedy_soup", 6), tmp_path / "run")
    dev = r["single_experts"]["dev"]
    assert dev[0] == pytest.approx(dev[1]) and dev[1] > dev[2]  # 0 and 1 equally far
    history = r["history"]
    first = r["best_system"]["details"]["order"][0]
    assert first in (0, 1)
    assert [h["expert"] for h in history] == [1 - first, 2]  # sorted by single utility
    assert r["evaluations"] == N - 1  # the one-expert soup is the best single, scored already
    soups = [dev[0]] + [h["best"] for h in history]
    assert all(b >= a for a, b in zip(soups, soups[1:]))
    assert [h["kept"] for h in history] == [True, False]
    assert history[0]["utilities"][0] == pytest.approx(0.0, abs=1e-9)  # the perfect soup
    assert history[1]["utilities"][0] < history[0]["utilities"][0]
    best = r["best_system"]
    assert sorted(best["details"]["soup"]) == [0, 1] and best["assignment"] == [0]
    assert best["dev_utility"] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(best["details"]["mixing_weights"], [0.5, 0.5, 0.0])


def test_lorahub_improves_its_objective_from_the_uniform_start(distance_utilities, tmp_path):
    r = _run(_tiny_config("lorahub", 1 + 4 * N), tmp_path / "run")
    history = r["history"]
    assert r["evaluations"] == 1 + 4 * N and len(history) == 5
    assert [len(h["utilities"]) for h in history] == [1, N, N, N, N]
    np.testing.assert_allclose([h["step"] for h in history[1:]], 0.5 * 0.9 ** np.arange(4))
    assert np.allclose(history[0]["utilities"][0], history[0]["objectives"][0] + 0.05)
    bests = [h["best"] for h in history]
    assert all(b >= a for a, b in zip(bests, bests[1:]))
    assert bests[-1] > bests[0]
    details = r["best_system"]["details"]
    assert details["objective"] == pytest.approx(bests[-1])
    w = np.asarray(details["mixing_weights"])
    assert details["objective"] == pytest.approx(
        r["best_system"]["dev_utility"] - 0.05 * np.abs(w).sum(), rel=1e-5
    )


def test_model_swarms_runs_one_iteration_per_n_evaluations(distance_utilities, tmp_path):
    c = _tiny_config("model_swarms", 3 * N)
    c.search.patience = 10
    r = _run(c, tmp_path / "run")
    assert r["evaluations"] == 3 * N and r["iterations"] == 3 and r["stop_reason"] == "budget"
    history = r["history"]
    assert [len(h["utilities"]) for h in history] == [N] * 3
    assert history[0]["utilities"] == pytest.approx(r["single_experts"]["dev"])
    np.testing.assert_allclose([h["step"] for h in history], [1.0, 0.95, 0.95**2], rtol=1e-6)
    best = max(u for h in history for u in h["utilities"])
    assert r["best_system"]["dev_utility"] == pytest.approx(best)
    assert best >= max(r["single_experts"]["dev"])


def test_model_swarms_stops_after_patience_iterations_without_improvement(tmp_path):
    r = _run(_tiny_config("model_swarms", 10 * N), tmp_path / "run")  # utilities all 0
    assert r["stop_reason"] == "patience"
    assert r["iterations"] == 3 and r["evaluations"] == 3 * N  # improve, stall 1, stall 2
