"""The Gemma decoder against transformers' PyTorch models, plus cache, LoRA hook and loaders.

References are independent: transformers' eager Gemma/Gemma2/Gemma3 models (random tiny
weights, saved with save_pretrained and read back by our safetensors loader), a cache-less
forward for the KV-cache path, and merged weights W + a @ b for the LoRA hook.
"""

import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers as tf
from flax import nnx

from hs_jax.models import (
    PRESETS,
    KVCache,
    abstract_model,
    config_from_hf,
    from_params,
    init_params,
    params_from_state_dict,
    state_dict_from_params,
    tiny_config,
)
from hs_jax.models.convert import CheckpointError
from hs_jax.models.safetensors_io import load_hf_dir, read_hf_state_dict

FAMILIES = ("gemma", "gemma2", "gemma3")
RTOL = 1e-4


def _rel_err(ours, ref, valid=None) -> float:
    """max |ours - ref| / max |ref| over the valid (non-padding) positions."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if valid is not None:
        ours, ref = ours[valid], ref[valid]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _hf_config(family: str):
    """transformers config with the same architecture as tiny_config(family)."""
    c = tiny_config(family)
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        attn_implementation="eager",
    )
    if family == "gemma":
        return tf.GemmaConfig(**common)
    if family == "gemma2":
        return tf.Gemma2Config(
            **common,
            query_pre_attn_scalar=int(c.query_pre_attn_scalar),
            sliding_window=c.sliding_window,
            attn_logit_softcapping=c.attn_logit_softcap,
            final_logit_softcapping=c.final_logit_softcap,
        )
    return tf.Gemma3TextConfig(
        **common,
        query_pre_attn_scalar=int(c.query_pre_attn_scalar),
        sliding_window=c.sliding_window,
        sliding_window_pattern=3,
        rope_parameters={
            "full_attention": {
                "rope_type": "linear",
                "factor": c.rope_scale_global,
                "rope_theta": c.rope_base_global,
            },
            "sliding_attention": {"rope_type": "default", "rope_theta": c.rope_base_local},
        },
    )


_HF_MODELS = {
    "gemma": tf.GemmaForCausalLM,
    "gemma2": tf.Gemma2ForCausalLM,
    "gemma3": tf.Gemma3ForCausalLM,
}


@pytest.fixture(scope="module", params=FAMILIES)
def hf_checkpoint(request, tmp_path_factory):
    """(family, torch model, saved dir) with random weights, norms included (so +1 matters)."""
    family = request.param
    torch.manual_seed(0)
    model = _HF_MODELS[family](_hf_config(family)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.1)
    path = tmp_path_factory.mktemp(f"hf_{family}")
    model.save_pretrained(path)
    return family, model, path


@functools.cache
def _jitted_forward(config):
    """forward(params, tokens, positions, lora_layers|None, expert_ids|None) under jit, the way
    the sampler runs it (weights are jit arguments, module rebuilt with nnx.merge)."""
    graphdef, _ = abstract_model(config)

    @jax.jit
    def forward(params, tokens, positions, lora_layers, expert_ids):
        lora = None if lora_layers is None else _Stack(lora_layers)
        logits, _ = nnx.merge(graphdef, params)(tokens, positions, lora=lora, expert_ids=expert_ids)
        return logits

    return forward


def _left_padded_batch(vocab: int, lens, total: int, seed: int = 0):
    """tokens, HF attention mask, our positions (-1 = padding), for left-padded rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (len(lens), total)).astype(np.int32)
    mask = np.zeros((len(lens), total), np.int64)
    for b, n in enumerate(lens):
        mask[b, total - n :] = 1
    positions = np.where(mask == 1, np.cumsum(mask, 1) - 1, -1).astype(np.int32)
    return tokens, mask, positions


