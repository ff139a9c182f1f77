"""The dry-run memory plan against shapes computed by hand (nothing is loaded).

The KV cache is pinned to the engine's allocation: the longest prompt and the token budget are
each rounded up to their bucket (call_plan.DEFAULT_LENGTH_BUCKETS / DEFAULT_NEW_TOKEN_BUCKETS)
and the cache has exactly that many slots; it is split over 'data' x 'expert', and its kv heads
along 'model' when they divide by it (checked against the sampler's own spec for the cache,
`sampling.kv_cache_spec`, on a real mesh). The all-time best
experts are a copy of the swarm's positions and keep their split along 'expert' (a padded
swarm's: replicated).
"""

import pytest

from hs_jax import config as config_lib
from hs_jax.models import PRESETS, PYPI_MODEL_NAME
from hs_jax.pipeline import door, memory_plan


def _config(spec, dtype, **mesh):
    c = door.resolve(config_lib.base_config())
    c.model.spec, c.model.param_dtype = spec, dtype
    c.experts.n, c.experts.rank = 10, 8
    c.experts.targets = ("q_proj", "v_proj")
    c.engine.max_batch, c.engine.max_prompt_len, c.task.max_new_tokens = 64, 1000, 24
    for axis, size in mesh.items():
        c.mesh[axis] = size
    return c


# q: 3072 -> 4096, v: 3072 -> 4096 (16 kv heads x 256), rank 8, 28 layers (Gemma-7B).
PER_EXPERT = 28 * 8 * ((3072 + 4096) + (3072 + 4096))


def test_gemma_7b_on_one_device_holds_every_parameter():
    cfg = PRESETS["gemma-7b"]
    p = memory_plan.plan(_config("gemma-7b", "bfloat16"), 1)
    assert p.parts["base parameters"] == cfg.num_params() * 2
    assert "head screen (bfloat16 embedding)" not in p.parts  # bfloat16 models have none
    assert p.parts["expert stack (generation)"] == 10 * PER_EXPERT * 4
    assert p.parts["weight swarm (x, v, p, g, worst)"] == (3 * 10 + 2) * PER_EXPERT * 4
    assert p.parts["all-time best experts"] == 10 * PER_EXPERT * 4
    # Prompts up to 1000 tokens pad to the 1024 bucket, 24 new tokens to the 32 bucket:
    # 28 layers x (k, v) x 64 rows x 16 heads x 256 x (1024 + 32) slots x 2 bytes.
    kv = p.parts["KV cache (64 rows x 1024+32 slots)"]
    assert kv == 28 * 2 * 64 * 16 * 256 * (1024 + 32) * 2
    assert p.parts["logits of one step"] == 64 * 256_000 * 4


def test_float32_models_add_the_head_screen():
    p = memory_plan.plan(_config("gemma-7b", "float32"), 1)
    assert p.parts["head screen (bfloat16 embedding)"] == 256_000 * 3072 * 2
    assert p.parts["base parameters"] == PRESETS["gemma-7b"].num_params() * 4


def test_axes_split_what_they_shard():
    one = memory_plan.plan(_config("gemma-7b", "bfloat16", model=1, data=1), 8)
    model8 = memory_plan.plan(_config("gemma-7b", "bfloat16", model=8, data=1), 8)
    data8 = memory_plan.plan(_config("gemma-7b", "bfloat16", model=1, data=8), 8)
    base = one.parts["base parameters"]
    assert base / 8 < model8.parts["base parameters"] < base / 7  # norms stay replicated
    assert data8.parts["base parameters"] == base
    kv_one = one.parts["KV cache (64 rows x 1024+32 slots)"]
    assert data8.parts["KV cache (8 rows x 1024+32 slots)"] * 8 == kv_one
    # Gemma-7B's 16 kv heads split along 'model': 2 per device.
    assert model8.parts["KV cache (64 rows x 1024+32 slots)"] * 8 == kv_one
    assert "KV cache split along 'model': 2 of 16 kv heads per device" in model8.table()
    assert data8.mesh == {"data": 8, "expert": 1, "model": 1}
    assert "does NOT fit in 16 GiB" in one.table(16) and "fits in 80 GiB" in data8.table(80)


def test_the_expert_axis_splits_the_swarm_and_the_best_copy():
    p = memory_plan.plan(_config("gemma-7b", "bfloat16", expert=5), 10)
    assert p.mesh == {"data": 2, "expert": 5, "model": 1}
    assert p.parts["weight swarm (x, v, p, g, worst)"] == (3 * 2 + 2) * PER_EXPERT * 4
    assert p.parts["all-time best experts"] == 2 * PER_EXPERT * 4
    assert p.parts["expert stack (generation)"] == 10 * PER_EXPERT * 4  # replicated


@pytest.mark.parametrize("expert, held", [(4, 3), (8, 2)])
def test_a_pool_that_does_not_divide_the_expert_axis_is_padded(expert, held):
    """10 experts on 4 or 8 devices along 'expert': the swarm is padded to 12 or 16 (3 or 2
    per device); the best copy, a slice of the padded swarm, is replicated; rows are split over
    data x expert (8 devices: 64 rows, 8 per device)."""
    p = memory_plan.plan(_config("gemma-7b", "bfloat16", expert=expert), 8)
    assert p.parts["weight swarm (x, v, p, g, worst)"] == (3 * held + 2) * PER_EXPERT * 4
    assert p.parts["all-time best experts"] == 10 * PER_EXPERT * 4
    assert "KV cache (8 rows x 1024+32 slots)" in p.parts
    assert f"padded with {held * expert - 10} inert particles" in p.table()


