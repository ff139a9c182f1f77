"""The merge math of hs_jax.methods.merging against plain numpy references (loops over the
entries), and the SVD back to LoRA factors: exact up to the factors' rank, Eckart-Young past it."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from hs_jax.experts import lora
from hs_jax.methods import merging


def _stack(rng, n=3, ranks=(2, 3, 1), d_in=5, d_out=4):
    """A small pool of experts of different ranks (zero-padded to the largest) over two
    projections of layer 0, layer 1 without LoRA."""
    experts = []
    for i, r in enumerate(ranks[:n]):
        layer = {
            proj: {"a": jnp.asarray(rng.normal(size=(1, d_in, r)), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(1, r, d_out)), jnp.float32)}
            for proj in ("q_proj", "v_proj")
        }  # fmt: skip
        experts.append(lora.LoraStack(layers=(layer, {}), names=(f"e{i}",), ranks=(r,)))
    return lora.stack_adapters(experts)


def _reference_deltas(stack, li, proj):
    entry = stack.layers[li][proj]
    a, b = np.asarray(entry["a"], np.float64), np.asarray(entry["b"], np.float64)
    return np.stack([a[e] @ b[e] for e in range(stack.n_experts)])


def test_uniform_soup_is_the_mean_of_the_factors():
    rng = np.random.default_rng(0)
    stack = _stack(rng)
    soup = merging.uniform_soup(stack)
    assert soup.n_experts == 1 and soup.rank == stack.rank == 3 and soup.ranks == (3,)
    assert soup.layers[1] == {}
    for proj in ("q_proj", "v_proj"):
        for ab in ("a", "b"):
            x = np.asarray(stack.layers[0][proj][ab])
            ref = sum(x[e] for e in range(3)) / 3
            np.testing.assert_allclose(np.asarray(soup.layers[0][proj][ab][0]), ref, rtol=1e-6)


def test_deltas_are_what_the_adapter_adds():
    rng = np.random.default_rng(1)
    stack = _stack(rng)
    entry = stack.layers[0]["q_proj"]
    d = merging.deltas(entry["a"], entry["b"])
    np.testing.assert_allclose(d, _reference_deltas(stack, 0, "q_proj"), rtol=1e-5, atol=1e-6)
    # y = x @ W + (x @ a) @ b: the delta applied to an input is the adapter's output.
    x = rng.normal(size=(2, 5))
    np.testing.assert_allclose(
        x @ d[1], (x @ np.asarray(entry["a"][1])) @ np.asarray(entry["b"][1]), rtol=1e-5
    )


def test_task_arithmetic_is_the_scaled_sum():
    d = np.random.default_rng(2).normal(size=(4, 3, 2)).astype(np.float32)
    ref = 0.7 * (d[0] + d[1] + d[2] + d[3])
    np.testing.assert_allclose(merging.task_arithmetic(d, 0.7), ref, rtol=1e-6)


def _ties_reference(d, density):
    """TIES entry by entry: trim each delta to its top-k magnitudes, elect the sign of the
    larger summed magnitude, average the agreeing non-zero values."""
    n = d.shape[0]
    trimmed = np.zeros_like(d)
    for e in range(n):
        flat = d[e].ravel()
        k = int(np.ceil(density * flat.size))
        keep = np.argsort(-np.abs(flat), kind="stable")[:k]
        out = np.zeros_like(flat)
        out[keep] = flat[keep]
        trimmed[e] = out.reshape(d[e].shape)
    merged = np.zeros(d.shape[1:])
    for idx in itertools.product(*(range(s) for s in d.shape[1:])):
        values = [trimmed[(e, *idx)] for e in range(n)]
        positive = sum(v for v in values if v > 0)
        negative = -sum(v for v in values if v < 0)
        sign = 1.0 if positive > negative else (-1.0 if negative > positive else 0.0)
        agree = [v for v in values if v != 0 and np.sign(v) == sign]
        merged[idx] = np.mean(agree) if agree else 0.0
    return merged


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
def test_ties_matches_an_entrywise_reference(density):
    d = np.random.default_rng(3).normal(size=(3, 4, 5)).astype(np.float32)
    got = merging.dare_ties(d, drop=0.0, density=density, scale=1.0, rng=np.random.default_rng())
    np.testing.assert_allclose(got, _ties_reference(d, density), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        merging.dare_ties(d, drop=0.0, density=density, scale=-2.5, rng=np.random.default_rng()),
        -2.5 * got, rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_dare_drops_and_rescales_with_a_seeded_mask():
    d = np.random.default_rng(4).normal(size=(3, 6, 7)).astype(np.float32)
    got = merging.dare(d, 0.3, np.random.default_rng(11))
    keep = np.random.default_rng(11).random(d.shape) >= 0.3  # the same draws
    np.testing.assert_allclose(got, np.where(keep, d / 0.7, 0.0), rtol=1e-6)
    assert 0.5 < keep.mean() < 0.9
    # Unbiased: the mean over many masks tends to d.
    rng = np.random.default_rng(5)
    mean = np.mean([merging.dare(d, 0.3, rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(mean, d, atol=0.1)
    np.testing.assert_array_equal(merging.dare(d, 0.0, rng), d)
    # DARE-TIES is DARE (same seed) followed by TIES.
    ties = _ties_reference(merging.dare(d, 0.3, np.random.default_rng(7)), 1.0)
    np.testing.assert_allclose(
        merging.dare_ties(d, drop=0.3, density=1.0, scale=1.0, rng=np.random.default_rng(7)),
        ties, rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_dare_ties_without_drop_or_sign_conflict_is_task_arithmetic_over_n():
    """Every delta entry positive: every entry agrees with the elected sign, so the disjoint
    mean is the plain mean, and DARE-TIES (drop 0, density 1, scale s) equals task arithmetic
    with scale s / n. (The same holds with every entry negative.)"""
    rng = np.random.default_rng(6)
    d = (np.abs(rng.normal(size=(4, 5, 3))) + 0.1).astype(np.float32)
    for sign in (1.0, -1.0):
        got = merging.dare_ties(sign * d, drop=0.0, density=1.0, scale=1.0, rng=rng)
        np.testing.assert_allclose(got, merging.task_arithmetic(sign * d, 1 / 4), rtol=1e-6)
    # With a conflict they differ: the disjoint mean drops the minority sign.
    d[0, 0, 0] = -100.0
    got = merging.dare_ties(d, drop=0.0, density=1.0, scale=1.0, rng=rng)
    assert got[0, 0] == pytest.approx(-100.0)
    assert merging.task_arithmetic(d, 1 / 4)[0, 0] != pytest.approx(-100.0)


def test_bad_rates_are_refused():
    d = np.ones((2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="drop"):
        merging.dare(d, 1.0, np.random.default_rng())
    with pytest.raises(ValueError, match="density"):
        merging.trim(d, 0.0)


@pytest.mark.parametrize("true_rank, rank", [(1, 1), (2, 3), (3, 3), (4, 6)])
def test_to_lora_is_exact_up_to_its_rank(true_rank, rank):
    rng = np.random.default_rng(true_rank)
    delta = rng.normal(size=(7, true_rank)) @ rng.normal(size=(true_rank, 5))
    a, b = merging.to_lora(delta, rank)
    assert a.shape == (7, rank) and b.shape == (rank, 5)
    np.testing.assert_allclose(a @ b, delta, rtol=1e-5, atol=1e-5)


def test_to_lora_past_its_rank_is_the_best_approximation():
    """A full-rank merge at rank r loses exactly the singular values past r (Eckart-Young)."""
    delta = np.random.default_rng(8).normal(size=(6, 5))
    s = np.linalg.svd(delta, compute_uv=False)
    a, b = merging.to_lora(delta, 2)
    gap = np.linalg.norm(a @ b - delta)
    assert gap == pytest.approx(np.sqrt(np.sum(s[2:] ** 2)), rel=1e-5)


def test_merge_stack_rebuilds_a_lora_expert_and_measures_its_error():
    rng = np.random.default_rng(9)
    stack = _stack(rng)
    # Expert 1 alone (rank 3 = the stack's rank) comes back exactly.
    merged = merging.merge_stack(stack, lambda d: d[1])
    assert (
        merged.expert.n_experts == 1 and merged.expert.rank == 3 and merged.expert.layers[1] == {}
    )
    for proj in ("q_proj", "v_proj"):
        entry = merged.expert.layers[0][proj]
        np.testing.assert_allclose(
            np.asarray(entry["a"][0]) @ np.asarray(entry["b"][0]),
            _reference_deltas(stack, 0, proj)[1], rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    assert merged.error_summary()["svd_rel_error_max"] < 1e-5
    # The sum of three experts (rank up to 6) at rank 3: the reported error is Eckart-Young's.
    summed = merging.merge_stack(stack, lambda d: merging.task_arithmetic(d, 1.0))
    for proj in ("q_proj", "v_proj"):
        total = _reference_deltas(stack, 0, proj).sum(axis=0)
        s = np.linalg.svd(total, compute_uv=False)
        expected = np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(total)
        assert summed.errors[f"0.{proj}"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert summed.error_summary()["svd_rel_error_max"] > 0.01