def test_logits_match_transformers(hf_checkpoint):
    """Left-padded batch, prompts 2.5x the sliding window: logits agree to 1e-4 relative."""
    family, hf_model, path = hf_checkpoint
    config, params = load_hf_dir(path, param_dtype="float32")
    assert config == tiny_config(family)  # config.json parsed back to the same architecture
    tokens, mask, positions = _left_padded_batch(config.vocab_size, [20, 13, 5], 20)
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(positions, 0), dtype=torch.long),
        ).logits.numpy()
    logits, cache = from_params(config, params)(jnp.asarray(tokens), jnp.asarray(positions))
    assert cache is None
    assert logits.shape == (3, 20, config.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()  # padding queries see no key: still finite
    assert _rel_err(logits, ref, mask == 1) <= RTOL


def test_sharded_checkpoint_loads_the_same(hf_checkpoint, tmp_path):
    family, hf_model, path = hf_checkpoint
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    _, sharded = load_hf_dir(tmp_path, param_dtype="float32")
    _, single = load_hf_dir(path, param_dtype="float32")
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single), strict=True):
        np.testing.assert_array_equal(a, b)


def test_multimodal_gemma3_layout(tmp_path):
    """Gemma 3 multimodal dirs: 'model.language_model.' names, text_config, vision skipped."""
    config = tiny_config("gemma3")
    sd = state_dict_from_params(config, init_params(config, seed=3, norm_std=0.2))
    renamed = {"model.language_model." + k[len("model.") :]: v for k, v in sd.items()}
    renamed["model.vision_tower.vision_model.post_layernorm.weight"] = np.ones(7, np.float32)
    renamed["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied copy: ignored
    safetensors.numpy.save_file(renamed, tmp_path / "model.safetensors")
    text = _hf_config("gemma3").to_dict()
    cfg_json = {"model_type": "gemma3", "text_config": text, "vision_config": {"hidden_size": 7}}
    (tmp_path / "config.json").write_text(json.dumps(cfg_json))
    loaded_config, params = load_hf_dir(tmp_path, param_dtype="float32")
    assert loaded_config == config
    back = state_dict_from_params(config, params)
    assert back.keys() == sd.keys()
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_kv_cache_decode_matches_full_forward(family):
    """Prefill 6 tokens, then decode one token per call; every step equals the full forward."""
    config = tiny_config(family)
    params = init_params(config, seed=1, norm_std=0.3)
    graphdef, _ = abstract_model(config)

    @jax.jit
    def forward(params, tokens, positions, cache, cache_index):
        model = nnx.merge(graphdef, params)
        return model(tokens, positions, cache, cache_index=cache_index)

    tokens, _, positions = _left_padded_batch(config.vocab_size, [20, 11], 20, seed=1)
    full, _ = forward(params, tokens, positions, None, 0)
    prefill = 6
    cache = KVCache.init(config, 2, 24)
    step, cache = forward(params, tokens[:, :prefill], positions[:, :prefill], cache, 0)
    valid = positions >= 0
    errs = [_rel_err(step, full[:, :prefill], valid[:, :prefill])]
    for t in range(prefill, 20):
        step, cache = forward(params, tokens[:, t : t + 1], positions[:, t : t + 1], cache, t)
        errs.append(_rel_err(step, full[:, t : t + 1], valid[:, t : t + 1]))
    assert max(errs) <= RTOL
    np.testing.assert_array_equal(cache.pos[:, :20], positions)
    assert (np.asarray(cache.pos[:, 20:]) == -1).all()


@pytest.mark.parametrize("cache_dtype", [jnp.float32, jnp.bfloat16])
def test_prefill_over_own_keys_equals_attending_the_empty_cache(cache_dtype):
    """attend_cache=False (the sampler's prefill): same hidden states and the same cache as
    attending over all slots of an empty cache, for a float32 and a bfloat16 cache."""
    config = tiny_config("gemma3")
    params = init_params(config, seed=2, norm_std=0.3)
    graphdef, _ = abstract_model(config)

    @functools.partial(jax.jit, static_argnames="attend_cache")
    def prefill(params, tokens, positions, cache, attend_cache):
        model = nnx.merge(graphdef, params)
        return model.hidden(tokens, positions, cache, cache_index=0, attend_cache=attend_cache)

    tokens, _, positions = _left_padded_batch(config.vocab_size, [20, 11], 20, seed=3)
    cache = KVCache.init(config, 2, 32, cache_dtype)
    h_all, c_all = prefill(params, tokens, positions, cache, True)
    h_own, c_own = prefill(params, tokens, positions, cache, False)
    valid = positions >= 0
    # bfloat16: a float32 hair between the two summation orders can flip a stored key by one
    # bfloat16 ulp (2^-8 relative), which the later layers carry on.
    tol = 1e-5 if cache_dtype == jnp.float32 else 2**-7
    assert _rel_err(h_own, h_all, valid) <= (RTOL if cache_dtype == jnp.float32 else 2**-8)
    np.testing.assert_array_equal(c_own.pos, c_all.pos)
    # Live slots only: a padding slot holds a padding token's garbage, which differs.
    live = np.repeat(np.asarray(c_all.pos) >= 0, config.n_kv_heads, axis=0)  # [B * Kh, S]
    for i in range(config.n_layers):
        for own, ref in (
            (c_own.k[i], c_all.k[i]),
            (c_own.v[i].swapaxes(1, 2), c_all.v[i].swapaxes(1, 2)),
        ):
            own, ref = (np.asarray(x, np.float32).swapaxes(1, 2)[live] for x in (own, ref))
            np.testing.assert_allclose(own, ref, rtol=tol, atol=tol)


class _Stack:
    """Stand-in for lora.LoraStack: the model only reads `.layers[i].get(name)`."""

    def __init__(self, layers):
        self.layers = layers


def _lora_stack(config, n_experts: int, rank: int, seed: int, zero_b: bool = False):
    c = config
    dims = {
        "q_proj": (c.d_model, c.q_dim),
        "k_proj": (c.d_model, c.kv_dim),
        "v_proj": (c.d_model, c.kv_dim),
        "o_proj": (c.q_dim, c.d_model),
        "gate_proj": (c.d_model, c.ffn_dim),
        "up_proj": (c.d_model, c.ffn_dim),
        "down_proj": (c.ffn_dim, c.d_model),
    }
    # A different subset per layer, one layer without LoRA at all.
    subsets = [("q_proj", "v_proj", "down_proj"), tuple(dims), ()]
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(c.n_layers):
        entry = {}
        for name in subsets[i % len(subsets)]:
            d_in, d_out = dims[name]
            a = rng.normal(0, 0.3, (n_experts, d_in, rank)).astype(np.float32)
            b = rng.normal(0, 0.3, (n_experts, rank, d_out)).astype(np.float32)
            entry[name] = {"a": jnp.asarray(a), "b": jnp.asarray(b * (not zero_b))}
        layers.append(entry)
    return _Stack(tuple(layers))


def _merged_params(config, params, stack, expert: int):
    """Params with W + a[e] @ b[e] folded into every adapted kernel."""
    pure = params.to_pure_dict()
    for i, entry in enumerate(stack.layers):
        for name, ab in entry.items():
            group = "attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            leaf = pure["layers"][i][group][name]
            leaf["kernel"] = leaf["kernel"] + ab["a"][expert] @ ab["b"][expert]
    _, merged = abstract_model(config)
    nnx.replace_by_pure_dict(merged, pure)
    return merged


def test_lora_hook_matches_merged_weights():
    """A batch mixing experts per row equals each row run with that expert's merged weights."""
    config = tiny_config("gemma3")
    forward = _jitted_forward(config)
    params = init_params(config, seed=2, norm_std=0.3)
    stack = _lora_stack(config, n_experts=3, rank=4, seed=0)
    tokens, _, positions = _left_padded_batch(config.vocab_size, [12, 9, 12, 5], 12, seed=2)
    expert_ids = np.array([2, 0, 1, 2], np.int32)
    mixed = forward(params, tokens, positions, stack.layers, expert_ids)
    base = forward(params, tokens, positions, None, None)
    valid = positions >= 0
    for row, e in enumerate(expert_ids):
        merged = _merged_params(config, params, stack, int(e))
        ref = forward(merged, tokens[row : row + 1], positions[row : row + 1], None, None)
        assert _rel_err(mixed[row], ref[0], valid[row]) <= RTOL
        assert _rel_err(base[row], ref[0], valid[row]) > 1e-2  # the adapters change the output
    zero = _lora_stack(config, n_experts=3, rank=4, seed=0, zero_b=True)
    zero_out = forward(params, tokens, positions, zero.layers, expert_ids)
    np.testing.assert_allclose(zero_out, base, rtol=0, atol=1e-6)


def test_bfloat16_params_close_to_float32():
    """bfloat16 weights (bf16 operands, f32 accumulation; single-row upcast path too)."""
    config = tiny_config("gemma3")
    sd = state_dict_from_params(config, init_params(config, seed=4, norm_std=0.3))
    bf16 = config.replace(param_dtype="bfloat16")
    params = params_from_state_dict(bf16, sd)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    tokens, _, positions = _left_padded_batch(config.vocab_size, [10, 7], 10, seed=4)
    f32_params = params_from_state_dict(config, sd)
    for rows in (slice(None), slice(0, 1)):  # bf16 operands; a single row upcasts the weights
        t = slice(None) if rows == slice(None) else slice(-1, None)
        ref = _jitted_forward(config)(f32_params, tokens[rows, t], positions[rows, t], None, None)
        out = _jitted_forward(bf16)(params, tokens[rows, t], positions[rows, t], None, None)
        assert _rel_err(out, ref, positions[rows, t] >= 0) < 3e-2


def test_state_dict_round_trip():
    for family in FAMILIES:
        config = tiny_config(family)
        params = init_params(config, seed=5, norm_std=0.1)
        sd = state_dict_from_params(config, params)
        again = state_dict_from_params(config, params_from_state_dict(config, sd))
        assert sd.keys() == again.keys()
        for k in sd:
            np.testing.assert_array_equal(sd[k], again[k])


def test_config_from_hf_matches_presets():
    """transformers' own defaults are Gemma-7B and Gemma2-2B; Gemma 3 presets from their dims."""
    assert config_from_hf(tf.GemmaConfig().to_dict()) == PRESETS["gemma-7b"]
    assert config_from_hf(tf.Gemma2Config().to_dict()) == PRESETS["gemma2-2b"]
    gemma3 = {
        "gemma3-270m": dict(
            vocab_size=262_144,
            hidden_size=640,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=2048,
            sliding_window=512,
        ),
        "gemma3-4b": dict(
            hidden_size=2560,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            intermediate_size=10_240,
            sliding_window=1024,
            rope_scaling={"rope_type": "linear", "factor": 8.0},
        ),
    }
    for name, kw in gemma3.items():
        hf = tf.Gemma3TextConfig(**kw).to_dict()
        assert config_from_hf(hf) == PRESETS[name], name
        # Old-style multimodal file: only non-default text keys, legacy rope keys.
        legacy = {"model_type": "gemma3", "text_config": {k: v for k, v in kw.items()}}
        assert config_from_hf(legacy) == PRESETS[name], name


# ---- error cases: each names the tensor or file and the problem ----------------------------


def _copy_with(src, dst, state_dict):
    shutil.copy(src / "config.json", dst / "config.json")
    safetensors.numpy.save_file(state_dict, dst / "model.safetensors")


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("g2")
    config = tiny_config("gemma2")
    sd = state_dict_from_params(config, init_params(config, seed=6))
    safetensors.numpy.save_file(sd, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(_hf_config("gemma2").to_dict()))
    return path


def test_error_missing_tensor(gemma2_dir, tmp_path):
    sd, _ = read_hf_state_dict(gemma2_dir)
    del sd["model.layers.1.mlp.up_proj.weight"]
    _copy_with(gemma2_dir, tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj"):
        load_hf_dir(tmp_path)


def test_error_wrong_shape(gemma2_dir, tmp_path):
    sd, _ = read_hf_state_dict(gemma2_dir)
    sd = dict(sd)
    sd["model.layers.2.self_attn.k_proj.weight"] = np.zeros((16, 32), np.float32)
    _copy_with(gemma2_dir, tmp_path, sd)
    with pytest.raises(CheckpointError) as err:
        load_hf_dir(tmp_path)
    msg = str(err.value)
    assert "model.layers.2.self_attn.k_proj.weight" in msg and "model.safetensors" in msg
    assert "(16, 32)" in msg and "(32, 32)" in msg


def test_error_unexpected_tensor(gemma2_dir, tmp_path):
    sd, _ = read_hf_state_dict(gemma2_dir)
    sd = {**sd, "model.layers.7.mlp.up_proj.weight": np.zeros((64, 32), np.float32)}
    _copy_with(gemma2_dir, tmp_path, sd)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.7\.mlp"):
        load_hf_dir(tmp_path)


def test_error_wrong_architecture(gemma2_dir, tmp_path):
    shutil.copy(gemma2_dir / "model.safetensors", tmp_path / "model.safetensors")
    gpt2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 32}
    (tmp_path / "config.json").write_text(json.dumps(gpt2))
    with pytest.raises(CheckpointError, match=r"config\.json.*'gpt2'"):
        load_hf_dir(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_error_corrupt_file(gemma2_dir, tmp_path, damage):
    shutil.copy(gemma2_dir / "config.json", tmp_path / "config.json")
    data = (gemma2_dir / "model.safetensors").read_bytes()
    data = data[: len(data) // 2] if damage == "truncate" else b"\x00\x01garbage" * 10
    (tmp_path / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match=str(tmp_path / "model.safetensors")):
        load_hf_dir(tmp_path)


def test_logits_at_selects_positions():
    """`logits_at` gives exactly the full forward's logits at the chosen positions."""
    cfg = tiny_config("gemma3")
    model = from_params(cfg, init_params(cfg, seed=3))
    tokens = jnp.arange(2 * 12, dtype=jnp.int32).reshape(2, 12) % cfg.vocab_size
    positions = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
    full, _ = model(tokens, positions)
    at = jnp.array([[11, 3], [0, 7]], jnp.int32)
    some, _ = model(tokens, positions, logits_at=at)
    np.testing.assert_allclose(some, jnp.take_along_axis(full, at[..., None], axis=1), rtol=1e-6)


@pytest.mark.parametrize("vocab", [4096, 1000])
@pytest.mark.parametrize("softcap", [None, 0.5])
def test_greedy_head_equals_argmax_of_logits(vocab, softcap):
    """The vocabulary-major head with the blocked argmax picks exactly argmax(logits), including
    the first index on ties (duplicate table rows in different blocks, and a soft cap that
    saturates several large logits to the same value)."""
    from hs_jax.models.gemma import Embedder, _softcap

    emb = Embedder(vocab, 16, dtype=jnp.float32, rngs=nnx.Rngs(0))
    table = np.asarray(emb.embedding[...]).copy()
    table[[vocab - 100, vocab // 2 + 3, 7]] = 5.0  # a three-way tie, in different blocks
    emb.embedding[...] = jnp.asarray(table)
    x = jax.random.normal(jax.random.key(1), (9, 16))
    x = x.at[0].set(1.0)  # row 0: positive, so the tied rows hold its maximum
    ours = emb.greedy(x, softcap)
    ref = jnp.argmax(_softcap(emb.decode(x), softcap), axis=-1)
    np.testing.assert_array_equal(ours, ref)
    assert int(ours[0]) == 7