def _placed_bytes(spec: str, model: int) -> int:
    """Per-device bytes of the base parameters as the engine places them: every parameter of
    the abstract model (shapes only) through sharding.param_shardings on a real 'model' mesh."""
    import jax
    import numpy as np

    from hs_jax.models import gemma
    from hs_jax.runtime import sharding

    cfg = PRESETS[spec].replace(param_dtype="bfloat16")
    _, abstract = gemma.abstract_model(cfg)
    mesh = sharding.make_mesh(data=1, model=model, expert=1, devices=jax.devices()[:model])
    shardings = sharding.param_shardings(abstract, mesh)
    leaves = jax.tree.leaves(abstract)
    placed = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    return sum(
        int(np.prod(s.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
        for leaf, s in zip(leaves, placed, strict=True)
    )


@pytest.mark.parametrize(
    "spec, model",
    # gemma-2b at model=3: no dimension divides by 3 (2048, 256, 16384, 256000), so the rule
    # table leaves every parameter whole; at model=8 every one splits.
    [("gemma-7b", 8), ("gemma-7b", 2), ("gemma-2b", 8), ("gemma-2b", 3)],
)
def test_base_parameters_match_the_engines_placement(spec, model):
    c = _config(spec, "bfloat16", model=model, data=1)
    assert memory_plan.plan(c, model).parts["base parameters"] == _placed_bytes(spec, model)


def _placed_kv_bytes(spec: str, model: int, rows: int, slots: int) -> int:
    """Per-device bytes of the KV cache as the sampler places it: the cache it builds (shapes
    only) through its own spec for the keys and values on a real 'model' mesh."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    from hs_jax.engine import sampling
    from hs_jax.models import gemma
    from hs_jax.runtime import sharding

    cfg = PRESETS[spec].replace(param_dtype="bfloat16")
    mesh = sharding.make_mesh(data=1, model=model, expert=1, devices=jax.devices()[:model])
    apart = sampling.splits_kv_heads(cfg, mesh)
    cache = jax.eval_shape(
        lambda: gemma.KVCache.init(cfg, rows, slots, "bfloat16", heads_apart=apart)
    )
    placed = NamedSharding(mesh, sampling.kv_cache_spec(cfg, mesh))
    return sum(int(np.prod(placed.shard_shape(leaf.shape))) * 2 for leaf in (*cache.k, *cache.v))


@pytest.mark.parametrize(
    "spec, model, split",
    # Gemma-7B: 16 kv heads; Gemma 2 2B: 4 (not divisible by 8); Gemma 2B: 1 (never split).
    [
        ("gemma-7b", 8, True),
        ("gemma2-2b", 4, True),
        ("gemma2-2b", 8, False),
        ("gemma-2b", 8, False),
        ("gemma-2b", 1, False),
    ],
)
def test_kv_cache_matches_the_samplers_placement(spec, model, split):
    c = _config(spec, "bfloat16", model=model, data=1)
    p = memory_plan.plan(c, model)
    kv = p.parts["KV cache (64 rows x 1024+32 slots)"]
    assert kv == _placed_kv_bytes(spec, model, 64, 1024 + 32)
    cfg = PRESETS[spec]
    whole = cfg.n_layers * 2 * 64 * cfg.n_kv_heads * cfg.head_dim * (1024 + 32) * 2
    assert kv == (whole // model if split else whole)


def test_the_budget_comes_from_the_task_when_the_config_sets_none():
    c = _config("gemma-7b", "bfloat16")
    c.task.max_new_tokens = 0
    c.task.name = "gsm8k"  # registered: 100 new tokens -> the 128 bucket
    assert "KV cache (64 rows x 1024+128 slots)" in memory_plan.plan(c, 1).parts


def test_a_peft_pool_is_sized_from_its_adapter_configs(tmp_path):
    """Three adapters (r=8, r=16, and r=4 with a rank_pattern of 32) on q/v and q/o: stacked at
    rank 32 on q, v and o, as lora.stack_adapters pads them."""
    import json

    adapters = [
        {"r": 8, "target_modules": ["q_proj", "v_proj"]},
        {"r": 16, "target_modules": ["q_proj", "o_proj"]},
        {"r": 4, "target_modules": ["q_proj"], "rank_pattern": {"layers.0.q_proj": 32}},
    ]
    for i, adapter in enumerate(adapters):
        (tmp_path / f"e{i}").mkdir()
        (tmp_path / f"e{i}" / "adapter_config.json").write_text(json.dumps(adapter))
    c = _config("gemma-7b", "bfloat16")
    c.experts.source, c.experts.peft_dirs = "peft", str(tmp_path)
    p = memory_plan.plan(c, 1)
    # q: 3072 + 4096, v: 3072 + 4096, o: 4096 + 3072; 28 layers; rank 32; float32.
    assert p.parts["expert stack (generation)"] == 3 * 28 * 32 * 3 * (3072 + 4096) * 4
    assert "pool read from 3 PEFT folders" in p.table()


def test_data_axis_must_divide_the_devices():
    with pytest.raises(
        ValueError, match="config.mesh: 6 devices do not divide by expert=1 x model=4"
    ):
        memory_plan.plan(_config("gemma-7b", "bfloat16", model=4), 6)


@pytest.mark.slow
def test_shapes_from_the_real_gguf_header_match_the_preset():
    shapes = memory_plan.model_shapes(PYPI_MODEL_NAME, "float32")
    preset = PRESETS["gemma3-270m"]
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim"):
        assert getattr(shapes, field) == getattr(preset, field)
