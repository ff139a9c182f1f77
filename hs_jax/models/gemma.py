"""Flax NNX decoder (Gemma 1, 2 and 3 text, Llama 2 / 3.x, Mistral, Qwen 2 / 3) with a KV cache
and a per-row LoRA hook.

The forward pass matches transformers' eager PyTorch models (same norms, rope, masks, soft caps).
The families differ only by the config's switches (`gemma_config` lists them): the norm's
offset, the embedding scale, the MLP's activation, post norms, q/k norms, q/k/v biases, a tied
or separate output head (`lm_head`, stored [V, D] like the embedding so that both heads share
the greedy and screened code), Llama 3's rope scaling and sliding-window layers.
Positions are explicit: a token with position < 0 is padding; it is never attended to and its
own output is garbage but finite. Prompts are left padded by the sampler, so positions of real
tokens start at 0 in every row.

Performance choices (CPU, measured in bench/RESULTS.md): layers are an
unrolled Python loop; the tied output head contracts the embedding's model axis directly (no
transpose of the [V, D] table), and greedy decoding uses a vocabulary-major head with a blocked
argmax (`Embedder.greedy`); the KV cache holds values as [B * Kh, S, Dh] and keys as
[B * Kh, Dh, S] (rows and kv heads apart, [B, Kh, ...], where a mesh splits the heads), so that
a decode step updates it in place and both attention dots read it as stored (`KVCache`,
`_attend`); bfloat16
weights are multiplied with bfloat16 operands accumulating in float32 (weights are upcast
instead when there is a single row, where XLA CPU's bf16 path is slow). The residual stream,
norms, softmax and logits are float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax import lax

from hs_jax.models import screened_head
from hs_jax.models.gemma_config import GemmaConfig, Llama3Rope

# Finite stand-in for -inf: a fully masked row (a padding query) gets a uniform softmax instead
# of NaN, and a partly masked row gives exactly zero weight to the masked keys.
_MASK_VALUE = -1e30
_INIT_STD = 0.02  # HF's initializer_range for Gemma


@struct.dataclass
class KVCache:
    """Keys/values of every layer plus the position held by each slot (-1 = empty or padding).

    Values are stored per (row, kv head) as [B * Kh, S, Dh] and keys transposed, as
    [B * Kh, Dh, S], row-major over (b, kv head): both attention dots are then plain batched
    products q [G, Dh] @ k [Dh, S] and p [G, S] @ v [S, Dh] that read the cache as stored, and a
    decode step updates it in place. Keys as [B * Kh, S, Dh] need the keys-on-the-left form of
    the score dot, measured 1.03-1.15x slower per decode step (8-64 rows, 88-512 slots); with a
    [B, S, Kh, Dh] layout XLA copies the whole cache every decode step (4x slower per layer at
    64 rows x 512 slots on CPU).

    `heads_apart` keeps rows and kv heads on two axes, [B, Kh, Dh, S] and [B, Kh, S, Dh] (the
    same bytes): a mesh that splits the kv heads along 'model' needs it, since a chunk of the
    flattened axis is a set of rows, not of heads (`engine.sampling.kv_cache_spec`). It is not
    the default because XLA drops a batch axis of size 1 from the attention dots through a
    reshape, and XLA CPU then duplicates the in-place update into that reshape, copying the
    whole cache every decode step (measured 4.4x slower per layer and step with one kv head,
    Gemma 3 270M's shapes at 64 rows x 512 slots): with one kv head, the head axis always has
    size 1. The same happens to a device's share of a split cache that holds one row or one
    head; with two or more of each, both layouts run at the same speed.
    """

    k: tuple  # per layer [B * Kh, Dh, S] (keys transposed), or [B, Kh, Dh, S] with heads apart
    v: tuple  # per layer [B * Kh, S, Dh], or [B, Kh, S, Dh] with heads apart
    pos: jax.Array  # [B, S] int32

    @classmethod
    def init(
        cls,
        config: GemmaConfig,
        batch: int,
        size: int,
        dtype=jnp.float32,
        *,
        heads_apart: bool = False,
    ) -> KVCache:
        """An empty cache of `size` slots per row (rows and kv heads on two axes if
        `heads_apart`)."""
        kh, dh = config.n_kv_heads, config.head_dim
        rows = (batch, kh) if heads_apart else (batch * kh,)
        return cls(
            k=tuple(jnp.zeros((*rows, dh, size), dtype) for _ in range(config.n_layers)),
            v=tuple(jnp.zeros((*rows, size, dh), dtype) for _ in range(config.n_layers)),
            pos=jnp.full((batch, size), -1, jnp.int32),
        )

    @property
    def size(self) -> int:
        """Number of slots per row."""
        return self.pos.shape[1]


def _operands(x: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dtypes for x [..., d] times a weight: float32 weights take float32 activations; other
    weights take activations of their dtype, except for a single row on the CPU, where XLA
    CPU's bf16 path is slow and the weight is upcast instead (an accelerator reads the bf16
    weight as it is: an upcast there would add bytes to a bandwidth-bound step)."""
    if w.dtype == jnp.float32:
        return x.astype(jnp.float32), w
    if math.prod(x.shape[:-1]) == 1 and jax.default_backend() == "cpu":
        return x, w.astype(jnp.float32)
    return x.astype(w.dtype), w


def _matmul(x: jax.Array, w: jax.Array, w_contract: int = 0) -> jax.Array:
    """x [..., d] times w contracting w's axis `w_contract` (size d); float32 result."""
    dims = (((x.ndim - 1,), (w_contract,)), ((), ()))
    x, w = _operands(x, w)
    return lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)


