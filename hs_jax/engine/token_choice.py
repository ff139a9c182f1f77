"""Token choice strategies: how the decode loop picks each row's next token.

The decode loop (hs_jax.engine.sampling) asks one strategy object for the next tokens and knows
nothing of greedy or random choice. A strategy is a `flax.struct` pytree passed to the jitted
loop as an ordinary argument: its class is part of the compiled program, its arrays (a
temperature, a head screen) are data, so a new temperature or top-p value reuses the program,
while each kind of choice compiles its own, as it must (only sampling needs [B, V] logits).

- `Greedy`: the argmax, from the vocabulary-major head without [B, V] logits
  (`gemma.Gemma.greedy_tokens`).
- `ScreenedGreedy`: the same tokens through a bfloat16 screen of the float32 head
  (hs_jax.models.screened_head), which falls back to the plain head in steps it cannot certify.
- `RandomSampling`, `TopPSampling`: temperature sampling, over the nucleus for the latter.
- `MixtureGreedy`: the greedy token of a weighted mixture of several rows' distributions, the
  same token for every row of a group (an ensemble of experts answering one prompt together,
  `Engine.generate_ensemble`).

`for_call` picks the strategy of a generate call; `HeadScreenCache` decides when a greedy call
is worth the screen and builds the screen once per set of weights.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from hs_jax.models import gemma, screened_head


class TokenChoice(abc.ABC):
    """The next token of every row, from the final hidden states (and logits if needed)."""

    # Whether the loop must compute the [B, V] logits and hand them to the strategy.
    needs_logits: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(
        self,
        model: gemma.Gemma,
        hidden: jax.Array,
        logits: jax.Array | None,
        key: jax.Array,
        rows_that_count: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        """(tokens [B] int32, 1 if the plain head ran as a fallback this step else 0 [] int32).

        hidden: [B, D] final hidden states; logits: [B, V] float32 when `needs_logits`, else
        None; key: this step's random key; rows_that_count: [B] bool, False for rows whose
        token is discarded (finished or padding rows).
        """


@struct.dataclass
class Greedy(TokenChoice):
    """The first argmax of each row's logits, computed without materialising them."""

    def __call__(self, model, hidden, logits, key, rows_that_count):
        return model.greedy_tokens(hidden), jnp.int32(0)


@struct.dataclass
class ScreenedGreedy(TokenChoice):
    """`Greedy`'s tokens through a screen of the float32 head (same tokens, fewer bytes read)."""

    screen: screened_head.HeadScreen

    def __call__(self, model, hidden, logits, key, rows_that_count):
        tokens, used_plain = model.screened_greedy_tokens(hidden, self.screen, rows_that_count)
        return tokens, used_plain.astype(jnp.int32)


@struct.dataclass
class RandomSampling(TokenChoice):
    """A draw from softmax(logits / temperature); temperature: [] float32 > 0."""

    temperature: jax.Array
    needs_logits: ClassVar[bool] = True

    def __call__(self, model, hidden, logits, key, rows_that_count):
        scaled = logits / self.temperature
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32), jnp.int32(0)


@struct.dataclass
class TopPSampling(TokenChoice):
    """`RandomSampling` restricted to the nucleus of mass `top_p` ([] float32 in (0, 1))."""

    temperature: jax.Array
    top_p: jax.Array
    needs_logits: ClassVar[bool] = True

    def __call__(self, model, hidden, logits, key, rows_that_count):
        scaled = top_p_logits(logits / self.temperature, self.top_p)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32), jnp.int32(0)


FUSIONS = ("probs", "logits")


