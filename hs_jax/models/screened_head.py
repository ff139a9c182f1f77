"""Exact greedy token choice from a float32 tied head, screened with a bfloat16 copy.

Greedy decoding needs only the argmax of h @ E^T, not the logits. With a float32 table the
head reads 4 bytes per weight every step (671 MB for Gemma 3's 262k x 640 table), the largest
single cost of a decode step at large batch on CPU. This module finds the same argmax from a
bfloat16 copy of the table (half the bytes, and the CPU's bf16 dot units) plus float32 scores
of a few candidates:

1. a = bf(h) @ bf(E)^T accumulated in float32: row-major [B, V] up to `ROW_MAJOR_MAX_ROWS`
   rows, vocabulary-major [V, B] above (XLA CPU's bf16 product alone, 2-core CPU: row-major
   19-24 ms vs 28 ms at 2-8 rows, vocabulary-major 78 ms vs 87 ms at 64 rows);
2. the K candidates with the largest a per row (top K blocks by block maximum, then the top K
   inside those blocks: a top-k over all V words is ~10x slower on XLA CPU);
3. float32 scores s of the candidates, gathered rows of the float32 table; the choice is the
   candidate with the largest s (soft cap applied), the smallest id on ties;
4. a certificate. For every word v, s_v - a_v = h . (E_v - bf(E_v)) + (h - bf(h)) . bf(E_v)
   plus the float32 rounding of both sums, so by Cauchy-Schwarz
   |s_v - a_v| <= eps = |h| r + |h - bf(h)| n + 2 gamma_d |h| n, with r = max_v |E_v - bf(E_v)|
   and n = the largest row norm of E or bf(E) (both measured once per table, `HeadScreen`) and
   gamma_d = d 2^-24 / (1 - d 2^-24); eps is taken 5% larger for the rounding of the norms.
   Every word outside the candidates has a_v <= a_out (the largest a left out), so
   s_v <= a_out + eps; when that is below the chosen score, the choice is the float32 argmax.

A row without a certificate (a near-tie, or a flat distribution: degenerate text whose 17 best
words lie within eps) gets the plain float32 head in the same step, through a while loop that
runs zero or one time: a `lax.cond` there made XLA CPU copy the table every step (37 ms of the
51 ms saved at 64 rows), the loop does not.

The result equals the float32 head's argmax up to float32 summation order (the plain path and
the candidates' dot sum in different orders, as transformers and XLA already do), which only
matters for logits tied to ~1e-6.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax

CANDIDATES = 16
MAX_BLOCK = 128
ROW_MAJOR_MAX_ROWS = 8
_SAFETY = 1.05  # room for the float32 rounding of the norms in eps
_ULP = 2.0**-24


@struct.dataclass
class HeadScreen:
    """A bfloat16 copy of a float32 head table and the norms its error bound needs."""

    table: jax.Array  # [V, D] bfloat16
    max_row_norm: jax.Array  # float32 scalar: max over rows of |E_v| and |bf(E_v)|
    max_residual_norm: jax.Array  # float32 scalar: max over rows of |E_v - bf(E_v)|


def make_head_screen(table: jax.Array) -> HeadScreen:
    """The screen of a float32 table [V, D] (build it once per set of weights, not per step)."""
    table = jnp.asarray(table)
    if table.dtype != jnp.float32:
        raise ValueError(f"the head screen is for float32 tables, got {table.dtype}")
    low = table.astype(jnp.bfloat16)
    back = low.astype(jnp.float32)

    def max_norm(m):
        return jnp.sqrt(jnp.max(jnp.sum(m * m, axis=1)))

    return HeadScreen(
        table=low,
        max_row_norm=jnp.maximum(max_norm(table), max_norm(back)),
        max_residual_norm=max_norm(table - back),
    )


def block_for(vocab_size: int, candidates: int = CANDIDATES) -> int | None:
    """Words per block: the largest power of two <= MAX_BLOCK that divides the vocabulary into
    more than `candidates` blocks (None when even blocks of two words are too few, e.g. an odd
    vocabulary: single-word blocks leave `screened_argmax` no (k+1)-th word inside the top k
    blocks to bound the words left out, and the plain head is used)."""
    block = MAX_BLOCK
    while block >= 2:
        if vocab_size % block == 0 and vocab_size // block > candidates:
            return block
        block //= 2
    return None


def error_bound(screen: HeadScreen, x: jax.Array) -> jax.Array:
    """eps [B]: |s_v - a_v| <= eps for every word v (module docstring, step 4)."""
    d = x.shape[-1]
    gamma = d * _ULP / (1 - d * _ULP)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1))
    dx = x - x.astype(jnp.bfloat16).astype(jnp.float32)
    dx_norm = jnp.sqrt(jnp.sum(dx * dx, axis=-1))
    n, r = screen.max_row_norm, screen.max_residual_norm
    return _SAFETY * (norm * r + dx_norm * n + 2 * gamma * norm * n)


def screened_argmax(
    table: jax.Array,
    screen: HeadScreen,
    x: jax.Array,
    softcap: Callable[[jax.Array], jax.Array],
    *,
    candidates: int = CANDIDATES,
) -> tuple[jax.Array, jax.Array]:
    """(argmax_v softcap(x @ table^T) per row [B] int32, certified [B] bool).

    table [V, D] float32; x [B, D] float32; softcap: the monotonic logit map. Where `certified`
    holds, the token is the float32 argmax (the first index on ties); elsewhere it is the best
    candidate, which may be wrong.
    """
    v, _ = table.shape
    b = x.shape[0]
    k = candidates
    block = block_for(v, k)
    if block is None:
        raise ValueError(f"a vocabulary of {v} words is too small for {k} screened candidates")
    dims = (((1,), (1,)), ((), ()))
    x = x.astype(jnp.float32)
    low = x.astype(jnp.bfloat16)
    if b <= ROW_MAJOR_MAX_ROWS:
        approx = lax.dot_general(low, screen.table, dims, preferred_element_type=jnp.float32)
        block_max = jnp.max(approx.reshape(b, v // block, block), axis=2)  # [B, V / block]
    else:
        approx = lax.dot_general(screen.table, low, dims, preferred_element_type=jnp.float32)
        block_max = jnp.max(approx.reshape(v // block, block, b), axis=1).T  # [B, V / block]
    top_blocks_value, top_blocks = _top_k(block_max, k + 1)  # [B, k + 1]
    words = top_blocks[:, :k, None] * block + jnp.arange(block, dtype=jnp.int32)
    words = words.reshape(b, k * block)  # [B, k * block], the words of the top k blocks
    if b <= ROW_MAJOR_MAX_ROWS:
        inside = jnp.take_along_axis(approx, words, axis=1)  # [B, k * block]
    else:
        inside = approx[words, jnp.arange(b)[:, None]]
    inside_value, inside_index = _top_k(inside, k + 1)
    ids = jnp.take_along_axis(words, inside_index[:, :k], axis=1)  # [B, k] candidate words
    exact = softcap(jnp.einsum("bkd,bd->bk", jnp.take(table, ids, axis=0), x))
    best = jnp.max(exact, axis=1)
    choice = jnp.min(jnp.where(exact == best[:, None], ids, v), axis=1).astype(jnp.int32)
    # Every word left out has approx <= max(k+1-th block max, k+1-th word inside the blocks).
    left_out = jnp.maximum(top_blocks_value[:, k], inside_value[:, k])
    return choice, softcap(left_out + error_bound(screen, x)) < best


def screened_or_plain_argmax(
    table: jax.Array,
    screen: HeadScreen,
    x: jax.Array,
    softcap: Callable[[jax.Array], jax.Array],
    plain: Callable[[jax.Array, jax.Array], jax.Array],
    rows_that_count: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(tokens [B] int32, used_plain scalar bool): the screened choice when every row that
    counts is certified, else `plain(table, x)` (the float32 head) for the whole batch.

    rows_that_count [B] bool (default all): rows whose token is discarded (finished or padding
    rows) need no certificate.
    """
    tokens, certified = screened_argmax(table, screen, x, softcap)
    if rows_that_count is not None:
        certified |= ~rows_that_count
    settled = jnp.all(certified)

    def run_plain(carry):
        return plain(table, x), jnp.bool_(True)

    tokens, _ = lax.while_loop(lambda c: ~c[1], run_plain, (tokens, settled))
    return tokens, ~settled


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """lax.top_k kept whole: when its consumers slice the result differently, XLA CPU turns it
    into a full sort of the row (measured 18 ms instead of 0.4 ms at 64 x 2048)."""
    return lax.optimization_barrier(lax.top_k(x, k))
