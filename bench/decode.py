"""The decode step's parts, hs_jax's current formulation vs the one it replaced, in one run.

Each pair computes the same values on the real Gemma 3 270M shapes (float32, CPU); the earlier
formulations are kept here as the baselines:

- greedy head: `argmax(h @ E^T)` (row-major logits, XLA's argmax) vs `Embedder.greedy`
  (vocabulary-major logits, blocked argmax);
- screened greedy head, in a jitted loop: `Embedder.greedy` vs `Embedder.screened_greedy`
  (bfloat16 candidates + float32 certificate, `hs_jax/models/screened_head.py`);
- attention core of one decode step, 64 rows x 512 cache slots: the query-major einsum over a
  [B, S, Kh, Dh] cache vs `_attend` over hs_jax's cache (keys [B * Kh, Dh, S], values
  [B * Kh, S, Dh]);
- a decode loop of 6 layers' cache update + attention (lax.fori_loop, cache donated): the
  [B, S, Kh, Dh] layout (XLA copies the cache every step) vs hs_jax's, and the layout hs_jax
  used before (keys [B * Kh, S, Dh], scores with the keys as the left operand) vs hs_jax's.

Times are best of the repeats after a warm-up call.

  python bench/decode.py            # writes the 'decode' section of bench/RESULTS.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from hs_jax.models import gemma, screened_head  # noqa: E402
from hs_jax.models.config import PRESETS  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per variant (best is reported)")
_WRITE = flags.DEFINE_bool("write", True, "Write the section of bench/RESULTS.md.")

CFG = PRESETS["gemma3-270m"]
ROWS, SLOTS, LOOP_LAYERS, LOOP_STEPS = 64, 512, 6, 20
HEAD_STEPS = 8


def _best(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _old_attend(q, k, v, mask):
    """The replaced core: query-major einsums over a [B, S, Kh, Dh] cache."""
    b, t, h, dh = q.shape
    kh = k.shape[2]
    q = q.reshape(b, t, kh, h // kh, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k)
    scores = jnp.where(mask[:, None, None], scores, -1e30)
    out = jnp.einsum("bkgts,bskd->btkgd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(b, t, h, dh)


def _keys_left_attend(q, k, v, mask):
    """The replaced decode core over keys [B * Kh, S, Dh]: scores key-major, keys on the left
    (with the keys on the right XLA CPU transposes the cache every step)."""
    b, _, h, dh = q.shape
    kh = k.shape[0] // b
    q = q.reshape(b * kh, h // kh, dh)
    scores = lax.dot_general(k, q, (((2,), (2,)), ((0,), (0,))))  # [BK, S, G]
    key_mask = jnp.broadcast_to(mask[:, None], (b, kh, 1, mask.shape[-1])).reshape(b * kh, -1)
    scores = jnp.where(key_mask[:, :, None], scores, -1e30)
    probs = jnp.swapaxes(jax.nn.softmax(scores, axis=1), 1, 2)  # [BK, G, S]
    out = lax.dot_general(probs, v, (((2,), (1,)), ((0,), (0,))))  # [BK, G, Dh]
    return out.reshape(b, 1, h, dh)


def head_rows(rng) -> list[dict]:
    emb = gemma.Embedder(CFG.vocab_size, CFG.d_model, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(emb)
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


def _head_loop(graphdef, screened: bool):
    """HEAD_STEPS greedy steps feeding each chosen token back (as a decode loop does), so the
    head runs inside a while loop as in the sampler; returns the tokens and whether every step
    was certified (no step needed the plain head)."""

    def run(state, screen, h):
        emb = nnx.merge(graphdef, state)
        w = jnp.eye(h.shape[1], dtype=h.dtype) * 0.5

        def body(i, carry):
            h, toks, ok = carry
            if screened:
                tok, used_plain = emb.screened_greedy(h, screen)
                ok = ok & ~used_plain
            else:
                tok = emb.greedy(h)
            h = jnp.tanh(h @ w) * 20.0 + emb.embedding[...][tok]
            return h, toks.at[i].set(tok), ok

        toks = jnp.zeros((HEAD_STEPS, h.shape[0]), jnp.int32)
        return lax.fori_loop(0, HEAD_STEPS, body, (h, toks, jnp.bool_(True)))[1:]

    return jax.jit(run)


def screen_rows(rng) -> list[dict]:
    emb = gemma.Embedder(CFG.vocab_size, CFG.d_model, dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(emb)
    screen = jax.jit(screened_head.make_head_screen)(emb.embedding[...])
    plain, screened = _head_loop(graphdef, False), _head_loop(graphdef, True)
    rows = []
    for batch in (1, 2, 8, 16, 64):
        h = jnp.asarray(20.0 * rng.normal(size=(batch, CFG.d_model)), jnp.float32)
        want, _ = plain(state, screen, h)
        got, certified = screened(state, screen, h)
        same = bool(np.array_equal(want, got))
        rows.append(
            {"part": f"screened greedy head in a loop, {batch} rows, per step",
             "old": _best(plain, state, screen, h) / HEAD_STEPS,
             "new": _best(screened, state, screen, h) / HEAD_STEPS,
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


def _cache_loop(layout: str, slots: int):
    """A jitted decode loop: per layer, write this step's key/value, then attend over the cache."""
    b, s, kh, dh, h = ROWS, slots, CFG.n_kv_heads, CFG.head_dim, CFG.n_heads
    mask = jnp.ones((b, 1, s), bool)

    def body(step, carry):
        ks, vs, x = carry
        new_k, new_v = [], []
        for i in range(LOOP_LAYERS):
            kv = jnp.tanh(x[:, : kh * dh]).reshape(b, 1, kh, dh)  # [B, 1, Kh, Dh]
            q = jnp.tile(x[:, None, None, :dh], (1, 1, h, 1))  # [B, 1, H, Dh]
            if layout == "old":
                k = lax.dynamic_update_slice(ks[i], kv, (0, step, 0, 0))
                v = lax.dynamic_update_slice(vs[i], kv, (0, step, 0, 0))
                out = _old_attend(q, k, v, mask)
            elif layout == "keys_left":
                k = lax.dynamic_update_slice(ks[i], gemma._heads_major(kv), (0, step, 0))
                v = lax.dynamic_update_slice(vs[i], gemma._heads_major(kv), (0, step, 0))
                out = _keys_left_attend(q, k, v, mask)
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


