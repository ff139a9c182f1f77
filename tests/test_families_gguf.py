"""GGUF files of the llama (Llama 2 / 3.x, Mistral), qwen2 and qwen3 architectures.

Tiny random transformers models (test_families' variants) are written as GGUF files here the way
llama.cpp's convert_hf_to_gguf.py writes them: its tensor names, its metadata keys, the q/k row
permutation of the llama architecture (`LlamaModel.permute`), Llama 3's rope scaling as the
`rope_freqs.weight` divisors, 1-D tensors kept in F32. hs_jax reads each back as the same config
and the same weights (exactly), and its float32 logits equal the transformers model's to 1e-4
relative; an F16 and a Q8_0 file load too (the transformers model rounded the same way first).
transformers' own GGUF loader (an independent inverse of the permutation) reads the same tensors.
Unsupported architectures and settings are refused with one line naming the file and the field.
"""

import math

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_families import _HF_MODELS, _config, _hf_config
from test_models import RTOL, _left_padded_batch, _rel_err

from hs_jax.models import PRESETS, from_params
from hs_jax.models.convert import LazyTensor
from hs_jax.models.gguf_io import (
    GGUFError,
    _llama3_rope_from_factors,
    read_gguf,
    read_gguf_metadata,
)
from hs_jax.models.loading import load_model

Q = gguf.GGMLQuantizationType

# llama.cpp's HF -> GGUF names (gguf-py's tensor_mapping) for these families.
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def _gguf_name(hf: str) -> str:
    if hf in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf]
    _, _, i, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{_LAYER_NAMES[module]}.{kind}"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: each head's rows from rotate-half halves to pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _converter_rope_factors(theta, dim, factor, low, high, original) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel rope_freqs loop (torch float32 frequencies)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


def _hf_model(config, seed=0):
    """test_families' random transformers model: weights large enough to matter, norms spread
    around 1."""
    torch.manual_seed(seed)
    model = _HF_MODELS[config.family](_hf_config(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.25)
    return model


def _round_to(model, qtype):
    """Rounds every 2-D weight to what `qtype` stores, so the GGUF holds exactly the model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                w = p.numpy()
                p.copy_(
                    torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype))
                )


def _write_gguf(
    path,
    config,
    model,
    *,
    qtype=Q.F32,
    arch=None,
    name=None,
    window_key=True,
    meta=None,
    extra_tensors=None,
):
    """`model` written as llama.cpp's converter does (module docstring). `window_key`: write
    Mistral's sliding window (llama.cpp's converter does not; a file carrying it is tested);
    `meta`: extra (key, value) pairs; `arch`: override general.architecture."""
    c = config
    arch = arch or ("llama" if c.family in ("llama", "mistral") else c.family)
    w = gguf.GGUFWriter(str(path), arch)
    if name:
        w.add_name(name)
    w.add_context_length(256)
    w.add_embedding_length(c.d_model)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.ffn_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_freq_base(c.rope_base_global)
    w.add_layer_norm_rms_eps(c.rms_eps)
    w.add_key_length(c.head_dim)  # config.json has head_dim
    w.add_value_length(c.head_dim)
    if arch == "llama":
        w.add_vocab_size(c.vocab_size)
        w.add_rope_dimension_count(c.head_dim)
    if c.family == "mistral" and c.sliding_window and window_key:
        w.add_sliding_window(c.sliding_window)
    for key, value in (meta or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(c.vocab_size)])
    w.add_array("tokenizer.ggml.scores", [0.0] * c.vocab_size)
    w.add_array("tokenizer.ggml.token_type", [1] * c.vocab_size)

    if c.rope_llama3 is not None:
        r = c.rope_llama3
        factors = _converter_rope_factors(
            c.rope_base_global,
            c.head_dim,
            c.rope_scale_global,
            r.low_freq_factor,
            r.high_freq_factor,
            r.original_max_positions,
        )
        w.add_tensor("rope_freqs.weight", factors)
    for hf, value in model.state_dict().items():
        if hf.endswith("rotary_emb.inv_freq") or (hf == "lm_head.weight" and c.tie_embeddings):
            continue
        data = value.numpy().astype(np.float32)
        if arch == "llama" and hf.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute(data, c.n_heads)
        if arch == "llama" and hf.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute(data, c.n_kv_heads)
        if data.ndim == 1 or qtype == Q.F32:
            w.add_tensor(_gguf_name(hf), np.ascontiguousarray(data))
        elif qtype == Q.F16:
            w.add_tensor(_gguf_name(hf), data.astype(np.float16))
        else:
            w.add_tensor(_gguf_name(hf), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    for tensor_name, value in (extra_tensors or {}).items():
        w.add_tensor(tensor_name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CASES = [
    ("llama3_untied", Q.F32),
    ("llama3_untied", Q.Q8_0),
    ("llama2", Q.F32),
    ("mistral_window", Q.F32),
    ("qwen2_bias_tied", Q.F32),
    ("qwen2_bias_tied", Q.F16),
    ("qwen3_qk_norm", Q.F32),
]


@pytest.mark.parametrize("variant, qtype", CASES, ids=[f"{v}-{q.name}" for v, q in CASES])
def test_gguf_matches_transformers(variant, qtype, tmp_path):
    """Same config, the same weights exactly (lazy tensors), float32 logits to 1e-4 relative on a
    left-padded batch 2.5x Mistral's window."""
    want = _config(variant)
    model = _hf_model(want)
    if qtype != Q.F32:
        _round_to(model, qtype)
    path = _write_gguf(tmp_path / f"{variant}.gguf", want, model, qtype=qtype)

    config, state = read_gguf(path, lazy=True)
    assert config == want
    ref_state = {
        k: v.numpy()
        for k, v in model.state_dict().items()
        if not k.endswith("inv_freq") and not (k == "lm_head.weight" and want.tie_embeddings)
    }
    assert set(state) == set(ref_state)
    for name, value in state.items():
        assert isinstance(value, LazyTensor)
        np.testing.assert_array_equal(value.read(), ref_state[name], err_msg=name)

    config, params = load_model(path, param_dtype="float32")
    assert config == want
    tokens, mask, positions = _left_padded_batch(config.vocab_size, [20, 13, 5], 20)
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(positions, 0), dtype=torch.long),
        ).logits.numpy()
    logits, _ = from_params(config, params)(jnp.asarray(tokens), jnp.asarray(positions))
    assert _rel_err(logits, ref, mask == 1) <= RTOL