def _project(
    x: jax.Array,
    kernel: jax.Array,
    lora_entry: Mapping[str, jax.Array] | None,
    expert_ids: jax.Array | None,
) -> jax.Array:
    """y = x @ W + (x @ a[e]) @ b[e] with e = expert_ids[row]; LoRA scale is folded into b.

    x [B, T, d_in], kernel [d_in, d_out], a [E, d_in, r], b [E, r, d_out] -> [B, T, d_out].
    """
    y = _matmul(x, kernel)
    if lora_entry is None:
        return y
    if expert_ids is None:
        raise ValueError("a LoRA stack was given without expert_ids")
    a = jnp.take(lora_entry["a"], expert_ids, axis=0).astype(jnp.float32)  # [B, d_in, r]
    b = jnp.take(lora_entry["b"], expert_ids, axis=0).astype(jnp.float32)  # [B, r, d_out]
    xa = jnp.einsum("btd,bdr->btr", x.astype(jnp.float32), a)
    return y + jnp.einsum("btr,bro->bto", xa, b)


class Dense(nnx.Module):
    """Linear layer, kernel [d_in, d_out] (the transpose of HF's weight), optional bias [d_out]
    (Qwen 2's q/k/v; added before the LoRA term, which is linear in x either way)."""

    def __init__(self, d_in: int, d_out: int, *, dtype, rngs: nnx.Rngs, bias: bool = False):
        self.kernel = nnx.Param(_INIT_STD * jax.random.normal(rngs.params(), (d_in, d_out), dtype))
        if bias:
            self.bias = nnx.Param(jnp.zeros((d_out,), dtype))
        self.has_bias = bias

    def __call__(self, x, lora_entry=None, expert_ids=None):
        y = _project(x, self.kernel[...], lora_entry, expert_ids)
        return y + self.bias[...].astype(jnp.float32) if self.has_bias else y


class RMSNorm(nnx.Module):
    """RMSNorm with float32 statistics, multiplying by (offset + scale): Gemma stores the weight
    without its "+1" (offset 1, scale initialised to 0), Llama and the others store it as is
    (offset 0, initialised to 1). Either way `scale` is HF's tensor."""

    def __init__(self, dim: int, eps: float, *, dtype, offset: float = 1.0):
        self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, dtype))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        x = x * lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32)
        return x * (self.offset + scale) if self.offset else x * scale