def _cache_shapes(layout: str, slots: int) -> tuple[tuple, tuple]:
    """(key shape, value shape) of one layer's cache."""
    b, kh, dh = ROWS, CFG.n_kv_heads, CFG.head_dim
    if layout == "old":
        return (b, slots, kh, dh), (b, slots, kh, dh)
    if layout == "keys_left":
        return (b * kh, slots, dh), (b * kh, slots, dh)
    return (b * kh, dh, slots), (b * kh, slots, dh)


def _time_cache_loop(layout: str, slots: int) -> tuple[float, int, np.ndarray]:
    """(seconds per layer and step, whole-cache copies in the HLO, final x)."""
    fn = _cache_loop(layout, slots)
    k_shape, v_shape = _cache_shapes(layout, slots)

    def make():
        ks = tuple(jnp.zeros(k_shape) for _ in range(LOOP_LAYERS))
        return ks, tuple(jnp.zeros(v_shape) for _ in range(LOOP_LAYERS))

    x = jnp.ones((ROWS, max(CFG.n_kv_heads * CFG.head_dim, CFG.head_dim)), jnp.float32)
    hlo = fn.lower(*make(), x).compile().as_text()
    names = {"f32[" + ",".join(map(str, shape)) + "]" for shape in (k_shape, v_shape)}
    copies = sum(any(n in ln for n in names) and " copy(" in ln for ln in hlo.splitlines())
    best, out = float("inf"), None
    for _ in range(3):
        ks, vs = make()
        start = time.perf_counter()
        out = jax.block_until_ready(fn(ks, vs, x))[2]
        best = min(best, time.perf_counter() - start)
    return best / (LOOP_STEPS * LOOP_LAYERS), copies, np.asarray(out)


def cache_rows() -> list[dict]:
    rows = []
    for old, slots in (("old", SLOTS), ("keys_left", 88), ("keys_left", SLOTS)):
        t_old, c_old, x_old = _time_cache_loop(old, slots)
        t_new, c_new, x_new = _time_cache_loop("new", slots)
        what = "[B, S, Kh, Dh] cache" if old == "old" else "keys [B * Kh, S, Dh]"
        rows.append(
            {"part": f"cache update + attention per layer and step ({ROWS} rows x {slots} "
                     f"slots, loop), vs {what}",
             "old": t_old, "new": t_new,
             "same": f"cache copies in the HLO: {c_old} -> {c_new}; max abs diff "
                     f"{float(np.max(np.abs(x_old - x_new))):.1e}"}
        )  # fmt: skip
    return rows


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    rows = [*head_rows(rng), *screen_rows(rng), attention_row(rng), *cache_rows()]
    table = [
        "| part | replaced formulation ms | hs_jax now ms | speed-up | check |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['part']} | {r['old'] * 1e3:.2f} | {r['new'] * 1e3:.2f} | "
            f"{r['old'] / r['new']:.2f}x | {r['same']} |"
        )
    text = "\n".join(
        [
            "## Decode step: current formulation vs the one it replaced",
            "",
            "Gemma 3 270M shapes, float32. Greedy head = token choice from the final hidden "
            "states (row-major logits + XLA argmax vs vocabulary-major logits + blocked argmax; "
            "'check' = identical tokens). Screened greedy head = the plain float32 head above vs "
            "`screened_head` (bfloat16 candidates, float32 certificate), both inside a jitted "
            f"loop of {HEAD_STEPS} steps that feeds each token back, as the sampler runs them; "
            "'check' = identical tokens, and whether every step was certified (a step with an "
            "uncertified row also runs the plain head). Attention core = one decode step of "
            "one layer "
            "(query-major einsums over [B, S, Kh, Dh] vs batched dots over keys [B * Kh, Dh, S] "
            "and values [B * Kh, S, Dh]). Cache loop = a jitted fori_loop of "
            f"{LOOP_STEPS} steps x {LOOP_LAYERS} layers doing only the cache update and the "
            "attention, cache donated, against the [B, S, Kh, Dh] cache and against the layout "
            "hs_jax used before (keys [B * Kh, S, Dh], scores with the keys as the left operand); "
            "'check' counts whole-cache copies in its compiled HLO.",
            "",
            "Command: `python bench/decode.py`",
            "",
            f"Machine: {_common.machine_line('jax', 'numpy')}",
            "",
            *table,
        ]
    )
    print(text)
    if _WRITE.value:
        _common.write_section("decode", text)


if __name__ == "__main__":
    app.run(main)
