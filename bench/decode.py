"""The decode step's parts, hs_jax's current formulation vs the one it replaced, in one run.

Each pair computes the same values on the real Gemma 3 270M shapes (float32); the replaced
formulations are kept here only as the baselines of the figures the README quotes:

- greedy head: `argmax(Embedder.decode(h))` (row-major logits, XLA's argmax) vs
  `Embedder.greedy` (vocabulary-major logits, blocked argmax);
- screened greedy head, in a jitted loop: `Embedder.greedy` vs `Embedder.screened_greedy`
  (bfloat16 candidates + float32 certificate, `hs_jax/models/screened_head.py`);
- attention core of one decode step, 64 rows x 512 cache slots: query-major einsums over a
  [B, S, Kh, Dh] cache vs hs_jax's `_attend` over its cache (keys [B * Kh, Dh, S], values
  [B * Kh, S, Dh]);
- a decode loop of 6 layers' cache update + attention (lax.fori_loop, cache donated): the
  [B, S, Kh, Dh] layout (XLA copies the cache every step) vs hs_jax's.

It reads model internals (`gemma._attend`, `_keys_major`, `_heads_major`): it measures them.
Times are best of the repeats after a warm-up call.

  python -m bench.decode            # writes the 'decode' section of bench/RESULTS.md
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax import lax

from bench import _common
from hs_jax.models import gemma, screened_head
from hs_jax.models.gemma_config import PRESETS

_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per variant (best is reported)")
_WRITE = flags.DEFINE_bool("write", True, "write the section of bench/RESULTS.md")

CFG = PRESETS["gemma3-270m"]
ROWS, SLOTS, LOOP_LAYERS, LOOP_STEPS = 64, 512, 6, 20


def _best(fn, *args) -> float:
    return _common.best_time(fn, *args, repeats=_REPEATS.value)


def _old_attend(q, k, v, mask):
    """The replaced core: query-major einsums over a [B, S, Kh, Dh] cache."""
    b, t, h, dh = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, h // kh, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k)
    scores = jnp.where(mask[:, None, None], scores, -1e30)
    out = jnp.einsum("bkgts,bskd->btkgd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(b, t, h, dh)


def _embedder():
    emb = gemma.Embedder(CFG.vocab_size, CFG.d_model, dtype=jnp.float32, rngs=nnx.Rngs(0))
    return emb, *nnx.split(emb)


def head_rows(rng) -> list[dict]:
    _, graphdef, state = _embedder()
    old = jax.jit(lambda s, h: jnp.argmax(nnx.merge(graphdef, s).decode(h), axis=-1))
    new = jax.jit(lambda s, h: nnx.merge(graphdef, s).greedy(h))
    rows = []
    for batch in (1, 8, 64):
        h = jnp.asarray(rng.normal(size=(batch, CFG.d_model)), jnp.float32)
        same = bool(np.array_equal(old(state, h), new(state, h)))
        rows.append(
            {"part": f"greedy head, {batch} rows", "old": _best(old, state, h),
             "new": _best(new, state, h), "same": same}
        )  # fmt: skip
    return rows


def screen_rows(rng) -> list[dict]:
    emb, graphdef, state = _embedder()
    screen = jax.jit(screened_head.make_head_screen)(emb.embedding[...])
    plain, screened = _common.head_loop(graphdef, False), _common.head_loop(graphdef, True)
    steps = _common.HEAD_STEPS
    rows = []
    for batch in (1, 2, 8, 16, 64):
        h = jnp.asarray(20.0 * rng.normal(size=(batch, CFG.d_model)), jnp.float32)
        want, _ = plain(state, screen, h)
        got, certified = screened(state, screen, h)
        same = bool(np.array_equal(want, got))
        rows.append(
            {"part": f"screened greedy head in a loop, {batch} rows, per step",
             "old": _best(plain, state, screen, h) / steps,
             "new": _best(screened, state, screen, h) / steps,
             "same": f"{same}, certified {bool(certified)}"}
        )  # fmt: skip
    return rows


def attention_row(rng) -> dict:
    b, s, kh, dh, h = ROWS, SLOTS, CFG.n_kv_heads, CFG.head_dim, CFG.n_heads
    q = jnp.asarray(rng.normal(size=(b, 1, h, dh)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, kh, dh)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, kh, dh)), jnp.float32)
    mask = jnp.asarray(rng.random((b, 1, s)) > 0.2)
    k3, v3 = gemma._keys_major(k), gemma._heads_major(v)
    old = jax.jit(_old_attend)
    new = jax.jit(lambda q, k, v, m: gemma._attend(q, k, v, m, None))
    err = float(jnp.max(jnp.abs(old(q, k, v, mask) - new(q, k3, v3, mask))))
    return {
        "part": f"attention core, {b} rows x {s} slots, 1 layer",
        "old": _best(old, q, k, v, mask),
        "new": _best(new, q, k3, v3, mask),
        "same": f"max abs diff {err:.1e}",
    }


def _cache_loop(old_layout: bool):
    """A jitted decode loop: per layer, write this step's key/value, then attend over the cache."""
    b, s, kh, dh, h = ROWS, SLOTS, CFG.n_kv_heads, CFG.head_dim, CFG.n_heads
    mask = jnp.ones((b, 1, s), bool)

    def body(step, carry):
        ks, vs, x = carry
        new_k, new_v = [], []
        for i in range(LOOP_LAYERS):
            kv = jnp.tanh(x[:, : kh * dh]).reshape(b, 1, kh, dh)  # [B, 1, Kh, Dh]
            q = jnp.tile(x[:, None, None, :dh], (1, 1, h, 1))  # [B, 1, H, Dh]
            if old_layout:
                k = lax.dynamic_update_slice(ks[i], kv, (0, step, 0, 0))
                v = lax.dynamic_update_slice(vs[i], kv, (0, step, 0, 0))
                out = _old_attend(q, k, v, mask)
            else:
                k = lax.dynamic_update_slice(ks[i], gemma._keys_major(kv), (0, 0, step))
                v = lax.dynamic_update_slice(vs[i], gemma._heads_major(kv), (0, step, 0))
                out = gemma._attend(q, k, v, mask, None)
            x = x + 1e-3 * out.reshape(b, -1)[:, : x.shape[1]]
            new_k.append(k)
            new_v.append(v)
        return tuple(new_k), tuple(new_v), x

    def run(ks, vs, x):
        return lax.fori_loop(0, LOOP_STEPS, body, (ks, vs, x))

    return jax.jit(run, donate_argnums=(0, 1))


