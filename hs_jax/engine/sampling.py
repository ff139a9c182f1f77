"""The generation program: bucketed prefill plus a KV-cache decode loop, one jit call.

The `Sampler` is a frozen dataclass whose fields are all static (model config, padding id, mesh);
it is hashed into the jit cache, so every call with the same shapes reuses one compiled
program. Everything else is a jit argument, grouped into small pytrees: the weights (the base
params state and the LoRA stack: the model is rebuilt inside jit with `nnx.merge`, so new expert
weights after a PSO step never retrace), the rows (`PromptBatch`), their stop tables
(`stops.StopTables`), the loop's limits (`SamplingParams`) and the token choice strategy
(`token_choice.TokenChoice`, whose class selects the compiled variant). Per token, everything
runs on the device inside one `lax.while_loop` whose body is a single decode step for all rows
and whose carry is a `DecodeState`.

`Sampler.prompt_nll` is the scoring program of the same rows: a prefill without decoding that
returns each prompt's negative log-likelihood (Pack of LLMs weighs experts by it).
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
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hs_jax.engine import expert_sets, stops
from hs_jax.engine.token_choice import TokenChoice
from hs_jax.models import gemma
from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.runtime import sharding

# Logits one chunk of a scoring prefill may hold ([rows, chunk, V] float32: 128 MiB): a whole
# [rows, L, V] block of a 262k-word head would be tens of gigabytes.
NLL_CHUNK_ELEMENTS = 2**25

# Incremented by a Python side effect while `Sampler.generate_tokens` is traced: tests read it to
# prove that a second call with new prompts of the same bucket or new weights does not retrace.
TRACES: collections.Counter[str] = collections.Counter()


def splits_kv_heads(config: GemmaConfig, mesh: Mesh | None) -> bool:
    """Whether the KV cache is split along 'model' by kv head: on a mesh with model > 1 whose
    size divides the kv heads, as the q/k/v projections split them (`sharding.PARAM_RULES`).
    Otherwise (model=1, or kv heads that 'model' does not divide: Gemma 2B and Gemma 3 270M /
    1B have one) the cache is not split by kv head: it is constrained over the row axes only,
    and XLA may still split it along head_dim, after the k/v projections' column split."""
    model = sharding.axis_size(mesh, "model")
    return model > 1 and config.n_kv_heads % model == 0


def kv_cache_spec(config: GemmaConfig, mesh: Mesh | None) -> P:
    """The PartitionSpec of each key and value leaf of the sampler's cache: rows over 'data' x
    'expert' (`sharding.ROW_AXES`); where `splits_kv_heads`, the cache keeps rows and kv heads
    apart ([B, Kh, ...], `gemma.KVCache`) and the heads go along 'model', so each device holds
    its own heads' keys and values; else it is [B * Kh, ...] over the row axes only."""
    if splits_kv_heads(config, mesh):
        return P(sharding.ROW_AXES, "model", None, None)
    return P(sharding.ROW_AXES, None, None)


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


@struct.dataclass
class PromptBatch:
    """The rows of one call, every field split over 'data' x 'expert' on a mesh.

    tokens: [B, L] int32, left padded; lengths: [B] int32 real prompt lengths; expert_ids: [B]
    int32 (-1 = base model; ignored without a LoRA stack); active: [B] bool (False = padding
    row, whose output is discarded).
    """

    tokens: Any
    lengths: Any
    expert_ids: Any
    active: Any

    @classmethod
    def build(cls, prompts, expert_ids, length: int, rows: int, pad_id: int) -> PromptBatch:
        """Host arrays for `prompts` (token lists) padded to `rows` rows of `length` tokens."""
        tokens, lengths = left_pad(prompts, length, rows, pad_id)
        ids = np.full((rows,), -1, np.int32)
        ids[: len(prompts)] = expert_ids
        return cls(tokens, lengths, ids, np.arange(rows) < len(prompts))


@struct.dataclass
class SamplingParams:
    """Per-call loop parameters (data: new values reuse the compiled program).

    max_new_tokens: [] int32, at most the program's new-token bucket.
    key: random key; the prefill uses one split of it, decode step s folds in s.
    """

    max_new_tokens: jax.Array
    key: jax.Array


