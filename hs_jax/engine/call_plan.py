"""Call planning: which prompts run together in which device call, as pure host functions.

Input: the prompts' token lengths, the shape buckets, the largest batch and a cost model;
output: the planned calls (`PlannedCall`: the rows each call runs and the padded shapes it runs
them at). A prompt may stand for several rows that must share a call (an ensemble's experts on
one prompt, `rows_per_prompt`). Nothing here touches a model or an array library:
`Engine.generate` (hs_jax.engine.engine) plans every expert group's rows with `plan_calls` and runs
each call on the device.

Calls whose shapes round to the same buckets share one compiled program, so every shape is
rounded up: the prompt length to a length bucket, the token budget to a new-token bucket and the
rows to a batch bucket (a multiple of the devices rows are split over, the mesh's 'data' x
'expert', at most `max_batch`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

# Prompt-length buckets (tokens), new-token buckets and batch buckets.
# Steps of about 1.5x: a prompt pads by at most half its length (prefill cost follows the
# padded length), and a new shape costs only seconds of compilation.
DEFAULT_LENGTH_BUCKETS = (
    16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
)  # fmt: skip
DEFAULT_NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Finer ones (config.engine.length_buckets / batch_buckets): less padding, more compiled shapes.
# bench/RESULTS.md measures both (sections search and buckets).
FINE_LENGTH_BUCKETS = (*range(16, 513, 16), *(b for b in DEFAULT_LENGTH_BUCKETS if b > 512))
FINE_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


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


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The shapes a device call may take (each tuple sorted ascending).

    length / new_tokens / batch: prompt-length, new-token and batch buckets.
    max_batch: the most rows of one call, a multiple of `n_row_shards`.
    n_row_shards: how many parts rows are split into (the mesh's 'data' x 'expert' devices).
    """

    length: tuple[int, ...]
    new_tokens: tuple[int, ...]
    batch: tuple[int, ...]
    max_batch: int
    n_row_shards: int = 1

    @classmethod
    def make(cls, length, new_tokens, batch, max_batch: int, n_row_shards: int = 1) -> Buckets:
        """Buckets sorted, and `max_batch` rounded up to a multiple of `n_row_shards`."""
        sort = lambda xs: tuple(sorted(int(x) for x in xs))  # noqa: E731
        max_batch = -(-max_batch // n_row_shards) * n_row_shards
        return cls(sort(length), sort(new_tokens), sort(batch), max_batch, n_row_shards)

    def rows_for(self, n_rows: int) -> int:
        """Padded rows of a call of `n_rows` real rows."""
        return min(batch_bucket(n_rows, self.batch, self.n_row_shards), self.max_batch)

    def length_for(self, prompt_len: int) -> int:
        """Padded prompt length of a call whose longest prompt has `prompt_len` tokens."""
        return round_to_bucket(prompt_len, self.length)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Estimated cost of a call, in decode row-steps (one row's decode step = 1).

    prefill_weight: cost of one prompt token relative to one decoded token. A prompt token
      costs the layers' FLOPs, a decoded token also the output head's, so this is the layers'
      share of the model's FLOPs (`for_model`).
    decode_step_rows: the fixed cost of one decode step, in rows: a step of r rows costs about
      as much as decoding `decode_step_rows + r` rows' tokens (weights are read once per step).
    """

    prefill_weight: float
    decode_step_rows: float

    @classmethod
    def for_model(cls, vocab_size: int, d_model: int, num_params: int, decode_step_rows: float):
        """The cost model of a model whose tied head is [vocab_size, d_model]."""
        return cls(1.0 - vocab_size * d_model / num_params, decode_step_rows)

    def call_cost(self, rows: int, length: int, new_tokens: int) -> float:
        """Prefill of `rows` padded prompts of `length` tokens, then `new_tokens` steps."""
        return rows * length * self.prefill_weight + new_tokens * (rows + self.decode_step_rows)


@dataclasses.dataclass(frozen=True)
class PlannedCall:
    """One device call: `rows` (indices into the planned prompts, shortest prompt first; each
    runs as `rows_per_prompt` consecutive rows) padded to `batch` rows of `length` tokens,
    decoding up to the `new_tokens` bucket."""

    rows: tuple[int, ...]
    batch: int
    length: int
    new_tokens: int


def chunk_size(n: int, buckets: Buckets) -> int:
    """Rows for the next call: all of them (up to max_batch) unless that pads the batch by more
    than a quarter, then the largest batch bucket that fits (e.g. 40 rows: 32 + 8). Prefill
    dominates short generations, so two tight calls beat one padded one."""
    n = min(n, buckets.max_batch)
    padded = buckets.rows_for(n)
    if padded - n <= padded // 4:
        return n
    fitting = [
        b
        for b in buckets.batch
        if b <= n and b % buckets.n_row_shards == 0 and b <= buckets.max_batch
    ]
    return max(fitting) if fitting else n


def split(rows: Sequence[int], buckets: Buckets, rows_per_prompt: int = 1) -> list[list[int]]:
    """`rows` (prompts of `rows_per_prompt` rows each) in order, cut into consecutive calls of
    `chunk_size` rows each (whole prompts: the rows of a prompt never straddle two calls)."""
    rows, out = list(rows), []
    while rows:
        size = max(1, chunk_size(len(rows) * rows_per_prompt, buckets) // rows_per_prompt)
        out.append(rows[:size])
        rows = rows[size:]
    return out


def call_cost(n_rows: int, prompt_len: int, new_tokens: int, buckets: Buckets, cost: CostModel):
    """Estimated cost of one call of `n_rows` prompts of at most `prompt_len` tokens, at the
    padded shapes it would run at."""
    return cost.call_cost(buckets.rows_for(n_rows), buckets.length_for(prompt_len), new_tokens)


def plan_calls(
    prompt_lengths: Sequence[int],
    max_new_tokens: int,
    buckets: Buckets,
    cost: CostModel,
    rows_per_prompt: int = 1,
) -> list[PlannedCall]:
    """The calls that run prompts of these token lengths, each with up to `max_new_tokens`;
    every prompt runs as `rows_per_prompt` rows of the same call (at most `max_batch`).

    Rows are sorted by prompt length (stable) and each length bucket starts as its own group, so
    that a short prompt is not padded to a long neighbour's bucket (prefill cost grows with the
    padded length). But every call also pays up to `max_new_tokens` decode steps, each with a
    fixed cost, so adjacent groups are merged while that lowers the estimated cost: long prompts
    with short answers (a search's node calls) stay split, short prompts with long answers run
    as one batch. Every group is then cut into calls by `split`.
    """
    per = int(rows_per_prompt)
    if not 1 <= per <= buckets.max_batch:
        raise ValueError(f"rows_per_prompt must be in 1..{buckets.max_batch}, got {per}")
    lengths = [int(n) for n in prompt_lengths]
    rows = sorted(range(len(lengths)), key=lambda r: lengths[r])
    groups = [
        list(g) for _, g in itertools.groupby(rows, key=lambda r: buckets.length_for(lengths[r]))
    ]

    def group_cost(group: list[int]) -> float:
        longest = max(lengths[r] for r in group)
        return sum(
            call_cost(len(c) * per, longest, max_new_tokens, buckets, cost)
            for c in split(group, buckets, per)
        )

    while len(groups) > 1:
        gains = [
            group_cost(a) + group_cost(b) - group_cost(a + b)
            for a, b in zip(groups[:-1], groups[1:], strict=True)
        ]
        i = max(range(len(gains)), key=lambda j: (gains[j], -j))  # first largest gain
        if gains[i] <= 0:
            break
        groups[i : i + 2] = [groups[i] + groups[i + 1]]
    new_tokens = round_to_bucket(max_new_tokens, buckets.new_tokens)
    return [
        PlannedCall(
            rows=tuple(part),
            batch=buckets.rows_for(len(part) * per),
            length=buckets.length_for(max(lengths[r] for r in part)),
            new_tokens=new_tokens,
        )
        for group in groups
        for part in split(group, buckets, per)
    ]