class Embedder(nnx.Module):
    """A [V, D] table: the token embedding, also the tied output head; an untied head
    (`Gemma.lm_head`) is a second one, HF's lm_head.weight as stored."""

    def __init__(self, vocab_size: int, d_model: int, *, dtype, rngs: nnx.Rngs, scale=True):
        self.embedding = nnx.Param(
            _INIT_STD * jax.random.normal(rngs.params(), (vocab_size, d_model), dtype)
        )
        self.scale = scale

    def encode(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, T] -> [B, T, D] float32; Gemma's times sqrt(D) cast to the weight dtype
        (as HF)."""
        table = self.embedding[...]
        x = jnp.take(table, tokens, axis=0)
        if self.scale:
            x = x * jnp.asarray(math.sqrt(table.shape[1]), table.dtype)
        return x.astype(jnp.float32)

    def decode(self, x: jax.Array) -> jax.Array:
        """x [B, T, D] -> logits [B, T, V] float32 (contracts the table's D axis, no transpose)."""
        return _matmul(x, self.embedding[...], w_contract=1)

    def greedy(self, x: jax.Array, softcap: float | None = None) -> jax.Array:
        """x [B, D] -> the argmax token of each row's logits [B] int32 (first one on ties).

        Same result as argmax(decode(x)), about 1.4-1.8x faster on XLA CPU (measured at 8-64
        rows): the logits are computed vocabulary-major ([V, B], the table as the left operand,
        which XLA CPU multiplies much faster than x @ table^T), and the argmax is taken in two
        stages (max per block of `_ARGMAX_BLOCK` words, then the argmax inside the winning
        block) because XLA CPU's variadic argmax reduction is ~15x slower than a plain max.
        """
        return _greedy(self.embedding[...], x, softcap)

    def screened_greedy(
        self,
        x: jax.Array,
        screen: screened_head.HeadScreen,
        softcap: float | None = None,
        rows_that_count: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(tokens [B], used_plain): `greedy`'s tokens, chosen from a bfloat16 screen of the
        float32 table with a certificate, or by `greedy` itself when a row that counts has none
        (see `screened_head`)."""
        cap = functools.partial(_softcap, cap=softcap)
        plain = functools.partial(_greedy, softcap=softcap)
        return screened_head.screened_or_plain_argmax(
            self.embedding[...], screen, x, cap, plain, rows_that_count
        )


def _greedy(table: jax.Array, x: jax.Array, softcap: float | None) -> jax.Array:
    """The plain greedy head of `Embedder.greedy`."""
    x, table = _operands(x, table)
    dims = (((1,), (1,)), ((), ()))
    logits = lax.dot_general(table, x, dims, preferred_element_type=jnp.float32)  # [V, B]
    logits = _softcap(logits, softcap)  # monotonic, kept so that ties match exactly
    return _blocked_argmax(logits)


_ARGMAX_BLOCK = 1024


def _blocked_argmax(logits: jax.Array) -> jax.Array:
    """logits [V, B] -> argmax over V per column [B] int32, the first index on ties."""
    v, b = logits.shape
    block = _ARGMAX_BLOCK if v % _ARGMAX_BLOCK == 0 else v
    blocks = logits.reshape(v // block, block, b)
    best_block = jnp.argmax(jnp.max(blocks, axis=1), axis=0)  # [B], first block with the max
    inside = jnp.take_along_axis(blocks, best_block[None, None, :], axis=0)[0]  # [block, B]
    return (best_block * block + jnp.argmax(inside, axis=0)).astype(jnp.int32)


def _rope_tables(
    positions: jax.Array,
    head_dim: int,
    base: float,
    scale: float,
    llama3: Llama3Rope | None = None,
) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim // 2] for HF's rotate-half RoPE; linear scaling divides angles,
    Llama 3's scaling divides the low frequencies only (`Llama3Rope`)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if llama3 is None:
        inv_freq = inv_freq / scale
    else:
        inv_freq = _llama3_inv_freq(inv_freq, scale, llama3)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    return jnp.cos(angles), jnp.sin(angles)


def _llama3_inv_freq(inv_freq: jax.Array, factor: float, r: Llama3Rope) -> jax.Array:
    """HF's `_compute_llama3_parameters`: wavelengths above original / low_freq_factor are
    scaled by 1 / factor, those below original / high_freq_factor kept, the band between
    interpolated smoothly."""
    old = float(r.original_max_positions)
    low_wavelen, high_wavelen = old / r.low_freq_factor, old / r.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, heads, Dh]; rotates the two halves of the head dimension.

    Written as x * [cos, cos] + [x2, x1] * [-sin, sin], bitwise the same as concatenating
    x1 cos - x2 sin and x2 cos + x1 sin, but XLA CPU fuses it into one loop instead of two
    fusions and a concatenate (measured 5% of a 64-row decode step's layers).
    """
    x1, x2 = jnp.split(x, 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    cos2 = jnp.concatenate([cos, cos], axis=-1)
    sin2 = jnp.concatenate([-sin, sin], axis=-1)
    return x * cos2 + jnp.concatenate([x2, x1], axis=-1) * sin2


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def _heads_major(x: jax.Array, heads_apart: bool = False) -> jax.Array:
    """[B, T, Kh, Dh] -> [B * Kh, T, Dh] (or [B, Kh, T, Dh]), the value cache layout."""
    b, t, kh, dh = x.shape
    x = jnp.swapaxes(x, 1, 2)
    return x if heads_apart else x.reshape(b * kh, t, dh)


def _keys_major(x: jax.Array, heads_apart: bool = False) -> jax.Array:
    """[B, T, Kh, Dh] -> [B * Kh, Dh, T] (or [B, Kh, Dh, T]), the key cache layout."""
    b, t, kh, dh = x.shape
    x = jnp.transpose(x, (0, 2, 3, 1))
    return x if heads_apart else x.reshape(b * kh, dh, t)


def _attend(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, softcap: float | None
) -> jax.Array:
    """Grouped-query attention core: q [B, T, H, Dh] (already scaled), keys k [*R, Dh, S],
    values v [*R, S, Dh] float32 (the cache layouts: R = (B * Kh,), or (B, Kh) with heads
    apart), mask [B, T, S] bool -> [B, T, H, Dh] float32.

    Both dots have the batch axes R (row, kv head), contract a dimension that is major in one
    operand and minor in the other, and read k and v as stored.
    """
    b, t, h, dh = q.shape
    rows = k.shape[:-2]  # R
    kh = math.prod(rows) // b
    g = h // kh
    n = len(rows)
    batch = (tuple(range(n)), tuple(range(n)))
    # Queries ordered (row, kv head) x (token, group): with one kv head (Gemma 3 270M / 1B)
    # both transposes below are free reshapes (a group-major order cost a fused transpose of
    # the output, measured 3x slower prefill attention at 64 rows x 24 tokens).
    q = jnp.transpose(q.reshape(b, t, kh, g, dh), (0, 2, 1, 3, 4)).reshape(*rows, t * g, dh)
    key_mask = jnp.broadcast_to(mask[:, None, :, None], (b, kh, t, 1, mask.shape[-1]))
    key_mask = key_mask.reshape(*rows, t, 1, -1)  # [*R, T, 1, S]
    scores = lax.dot_general(q, k, (((n + 1,), (n,)), batch))  # [*R, T*G, S]
    scores = _softcap(scores.reshape(*rows, t, g, -1), softcap)
    scores = jnp.where(key_mask, scores, jnp.float32(_MASK_VALUE))
    probs = jax.nn.softmax(scores, axis=-1).reshape(*rows, t * g, -1)
    out = lax.dot_general(probs, v, (((n + 1,), (n,)), batch))  # [*R, T*G, Dh]
    return jnp.transpose(out.reshape(b, kh, t, g, dh), (0, 2, 1, 3, 4)).reshape(b, t, h, dh)


class Attention(nnx.Module):
    """Grouped-query attention with optional q/k norms, logit soft cap and KV cache."""

    def __init__(self, config: GemmaConfig, *, dtype, rngs: nnx.Rngs):
        c = config
        bias = c.qkv_bias
        self.q_proj = Dense(c.d_model, c.q_dim, dtype=dtype, rngs=rngs, bias=bias)
        self.k_proj = Dense(c.d_model, c.kv_dim, dtype=dtype, rngs=rngs, bias=bias)
        self.v_proj = Dense(c.d_model, c.kv_dim, dtype=dtype, rngs=rngs, bias=bias)
        self.o_proj = Dense(c.q_dim, c.d_model, dtype=dtype, rngs=rngs)
        if c.use_qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_eps, dtype=dtype, offset=c.norm_offset)
            self.k_norm = RMSNorm(c.head_dim, c.rms_eps, dtype=dtype, offset=c.norm_offset)
        self.config = config

    def __call__(self, x, rope, mask, kv_cache, cache_index, lora, expert_ids, attend_cache=True):
        """x [B, T, D]; mask [B, T, S] bool; kv_cache (k [*R, Dh, S], v [*R, S, Dh] with
        R = (B * Kh,), or (B, Kh) with heads apart: `KVCache`) or None. attend_cache=False: the
        queries attend over this call's own T keys only (mask [B, T, T]), which is the same for
        a cache with nothing live before cache_index; the keys are still written to the cache;
        without a cache, they come back with R = (B * Kh,).

        Returns (out [B, T, D], (k, v) as stored: the updated cache or this call's keys).
        """
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x, lora.get("q_proj"), expert_ids).reshape(b, t, c.n_heads, c.head_dim)
        k = self.k_proj(x, lora.get("k_proj"), expert_ids).reshape(b, t, c.n_kv_heads, c.head_dim)
        v = self.v_proj(x, lora.get("v_proj"), expert_ids).reshape(b, t, c.n_kv_heads, c.head_dim)
        if c.use_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        heads_apart = kv_cache is not None and kv_cache[0].ndim == 4
        k, v = _keys_major(k, heads_apart), _heads_major(v, heads_apart)  # [*R, Dh|T, T|Dh]
        if kv_cache is None:
            stored = seen = (k, v)
        else:
            k_cache, v_cache = kv_cache
            rows = (0,) * (k_cache.ndim - 2)  # the start of each axis of R
            k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)  # attend to what is stored
            stored = (
                lax.dynamic_update_slice(k_cache, k, (*rows, 0, cache_index)),
                lax.dynamic_update_slice(v_cache, v, (*rows, cache_index, 0)),
            )
            seen = stored if attend_cache else (k, v)
        q = q * jnp.float32(c.query_pre_attn_scalar**-0.5)
        k, v = (a.astype(jnp.float32) for a in seen)
        out = _attend(q, k, v, mask, c.attn_logit_softcap)
        out = self.o_proj(out.reshape(b, t, c.q_dim), lora.get("o_proj"), expert_ids)
        return out, stored


_ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # Gemma
    "silu": jax.nn.silu,  # Llama, Mistral, Qwen
}


class MLP(nnx.Module):
    """Gated feed-forward: GELU (tanh approximation) for Gemma, SiLU for the others."""

    def __init__(self, config: GemmaConfig, *, dtype, rngs: nnx.Rngs):
        self.gate_proj = Dense(config.d_model, config.ffn_dim, dtype=dtype, rngs=rngs)
        self.up_proj = Dense(config.d_model, config.ffn_dim, dtype=dtype, rngs=rngs)
        self.down_proj = Dense(config.ffn_dim, config.d_model, dtype=dtype, rngs=rngs)
        self.activation = config.activation

    def __call__(self, x, lora, expert_ids):
        gate = self.gate_proj(x, lora.get("gate_proj"), expert_ids)
        up = self.up_proj(x, lora.get("up_proj"), expert_ids)
        h = _ACTIVATIONS[self.activation](gate) * up
        return self.down_proj(h, lora.get("down_proj"), expert_ids)


class Block(nnx.Module):
    """One decoder layer. Gemma 1 and the non-Gemma families have input_norm and pre_ffn_norm
    only (HF calls the latter post_attention_layernorm); Gemma 2/3 add post_attn_norm and
    post_ffn_norm."""

    def __init__(self, config: GemmaConfig, *, dtype, rngs: nnx.Rngs):
        d, eps = config.d_model, config.rms_eps
        norm = functools.partial(RMSNorm, d, eps, dtype=dtype, offset=config.norm_offset)
        self.input_norm = norm()
        self.attn = Attention(config, dtype=dtype, rngs=rngs)
        self.pre_ffn_norm = norm()
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)
        if config.use_post_norms:
            self.post_attn_norm = norm()
            self.post_ffn_norm = norm()
        self.use_post_norms = config.use_post_norms

    def __call__(self, x, rope, mask, kv_cache, cache_index, lora, expert_ids, attend_cache=True):
        h = self.input_norm(x)
        h, stored = self.attn(h, rope, mask, kv_cache, cache_index, lora, expert_ids, attend_cache)
        if self.use_post_norms:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.pre_ffn_norm(x), lora, expert_ids)
        if self.use_post_norms:
            h = self.post_ffn_norm(h)
        return x + h, stored


