"""Call planning without a model: buckets, chunk sizes, and when length buckets share a call."""

import pytest

from hs_jax.engine import call_plan
from hs_jax.models.gemma_config import tiny_config

CFG = tiny_config("gemma3")
COST = call_plan.CostModel.for_model(CFG.vocab_size, CFG.d_model, CFG.num_params(), 16)


def buckets(length=call_plan.DEFAULT_LENGTH_BUCKETS, batch=call_plan.DEFAULT_BATCH_BUCKETS,
            max_batch=64, n_row_shards=1):  # fmt: skip
    return call_plan.Buckets.make(
        length, call_plan.DEFAULT_NEW_TOKEN_BUCKETS, batch, max_batch, n_row_shards
    )


def test_buckets():
    assert call_plan.round_to_bucket(1, (32, 64)) == 32
    assert call_plan.round_to_bucket(33, (32, 64)) == 64
    assert call_plan.round_to_bucket(65, (32, 64)) == 128
    assert call_plan.batch_bucket(3, (1, 2, 4, 8), multiple_of=8) == 8
    assert call_plan.batch_bucket(9, (1, 2, 4, 8, 16), multiple_of=4) == 16
    with pytest.raises(ValueError, match="positive"):
        call_plan.round_to_bucket(0, (8,))
    b = call_plan.Buckets.make((64, 16), (32,), (8, 4), max_batch=10, n_row_shards=4)
    assert b.length == (16, 64) and b.batch == (4, 8) and b.max_batch == 12
    assert b.rows_for(3) == 4 and b.rows_for(9) == 12  # bucket 16, cut to max_batch


def test_chunk_sizes_avoid_heavy_batch_padding():
    b = buckets(batch=(8, 16, 32, 64))
    assert call_plan.chunk_size(64, b) == 64
    assert call_plan.chunk_size(100, b) == 64
    assert call_plan.chunk_size(30, b) == 30  # pads to 32: cheap
    assert call_plan.chunk_size(40, b) == 32  # 40 would pad to 64: run 32, then 8
    assert call_plan.chunk_size(8, b) == 8
    assert call_plan.chunk_size(3, b) == 3  # no smaller bucket: pad to 8
    assert [len(c) for c in call_plan.split(range(40), b)] == [32, 8]


def test_call_plan_merges_length_buckets_only_when_decoding_dominates():
    """Short prompts of two length buckets share one call when many tokens are decoded (each
    extra call pays every decode step again) but not for long prompts with a short answer."""
    b = buckets(length=(16, 24, 256, 512))
    short = [12] * 32 + [20] * 32  # buckets 16 and 24
    long = [200] * 32 + [400] * 32  # buckets 256 and 512
    sizes = lambda lengths, new: [  # noqa: E731
        len(c.rows) for c in call_plan.plan_calls(lengths, new, b, COST)
    ]
    assert sizes(short, 64) == [64]
    assert sizes(long, 4) == [32, 32]
    assert sizes(short, 1) == [32, 32]


def test_planned_calls_cover_every_row_shortest_first():
    lengths = [300, 5, 40, 5, 200, 17]
    calls = call_plan.plan_calls(lengths, 3, buckets(length=(8, 64, 512), batch=(1, 2, 4)), COST)
    rows = [r for c in calls for r in c.rows]
    assert sorted(rows) == list(range(len(lengths)))
    assert [lengths[r] for r in rows] == sorted(lengths)  # stable: row 1 before row 3
    assert rows[:2] == [1, 3]
    for c in calls:
        assert c.length == call_plan.round_to_bucket(max(lengths[r] for r in c.rows), (8, 64, 512))
        assert c.batch >= len(c.rows) and c.new_tokens == 16
    assert call_plan.plan_calls([], 3, buckets(), COST) == []
