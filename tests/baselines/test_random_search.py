"""The random-search controls (hs_jax.methods.random_search) end to end on the tiny config.

Utilities are replaced by a fixed pseudo-random function of the system (the tiny model's
random experts score 0 everywhere); the generation still runs and is counted.
`random_search` draws systems and expert weights (random convex combinations of the pool),
`random_roles` systems only, over the pool's own weights.
"""

import json
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

from hs_jax.pipeline import door  # ANCHOR

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(budget, method="random_search"):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.budget = budget
    c.outputs.export_experts = False
    c.outputs.plots = False
    return c


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


@pytest.fixture
def scored_weights(monkeypatch):
    """Every Evaluator.score call's (iteration, weights, the pool as loaded)."""
    from hs_jax.methods import api

    calls = []
    real = api.Evaluator.score

    def score(self, systems, weights, *, step, iteration=0):
        calls.append((iteration, weights, self.setup.experts))
        return real(self, systems, weights, step=step, iteration=iteration)

    monkeypatch.setattr(api.Evaluator, "score", score)
    return calls


def test_random_system_is_a_g_decoded_in_tree_with_a_random_assignment():
    from hs_jax.methods.random_search import random_system

    rng = np.random.default_rng(0)
    systems = [random_system(4, rng, scale=1.0, top_p=0.8) for _ in range(50)]
    assert all(dag.n == 4 and dag.is_in_tree() and len(a) == 4 for dag, a in systems)
    assert all(0 <= e < 4 for _, a in systems for e in a)
    assert len({s for s in systems}) > 40  # fresh randomness per candidate
    again = np.random.default_rng(0)
    assert systems[:5] == [random_system(4, again, scale=1.0, top_p=0.8) for _ in range(5)]