def _time_cache_loop(old_layout: bool) -> tuple[float, int, np.ndarray]:
    """(seconds per layer and step, whole-cache copies in the HLO, final x)."""
    fn = _cache_loop(old_layout)
    b, s, kh, dh = ROWS, SLOTS, CFG.n_kv_heads, CFG.head_dim
    shapes = [(b, s, kh, dh)] * 2 if old_layout else [(b * kh, dh, s), (b * kh, s, dh)]

    def make():
        return tuple(tuple(jnp.zeros(shape) for _ in range(LOOP_LAYERS)) for shape in shapes)

    x = jnp.ones((ROWS, max(kh * dh, dh)), jnp.float32)
    hlo = fn.lower(*make(), x).compile().as_text()
    names = {"f32[" + ",".join(map(str, shape)) + "]" for shape in shapes}
    copies = sum(any(n in ln for n in names) and " copy(" in ln for ln in hlo.splitlines())
    best, out = float("inf"), None
    for _ in range(3):
        ks, vs = make()
        start = time.perf_counter()
        out = jax.block_until_ready(fn(ks, vs, x))[2]
        best = min(best, time.perf_counter() - start)
    return best / (LOOP_STEPS * LOOP_LAYERS), copies, np.asarray(out)


def cache_row() -> dict:
    t_old, c_old, x_old = _time_cache_loop(True)
    t_new, c_new, x_new = _time_cache_loop(False)
    return {
        "part": f"cache update + attention per layer and step ({ROWS} rows x {SLOTS} slots, "
        "loop), vs [B, S, Kh, Dh] cache",
        "old": t_old,
        "new": t_new,
        "same": f"cache copies in the HLO: {c_old} -> {c_new}; max abs diff "
        f"{float(np.max(np.abs(x_old - x_new))):.1e}",
    }


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    rows = [*head_rows(rng), *screen_rows(rng), attention_row(rng), cache_row()]
    description = (
        "Gemma 3 270M shapes, float32. Greedy head = token choice from the final hidden states "
        "(row-major logits + XLA argmax vs vocabulary-major logits + blocked argmax; 'check' = "
        "identical tokens). Screened greedy head = the plain float32 head above vs "
        "`screened_head` (bfloat16 candidates, float32 certificate), both inside a jitted loop "
        f"of {_common.HEAD_STEPS} steps that feeds each token back, as the sampler runs them; "
        "'check' = identical tokens, and whether every step was certified (a step with an "
        "uncertified row also runs the plain head). Attention core = one decode step of one "
        "layer (query-major einsums over [B, S, Kh, Dh] vs batched dots over keys "
        "[B * Kh, Dh, S] and values [B * Kh, S, Dh]). Cache loop = a jitted fori_loop of "
        f"{LOOP_STEPS} steps x {LOOP_LAYERS} layers doing only the cache update and the "
        "attention, cache donated, against the [B, S, Kh, Dh] cache; 'check' counts whole-cache "
        "copies in its compiled HLO."
    )
    table = [
        "| part | replaced formulation ms | hs_jax now ms | speed-up | check |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['part']} | {r['old'] * 1e3:.2f} | {r['new'] * 1e3:.2f} | "
            f"{r['old'] / r['new']:.2f}x | {r['same']} |"
        )
    title = "Decode step: current formulation vs the one it replaced"
    text = "\n".join([_common.header(title, description, "jax", "numpy"), "", *table])
    print(text)
    if _WRITE.value:
        _common.write_section("decode", text)


if __name__ == "__main__":
    app.run(main)
