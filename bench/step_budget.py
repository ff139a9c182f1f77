"""Where a greedy decode step spends its time on this machine, against the machine's own peaks
measured in the same run: Gemma 3 270M's shapes by default, any preset's with --preset (random
weights of its shapes: Llama-3.2-1B's float32 layers read 3.9 GB a step, so at 8 rows the
question is how close to the streaming bandwidth the layers' matmuls get).

For 8 and 64 rows (88 cache slots: a 24-token prompt bucket plus 64 new tokens, the
bench/generate.py setting), float32 weights:

- layer matmuls: the seven projections of every layer, chained as the model chains them, each
  layer with its own weights (so they stream from memory as in a real step);
- layers: one real decode step of the model's `hidden` (norms, rope, cache update, attention and the
  matmuls), in a jitted loop of steps as the sampler runs it;
- head: the screened greedy head (bfloat16 screen, float32 certificate) in the same kind of loop.

Peaks, same run: float32 and bfloat16 2048^3 matmuls (FLOP/s) and the best of three streaming
kernels over 512 MB arrays (bytes/s, `_common.bandwidth`). 'floor' is max(FLOPs / matmul
peak, bytes / bandwidth) of the part. The table shows how far each part is from what the
hardware allows, and so how much any formulation change inside XLA can still buy.

  python -m bench.step_budget --repeats=7   # writes the 'step_budget' section of RESULTS.md
  python -m bench.step_budget --preset=llama3.2-1b   # section 'step_budget_llama3.2-1b'
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax import lax

from bench import _common
from hs_jax.models import gemma, screened_head
from hs_jax.models.convert import init_params
from hs_jax.models.gemma_config import PRESETS

_REPEATS = flags.DEFINE_integer("repeats", 7, "timed calls per part (best is reported)")
_WRITE = flags.DEFINE_bool("write", True, "write the section of bench/RESULTS.md")
_PRESET = flags.DEFINE_enum(
    "preset", "gemma3-270m", sorted(PRESETS), "the shapes (random weights of them)"
)

DEFAULT = "gemma3-270m"  # its section keeps the name 'step_budget'
CFG = PRESETS[DEFAULT]  # set from --preset in main
SLOTS, PROMPT, STEPS = 88, 24, 16


def _best(fn, *args) -> float:
    return _common.best_time(fn, *args, repeats=_REPEATS.value)


def peaks() -> dict[str, float]:
    """Best float32 / bfloat16 matmul FLOP/s and streaming bandwidth (bytes/s)."""
    return {
        "f32": _common.matmul_rate(2048, "float32", _REPEATS.value),
        "bf16": _common.matmul_rate(2048, "bfloat16", _REPEATS.value),
        "bandwidth": max(_common.bandwidth(1 << 29, _REPEATS.value).values()),
    }


def _layer_weights(key):
    c = CFG
    shapes = {
        "q": (c.d_model, c.q_dim), "k": (c.d_model, c.kv_dim), "v": (c.d_model, c.kv_dim),
        "o": (c.q_dim, c.d_model), "gate": (c.d_model, c.ffn_dim), "up": (c.d_model, c.ffn_dim),
        "down": (c.ffn_dim, c.d_model),
    }  # fmt: skip
    keys = jax.random.split(key, len(shapes))
    pairs = zip(shapes.items(), keys, strict=True)
    return {name: 0.02 * jax.random.normal(k, shape) for (name, shape), k in pairs}


def layer_matmuls(rows: int) -> tuple[float, float, float]:
    """(seconds per step, FLOPs, weight bytes) of every layer's projections alone."""
    weights = [_layer_weights(jax.random.key(i)) for i in range(CFG.n_layers)]

    @jax.jit
    def step(weights, x):
        for w in weights:
            q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
            x = x + (q * jnp.tile(k + v, (1, CFG.q_dim // CFG.kv_dim))) @ w["o"]
            x = x + (jax.nn.gelu(x @ w["gate"]) * (x @ w["up"])) @ w["down"]
        return x

    x = jax.random.normal(jax.random.key(99), (rows, CFG.d_model))
    params = sum(a.size for w in weights for a in w.values())
    return _best(step, weights, x), 2 * rows * params, 4 * params


def decode_layers(rows: int, params) -> float:
    """Seconds per step of the model's `hidden` for one token per row over SLOTS slots."""

    @jax.jit
    def run(params, cache):
        model = gemma.from_params(CFG, params)

        def body(i, carry):
            tok, cache, acc = carry
            pos = jnp.full((rows, 1), PROMPT, jnp.int32) + i
            h, cache = model.hidden(tok[:, None], pos, cache, cache_index=PROMPT + i)
            h = h[:, -1]
            tok = jnp.abs(h[:, 0] * 1e3).astype(jnp.int32) % CFG.vocab_size
            return tok, cache, acc + h[:, 0]

        init = (jnp.arange(rows, dtype=jnp.int32), cache, jnp.zeros((rows,)))
        return lax.fori_loop(0, STEPS, body, init)[2]

    cache = gemma.KVCache.init(CFG, rows, SLOTS)
    live = jnp.where(jnp.arange(SLOTS) < PROMPT, jnp.arange(SLOTS), -1)
    cache = gemma.KVCache(
        k=tuple(jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(cache.k)),
        v=tuple(jax.random.normal(jax.random.key(50 + i), x.shape) for i, x in enumerate(cache.v)),
        pos=jnp.broadcast_to(live, (rows, SLOTS)).astype(jnp.int32),
    )
    return _best(run, params, cache) / STEPS


def screened_head_step(rows: int, rng) -> float:
    emb = gemma.Embedder(CFG.vocab_size, CFG.d_model, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(emb)
    screen = jax.jit(screened_head.make_head_screen)(emb.embedding[...])
    loop = _common.head_loop(graphdef, True)
    h = jnp.asarray(20.0 * rng.normal(size=(rows, CFG.d_model)), jnp.float32)
    return _best(loop, state, screen, h) / _common.HEAD_STEPS


def main(argv):
    del argv
    global CFG
    CFG = PRESETS[_PRESET.value]
    name = _PRESET.value
    rng = np.random.default_rng(0)
    peak = peaks()
    params = init_params(CFG.replace(param_dtype="float32"), seed=0)
    head_flops = 2 * CFG.vocab_size * CFG.d_model
    head_bytes = 2 * CFG.vocab_size * CFG.d_model  # the bfloat16 screen table
    layers = f"{CFG.n_layers} x 7, float32"
    table = [
        "| rows | part | ms per step | GFLOP | MB read | GFLOP/s | GB/s | floor ms | "
        "time / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(rows, part, seconds, flops, nbytes, rate):
        floor = max(flops / rate, nbytes / peak["bandwidth"])
        table.append(
            f"| {rows} | {part} | {seconds * 1e3:.1f} | {flops / 1e9:.2f} | {nbytes / 1e6:.0f} | "
            f"{flops / seconds / 1e9:.0f} | {nbytes / seconds / 1e9:.1f} | {floor * 1e3:.1f} | "
            f"{seconds / floor:.2f}x |"
        )
        return floor

    for rows in (8, 64):
        mm_s, mm_flops, mm_bytes = layer_matmuls(rows)
        layers_s = decode_layers(rows, params)
        head_s = screened_head_step(rows, rng)
        row(rows, f"layer matmuls alone ({layers})", mm_s, mm_flops, mm_bytes, peak["f32"])
        floor = row(
            rows, "decode step without head (`hidden`, float32)", layers_s, mm_flops,
            mm_bytes, peak["f32"],
        )  # fmt: skip
        floor += row(
            rows, "screened greedy head (bfloat16 screen)", head_s, rows * head_flops,
            head_bytes, peak["bf16"],
        )  # fmt: skip
        total = layers_s + head_s
        table.append(
            f"| {rows} | step = layers + head | {total * 1e3:.1f} | | | | | {floor * 1e3:.1f} | "
            f"{total / floor:.2f}x |"
        )
    description = (
        f"{name} shapes, {SLOTS} cache slots ({PROMPT}-token prompt bucket + 64 new "
        "tokens, as in the generation benchmark), float32 weights, random values. Peaks "
        f"measured in the same run: float32 matmul {peak['f32'] / 1e9:.0f} GFLOP/s, bfloat16 "
        f"matmul {peak['bf16'] / 1e9:.0f} GFLOP/s (2048^3), streaming bandwidth "
        f"{peak['bandwidth'] / 1e9:.1f} GB/s (best of a numpy copy, a jitted scale and a jitted "
        "triad over 512 MB). floor = max(FLOPs / matmul peak, bytes / bandwidth); the layers' "
        "floor counts their matmuls only (attention, norms and the cache add little work). The "
        f"head reads the {head_bytes / 1e6:.0f} MB bfloat16 screen table; its float32 "
        "certificate gathers 16 rows per token."
    )
    title = "Decode step budget: each part against this machine's peaks"
    text = "\n".join([_common.header(title, description, "jax", "numpy"), "", *table])
    print(text)
    if _WRITE.value:
        _common.write_section("step_budget" + ("" if name == DEFAULT else f"_{name}"), text)


if __name__ == "__main__":
    app.run(main)
