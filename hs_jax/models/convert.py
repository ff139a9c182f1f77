"""HF naming <-> hs_jax parameters, and HF config.json -> GemmaConfig (every family: Gemma 1/2/3,
Llama, Mistral, Qwen 2 / 3).

A state dict here is a dict HF-name -> numpy array in HF orientation (linear weights [out, in],
norm weights as stored: Gemma's without its "+1"), or a `LazyTensor` that reads one when asked.
Every loader (safetensors, GGUF) produces one and converts it with `params_from_state_dict`,
which is where shapes are checked against the config.

Loading straight into the mesh: given a mesh, `params_from_state_dict` reads one tensor at a
time, converts it, and hands each device only its slice of it (`jax.make_array_from_callback`,
by the rule table of `hs_jax.runtime.sharding`), so no device ever holds a whole kernel that
the rules split, and the host holds the placed model plus about one tensor (the loaders' lazy
tensors read each from the file with plain reads, not a memory map whose touched pages would
stay resident).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hs_jax.models.gemma import Gemma, abstract_model
from hs_jax.models.gemma_config import GemmaConfig, Llama3Rope
from hs_jax.runtime import sharding

# Prefixes under which checkpoints store the text decoder; all map to "model.".
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Tensors that carry no information for us: rotary tables, and a tied head's copy.
_IGNORABLE = re.compile(r"(^|\.)rotary_emb\.\w*inv_freq$")
_TIED_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: wrong architecture, missing/extra/misshapen tensor,
    unreadable file. The message names the file and the tensor."""


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A checkpoint tensor not read yet: its shape (HF orientation) and a function reading it
    whole into a fresh numpy array (the loader's dtype; GGUF: dequantised float32)."""

    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


def _shape_of(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, LazyTensor) else tuple(np.shape(value))


def _read(value) -> np.ndarray:
    return value.read() if isinstance(value, LazyTensor) else np.asarray(value)


def canonical_name(name: str) -> str:
    """'model.language_model.layers.0...' and 'language_model.model.layers.0...' ->
    'model.layers.0...'; other names are returned unchanged."""
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix) :]
    return name


# --------------------------------------------------------------------------------------------
# config.json


