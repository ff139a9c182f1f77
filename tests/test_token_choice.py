"""Token choice strategies: the nucleus mask, top-p draws, and which strategy a call gets."""

import jax
import jax.numpy as jnp
import numpy as np

from hs_jax.engine import token_choice
from hs_jax.models import screened_head


def reference_nucleus(logits, p):
    """Indices of the nucleus by the definition: most probable first, until mass >= p."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    mass = np.cumsum(probs[order])
    k = int(np.searchsorted(mass, p)) + 1
    return set(order[: min(k, len(order))].tolist())


def test_top_p_masks_exactly_the_nucleus():
    logits = np.asarray(jax.random.normal(jax.random.key(3), (6, 50)) * 3, np.float32)
    for p in (0.1, 0.5, 0.9):  # top_p = 1 skips the filter (RandomSampling)
        masked = np.asarray(token_choice.top_p_logits(jnp.asarray(logits), jnp.float32(p)))
        for row in range(6):
            assert set(np.flatnonzero(np.isfinite(masked[row])).tolist()) == reference_nucleus(
                logits[row], p
            )
            np.testing.assert_array_equal(
                masked[row][np.isfinite(masked[row])], logits[row][np.isfinite(masked[row])]
            )


def test_top_p_sampling_reproducible_and_inside_nucleus():
    logits = jnp.asarray(jax.random.normal(jax.random.key(4), (4, 40)) * 2)
    nuclei = [reference_nucleus(np.asarray(logits[r]), 0.6) for r in range(4)]
    choice = token_choice.TopPSampling(jnp.float32(1.0), jnp.float32(0.6))

    def draw(seed):
        tokens, fell_back = choice(None, None, logits, jax.random.key(seed), None)
        assert int(fell_back) == 0
        return np.asarray(tokens)

    draws = np.stack([draw(s) for s in range(200)])  # [200, 4]
    np.testing.assert_array_equal(draw(7), draws[7])
    for r in range(4):
        assert set(draws[:, r].tolist()) <= nuclei[r]
        assert len(set(draws[:, r].tolist())) == len(nuclei[r]) or len(nuclei[r]) > 3


def test_strategy_per_call_and_one_program_per_kind():
    screen = screened_head.make_head_screen(jnp.ones((256, 8), jnp.float32))
    assert isinstance(token_choice.for_call(0.0, 0.5), token_choice.Greedy)
    assert isinstance(token_choice.for_call(0.0, 1.0, screen), token_choice.ScreenedGreedy)
    assert isinstance(token_choice.for_call(0.7, 1.0), token_choice.RandomSampling)
    top_p = token_choice.for_call(0.7, 0.9)
    assert isinstance(top_p, token_choice.TopPSampling)
    assert token_choice.for_call(1e-9, 1.0).temperature == jnp.float32(1e-6)  # no divide by 0
    # New values are data (same tree structure: one compiled program); the kind is not.
    struct = jax.tree.structure
    assert struct(top_p) == struct(token_choice.for_call(1.3, 0.2))
    assert struct(top_p) != struct(token_choice.for_call(1.3, 1.0))
    assert not token_choice.Greedy.needs_logits and token_choice.TopPSampling.needs_logits


def test_head_screen_cache_policy():
    table = jnp.asarray(np.random.default_rng(0).standard_normal((256, 8)), jnp.float32)
    cache = token_choice.HeadScreenCache(min_rows=4, vocab_size=256)
    assert cache.screen_for(table, 2) is None  # too few rows
    first = cache.screen_for(table, 8)
    assert first is not None and cache.screen_for(table, 4) is first  # built once
    assert token_choice.HeadScreenCache(None, 256).screen_for(table, 64) is None
    bf16 = token_choice.HeadScreenCache(1, 256)
    assert bf16.screen_for(table.astype(jnp.bfloat16), 8) is None  # only float32 heads
    assert token_choice.HeadScreenCache(1, 16).screen_for(table[:16], 8) is None  # too small