@struct.dataclass
class DecodeState:
    """The decode loop's carry; B rows, N = the new-token bucket, S = stop sequence length.

    step: [] int32, tokens chosen so far; token: [B] the last one (fed next); cache: the KV
    cache; out: [B, N] tokens so far (pad after a row ends); recent: [B, S] each row's last S
    tokens, newest last (-2 before the first); done: [B] bool; num: [B] int32 tokens per row;
    fallbacks: [] int32 steps in which the screened head ran the plain one.
    """

    step: jax.Array
    token: jax.Array
    cache: gemma.KVCache
    out: jax.Array
    recent: jax.Array
    done: jax.Array
    num: jax.Array
    fallbacks: jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Static description of the generation program (everything here is a jit static value).

    config: the model's GemmaConfig (hashable); the graph is rebuilt from it at trace time.
    pad_id: the padding token (EOS ids travel in the stop tables, so they never recompile).
    mesh: optional mesh; rows are split over its 'data' x 'expert' devices (`sharding.ROW_AXES`),
    and the KV cache's kv heads along 'model' where they divide by it (`kv_cache_spec`).
    """

    config: GemmaConfig
    pad_id: int = 0
    mesh: Mesh | None = None

    def _constrain_rows(self, x: Any) -> Any:
        """Keeps the leading (row) axis of every leaf split over 'data' x 'expert' when a mesh is
        set: every device generates its share of the rows."""
        if self.mesh is None:
            return x

        def one(a):
            spec = P(sharding.ROW_AXES, *([None] * (a.ndim - 1)))
            return jax.lax.with_sharding_constraint(a, NamedSharding(self.mesh, spec))

        return jax.tree.map(one, x)

    def _constrain_cache(self, cache: gemma.KVCache) -> gemma.KVCache:
        """The cache's rows split like every row-leading array, and its keys and values also
        along 'model' by kv head where the mesh splits the heads (`kv_cache_spec`)."""
        if self.mesh is None:
            return cache
        heads = NamedSharding(self.mesh, kv_cache_spec(self.config, self.mesh))
        k, v = (
            tuple(jax.lax.with_sharding_constraint(a, heads) for a in leaves)
            for leaves in (cache.k, cache.v)
        )
        return gemma.KVCache(k=k, v=v, pos=self._constrain_rows(cache.pos))

    def _prefill_inputs(self, params: nnx.State, lora: Any, batch: PromptBatch):
        """What both programs start from (traced inside their jit): the model rebuilt from
        `params`, the LoRA stack with each row's expert (None, None without one), and each
        slot's offset and position: slot j of row b holds prompt token j - (L - len_b); the
        offset is negative and the position -1 for left padding ([B, L] int32 each)."""
        graphdef, _ = gemma.abstract_model(self.config)
        model = nnx.merge(graphdef, params)
        expert_ids = None
        if lora is not None:
            lora, expert_ids = expert_sets.lora_for_rows(lora, batch.expert_ids)
        length = batch.tokens.shape[1]
        offsets = jnp.arange(length, dtype=jnp.int32)[None, :] - (length - batch.lengths)[:, None]
        positions = jnp.where(offsets >= 0, offsets, -1)  # [B, L]
        return model, lora, expert_ids, offsets, positions

    @functools.partial(jax.jit, static_argnames=("self",))
    def prompt_nll(self, params: nnx.State, lora: Any, batch: PromptBatch) -> dict[str, jax.Array]:
        """Each row's negative log-likelihood of its own prompt: one prefill, no decoding.

        Every prompt token after the first is predicted from the tokens before it (the first,
        BOS when the engine adds one, is given). Returns nll_sum [B] float32 (the sum over
        those tokens of -log p(token | prefix)) and num_scored [B] int32 (len - 1; 0 for
        padding rows). The head runs over the sequence in chunks of at most
        `NLL_CHUNK_ELEMENTS` logits.
        """
        TRACES["prompt_nll"] += 1
        model, lora, expert_ids, offsets, positions = self._prefill_inputs(params, lora, batch)
        rows, length = batch.tokens.shape
        hidden, _ = model.hidden(
            batch.tokens, positions, None, lora=lora, expert_ids=expert_ids
        )  # [B, L, D]
        # Slot j predicts slot j + 1; left padding puts every real slot but the last before one.
        targets = jnp.concatenate([batch.tokens[:, 1:], batch.tokens[:, :1]], axis=1)  # [B, L]
        scored = (offsets >= 0) & (jnp.arange(length)[None, :] < length - 1)
        scored = scored & batch.active[:, None]
        chunk = _nll_chunk(rows, length, self.config.vocab_size)
        n_chunks = length // chunk

        def by_chunk(x):  # [B, L, ...] -> [n_chunks, B, chunk, ...]
            x = x.reshape(rows, n_chunks, chunk, *x.shape[2:])
            return jnp.moveaxis(x, 1, 0)

        def chunk_nll(args):
            h, t, m = args  # [B, c, D], [B, c], [B, c]
            logits = model.logits(h)  # [B, c, V]
            picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
            nll = jax.nn.logsumexp(logits, axis=-1) - picked  # [B, c]
            return jnp.sum(jnp.where(m, nll, 0.0), axis=-1)  # [B]

        sums = jax.lax.map(chunk_nll, (by_chunk(hidden), by_chunk(targets), by_chunk(scored)))
        return {
            "nll_sum": jnp.sum(sums, axis=0),
            "num_scored": jnp.sum(scored, axis=-1).astype(jnp.int32),
        }

    @functools.partial(jax.jit, static_argnames=("self", "max_new_bucket", "return_logits"))
    def generate_tokens(
        self,
        params: nnx.State,
        lora: Any,
        batch: PromptBatch,
        stop_tables: stops.StopTables,
        sampling: SamplingParams,
        choice: TokenChoice,
        *,
        max_new_bucket: int,
        return_logits: bool,
    ) -> dict[str, jax.Array]:
        """Prefills the left-padded prompts and decodes until every row is done.

        lora: a LoRA stack whose rows are selected by `batch.expert_ids`, or None.
        Returns tokens [B, max_new_bucket] (pad after a row ends), num_tokens [B] (generated
        tokens including the one that ended the row), head_fallbacks ([] int32: steps in which
        the head screen certified no choice and the plain head ran), and logits [B, V] float32
        at the last prompt position when `return_logits`.
        """
        TRACES["generate_tokens"] += 1
        model, lora, expert_ids, _, positions = self._prefill_inputs(params, lora, batch)
        rows, length = batch.tokens.shape
        stop_len = stop_tables.seqs.shape[-1]
        limit = sampling.max_new_tokens

        cache = gemma.KVCache.init(
            self.config,
            rows,
            length + max_new_bucket,
            jnp.dtype(self.config.param_dtype),
            heads_apart=splits_kv_heads(self.config, self.mesh),
        )
        cache = self._constrain_cache(cache)
        # The head runs at the last prompt slot only ([B, L, V] logits would be gigabytes).
        # The cache is empty: the prompt attends over its own L keys, not all L + new slots.
        hidden, cache = model.hidden(
            batch.tokens,
            positions,
            cache,
            cache_index=jnp.int32(0),
            lora=lora,
            expert_ids=expert_ids,
            attend_cache=False,
        )
        key0, key = jax.random.split(sampling.key)
        last_hidden = hidden[:, -1, :]  # [B, D]
        want_logits = return_logits or choice.needs_logits
        last_logits = model.logits(last_hidden) if want_logits else None
        tok, fallbacks = choice(model, last_hidden, last_logits, key0, batch.active)
        recent = jnp.full((rows, stop_len), -2, jnp.int32).at[:, -1].set(tok)
        state = DecodeState(
            step=jnp.int32(1),
            token=tok,
            cache=cache,
            out=jnp.full((rows, max_new_bucket), self.pad_id, jnp.int32).at[:, 0].set(tok),
            recent=recent,
            done=~batch.active
            | stops.stop_hits(stop_tables, tok, recent, first=True)
            | (limit <= 1),
            num=batch.active.astype(jnp.int32),
            fallbacks=fallbacks,
        )

        def cond(s: DecodeState):
            return (s.step < limit) & ~jnp.all(s.done)

        def body(s: DecodeState) -> DecodeState:
            pos = batch.lengths + s.step - 1  # [B] position of the token fed now
            hidden, cache = model.hidden(
                s.token[:, None],
                pos[:, None],
                s.cache,
                cache_index=length + s.step - 1,
                lora=lora,
                expert_ids=expert_ids,
            )
            h = hidden[:, -1, :]
            logits = model.logits(h) if choice.needs_logits else None
            new, fell_back = choice(model, h, logits, jax.random.fold_in(key, s.step), ~s.done)
            new = jnp.where(s.done, self.pad_id, new)
            recent = jnp.concatenate([s.recent[:, 1:], new[:, None]], axis=1)
            return DecodeState(
                step=s.step + 1,
                token=new,
                cache=cache,
                out=jax.lax.dynamic_update_slice(s.out, new[:, None], (0, s.step)),
                recent=recent,
                done=s.done | stops.stop_hits(stop_tables, new, recent) | (s.step + 1 >= limit),
                num=s.num + (~s.done).astype(jnp.int32),
                fallbacks=s.fallbacks + fell_back,
            )

        state = jax.lax.while_loop(cond, body, state)
        result = {"tokens": self._constrain_rows(state.out), "num_tokens": state.num}
        result["head_fallbacks"] = state.fallbacks
        if return_logits:
            result["logits"] = last_logits
        return result


def _nll_chunk(rows: int, length: int, vocab: int) -> int:
    """The largest divisor of `length` whose [rows, chunk, vocab] logits fit the chunk budget."""
    fits = [c for c in range(1, length + 1) if length % c == 0]
    fits = [c for c in fits if rows * c * vocab <= NLL_CHUNK_ELEMENTS]
    return max(fits, default=1)