@pytest.mark.parametrize("variant", ["llama3_untied", "llama2", "qwen2_bias_tied"])
def test_transformers_gguf_loader_reads_the_same_tensors(variant, tmp_path):
    """transformers' GGUF loader, an independent inverse of llama.cpp's permutation and names,
    reads the tensors hs_jax reads. (Its qwen2 / qwen3 readers ignore attention.key_length, so
    the qwen2 case uses head_dim = d_model / n_heads; qwen3's reader assumes head_dim 128 and is
    not used.)"""
    from transformers import AutoModelForCausalLM

    config = _config(variant)
    if config.family == "qwen2":
        config = config.replace(head_dim=config.d_model // config.n_heads)
    path = _write_gguf(tmp_path / "t.gguf", config, _hf_model(config, seed=1))
    _, ours = read_gguf(path)
    theirs = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="t.gguf", dtype=torch.float32
    ).state_dict()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)


def test_mistral_without_window_and_plain_llama(tmp_path):
    """A llama-architecture file named Mistral (no window key, as llama.cpp writes it) is a
    Mistral without a window; without the name it is a Llama: the same numbers either way."""
    config = _config("mistral_window").replace(sliding_window=None, layer_types=("global",) * 3)
    model = _hf_model(config)
    named = _write_gguf(tmp_path / "m.gguf", config, model, name="Mistral-7B-Instruct-v0.3")
    assert read_gguf(named)[0] == config
    plain = _write_gguf(tmp_path / "l.gguf", config, model, window_key=False)
    assert read_gguf(plain)[0] == config.replace(family="llama")


@pytest.mark.parametrize("preset", ["llama3.1-8b", "llama3.2-1b"])
def test_llama3_rope_recovered_from_released_factors(preset):
    """The converter's rope_freqs for the released Llama 3.1 / 3.2 configs give back the
    presets' rope scaling; a perturbed divisor matches no Llama 3 scaling."""
    c = PRESETS[preset]
    r = c.rope_llama3
    factors = _converter_rope_factors(
        c.rope_base_global,
        c.head_dim,
        c.rope_scale_global,
        r.low_freq_factor,
        r.high_freq_factor,
        r.original_max_positions,
    )
    assert _llama3_rope_from_factors(factors, c.rope_base_global, c.head_dim) == (
        c.rope_scale_global,
        r,
    )
    band = np.flatnonzero((factors > 1) & (factors < factors.max()))
    factors[band[len(band) // 2]] *= 1.05
    assert _llama3_rope_from_factors(factors, c.rope_base_global, c.head_dim) is None


def _one_line_error(path, match):
    with pytest.raises(GGUFError) as info:
        read_gguf(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert match in message, message


@pytest.mark.parametrize(
    "change, match",
    [
        ({"arch": "phi3"}, "'general.architecture' is 'phi3', not a supported architecture"),
        ({"meta": {"llama.rope.scaling.type": "yarn"}}, "'llama.rope.scaling.type' is 'yarn'"),
        ({"meta": {"llama.expert_count": 8}}, "'llama.expert_count' is 8"),
        ({"meta": {"llama.rope.dimension_count": 8}}, "'llama.rope.dimension_count' is 8"),
        (
            {"extra_tensors": {"blk.0.post_ffw_norm.weight": np.ones(32, np.float32)}},
            "'blk.0.post_ffw_norm.weight' is not part of a llama model",
        ),
        (
            {"extra_tensors": {"rope_freqs.weight": np.linspace(1, 8, 8, dtype=np.float32)}},
            "'rope_freqs.weight' holds rope frequency divisors",
        ),
    ],
    ids=["arch", "yarn", "experts", "partial_rope", "foreign_tensor", "rope_freqs"],
)
def test_unsupported_files_are_refused(change, match, tmp_path):
    config = _config("llama2")
    path = _write_gguf(tmp_path / "x.gguf", config, _hf_model(config), **change)
    _one_line_error(path, match)
    if "arch" in change:  # the model loader and the metadata reader say the same
        with pytest.raises(GGUFError, match="not a supported architecture"):
            load_model(path)
        with pytest.raises(GGUFError, match="not a supported architecture"):
            read_gguf_metadata(path)
