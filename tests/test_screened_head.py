"""The screened greedy head against the plain float32 argmax (numpy float64 as the reference),
its certificate on ties, near-ties and a saturating soft cap, and the engine's rerun path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine import BUCKETS, PROMPTS, TOK, lora_stack
from test_sampling import CFG, random_params

from hs_jax.engine import token_choice
from hs_jax.engine.engine import Engine
from hs_jax.models import gemma, screened_head

V, D = 4096, 64


def _table_and_rows(seed=0, rows=40, scale=30.0):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, D)).astype(np.float32) / np.sqrt(D)
    x = (scale * rng.standard_normal((rows, D)) / np.sqrt(D)).astype(np.float32)
    return table, x


def _near_tie_rows():
    """Three rows; for row 1, 40 words (more than the 16 candidates) lie within bf16 rounding
    of the best."""
    table, x = _table_and_rows(rows=3)
    rng = np.random.default_rng(1)
    best = 5.0 * x[1] / np.linalg.norm(x[1])
    for w in rng.choice(V, size=40, replace=False):
        table[w] = best * (1 + 1e-6 * rng.standard_normal())
    return table, x


def _screened(table, x, cap=None):
    screen = screened_head.make_head_screen(jnp.asarray(table))
    fn = jax.jit(
        lambda t, s, h: screened_head.screened_argmax(t, s, h, lambda z: gemma._softcap(z, cap))
    )
    tok, ok = fn(jnp.asarray(table), screen, jnp.asarray(x))
    return np.asarray(tok), np.asarray(ok)


def _reference(table, x, cap=None):
    """First argmax of the float64 logits (soft cap applied in float64)."""
    logits = x.astype(np.float64) @ table.astype(np.float64).T
    if cap is not None:
        logits = np.tanh(logits / cap) * cap
    return np.argmax(logits, axis=1)


# 5 rows: the row-major screen; 40 rows: the vocabulary-major one (ROW_MAJOR_MAX_ROWS = 8).
@pytest.mark.parametrize("rows", [5, 40])
@pytest.mark.parametrize("cap", [None, 30.0])
def test_equals_float32_argmax(cap, rows):
    assert (rows <= screened_head.ROW_MAJOR_MAX_ROWS) == (rows == 5)
    table, x = _table_and_rows(rows=rows)
    tok, ok = _screened(table, x, cap)
    assert ok.all()  # random rows have no near-ties at this scale
    np.testing.assert_array_equal(tok, _reference(table, x, cap))
    plain = jax.jit(lambda t, h: gemma._greedy(t, h, cap))(jnp.asarray(table), jnp.asarray(x))
    np.testing.assert_array_equal(tok, np.asarray(plain))


@pytest.mark.parametrize("rows", [4, 12])
def test_exact_tie_picks_the_first_word(rows):
    table, x = _table_and_rows(rows=rows)
    # Words 3000 and 700 hold the same vector, far ahead of every other word for row 0.
    table[700] = table[3000] = 3.0 * x[0] / np.linalg.norm(x[0]) ** 2 * 10.0
    tok, ok = _screened(table, x)
    assert ok[0] and tok[0] == 700
    np.testing.assert_array_equal(tok, _reference(table, x))


def test_near_ties_beyond_the_candidates_are_not_certified():
    table, x = _near_tie_rows()
    tok, ok = _screened(table, x)
    assert not ok[1]
    assert ok[0] and ok[2]
    reference = _reference(table, x)
    assert tok[0] == reference[0] and tok[2] == reference[2]


def test_saturated_soft_cap_is_not_certified():
    """tanh saturates in float32: many words share the capped maximum, so the first of them in
    the whole vocabulary wins, which only the plain head can see."""
    table, x = _table_and_rows(rows=2, scale=300.0)
    tok, ok = _screened(table, x, cap=1e-3)
    plain = np.asarray(jax.jit(lambda t, h: gemma._greedy(t, h, 1e-3))(table, x))
    assert not ok.all()
    np.testing.assert_array_equal(tok[ok], plain[ok])


def test_block_sizes_and_bad_tables():
    assert screened_head.block_for(262144) == 128
    assert screened_head.block_for(128) == 4  # 32 blocks > 16 candidates
    assert screened_head.block_for(16) is None
    # An odd vocabulary splits only into single words, which leave no (k+1)-th word to bound
    # the rest with: no screen (the plain head), not a top_k over too few words.
    assert screened_head.block_for(259) is None and screened_head.block_for(258) == 2
    with pytest.raises(ValueError, match="float32"):
        screened_head.make_head_screen(jnp.zeros((256, 8), jnp.bfloat16))
    with pytest.raises(ValueError, match="too small"):
        table = jnp.zeros((16, 8), jnp.float32)
        screened_head.screened_argmax(
            table, screened_head.make_head_screen(table), jnp.ones((1, 8)), lambda z: z
        )


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


def test_error_bound_holds():
    """eps bounds |a_v - s_v| for every word, a_v the bf16 product as run, s_v in float64."""
    table, x = _table_and_rows(rows=16, scale=100.0)
    screen = screened_head.make_head_screen(jnp.asarray(table))
    approx = jnp.dot(
        jnp.asarray(x).astype(jnp.bfloat16),
        screen.table.T,
        preferred_element_type=jnp.float32,
    )
    exact = x.astype(np.float64) @ table.astype(np.float64).T
    err = np.abs(np.asarray(approx, np.float64) - exact).max(axis=1)
    eps = np.asarray(screened_head.error_bound(screen, jnp.asarray(x)))
    assert (err <= eps).all()
    assert (eps < 0.02 * np.linalg.norm(x, axis=1)).all()  # and it is not vacuous


def test_uncertified_rows_fall_back_to_the_plain_head():
    table, x = _near_tie_rows()
    screen = screened_head.make_head_screen(jnp.asarray(table))

    def run(rows_that_count):
        return screened_head.screened_or_plain_argmax(
            jnp.asarray(table),
            screen,
            jnp.asarray(x),
            lambda z: z,
            lambda t, h: gemma._greedy(t, h, None),
            rows_that_count,
        )

    tok, used_plain = jax.jit(run)(None)
    assert bool(used_plain)
    np.testing.assert_array_equal(tok, _reference(table, x))
    # Row 1 finished: its token is discarded, so the screen's choices stand.
    tok, used_plain = jax.jit(run)(jnp.asarray([True, False, True]))
    assert not bool(used_plain)
    assert tok[0] == _reference(table, x)[0] and tok[2] == _reference(table, x)[2]


def test_engine_screened_equals_plain_and_falls_back(params, monkeypatch):
    stack = lora_stack()
    prompts = PROMPTS * 2
    ids = [i % 4 for i in range(len(prompts))]
    plain = Engine(CFG, params, TOK, stack, screen_head_min_rows=None, **BUCKETS)
    screened = Engine(CFG, params, TOK, stack, screen_head_min_rows=1, **BUCKETS)
    want = plain.generate(prompts, ids, max_new_tokens=12)
    got = screened.generate(prompts, ids, max_new_tokens=12)
    for a, b in zip(got.tokens, want.tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    assert screened.stats["screened_calls"] == screened.stats["calls"] > 0
    assert plain.stats["screened_calls"] == 0
    # A bound too wide to certify anything: every step runs the plain head as well.
    # Its own new-token bucket: no program compiled with the patched bound is reused elsewhere.
    monkeypatch.setattr(screened_head, "_SAFETY", 1e9)
    wide = Engine(
        CFG, params, TOK, stack, screen_head_min_rows=1, **{**BUCKETS, "new_token_buckets": (12,)}
    )
    again = wide.generate(prompts, ids, max_new_tokens=12)
    assert wide.stats["head_fallback_steps"] == wide.stats["steps"] > 0
    for a, b in zip(again.tokens, want.tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    # Sampling never uses the screen.
    sampled = screened._token_choice(screened.params, 8, temperature=1.0, top_p=1.0)
    assert isinstance(sampled, token_choice.RandomSampling)
    greedy = screened._token_choice(screened.params, 8, temperature=0.0, top_p=1.0)
    assert isinstance(greedy, token_choice.ScreenedGreedy)


def test_the_machine_chooses_the_screen(params):
    """The screen pays only where bfloat16 matmuls are native: accelerators always, CPUs with
    AVX-512 BF16 or AMX; an engine left on 'auto' follows `cpu_features.screen_head_min_rows`."""
    from hs_jax.runtime import cpu_features

    assert cpu_features.screen_head_min_rows("gpu") == 2
    assert cpu_features.screen_head_min_rows("tpu") == 2
    native = any(f in cpu_features.cpu_flags() for f in cpu_features.NATIVE_BF16_FLAGS)
    assert cpu_features.screen_head_min_rows("cpu") == (2 if native else None)
    engine = Engine(CFG, params, TOK, lora_stack(), **BUCKETS)
    assert engine.screen_head_min_rows == cpu_features.screen_head_min_rows()