@struct.dataclass
class MixtureGreedy(TokenChoice):
    """One greedy token per group of rows, chosen from the group's mixture and fed to each row.

    weights: [B] float32 >= 0, each row's weight inside its group (a group's weights sum to 1);
    group: [B] int32 in [0, B), the row's group (padding rows each form a group of their own).
    fusion: 'probs' mixes the rows' next-token probabilities, p(v) = sum_r w_r softmax(s_r)(v);
      'logits' mixes their logits, softmax(sum_r w_r s_r), Pack of LLMs' fusion (static: the
      two compile to two programs).
    """

    weights: jax.Array
    group: jax.Array
    fusion: str = struct.field(pytree_node=False, default="probs")
    needs_logits: ClassVar[bool] = True

    def __call__(self, model, hidden, logits, key, rows_that_count):
        mixed = mixture_scores(logits, self.weights, self.group, self.fusion)  # [B groups, V]
        per_group = jnp.argmax(mixed, axis=-1).astype(jnp.int32)  # [B] first index on ties
        return per_group[self.group], jnp.int32(0)


def mixture_scores(
    logits: jax.Array, weights: jax.Array, group: jax.Array, fusion: str = "probs"
) -> jax.Array:
    """Scores [B, V] of each group's mixture (row g: group g; groups without rows: -inf or 0),
    whose argmax is the mixture's greedy token.

    'probs': log sum_r w_r softmax(s_r), as a log-sum-exp of log_softmax(s_r) + log w_r (a row of
    weight 0 adds exactly nothing, so one row of weight 1 gives its own log-softmax unchanged);
    'logits': sum_r w_r s_r. logits: [B, V] float32; weights: [B]; group: [B] int32 in [0, B).
    """
    rows = logits.shape[0]
    if fusion == "logits":
        return jax.ops.segment_sum(weights[:, None] * logits, group, num_segments=rows)
    if fusion != "probs":
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    x = jax.nn.log_softmax(logits, axis=-1) + jnp.log(weights)[:, None]  # [B, V]
    top = jax.ops.segment_max(x, group, num_segments=rows)  # [B, V], -inf for empty groups
    safe_top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jax.ops.segment_sum(jnp.exp(x - safe_top[group]), group, num_segments=rows)
    return safe_top + jnp.log(total)


def top_p_logits(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Masks (to -inf) tokens outside the nucleus: the smallest set of most probable tokens whose
    probability mass reaches `top_p`. The most probable token is always kept.

    logits: [B, V] float32 (already divided by the temperature); top_p: scalar in (0, 1].
    """
    probs = jax.nn.softmax(logits, axis=-1)  # [B, V]
    sorted_probs = -jnp.sort(-probs, axis=-1)  # [B, V] descending
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep = mass_before < top_p  # [B, V] prefix of the sorted order
    keep = keep.at[:, 0].set(True)
    # The smallest kept probability is the threshold; ties at the threshold are kept too.
    threshold = jnp.min(jnp.where(keep, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


def for_call(
    temperature: float, top_p: float, screen: screened_head.HeadScreen | None = None
) -> TokenChoice:
    """The strategy of a call: greedy when temperature == 0 (screened when given a screen),
    else temperature sampling, over the nucleus when top_p < 1."""
    if temperature == 0:
        return Greedy() if screen is None else ScreenedGreedy(screen)
    t = jnp.float32(max(temperature, 1e-6))
    return TopPSampling(t, jnp.float32(top_p)) if top_p < 1.0 else RandomSampling(t)


class HeadScreenCache:
    """The head screen of one float32 head table for greedy calls of at least `min_rows` rows.

    The screen costs a bfloat16 copy of the table (half its size), built on first use.
    Measured on a 2-core CPU (head in a decode loop, bench/decode.py): 1.77x faster at 64 rows,
    1.32x at 16, 1.27x at 8, 1.36x at 2; 0.45x at a single row, whose bfloat16 product is slow
    on XLA CPU. min_rows None turns the screen off.
    """

    def __init__(self, min_rows: int | None, vocab_size: int):
        self.min_rows = min_rows
        self.vocab_size = vocab_size
        self._screen: screened_head.HeadScreen | None = None

    def screen_for(self, table: jax.Array, rows: int) -> screened_head.HeadScreen | None:
        """The screen of `table` [V, D] for a greedy call of `rows` rows, or None."""
        if self.min_rows is None or rows < self.min_rows:
            return None
        if table.dtype != jnp.float32 or screened_head.block_for(self.vocab_size) is None:
            return None
        if self._screen is None:
            self._screen = jax.jit(screened_head.make_head_screen)(table)
        return self._screen
