"""Batched multi-expert generation: bucketed prefill plus a KV-cache decode loop inside jit.

The `Sampler` is a frozen dataclass whose fields are all static (model config, padding id, mesh);
it is hashed into the jit cache, so every call with the same shapes reuses one compiled
program. Weights (the base params state and the LoRA stack) are ordinary jit arguments: the model
is rebuilt inside jit with `nnx.merge`, so new expert weights after a PSO step never retrace.

Host helpers in this module (bucketing, left padding, stop tables, stop truncation) are numpy /
Python; everything per token runs on the device inside one `lax.while_loop` whose body is a single
decode step for all rows.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hs_jax.models import gemma, screened_head
from hs_jax.models.config import GemmaConfig

# Prompt-length buckets (tokens), new-token buckets and batch buckets: calls whose shapes round to
# the same buckets share one compiled program.
# Steps of about 1.5x: a prompt pads by at most half its length (prefill cost follows the
# padded length), and a new shape costs only seconds of compilation.
DEFAULT_LENGTH_BUCKETS = (
    16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
)  # fmt: skip
DEFAULT_NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Longest stop-token sequence checked on the device; longer stop strings are still cut exactly on
# the host, their rows just run until EOS or max_new_tokens.
MAX_DEVICE_STOP_LEN = 16

# Incremented by a Python side effect while `Sampler.generate_tokens` is traced: tests read it to
# prove that a second call with new prompts of the same bucket or new weights does not retrace.
TRACES: collections.Counter[str] = collections.Counter()


# ----------------------------------------------------------------------------------------------
# Host helpers: buckets, padding, stops.


def round_to_bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n; beyond the largest bucket, the next multiple of the largest one."""
    if n <= 0:
        raise ValueError(f"size must be positive, got {n}")
    for b in buckets:
        if n <= b:
            return int(b)
    top = int(buckets[-1])
    return -(-n // top) * top


def batch_bucket(n_rows: int, buckets: Sequence[int], multiple_of: int = 1) -> int:
    """Rows to run: the batch bucket, rounded up to a multiple of the data-axis size."""
    b = round_to_bucket(n_rows, buckets)
    return -(-b // multiple_of) * multiple_of


def fit_prompts(
    prompts: Sequence[Sequence[int]], max_len: int, truncate: str = "left"
) -> list[list[int]]:
    """Applies the long-prompt policy: keep the last `max_len` tokens ('left') or raise ('error').

    Left truncation keeps the end of the prompt, which is the part the continuation depends on
    most; it is logged as a warning so it is never silent.
    """
    if truncate not in ("left", "error"):
        raise ValueError(f"truncate must be 'left' or 'error', got {truncate!r}")
    out = []
    for i, p in enumerate(prompts):
        p = list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty (no tokens)")
        if len(p) > max_len:
            if truncate == "error":
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens, more than the allowed {max_len} "
                    "(raise max_prompt_len or use truncate='left')"
                )
            logging.warning(
                "prompt %d has %d tokens > max_prompt_len %d: keeping the last %d tokens",
                i,
                len(p),
                max_len,
                max_len,
            )
            p = p[-max_len:]
        out.append(p)
    return out


def left_pad(
    prompts: Sequence[Sequence[int]], length: int, n_rows: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into [n_rows, length]; extra rows hold a single pad token.

    Returns (tokens [n_rows, length] int32, lengths [n_rows] int32). Padding rows get length 1 so
    that every row attends to at least one real slot (no all-masked softmax).
    """
    tokens = np.full((n_rows, length), pad_id, np.int32)
    lengths = np.ones((n_rows,), np.int32)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens > padded length {length}")
        tokens[i, length - len(p) :] = p
        lengths[i] = len(p)
    return tokens, lengths


@dataclasses.dataclass(frozen=True)
class StopTables:
    """Device-side stop detection, one group per distinct set of stop strings.

    tokens: [G, V] bool, True for a token whose own text contains one of the group's strings.
    seqs: [G, M, S] int32, token sequences of the stop strings, right aligned, -1 = unused.
    group: [B] int32, the group of each row.
    """

    tokens: np.ndarray
    seqs: np.ndarray
    group: np.ndarray


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def build_stop_tables(
    stops_per_row: Sequence[Sequence[str]],
    n_rows: int,
    vocab_size: int,
    encode=None,
    vocab_texts: Sequence[str] | None = None,
    eos_ids: Sequence[int] = (),
) -> StopTables:
    """Stop tables for the device loop (conservative: a hit there means the text has a stop).

    A row stops on the device when its last token's own text contains a stop string (needs
    `vocab_texts`, the decoded text of every token id) or when its last tokens equal the
    tokenisation of a stop string (needs `encode(text) -> list[int]`). Other ways of spelling a
    stop string are only caught by the exact host-side truncation (`truncate_at_stop`).
    The EOS ids are stop tokens of every group (data, not a static value: no recompile).
    Table sizes are rounded to powers of two so calls rarely change the compiled shapes.
    """
    groups: dict[tuple[str, ...], int] = {}
    row_group = np.zeros((n_rows,), np.int32)
    for i, stops in enumerate(stops_per_row):
        key = tuple(sorted({s for s in stops if s}))
        row_group[i] = groups.setdefault(key, len(groups))
    if not groups:
        groups[()] = 0
    n_groups = _pow2(len(groups))
    tok = np.zeros((n_groups, vocab_size), bool)
    tok[:, list(eos_ids)] = True
    seq_lists: list[list[list[int]]] = [[] for _ in range(n_groups)]
    for key, g in groups.items():
        for s in key:
            if vocab_texts is not None:
                hits = [i for i, t in enumerate(vocab_texts) if s in t]
                tok[g, hits] = True
            if encode is not None:
                ids = list(encode(s))
                if 0 < len(ids) <= MAX_DEVICE_STOP_LEN and ids not in seq_lists[g]:
                    seq_lists[g].append(ids)
    m = _pow2(max(1, max(len(x) for x in seq_lists)))
    s_len = _pow2(max([1] + [len(ids) for x in seq_lists for ids in x]))
    seqs = np.full((n_groups, m, s_len), -1, np.int32)
    for g, lst in enumerate(seq_lists):
        for j, ids in enumerate(lst):
            seqs[g, j, s_len - len(ids) :] = ids
    return StopTables(tokens=tok, seqs=seqs, group=row_group)


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cuts `text` before the earliest occurrence of any stop string; returns (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# ----------------------------------------------------------------------------------------------
# Device helpers.


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


def choose_tokens(
    logits: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    greedy: bool,
    use_top_p: bool,
) -> jax.Array:
    """Next token per row [B] int32 from logits [B, V]: argmax or temperature (+ top-p) sampling."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / temperature
    if use_top_p:
        scaled = top_p_logits(scaled, top_p)
    return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)


