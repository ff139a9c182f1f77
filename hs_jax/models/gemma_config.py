"""Decoder architecture description shared by the model, the converters and the loaders.

One frozen (hashable) dataclass covers every supported family: Gemma 1, 2 and 3 text models,
Llama 2 / 3.x, Mistral, Qwen 2 / 2.5 and Qwen 3. A family is a set of
values of the switches below, not a model file of its own: `family` only names the checkpoint
conventions (HF model_type, GGUF architecture); the forward pass reads the switches. The config
is a static attribute of the NNX module, so changing it recompiles and nothing else does.

Where the families differ (the switch, then its values):

| switch | Gemma 1 | Gemma 2 | Gemma 3 | Llama 2/3 | Mistral | Qwen 2 | Qwen 3 |
| --- | --- | --- | --- | --- | --- | --- | --- |
| `norm_offset` (RMSNorm multiplies by offset + w) | 1 | 1 | 1 | 0 | 0 | 0 | 0 |
| `scale_embeddings` (times sqrt(d_model)) | yes | yes | yes | no | no | no | no |
| `activation` (gated MLP) | gelu_tanh | gelu_tanh | gelu_tanh | silu | silu | silu | silu |
| `use_post_norms` | no | yes | yes | no | no | no | no |
| `use_qk_norm` | no | no | yes | no | no | no | yes |
| `qkv_bias` | no | no | no | no | no | yes | no |
| `tie_embeddings` (head = embedding) | yes | yes | yes | per file | no | per file | per file |
| `rope_llama3` (Llama 3.1+ rope scaling) | - | - | - | 3.1+ | - | - | - |
| `layer_types` "local" (sliding window) | - | alternate | 5 of 6 | - | all, if set | - | - |

The soft caps (Gemma 2) are further switches.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

FAMILIES = ("gemma", "gemma2", "gemma3", "llama", "mistral", "qwen2", "qwen3")
LAYER_TYPES = ("global", "local")
ACTIVATIONS = ("gelu_tanh", "silu")


@dataclasses.dataclass(frozen=True)
class Llama3Rope:
    """Llama 3.1's rope scaling (HF rope_type "llama3"): frequencies whose wavelength exceeds
    original_max_positions / low_freq_factor are divided by the config's `rope_scale_global`,
    those under original_max_positions / high_freq_factor are kept, and the ones between are
    interpolated."""

    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """Shapes and numerics of one decoder (the name is historical: every family uses it).

    Norm weights follow HF (Gemma's stored without its "+1", `norm_offset`). `query_pre_attn_scalar`
    sets the attention scale to `query_pre_attn_scalar ** -0.5` (Gemma 1 and the other families use
    head_dim). Local layers attend to keys with `pos_q - pos_k < sliding_window` and use
    `rope_base_local`; global layers use `rope_base_global` with positions divided by
    `rope_scale_global` (linear RoPE scaling, as HF's "linear" rope type), or, with `rope_llama3`,
    Llama 3's frequency-dependent scaling by that factor. The module docstring's table lists what
    each family sets.
    """

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rms_eps: float = 1e-6
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    use_qk_norm: bool = False
    use_post_norms: bool = False
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    rope_base_global: float = 10_000.0
    rope_base_local: float = 10_000.0
    rope_scale_global: float = 1.0
    param_dtype: str = "float32"
    norm_offset: float = 1.0
    scale_embeddings: bool = True
    activation: str = "gelu_tanh"
    qkv_bias: bool = False
    tie_embeddings: bool = True
    rope_llama3: Llama3Rope | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; expected one of {FAMILIES}")
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("global",) * self.n_layers)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.n_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers"
            )
        bad = set(self.layer_types) - set(LAYER_TYPES)
        if bad:
            raise ValueError(f"unknown layer types {sorted(bad)}; expected {LAYER_TYPES}")
        if "local" in self.layer_types and not self.sliding_window:
            raise ValueError("local layers need a sliding_window")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected {ACTIVATIONS}")
        if self.param_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"param_dtype must be float32 or bfloat16, got {self.param_dtype!r}")

    def replace(self, **changes) -> GemmaConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def q_dim(self) -> int:
        """Width of the concatenated query heads (n_heads * head_dim)."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the concatenated key (or value) heads."""
        return self.n_kv_heads * self.head_dim

    @property
    def embed_scale(self) -> float:
        """Factor on token embeddings: sqrt(d_model) for Gemma, 1 for the others."""
        return math.sqrt(self.d_model) if self.scale_embeddings else 1.0

    def is_local(self, layer: int) -> bool:
        """Whether layer `layer` uses sliding-window attention."""
        return self.layer_types[layer] == "local"

    def num_params(self) -> int:
        """Parameter count (a tied embedding counted once)."""
        d, f = self.d_model, self.ffn_dim
        attn = d * (self.q_dim + 2 * self.kv_dim) + self.q_dim * d
        attn += self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0
        norms = (4 if self.use_post_norms else 2) * d
        norms += 2 * self.head_dim if self.use_qk_norm else 0
        per_layer = attn + 3 * d * f + norms
        heads = 1 if self.tie_embeddings else 2
        return heads * self.vocab_size * d + self.n_layers * per_layer + d


def first_difference(a: GemmaConfig, b: GemmaConfig) -> tuple[str, Any, Any] | None:
    """(field, a's value, b's value) of the first field, in declaration order, where two
    configs differ; None when they describe the same architecture. Every "same architecture"
    check (full-weight experts, model folders, a config.json read back) asks this."""
    for field in dataclasses.fields(GemmaConfig):
        mine, theirs = getattr(a, field.name), getattr(b, field.name)
        if mine != theirs:
            return field.name, mine, theirs
    return None


def default_param_dtype() -> str:
    """float32 on CPU (XLA CPU's bf16 matmuls are only worth it with care), bfloat16 elsewhere."""
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def _pattern(n_layers: int, period: int) -> tuple[str, ...]:
    """HF's layer pattern: every `period`-th layer (1-based) is global, the others local."""
    return tuple("global" if (i + 1) % period == 0 else "local" for i in range(n_layers))


def _gemma1(**kw) -> GemmaConfig:
    return GemmaConfig(
        family="gemma", vocab_size=256_000, head_dim=256, query_pre_attn_scalar=256.0, **kw
    )


def _gemma2(**kw) -> GemmaConfig:
    n_layers = kw["n_layers"]
    return GemmaConfig(
        family="gemma2",
        vocab_size=256_000,
        head_dim=256,
        query_pre_attn_scalar=256.0,
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        use_post_norms=True,
        layer_types=_pattern(n_layers, 2),
        sliding_window=4096,
        **kw,
    )


def _gemma3(**kw) -> GemmaConfig:
    n_layers = kw["n_layers"]
    kw.setdefault("vocab_size", 262_144)
    return GemmaConfig(
        family="gemma3",
        head_dim=256,
        query_pre_attn_scalar=256.0,
        use_qk_norm=True,
        use_post_norms=True,
        layer_types=_pattern(n_layers, 6),
        rope_base_global=1_000_000.0,
        rope_base_local=10_000.0,
        **kw,
    )


# The switches Llama and Mistral share (norms multiply by w, no embedding scale, SiLU gate,
# attention scale head_dim ** -0.5).
_LLAMA_STYLE = dict(norm_offset=0.0, scale_embeddings=False, activation="silu", rms_eps=1e-5)


def _llama(*, head_dim: int = 128, rope_theta: float = 10_000.0, **kw) -> GemmaConfig:
    kw.setdefault("tie_embeddings", False)
    return GemmaConfig(
        family="llama",
        head_dim=head_dim,
        query_pre_attn_scalar=float(head_dim),
        rope_base_global=rope_theta,
        rope_base_local=rope_theta,
        **_LLAMA_STYLE,
        **kw,
    )


def _mistral(
    *, n_layers: int, sliding_window: int | None, rope_theta: float, head_dim: int = 128, **kw
) -> GemmaConfig:
    """Mistral: Llama's numerics; a config.sliding_window applies to every layer."""
    return GemmaConfig(
        family="mistral",
        n_layers=n_layers,
        head_dim=head_dim,
        query_pre_attn_scalar=float(head_dim),
        layer_types=("local" if sliding_window else "global",) * n_layers,
        sliding_window=sliding_window,
        rope_base_global=rope_theta,
        rope_base_local=rope_theta,
        tie_embeddings=False,
        **_LLAMA_STYLE,
        **kw,
    )


def _qwen(family: str, *, head_dim: int = 128, rope_theta: float = 1_000_000.0, **kw):
    """Qwen 2 / 2.5 (q/k/v biases) and Qwen 3 (q/k norms): Llama's numerics otherwise."""
    return GemmaConfig(
        family=family,
        head_dim=head_dim,
        query_pre_attn_scalar=float(head_dim),
        rope_base_global=rope_theta,
        rope_base_local=rope_theta,
        qkv_bias=family == "qwen2",
        use_qk_norm=family == "qwen3",
        **{**_LLAMA_STYLE, "rms_eps": 1e-6},
        **kw,
    )


_LLAMA31_ROPE = Llama3Rope(low_freq_factor=1.0, high_freq_factor=4.0, original_max_positions=8192)

PRESETS: dict[str, GemmaConfig] = {
    # Gemma 1: attention scale head_dim ** -0.5, no post norms, every layer global.
    "gemma-2b": _gemma1(d_model=2048, n_layers=18, n_heads=8, n_kv_heads=1, ffn_dim=16_384),
    "gemma-7b": _gemma1(d_model=3072, n_layers=28, n_heads=16, n_kv_heads=16, ffn_dim=24_576),
    "gemma2-2b": _gemma2(d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4, ffn_dim=9216),
    "gemma2-9b": _gemma2(d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, ffn_dim=14_336),
    "gemma3-270m": _gemma3(
        d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, ffn_dim=2048, sliding_window=512
    ),
    "gemma3-1b": _gemma3(
        d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1, ffn_dim=6912, sliding_window=512
    ),
    "gemma3-4b": _gemma3(
        vocab_size=262_208,
        d_model=2560,
        n_layers=34,
        n_heads=8,
        n_kv_heads=4,
        ffn_dim=10_240,
        sliding_window=1024,
        rope_scale_global=8.0,
    ),
    "llama2-7b": _llama(
        vocab_size=32_000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11_008
    ),
    "llama3.1-8b": _llama(
        vocab_size=128_256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14_336,
        rope_theta=500_000.0,
        rope_scale_global=8.0,
        rope_llama3=_LLAMA31_ROPE,
    ),
    "llama3.2-1b": _llama(
        vocab_size=128_256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        ffn_dim=8192,
        rope_theta=500_000.0,
        rope_scale_global=32.0,
        rope_llama3=_LLAMA31_ROPE,
        tie_embeddings=True,
    ),
    "mistral-7b-v0.1": _mistral(
        vocab_size=32_000,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14_336,
        sliding_window=4096,
        rope_theta=10_000.0,
    ),
    # v0.2 / v0.3 (the paper's Table 4 base): no sliding window, rope theta 1e6; v0.3 adds the
    # 768 control tokens of its v3 tokenizer.
    "mistral-7b-v0.3": _mistral(
        vocab_size=32_768,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14_336,
        sliding_window=None,
        rope_theta=1_000_000.0,
    ),
    "qwen2.5-0.5b": _qwen(
        "qwen2",
        vocab_size=151_936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        ffn_dim=4864,
        tie_embeddings=True,
    ),
    "qwen2.5-7b": _qwen(
        "qwen2",
        vocab_size=152_064,
        d_model=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        ffn_dim=18_944,
        tie_embeddings=False,
    ),
    "qwen3-0.6b": _qwen(
        "qwen3",
        vocab_size=151_936,
        d_model=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        ffn_dim=3072,
        tie_embeddings=True,
    ),
}


def tiny_config(family: str, *, param_dtype: str = "float32") -> GemmaConfig:
    """A few-layer random-weight config for tests: small window so test prompts exceed it.

    gemma2 alternates local/global; gemma3 uses a 2 local : 1 global pattern (4 layers: local,
    local, global, local) so both layer kinds and both rope bases are exercised. llama is
    Llama 3.1 shaped: untied head, Llama 3 rope scaling whose three frequency bands all occur
    in head_dim 16 (wavelengths below 16, between 16 and 64, above 64); mistral is v0.1 shaped:
    every layer in a sliding window of 8, untied head; qwen2 has q/k/v biases and a tied head,
    qwen3 q/k norms and an untied head.
    """
    common = dict(
        vocab_size=128,
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        ffn_dim=64,
        param_dtype=param_dtype,
    )
    if family == "gemma":
        return GemmaConfig(family="gemma", n_layers=2, query_pre_attn_scalar=16, **common)
    if family == "gemma2":
        return GemmaConfig(
            family="gemma2",
            n_layers=3,
            query_pre_attn_scalar=24.0,
            # Small caps so tanh is far from linear on random weights: the tests see it.
            attn_logit_softcap=2.0,
            final_logit_softcap=3.0,
            use_post_norms=True,
            layer_types=_pattern(3, 2),
            sliding_window=8,
            **common,
        )
    if family == "gemma3":
        return GemmaConfig(
            family="gemma3",
            n_layers=4,
            query_pre_attn_scalar=16.0,
            use_qk_norm=True,
            use_post_norms=True,
            layer_types=_pattern(4, 3),
            sliding_window=8,
            rope_base_global=1_000_000.0,
            rope_base_local=10_000.0,
            rope_scale_global=2.0,
            **common,
        )
    if family == "llama":
        return _llama(
            n_layers=3,
            head_dim=16,
            rope_theta=10_000.0,
            rope_scale_global=8.0,
            rope_llama3=Llama3Rope(1.0, 4.0, 64),
            **{k: v for k, v in common.items() if k != "head_dim"},
        )
    if family == "mistral":
        return _mistral(
            n_layers=3,
            head_dim=16,
            sliding_window=8,
            rope_theta=1_000_000.0,
            **{k: v for k, v in common.items() if k != "head_dim"},
        )
    if family in ("qwen2", "qwen3"):
        return _qwen(
            family,
            n_layers=2,
            head_dim=16,
            tie_embeddings=family == "qwen2",
            **{k: v for k, v in common.items() if k != "head_dim"},
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
