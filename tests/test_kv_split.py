"""The KV cache split along 'model' by kv head, where the heads divide by it.

The rule (`sampling.splits_kv_heads`, `sampling.kv_cache_spec`); the model's cache with rows and
kv heads apart ([B, Kh, ...]) against the flattened one ([B * Kh, ...]) through a prefill and
decode steps; and the engine on the 8 CPU devices (data=2 x model=4, expert=2 x model=4): the
tokens of one device, for 4 kv heads (split, one per device) and for one (kept whole), with the
cache's per-device buffers read from the compiled generate program, whose partitioned HLO gives
every array its per-device shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from test_engine import PROMPTS, TOK
from test_sampling import random_params

from hs_jax.engine import sampling
from hs_jax.engine.engine import Engine
from hs_jax.models import gemma
from hs_jax.models.gemma_config import tiny_config
from hs_jax.runtime import sharding

# 8 rows of 32 + 16 slots: a device of data=2 or expert=2 holds 4 rows of 48 slots.
BUCKETS = dict(length_buckets=(32,), new_token_buckets=(16,), batch_buckets=(8,))
ROWS_HERE, SLOTS, HEAD_DIM = 4, 48, 16


def _config(kv_heads: int):
    """The tiny Gemma 3 with 8 query heads over `kv_heads` kv heads (head_dim 16)."""
    return tiny_config("gemma3").replace(n_heads=8, n_kv_heads=kv_heads)


@pytest.mark.parametrize(
    "kv_heads, model, split",
    [(4, 4, True), (8, 4, True), (4, 2, True), (1, 4, False), (2, 4, False), (4, 1, False)],
)
def test_the_heads_split_where_they_divide(kv_heads, model, split):
    mesh = sharding.make_mesh(data=8 // model, model=model)
    config = _config(kv_heads)
    assert sampling.splits_kv_heads(config, mesh) is split
    want = P(sharding.ROW_AXES, "model", None, None) if split else P(sharding.ROW_AXES, None, None)
    assert sampling.kv_cache_spec(config, mesh) == want
    assert not sampling.splits_kv_heads(config, None)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_heads_apart_equals_the_flattened_cache(kv_heads):
    """The same logits and the same stored keys and values, prefill then decode steps (up to
    float32 rounding: XLA compiles dots with two batch axes differently)."""
    config = _config(kv_heads)
    params = random_params(config)
    graphdef, _ = gemma.abstract_model(config)

    @jax.jit
    def forward(params, tokens, positions, cache, cache_index):
        model = nnx.merge(graphdef, params)
        return model(tokens, positions, cache, cache_index=cache_index)

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, config.vocab_size, size=(3, 14)).astype(np.int32)
    positions = np.tile(np.arange(14, dtype=np.int32), (3, 1))
    positions[1, :5] = -1  # a left-padded row
    got = {}
    for apart in (False, True):
        cache = gemma.KVCache.init(config, 3, 16, heads_apart=apart)
        logits, cache = forward(params, tokens[:, :10], positions[:, :10], cache, 0)
        steps = [logits]
        for t in range(10, 14):
            logits, cache = forward(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache, t)
            steps.append(logits)
        got[apart] = (steps, cache)
    (flat_steps, flat), (apart_steps, apart) = got[False], got[True]
    assert apart.k[0].shape == (3, kv_heads, HEAD_DIM, 16)
    assert apart.v[0].shape == (3, kv_heads, 16, HEAD_DIM)
    for a, b in zip(flat_steps, apart_steps, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for a, b in zip((*flat.k, *flat.v), (*apart.k, *apart.v), strict=True):
        np.testing.assert_allclose(np.asarray(a).reshape(b.shape), b, rtol=1e-5, atol=1e-5)


@functools.cache
def _one_device(kv_heads: int):
    config = _config(kv_heads)
    params = random_params(config)
    mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
    engine = Engine(config, params, TOK, mesh=mesh, **BUCKETS)
    return params, engine.generate(PROMPTS, max_new_tokens=12, return_logits=True)


@pytest.mark.parametrize("data, expert", [(2, 1), (1, 2)])
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_split_cache_on_a_mesh_gives_the_tokens_of_one_device(kv_heads, data, expert, monkeypatch):
    assert len(jax.devices()) >= 8
    params, want = _one_device(kv_heads)
    calls = []
    generate = sampling.Sampler.generate_tokens

    def spy(self, *args, **kwargs):
        calls.append((self, args, kwargs))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(sampling.Sampler, "generate_tokens", spy)
    mesh = sharding.make_mesh(data=data, expert=expert, model=4)
    engine = Engine(_config(kv_heads), params, TOK, mesh=mesh, **BUCKETS)
    got = engine.generate(PROMPTS, max_new_tokens=12, return_logits=True)
    for a, b in zip(want.tokens, got.tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(want.logits, got.logits, rtol=1e-5, atol=1e-5)

    # Every array of the partitioned program has its per-device shape: with 4 kv heads, the
    # cache's keys [rows, heads, Dh, S] and values [rows, heads, S, Dh] hold 4 rows and 1 head
    # on each device, and no array holds all 4 heads of those rows; one kv head keeps the
    # flattened [rows * heads, ...] layout (which XLA may still split along Dh).
    sampler, args, kwargs = calls[-1]
    hlo = generate.lower(sampler, *args, **kwargs).compile().as_text()
    apart = (f"f32[{ROWS_HERE},1,{HEAD_DIM},{SLOTS}]", f"f32[{ROWS_HERE},1,{SLOTS},{HEAD_DIM}]")
    if kv_heads == 4:
        whole = (
            f"f32[{ROWS_HERE},4,{HEAD_DIM},{SLOTS}]",
            f"f32[{ROWS_HERE},4,{SLOTS},{HEAD_DIM}]",
            f"f32[{ROWS_HERE * 4},{HEAD_DIM},{SLOTS}]",
            f"f32[{ROWS_HERE * 4},{SLOTS},{HEAD_DIM}]",
        )
        assert all(shape in hlo for shape in apart)
        assert not any(shape in hlo for shape in whole)
    else:
        assert not any(shape in hlo for shape in apart)


def test_a_prefill_into_a_split_cache():
    """The model alone, kernels split along 'model': after a prefill, each device holds 4 rows
    and one kv head of the cache, and the keys and values are one device's (the first layer's
    to float32 rounding; later layers follow row-parallel products summed across devices, in
    another order, which the random tiny model amplifies)."""
    config = _config(4)
    params = random_params(config)
    graphdef, _ = gemma.abstract_model(config)
    mesh = sharding.make_mesh(data=2, model=4)
    spec = jax.sharding.NamedSharding(mesh, sampling.kv_cache_spec(config, mesh))

    def prefill(params, tokens, positions, apart):
        cache = gemma.KVCache.init(config, 8, 16, heads_apart=apart)
        if apart:
            cache = cache.replace(
                k=tuple(jax.lax.with_sharding_constraint(a, spec) for a in cache.k),
                v=tuple(jax.lax.with_sharding_constraint(a, spec) for a in cache.v),
            )
        _, cache = nnx.merge(graphdef, params).hidden(tokens, positions, cache, cache_index=0)
        return cache

    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(3, config.vocab_size, size=(8, 12)), jnp.int32)
    positions = jnp.tile(jnp.arange(12, dtype=jnp.int32), (8, 1))
    one = jax.jit(prefill, static_argnums=3)(params, tokens, positions, False)
    split = jax.jit(prefill, static_argnums=3)(
        sharding.shard_params(params, mesh), tokens, positions, True
    )
    assert split.k[0].sharding.is_equivalent_to(spec, 4)
    assert split.k[0].addressable_shards[0].data.shape == (4, 1, HEAD_DIM, 16)
    for i, (a, b) in enumerate(zip((*one.k, *one.v), (*split.k, *split.v), strict=True)):
        tol = 1e-6 if i in (0, config.n_layers) else 1e-4
        np.testing.assert_allclose(np.asarray(a).reshape(b.shape), b, rtol=tol, atol=tol)