def _with_base_expert(lora: Any, expert_ids: jax.Array) -> tuple[Any, jax.Array]:
    """Appends an all-zero expert to the stack and maps expert id -1 (base model) onto it.

    A zero LoRA factor adds exactly 0, so base rows can share the batch with adapted rows.
    """
    leaves = jax.tree.leaves(lora)
    n_experts = leaves[0].shape[0]
    lora = jax.tree.map(lambda x: jnp.concatenate([x, jnp.zeros_like(x[:1])], axis=0), lora)
    return lora, jnp.where(expert_ids < 0, n_experts, expert_ids).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Static description of the generation program (everything here is a jit static value).

    config: the model's GemmaConfig (hashable); the graph is rebuilt from it at trace time.
    pad_id: the padding token (EOS ids travel in the stop tables, so they never recompile).
    mesh: optional mesh; rows are sharded along its 'data' axis.
    """

    config: GemmaConfig
    pad_id: int = 0
    mesh: Mesh | None = None

    def _constrain_rows(self, x: Any) -> Any:
        """Keeps the leading (row) axis of every leaf sharded along 'data' when a mesh is set."""
        if self.mesh is None:
            return x

        def one(a):
            spec = P("data", *([None] * (a.ndim - 1)))
            return jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, spec))

        return jax.tree.map(one, x)

    @functools.partial(
        jax.jit,
        static_argnames=("self", "max_new_bucket", "greedy", "use_top_p", "return_logits"),
    )
    def generate_tokens(
        self,
        params: nnx.State,
        lora: Any,
        tokens: jax.Array,
        lengths: jax.Array,
        expert_ids: jax.Array,
        active: jax.Array,
        stop_tokens: jax.Array,
        stop_seqs: jax.Array,
        stop_group: jax.Array,
        max_new_tokens: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        key: jax.Array,
        *,
        max_new_bucket: int,
        greedy: bool,
        use_top_p: bool,
        return_logits: bool,
        head_screen: screened_head.HeadScreen | None = None,
    ) -> dict[str, jax.Array]:
        """Prefills the left-padded prompts and decodes until every row is done.

        tokens: [B, L] int32 left padded; lengths: [B] real prompt lengths; expert_ids: [B]
        (-1 = base model; ignored when lora is None); active: [B] bool (False = padding row);
        stop_tokens [G, V] bool, stop_seqs [G, M, S] int32, stop_group [B] int32 (see
        `build_stop_tables`); max_new_tokens: int32 scalar <= max_new_bucket.

        Returns tokens [B, max_new_bucket] (pad after a row ends), num_tokens [B] (generated
        tokens including the one that ended the row), head_fallbacks (int32 scalar: steps in
        which the head screen certified no choice and the plain head ran), and logits [B, V]
        float32 at the last prompt position when `return_logits`. head_screen: a screen of
        the float32 head (`screened_head.make_head_screen`) for greedy decoding, or None.
        """
        TRACES["generate_tokens"] += 1
        graphdef, _ = gemma.abstract_model(self.config)
        model = nnx.merge(graphdef, params)
        batch, length = tokens.shape
        if lora is not None:
            lora, expert_ids = _with_base_expert(lora, expert_ids)
        else:
            expert_ids = None
        stop_len = stop_seqs.shape[-1]

        def next_tokens(h, logits, key, rows_that_count):
            """(tokens [B], 1 if the screened head fell back to the plain one else 0). Greedy
            decoding skips the [B, V] logits (vocabulary-major head, blocked argmax)."""
            if greedy and head_screen is not None:
                tok, used_plain = model.screened_greedy_tokens(h, head_screen, rows_that_count)
                return tok, used_plain.astype(jnp.int32)
            if greedy:
                return model.greedy_tokens(h), jnp.int32(0)
            tok = choose_tokens(logits, key, temperature, top_p, greedy=False, use_top_p=use_top_p)
            return tok, jnp.int32(0)

        def is_stop(tok, recent):
            """Row ends: EOS or a stop token, or the recent tokens end with a stop sequence."""
            hit = stop_tokens[stop_group, tok]
            seqs = stop_seqs[stop_group]  # [B, M, S]
            match = jnp.all((seqs == -1) | (seqs == recent[:, None, :]), axis=-1)
            match &= jnp.any(seqs != -1, axis=-1)
            return hit | jnp.any(match, axis=-1)

        # Prefill: slot j of row b holds prompt token j - (L - len_b), -1 for left padding.
        offsets = jnp.arange(length, dtype=jnp.int32)[None, :] - (length - lengths)[:, None]
        positions = jnp.where(offsets >= 0, offsets, -1)  # [B, L]
        cache = gemma.KVCache.init(
            self.config, batch, length + max_new_bucket, jnp.dtype(self.config.param_dtype)
        )
        cache = self._constrain_rows(cache)
        # The head runs at the last prompt slot only ([B, L, V] logits would be gigabytes).
        # The cache is empty: the prompt attends over its own L keys, not all L + new slots.
        hidden, cache = model.hidden(
            tokens,
            positions,
            cache,
            cache_index=jnp.int32(0),
            lora=lora,
            expert_ids=expert_ids,
            attend_cache=False,
        )
        key0, key = jax.random.split(key)
        last_hidden = hidden[:, -1, :]  # [B, D]
        last_logits = model.logits(last_hidden) if (return_logits or not greedy) else None
        tok, fallbacks = next_tokens(last_hidden, last_logits, key0, active)
        recent = jnp.full((batch, stop_len), -2, jnp.int32).at[:, -1].set(tok)
        out = jnp.full((batch, max_new_bucket), self.pad_id, jnp.int32).at[:, 0].set(tok)
        done = ~active | is_stop(tok, recent) | (max_new_tokens <= 1)
        num = active.astype(jnp.int32)

        def cond(carry):
            step, _, _, _, _, done, _, _ = carry
            return (step < max_new_tokens) & ~jnp.all(done)

        def body(carry):
            step, tok, cache, out, recent, done, num, fallbacks = carry
            pos = lengths + step - 1  # [B] position of the token fed now
            hidden, cache = model.hidden(
                tok[:, None],
                pos[:, None],
                cache,
                cache_index=length + step - 1,
                lora=lora,
                expert_ids=expert_ids,
            )
            h = hidden[:, -1, :]
            logits = None if greedy else model.logits(h)
            new, fell_back = next_tokens(h, logits, jax.random.fold_in(key, step), ~done)
            new = jnp.where(done, self.pad_id, new)
            out = jax.lax.dynamic_update_slice(out, new[:, None], (0, step))
            recent = jnp.concatenate([recent[:, 1:], new[:, None]], axis=1)
            num = num + (~done).astype(jnp.int32)
            done = done | is_stop(new, recent) | (step + 1 >= max_new_tokens)
            return step + 1, new, cache, out, recent, done, num, fallbacks + fell_back

        carry = (jnp.int32(1), tok, cache, out, recent, done, num, fallbacks)
        _, _, _, out, _, _, num, fallbacks = jax.lax.while_loop(cond, body, carry)
        result = {"tokens": self._constrain_rows(out), "num_tokens": num}
        result["head_fallbacks"] = fallbacks
        if return_logits:
            result["logits"] = last_logits
        return result