_DEFAULTS = {
    # Defaults of transformers' GemmaConfig / Gemma2Config / Gemma3TextConfig, for keys a
    # config.json may omit (multimodal Gemma 3 files store only the non-default text keys).
    "gemma": dict(
        vocab_size=256_000,
        hidden_size=3072,
        intermediate_size=24_576,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=256,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
    ),
    "gemma2": dict(
        vocab_size=256_000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    "gemma3_text": dict(
        vocab_size=262_208,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        sliding_window_pattern=6,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    ),
    # transformers' LlamaConfig / MistralConfig defaults (Llama 2 7B, Mistral 7B v0.1 shapes).
    "llama": dict(
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=11_008,
        num_hidden_layers=32,
        num_attention_heads=32,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
    ),
    "mistral": dict(
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        sliding_window=4096,
        tie_word_embeddings=False,
        hidden_act="silu",
    ),
    # transformers' Qwen2Config / Qwen3Config defaults.
    "qwen2": dict(
        vocab_size=151_936,
        hidden_size=4096,
        intermediate_size=22_016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
    ),
    "qwen3": dict(
        vocab_size=151_936,
        hidden_size=4096,
        intermediate_size=22_016,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=128,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
    ),
}
_FAMILY = {
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
}
_GEMMA_FAMILIES = ("gemma", "gemma2", "gemma3")
_HF_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _rope(
    cfg: Mapping, layer_type: str, default_theta: float, src: str
) -> tuple[float, float, Llama3Rope | None]:
    """(rope base, scale factor, Llama 3 parameters or None for linear scaling) for one HF layer
    type, old and new config styles."""
    params = cfg.get("rope_parameters")
    if not isinstance(params, Mapping):
        params = {}
    elif any(t in params for t in _HF_LAYER_TYPES):  # gemma3 style: one entry per layer type
        params = params.get(layer_type) or {}
    elif layer_type == "sliding_attention":  # a flat entry describes the global rope only
        params = {}
    if layer_type == "full_attention" and not params.get("rope_type") and cfg.get("rope_scaling"):
        params = {**cfg["rope_scaling"], **params}
    theta = params.get("rope_theta", default_theta)
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type == "default":
        return float(theta), 1.0, None
    if rope_type == "linear":
        return float(theta), float(params["factor"]), None
    if rope_type == "llama3":
        original = params.get("original_max_position_embeddings")
        llama3 = Llama3Rope(
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(original or cfg["max_position_embeddings"]),
        )
        return float(theta), float(params["factor"]), llama3
    raise CheckpointError(
        f"{src}: rope type {rope_type!r} is not supported (only default, linear, llama3)"
    )


def config_from_hf(
    config_json: Mapping, *, param_dtype: str = "float32", source: str | None = None
) -> GemmaConfig:
    """GemmaConfig from a parsed HF config.json (model_type gemma, gemma2, gemma3_text, a
    multimodal gemma3 whose text_config is used, llama or mistral). `source` names the file in
    errors."""
    src = source or "config.json"
    model_type = config_json.get("model_type")
    if model_type == "gemma3":
        config_json = {"model_type": "gemma3_text", **(config_json.get("text_config") or {})}
        model_type = "gemma3_text"
    if model_type not in _DEFAULTS:
        raise CheckpointError(
            f"{src}: model_type {model_type!r} (architectures "
            f"{config_json.get('architectures')}) is not a supported model (Gemma, Gemma 2, "
            "Gemma 3 text, Llama, Mistral, Qwen 2, Qwen 3)"
        )
    cfg = {**_DEFAULTS[model_type], **{k: v for k, v in config_json.items() if v is not None}}
    if _FAMILY[model_type] not in _GEMMA_FAMILIES:
        if "sliding_window" in config_json:  # an explicit null: no window (Mistral v0.2+)
            cfg["sliding_window"] = config_json["sliding_window"]
        return _llama_style_config(_FAMILY[model_type], cfg, param_dtype, src)
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if key in config_json:  # an explicit null disables the cap
            cfg[key] = config_json[key]
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu"):  # HF maps legacy "gelu" to the tanh form
        raise CheckpointError(f"{src}: activation {act!r} is not supported (gelu tanh only)")
    if cfg.get("attention_bias"):
        raise CheckpointError(f"{src}: attention_bias=true is not supported")
    if cfg.get("use_bidirectional_attention"):
        raise CheckpointError(f"{src}: use_bidirectional_attention=true is not supported")

    family = _FAMILY[model_type]
    n_layers = int(cfg["num_hidden_layers"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    if cfg.get("layer_types"):
        try:
            layer_types = tuple(_HF_LAYER_TYPES[t] for t in cfg["layer_types"])
        except KeyError as e:
            raise CheckpointError(f"{src}: unknown layer type {e.args[0]!r}") from None
    elif family == "gemma2":
        layer_types = tuple("local" if (i + 1) % 2 else "global" for i in range(n_layers))
    elif family == "gemma3":
        period = int(cfg["sliding_window_pattern"])
        layer_types = tuple("local" if (i + 1) % period else "global" for i in range(n_layers))
    else:
        layer_types = ("global",) * n_layers

    base_global, scale_global, llama3_global = _rope(cfg, "full_attention", cfg["rope_theta"], src)
    if family == "gemma3":
        base_local, scale_local, _ = _rope(
            cfg, "sliding_attention", cfg["rope_local_base_freq"], src
        )
    else:
        base_local, scale_local = base_global, scale_global
    if scale_local != 1.0:
        raise CheckpointError(f"{src}: rope scaling on sliding-window layers is not supported")

    if llama3_global is not None:
        raise CheckpointError(f"{src}: rope type 'llama3' on a {family} model is not supported")
    qpas = head_dim if family == "gemma" else cfg["query_pre_attn_scalar"]
    softcap = (lambda v: None if v is None else float(v)) if family != "gemma" else lambda v: None
    return GemmaConfig(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        d_model=int(cfg["hidden_size"]),
        n_layers=n_layers,
        n_heads=int(cfg["num_attention_heads"]),
        n_kv_heads=int(cfg["num_key_value_heads"]),
        head_dim=head_dim,
        ffn_dim=int(cfg["intermediate_size"]),
        rms_eps=float(cfg["rms_norm_eps"]),
        query_pre_attn_scalar=float(qpas),
        attn_logit_softcap=softcap(cfg.get("attn_logit_softcapping")),
        final_logit_softcap=softcap(cfg.get("final_logit_softcapping")),
        use_qk_norm=family == "gemma3",
        use_post_norms=family != "gemma",
        layer_types=layer_types,
        sliding_window=int(cfg["sliding_window"]) if "local" in layer_types else None,
        rope_base_global=base_global,
        rope_base_local=base_local,
        rope_scale_global=scale_global,
        param_dtype=param_dtype,
    )


def _llama_style_config(family: str, cfg: Mapping, param_dtype: str, src: str) -> GemmaConfig:
    """Llama, Mistral and Qwen: one rope on every layer (default, linear or llama3); Mistral's
    `sliding_window`, when set, on every layer; Qwen 2's q/k/v biases, Qwen 3's q/k norms."""
    act = cfg.get("hidden_act") or "silu"
    if act != "silu":
        raise CheckpointError(f"{src}: activation {act!r} is not supported ({family}: silu only)")
    for key in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if cfg.get(key):  # (Qwen 2 sets its q/k/v biases without a key)
            raise CheckpointError(f"{src}: {key}=true is not supported")
    n_layers = int(cfg["num_hidden_layers"])
    n_heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads)
    theta, scale, llama3 = _rope(cfg, "full_attention", cfg["rope_theta"], src)
    window = cfg.get("sliding_window") if family == "mistral" else None
    if window is not None and scale != 1.0:
        raise CheckpointError(f"{src}: rope scaling with a sliding window is not supported")
    return GemmaConfig(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        d_model=int(cfg["hidden_size"]),
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        ffn_dim=int(cfg["intermediate_size"]),
        rms_eps=float(cfg["rms_norm_eps"]),
        query_pre_attn_scalar=float(head_dim),
        layer_types=("local" if window else "global",) * n_layers,
        sliding_window=int(window) if window else None,
        rope_base_global=theta,
        rope_base_local=theta,
        rope_scale_global=scale,
        rope_llama3=llama3,
        param_dtype=param_dtype,
        norm_offset=0.0,
        scale_embeddings=False,
        activation="silu",
        qkv_bias=family == "qwen2",
        use_qk_norm=family == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


# --------------------------------------------------------------------------------------------
# tensors


def hf_param_map(config: GemmaConfig) -> dict[str, tuple[tuple, tuple[int, ...], bool]]:
    """HF name -> (our param path, HF shape, transposed?) for every tensor the config needs."""
    c = config
    d, f = c.d_model, c.ffn_dim
    out: dict[str, tuple[tuple, tuple[int, ...], bool]] = {
        "model.embed_tokens.weight": (("embedder", "embedding"), (c.vocab_size, d), False),
        "model.norm.weight": (("final_norm", "scale"), (d,), False),
    }
    if not c.tie_embeddings:  # HF's [V, D] as stored, like the embedding
        out["lm_head.weight"] = (("lm_head", "embedding"), (c.vocab_size, d), False)
    if c.use_post_norms:
        norms = {
            "input_layernorm": "input_norm",
            "post_attention_layernorm": "post_attn_norm",
            "pre_feedforward_layernorm": "pre_ffn_norm",
            "post_feedforward_layernorm": "post_ffn_norm",
        }
    else:  # Gemma 1's "post_attention_layernorm" is the norm in front of the MLP
        norms = {"input_layernorm": "input_norm", "post_attention_layernorm": "pre_ffn_norm"}
    linears = {
        "self_attn.q_proj": (("attn", "q_proj"), (c.q_dim, d)),
        "self_attn.k_proj": (("attn", "k_proj"), (c.kv_dim, d)),
        "self_attn.v_proj": (("attn", "v_proj"), (c.kv_dim, d)),
        "self_attn.o_proj": (("attn", "o_proj"), (d, c.q_dim)),
        "mlp.gate_proj": (("mlp", "gate_proj"), (f, d)),
        "mlp.up_proj": (("mlp", "up_proj"), (f, d)),
        "mlp.down_proj": (("mlp", "down_proj"), (d, f)),
    }
    for i in range(c.n_layers):
        pre = f"model.layers.{i}."
        for hf, ours in norms.items():
            out[pre + hf + ".weight"] = (("layers", i, ours, "scale"), (d,), False)
        for hf, (ours, shape) in linears.items():
            out[pre + hf + ".weight"] = (("layers", i, *ours, "kernel"), shape, True)
        if c.use_qk_norm:
            for n in ("q_norm", "k_norm"):
                path = ("layers", i, "attn", n, "scale")
                out[f"{pre}self_attn.{n}.weight"] = (path, (c.head_dim,), False)
        if c.qkv_bias:
            for n, dim in (("q_proj", c.q_dim), ("k_proj", c.kv_dim), ("v_proj", c.kv_dim)):
                path = ("layers", i, "attn", n, "bias")
                out[f"{pre}self_attn.{n}.bias"] = (path, (dim,), False)
    return out


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def params_from_state_dict(
    config: GemmaConfig,
    state_dict: Mapping[str, np.ndarray],
    *,
    sources: Mapping[str, str] | None = None,
    where: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> nnx.State:
    """Our params state (dtype config.param_dtype) from an HF-name state dict.

    Every tensor the config needs must be present with the expected shape; unknown tensors are an
    error too (a checkpoint of another shape or architecture), except rotary inv_freq buffers and,
    for a tied config, an lm_head equal to the embedding. `sources` maps tensor names to the file
    they came from and `where` names the checkpoint, for the error messages. With a `mesh`, each
    parameter is placed in its final sharding (`sharding.spec_for`) slice by slice as it is read
    (module docstring); without one, on the default device. Tensors are read one at a time, in the
    config's order.
    """
    sources = sources or {}
    where_txt = f" in {where}" if where else ""

    def origin(name: str) -> str:
        return f" (from {sources[name]})" if name in sources else where_txt

    by_name = {canonical_name(k): (k, v) for k, v in state_dict.items()}
    if "language_model.lm_head.weight" in by_name and "lm_head.weight" not in by_name:
        by_name["lm_head.weight"] = by_name.pop("language_model.lm_head.weight")
    expected = hf_param_map(config)
    missing = [n for n in expected if n not in by_name]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"missing tensor {missing[0]!r}{more}{where_txt}")
    for name, (orig, value) in by_name.items():
        if name in expected or _IGNORABLE.search(name):
            continue
        if name in _TIED_HEAD_NAMES or orig in _TIED_HEAD_NAMES:
            emb = by_name["model.embed_tokens.weight"][1]
            if _shape_of(value) != _shape_of(emb) or not np.array_equal(_read(value), _read(emb)):
                raise CheckpointError(
                    f"tensor {orig!r}{origin(orig)} is an untied output head, but the config "
                    "ties the head to the embedding (tie_word_embeddings)"
                )
            continue
        raise CheckpointError(
            f"unexpected tensor {orig!r}{origin(orig)}: not part of a {config.family} model "
            f"with {config.n_layers} layers"
        )

    for name, (_, shape, _) in expected.items():  # every shape checked before any read
        orig, value = by_name[name]
        if _shape_of(value) != shape:
            raise CheckpointError(
                f"tensor {orig!r}{origin(orig)} has shape {_shape_of(value)}, "
                f"expected {shape} for this config"
            )
    dtype = jnp.dtype(config.param_dtype)
    tree: dict = {}
    for name, (path, _, transpose) in expected.items():
        arr = _read(by_name[name][1])
        arr = (arr.T if transpose else arr).astype(dtype, copy=False)
        _set(tree, path, _place(arr, path, mesh))
        del arr  # one tensor at a time on the host
    _, params = abstract_model(config)
    nnx.replace_by_pure_dict(params, tree)
    return params


def _place(arr: np.ndarray, path: tuple, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """One converted tensor on the default device, or on `mesh` by the rule table: each device
    is handed only its slice (a device of a 'model' group never sees the whole kernel)."""
    if mesh is None:
        return jnp.asarray(arr)
    spec = sharding.spec_for("/".join(map(str, path)), arr.shape, mesh)
    target = jax.sharding.NamedSharding(mesh, spec)
    return jax.make_array_from_callback(arr.shape, target, lambda index: arr[index])


def state_dict_from_params(config: GemmaConfig, params: nnx.State) -> dict[str, np.ndarray]:
    """The inverse of `params_from_state_dict`: HF names, HF orientation, numpy, param dtype.

    bfloat16 params come back as ml_dtypes bfloat16 numpy arrays."""
    pure = params.to_pure_dict() if isinstance(params, nnx.State) else params
    out = {}
    for name, (path, _, transpose) in hf_param_map(config).items():
        value = np.asarray(jax.device_get(_get(pure, path)))
        out[name] = np.ascontiguousarray(value.T) if transpose else value
    return out


def init_params(config: GemmaConfig, seed: int = 0, *, norm_std: float = 0.0) -> nnx.State:
    """A fresh random params state (HF's init: normal(0.02) weights, norms that multiply by 1,
    zero biases).

    `norm_std` > 0 adds normal(0, norm_std) to the norm scales and biases, so tests see them.
    """
    params = nnx.state(Gemma(config, rngs=nnx.Rngs(seed)), nnx.Param)
    if norm_std:
        pure = params.to_pure_dict()
        leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
        keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
        leaves = [
            (leaf + norm_std * jax.random.normal(k, leaf.shape)).astype(leaf.dtype)
            if path[-1].key in ("scale", "bias")
            else leaf
            for k, (path, leaf) in zip(keys, leaves, strict=True)
        ]
        nnx.replace_by_pure_dict(params, jax.tree_util.tree_unflatten(treedef, leaves))
    return params
