"""Write a model (any family) as an HF checkpoint folder (config.json + model.safetensors).

The inverse of `hs_jax.models.safetensors_io.load_hf_dir`: a full-weight expert found by a run
(`hs_jax.experts.full_models`) is exported in the format it was loaded from, so transformers and
this package read it back. The config.json is checked to parse back to the same `GemmaConfig`
before anything is written, so an architecture HF's config cannot express is refused instead
of being written wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from flax import nnx

from hs_jax.models.convert import config_from_hf, state_dict_from_params
from hs_jax.models.gemma_config import GemmaConfig, Llama3Rope, first_difference

CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
_MODEL_TYPES = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
_ARCHITECTURES = {
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_LAYER_TYPES = {"local": "sliding_attention", "global": "full_attention"}


def _rope(base: float, scale: float, llama3: Llama3Rope | None = None) -> dict[str, Any]:
    if llama3 is not None:
        return {
            "rope_type": "llama3",
            "factor": scale,
            "rope_theta": base,
            "low_freq_factor": llama3.low_freq_factor,
            "high_freq_factor": llama3.high_freq_factor,
            "original_max_position_embeddings": llama3.original_max_positions,
        }
    if scale == 1.0:
        return {"rope_type": "default", "rope_theta": base}
    return {"rope_type": "linear", "factor": scale, "rope_theta": base}


def hf_config_json(config: GemmaConfig) -> dict[str, Any]:
    """The HF config.json of `config`; raises ValueError naming the first field that would not
    parse back to the same value (`convert.config_from_hf` is the reference)."""
    family = config.family
    out: dict[str, Any] = {
        "model_type": _MODEL_TYPES[family],
        "architectures": [_ARCHITECTURES[family]],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": config.param_dtype,
    }
    if not family.startswith("gemma"):
        out["hidden_act"] = "silu"
        out["rope_parameters"] = _rope(
            config.rope_base_global, config.rope_scale_global, config.rope_llama3
        )
        if family == "mistral":
            out["sliding_window"] = config.sliding_window  # null: no window
    elif family == "gemma3":  # one rope entry per layer type
        out["rope_parameters"] = {
            "full_attention": _rope(config.rope_base_global, config.rope_scale_global),
            "sliding_attention": _rope(config.rope_base_local, 1.0),
        }
    else:  # a flat entry: the global rope, which Gemma 1 and 2 use on every layer
        out["rope_parameters"] = _rope(config.rope_base_global, config.rope_scale_global)
    if family.startswith("gemma"):
        out["hidden_activation"] = "gelu_pytorch_tanh"
    if family in ("gemma2", "gemma3"):
        q = config.query_pre_attn_scalar  # transformers' config takes an int here
        out["query_pre_attn_scalar"] = int(q) if float(q).is_integer() else q
        out["attn_logit_softcapping"] = config.attn_logit_softcap
        out["final_logit_softcapping"] = config.final_logit_softcap
        out["layer_types"] = [_LAYER_TYPES[t] for t in config.layer_types]
        if config.sliding_window is not None:
            out["sliding_window"] = config.sliding_window
    back = config_from_hf(out, param_dtype=config.param_dtype, source=CONFIG_JSON)
    if differs := first_difference(config, back):
        name, mine, theirs = differs
        raise ValueError(
            f"an HF config.json cannot express this {family} architecture: "
            f"{name} = {mine!r} would be read back as {theirs!r}"
        )
    return out


# Fields of a source config.json that describe the checkpoint, not the architecture
# `GemmaConfig` holds, and that an export keeps: without max_position_embeddings, transformers
# assumes 2048 positions (and serving stacks cap the context there) for a Llama 3.1 exported
# from a 131072-position source.
CARRIED_FIELDS = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def carried_fields(source_config_json: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `CARRIED_FIELDS` a source config.json sets (a multimodal Gemma 3's from its
    text_config)."""
    if not source_config_json:
        return {}
    text = source_config_json.get("text_config")
    src = {**(text if isinstance(text, Mapping) else {}), **source_config_json}
    return {k: src[k] for k in CARRIED_FIELDS if src.get(k) is not None}


def save_hf_dir(
    config: GemmaConfig,
    params: nnx.State,
    folder: str | os.PathLike,
    *,
    source_config_json: Mapping[str, Any] | None = None,
) -> str:
    """Writes `params` (one model, no expert axis) as an HF checkpoint folder that
    `load_hf_dir` and transformers load; returns the folder. `source_config_json`, the
    config.json the model was loaded from, gives the `CARRIED_FIELDS` (the context length, the
    special token ids) that `config` does not hold."""
    from safetensors.numpy import save_file

    config_json = hf_config_json(config)  # refused before any file is written
    config_json.update(carried_fields(source_config_json))
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    tensors = state_dict_from_params(config, params)  # HF names and orientation, numpy
    save_file(tensors, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_JSON), "w") as f:
        json.dump(config_json, f, indent=2)
    return folder
