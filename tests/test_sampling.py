"""Sampler tests: left padding and the jitted decode loop against a plain forward pass of the
model (no cache, each prompt alone), with EOS, stop sequences and LoRA rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hs_jax.engine import sampling, token_choice
from hs_jax.engine import stops as stops_lib
from hs_jax.experts.lora import LoraStack
from hs_jax.models import gemma
from hs_jax.models.gemma_config import tiny_config

CFG = tiny_config("gemma3")  # sliding window 8: the test prompts are longer


def random_params(config, seed=0):
    """Random weights (numpy, no per-op compiles) scaled so greedy continuations of the tiny
    model vary instead of repeating one token."""
    _, abstract = gemma.abstract_model(config)
    rng = np.random.default_rng(seed)

    def init(x):
        z = rng.standard_normal(x.shape).astype(np.float32)
        if len(x.shape) == 1:
            return 0.5 * z
        if x.shape[0] == config.vocab_size:
            return 0.03 * z
        return 4.0 * z / np.sqrt(x.shape[0])

    return jax.tree.map(init, abstract)


@jax.jit
def _forward_no_cache(params, tokens, positions):
    model = nnx.merge(gemma.abstract_model(CFG)[0], params)
    return model(tokens, positions)[0]


def reference_greedy(params, prompt, n_new, width=48):
    """Greedy continuation by full forward passes without a cache (the sequence right padded to
    one width, padding at position -1, so the causal rule hides it); also the prompt's last
    logits."""
    seq = list(prompt)
    first_logits = None
    for _ in range(n_new):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(seq)] = seq
        positions = np.where(np.arange(width) < len(seq), np.arange(width), -1)[None]
        logits = _forward_no_cache(params, tokens, positions)[0, len(seq) - 1]
        if first_logits is None:
            first_logits = np.asarray(logits)
        seq.append(int(jnp.argmax(logits)))
    return seq[len(prompt) :], first_logits


def run(
    sampler,
    params,
    prompts,
    *,
    n_new=10,
    length=32,
    rows=4,
    stops=None,
    lora=None,
    ids=None,
    greedy=True,
    temperature=1.0,
    top_p=1.0,
    key=0,
    seq=None,
    eos_ids=(),
):
    tokens, lengths = sampling.left_pad(prompts, length, rows, sampler.pad_id)
    stops = stops or [()] * rows
    tables = stops_lib.build_stop_tables(
        stops, rows, CFG.vocab_size, encode=lambda s: seq or [], eos_ids=eos_ids
    )
    ids = np.full((rows,), -1, np.int32) if ids is None else np.asarray(ids, np.int32)
    batch = sampling.PromptBatch(tokens, lengths, ids, np.arange(rows) < len(prompts))
    choice = token_choice.Greedy() if greedy else token_choice.for_call(temperature, top_p)
    params_ = sampling.SamplingParams(max_new_tokens=jnp.int32(n_new), key=jax.random.key(key))
    out = sampler.generate_tokens(
        params, lora, batch, tables, params_, choice, max_new_bucket=16, return_logits=True
    )
    return jax.tree.map(np.asarray, out)


PROMPTS = [
    [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],  # 17 tokens > window 8
    [2, 40, 41],
    [2, 90, 3, 77, 12, 64, 33, 21, 100, 101, 9, 9, 4],
]


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


def test_left_padding():
    tokens, lengths = sampling.left_pad([[5, 6], [7]], 4, 3, pad_id=0)
    np.testing.assert_array_equal(tokens, [[0, 0, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [2, 1, 1])


def test_greedy_equals_plain_forward_and_no_retrace(params):
    sampler = sampling.Sampler(CFG, pad_id=0)
    out = run(sampler, params, PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        want, want_logits = reference_greedy(params, prompt, 10)
        np.testing.assert_array_equal(out["tokens"][i, :10], want)
        assert out["num_tokens"][i] == 10
        np.testing.assert_allclose(out["logits"][i], want_logits, rtol=1e-5, atol=1e-5)
    assert (out["tokens"][:, 10:] == 0).all()
    assert out["num_tokens"][3] == 0  # the padding row

    traces = sampling.TRACES["generate_tokens"]
    other = [[2, 50, 51, 52], [2, 7] * 9, [3, 4, 5]]
    out2 = run(sampler, random_params(CFG, seed=1), other, n_new=12)
    assert sampling.TRACES["generate_tokens"] == traces  # new prompts, same bucket, new weights
    assert (out2["num_tokens"][:3] == 12).all()


def test_eos_and_device_stop_sequences(params):
    free = run(sampling.Sampler(CFG, pad_id=0), params, PROMPTS)
    # EOS: a token that row 0 produces at step 3 ends that row there (and only rows that hit it).
    eos = int(free["tokens"][0, 3])
    out = run(sampling.Sampler(CFG, pad_id=0), params, PROMPTS, eos_ids=(eos,))
    for i in range(3):
        row = free["tokens"][i, :10].tolist()
        n = row.index(eos) + 1 if eos in row else 10
        assert out["num_tokens"][i] == n
        np.testing.assert_array_equal(out["tokens"][i, :n], row[:n])
        assert (out["tokens"][i, n:] == 0).all()
    # A two-token stop sequence, right aligned, only for row 2.
    seq = [int(t) for t in free["tokens"][2, 4:6]]
    stops = [(), (), ("s",), ()]
    out = run(sampling.Sampler(CFG, pad_id=0), params, PROMPTS, stops=stops, seq=seq)
    row2 = free["tokens"][2, :10].tolist()
    first = next(j for j in range(1, 10) if row2[j - 1 : j + 1] == seq)
    assert out["num_tokens"][2] == first + 1
    assert out["num_tokens"][0] == out["num_tokens"][1] == 10


def test_base_rows_in_a_lora_batch_equal_the_base_model(params):
    d, r = CFG.d_model, 4
    rng = np.random.default_rng(9)
    lora = LoraStack(
        tuple(
            {"q_proj": {"a": rng.standard_normal((3, d, r), np.float32),
                        "b": rng.standard_normal((3, r, CFG.q_dim), np.float32)}}
            for _ in range(CFG.n_layers)
        )
    )  # fmt: skip
    sampler = sampling.Sampler(CFG, pad_id=0)
    base = run(sampler, params, PROMPTS)
    mixed = run(sampler, params, PROMPTS, lora=lora, ids=[-1, 2, -1, 0])
    for i in (0, 2):
        np.testing.assert_array_equal(mixed["tokens"][i], base["tokens"][i])
        np.testing.assert_allclose(mixed["logits"][i], base["logits"][i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(mixed["logits"][1], base["logits"][1], atol=1e-3)


def test_a_first_token_stops_by_its_text_alone_later_ones_by_their_text_in_context(params):
    """Stop " Q" where token t reads "Q" alone and " Q" after other text (a sentencepiece
    token's leading space): the device stops a row at t from its second token on, never at a
    first t, as the host's decoded continuation has " Q" only there."""
    sampler = sampling.Sampler(CFG, pad_id=0)
    free = run(sampler, params, PROMPTS[:1], n_new=12, rows=1)["tokens"][0, :12].tolist()
    first = free[0]
    later = next(k for k in range(1, 12) if free[k] not in free[:k])  # a new token at k >= 1
    for t, want in (
        (free[later], later + 1),
        (first, free.index(first, 1) + 1 if first in free[1:] else 12),
    ):
        alone = [""] * CFG.vocab_size
        in_context = [""] * CFG.vocab_size
        alone[t], in_context[t] = "Q", " Q"
        tables = stops_lib.build_stop_tables(
            [(" Q",)], 1, CFG.vocab_size, vocab_texts=alone, vocab_texts_in_context=in_context
        )
        assert tables.tokens[tables.group[0], t] and not tables.first_tokens[tables.group[0], t]
        tokens, lengths = sampling.left_pad(PROMPTS[:1], 32, 1, sampler.pad_id)
        batch = sampling.PromptBatch(tokens, lengths, np.full((1,), -1, np.int32), np.ones(1, bool))
        params_ = sampling.SamplingParams(max_new_tokens=jnp.int32(12), key=jax.random.key(0))
        out = sampler.generate_tokens(
            params, None, batch, tables, params_, token_choice.Greedy(),
            max_new_bucket=16, return_logits=False,
        )  # fmt: skip
        assert int(out["num_tokens"][0]) == want
        np.testing.assert_array_equal(np.asarray(out["tokens"][0, :want]), free[:want])