def test_mixing_matrices_are_seeded_rows_on_the_simplex():
    from hs_jax.methods.random_search import mixing_matrix

    m = mixing_matrix(5, np.random.default_rng(3))
    assert m.shape == (5, 5) and m.dtype == np.float32
    assert (m >= 0).all() and np.allclose(m.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(m, mixing_matrix(5, np.random.default_rng(3)))
    assert not np.allclose(m, mixing_matrix(5, np.random.default_rng(4)))


@pytest.mark.parametrize("method", ["random_search", "random_roles"])
@pytest.mark.parametrize("budget, calls", [(8, [4, 4]), (6, [4, 2])])
def test_spends_exactly_the_budget_in_search_sized_batches(
    tmp_path, fake_utilities, method, budget, calls
):
    import hs_jax
    from hs_jax.swarm.graph import Dag

    results = hs_jax.run(_tiny_config(budget, method), tmp_path / "run")
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
        assert r["method"] == method
    best = max(rows, key=lambda r: r["dev_utility"])
    assert results["best_system"]["dev_utility"] == best["dev_utility"]
    assert results["best_system"]["assignment"] == best["system"]["assignment"]
    history = results["history"]
    assert [len(h["utilities"]) for h in history] == calls
    assert history[-1]["best_utility"] == best["dev_utility"]
    assert results["stop_reason"] == "budget"
    cost = results["best_system"]["test_cost"]
    assert cost["generate_calls"] > 0 and cost["generated_tokens"] > 0


def test_random_search_batches_run_random_convex_combinations_of_the_pool(
    tmp_path, fake_utilities, scored_weights
):
    """Batch 0 runs the pool as loaded; every later batch a fresh stack whose slot k is
    sum_i W[k, i] * expert i on every leaf (A and B factors alike), W the recorded mixing."""
    import hs_jax
    from hs_jax.methods import archive

    results = hs_jax.run(_tiny_config(12), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    history = results["history"]
    assert [h["weights"] for h in history] == ["pool", "mixed", "mixed"]
    assert [t for t, _, _ in scored_weights] == [0, 1, 2]
    pool = scored_weights[0][2]
    assert scored_weights[0][1] is pool  # where the search starts
    np.testing.assert_array_equal(history[0]["mixing"], np.eye(3))
    fingerprints = [{r["weights"] for r in rows if r["iteration"] == t} for t in range(3)]
    assert all(len(f) == 1 for f in fingerprints)
    assert fingerprints[0] == {archive.weights_fingerprint(pool)}
    assert len(set.union(*fingerprints)) == 3  # each later batch: weights of its own
    for t in (1, 2):
        mixing = np.asarray(history[t]["mixing"], np.float64)
        assert mixing.shape == (3, 3) and (mixing >= 0).all()
        assert np.allclose(mixing.sum(axis=1), 1.0, atol=1e-6) and not np.allclose(mixing, 1 / 3)
        weights = scored_weights[t][1]
        leaves = jax.tree.leaves(weights)
        assert len(leaves) == len(jax.tree.leaves(pool)) > 0
        for got, base in zip(leaves, jax.tree.leaves(pool), strict=True):
            want = np.einsum("kn,n...->k...", mixing, np.asarray(base, np.float64))
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-7)
    assert history[1]["mixing"] != history[2]["mixing"]
    best = results["best_system"]
    assert best["details"]["mixing"] == history[best["iteration"]]["mixing"]


def test_random_roles_is_the_earlier_random_search(tmp_path, fake_utilities):
    """random_roles: the pool's own weights throughout, the systems of random_system's seeded
    stream; random_search scores the same systems (its weights come from another stream)."""
    import hs_jax
    from hs_jax.methods.random_search import random_system

    roles = hs_jax.run(_tiny_config(8, "random_roles"), tmp_path / "roles")
    rows = _archive(tmp_path / "roles")
    assert len({r["weights"] for r in rows}) == 1
    assert all("mixing" not in h for h in roles["history"])
    assert "mixing" not in roles["best_system"]["details"]
    rng = np.random.default_rng(0)  # config.seed
    expected = [random_system(3, rng, scale=1.0, top_p=0.8) for _ in range(8)]
    got = [(r["system"]["dag"], r["system"]["assignment"]) for r in rows]
    assert got == [(d.to_dict(), list(a)) for d, a in expected]
    hs_jax.run(_tiny_config(8), tmp_path / "search")
    searched = _archive(tmp_path / "search")
    assert [r["system"] for r in searched] == [r["system"] for r in rows]
    assert len({r["weights"] for r in searched}) == 2


@pytest.mark.parametrize("method", ["random_search", "random_roles"])
def test_a_rerun_replays_the_archive_to_the_same_result(tmp_path, fake_utilities, method):
    """Deterministic from config.seed (the mixing matrices too): after losing results.json,
    the rerun asks for the same systems with the same weights, so the Evaluator replays every
    archived utility instead of scoring."""
    import hs_jax

    first = hs_jax.run(_tiny_config(12, method), tmp_path / "run")
    rows = _archive(tmp_path / "run")
    (tmp_path / "run" / "results.json").unlink()
    again = hs_jax.run(_tiny_config(12, method), tmp_path / "run")
    assert _archive(tmp_path / "run") == rows
    assert not (tmp_path / "run" / "archive.jsonl.diverged").exists()
    for key in ("best_system", "history", "evaluations", "cost"):
        assert again[key] == first[key], key


def test_random_search_mixes_full_weight_experts_leaf_by_leaf(
    tmp_path, fake_utilities, scored_weights
):
    """Full-weight experts (experts.source='full'): every leaf has the expert axis, and each
    later batch's slot k is sum_i W[k, i] * model i on every parameter."""
    import jax.numpy as jnp

    import hs_jax
    from hs_jax.experts.full_models import FullExperts
    from hs_jax.models.hf_writer import save_hf_dir
    from hs_jax.setup import assembly

    c = _tiny_config(8)
    cfg, params, _ = assembly.load_base(door.resolve(c))
    dirs = []
    for i in range(3):
        rng = np.random.default_rng(i)
        noisy = jax.tree.map(
            lambda x, rng=rng: x + jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype),
            params,
        )
        dirs.append(str(save_hf_dir(cfg, noisy, tmp_path / f"model_{i}")))
    c.experts.source = "full"
    c.experts.model_dirs = ",".join(dirs)
    results = hs_jax.run(c, tmp_path / "run")
    assert results["evaluations"] == 8
    (_, first, pool), (_, mixed, _) = scored_weights
    assert isinstance(pool, FullExperts) and first is pool and isinstance(mixed, FullExperts)
    mixing = np.asarray(results["history"][1]["mixing"], np.float64)
    for got, base in zip(jax.tree.leaves(mixed), jax.tree.leaves(pool), strict=True):
        want = np.einsum("kn,n...->k...", mixing, np.asarray(base, np.float64))
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-6)