_NO_LORA: Mapping = {}


class Gemma(nnx.Module):
    """The decoder: embedder, `n_layers` blocks, final norm, the head (the embedding when tied,
    `lm_head` otherwise).

    Call: model(tokens [B, T] int32, positions [B, T] int32, cache=None, *, cache_index=0,
    lora=None, expert_ids=None, logits_at=None) -> (logits [B, T, V] float32, updated KVCache or
    None); with `logits_at` [B, K] (indices into the call's T tokens) logits are [B, K, V].
    `hidden` is the same pass without the head; `logits` and `greedy_tokens` are the head.
    With a cache, the T new keys/values (and their positions; -1 for padding) are written at
    slots [cache_index, cache_index + T) and the queries attend over all slots; without one they
    attend over the call's own tokens. A key is visible when pos_k >= 0, pos_k <= pos_q and,
    on local layers, pos_q - pos_k < sliding_window. The caller keeps cache_index + T <= S
    (dynamic_update_slice would clamp the start and overwrite live slots). `lora` is any object
    whose `.layers[i]` is a dict proj name -> {'a': [E, d_in, r], 'b': [E, r, d_out]};
    row b uses expert expert_ids[b].
    """

    def __init__(self, config: GemmaConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        self.config = config
        v, d = config.vocab_size, config.d_model
        self.embedder = Embedder(v, d, dtype=dtype, rngs=rngs, scale=config.scale_embeddings)
        self.layers = nnx.List(
            [Block(config, dtype=dtype, rngs=rngs) for _ in range(config.n_layers)]
        )
        self.final_norm = RMSNorm(d, config.rms_eps, dtype=dtype, offset=config.norm_offset)
        if not config.tie_embeddings:
            self.lm_head = Embedder(v, d, dtype=dtype, rngs=rngs, scale=False)

    @property
    def head(self) -> Embedder:
        """The output head's [V, D] table: the embedding when tied, else `lm_head`."""
        return self.embedder if self.config.tie_embeddings else self.lm_head

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache | None = None,
        *,
        cache_index: jax.Array | int = 0,
        lora=None,
        expert_ids: jax.Array | None = None,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        h, cache = self.hidden(
            tokens, positions, cache, cache_index=cache_index, lora=lora, expert_ids=expert_ids
        )
        if logits_at is not None:
            # The tied 262k-word head is most of the model's cost: a prefill needs it only at
            # the last prompt position, a fine-tuning loss only at answer tokens.
            h = jnp.take_along_axis(h, jnp.asarray(logits_at, jnp.int32)[..., None], axis=1)
        return self.logits(h), cache

    def logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states [..., D] -> logits [..., V] float32 (the head, soft cap)."""
        return _softcap(self.head.decode(h), self.config.final_logit_softcap)

    def greedy_tokens(self, h: jax.Array) -> jax.Array:
        """Final hidden states [B, D] -> argmax of each row's logits [B] int32, without
        materialising [B, V] logits (see `Embedder.greedy`)."""
        return self.head.greedy(h, self.config.final_logit_softcap)

    def screened_greedy_tokens(
        self,
        h: jax.Array,
        screen: screened_head.HeadScreen,
        rows_that_count: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(`greedy_tokens` chosen through a head screen, used_plain scalar bool)."""
        cap = self.config.final_logit_softcap
        return self.head.screened_greedy(h, screen, cap, rows_that_count)

    def hidden(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache | None = None,
        *,
        cache_index: jax.Array | int = 0,
        lora=None,
        expert_ids: jax.Array | None = None,
        attend_cache: bool = True,
    ) -> tuple[jax.Array, KVCache | None]:
        """The decoder without its head: (final-normed hidden states [B, T, D] float32, cache).

        attend_cache=False (a prefill into an empty cache): the tokens attend over this call's
        own keys only, not over all S slots, and are still written to the cache.
        """
        c = self.config
        positions = jnp.where(positions < 0, -1, positions).astype(jnp.int32)  # [B, T]
        key_pos = positions  # [B, S=T]
        if cache is not None:
            cache_index = jnp.asarray(cache_index, jnp.int32)
            cache_pos = lax.dynamic_update_slice(cache.pos, positions, (0, cache_index))
            key_pos = cache_pos if attend_cache else positions
        q_pos, k_pos = positions[:, :, None], key_pos[:, None, :]
        masks = {"global": (k_pos >= 0) & (k_pos <= q_pos)}  # [B, T, S]
        ropes = {
            "global": _rope_tables(
                positions, c.head_dim, c.rope_base_global, c.rope_scale_global, c.rope_llama3
            )
        }
        if "local" in c.layer_types:
            masks["local"] = masks["global"] & (q_pos - k_pos < c.sliding_window)
            ropes["local"] = _rope_tables(positions, c.head_dim, c.rope_base_local, 1.0)
        if expert_ids is not None:
            expert_ids = jnp.asarray(expert_ids, jnp.int32)

        x = self.embedder.encode(tokens)  # [B, T, D]
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            kind = c.layer_types[i]
            layer_lora = _NO_LORA if lora is None else (lora.layers[i] or _NO_LORA)
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, (k, v) = layer(
                x, ropes[kind], masks[kind], kv, cache_index, layer_lora, expert_ids, attend_cache
            )
            new_k.append(k)
            new_v.append(v)
        h = self.final_norm(x)  # [B, T, D]
        if cache is None:
            return h, None
        return h, KVCache(k=tuple(new_k), v=tuple(new_v), pos=cache_pos)


def abstract_model(config: GemmaConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params state of jax.ShapeDtypeStruct) without allocating any weights."""
    return nnx.split(nnx.eval_shape(lambda: Gemma(config, rngs=nnx.Rngs(0))))


def from_params(config: GemmaConfig, params: nnx.State) -> Gemma:
    """Rebuild the module from a params state (e.g. one returned by a loader)."""
    graphdef, _ = abstract_model(config)
    return nnx.merge(graphdef, params)


def head_table(params) -> jax.Array:
    """The output head's [V, D] table in a params state or pure dict: `lm_head`'s when the
    model has one, else the tied embedding (what a head screen is built from)."""
    owner = params["lm_head"] if "lm_head" in params else params["embedder"]
    return owner["embedding"][...]
