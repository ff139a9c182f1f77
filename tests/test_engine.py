"""Engine tests: batching and padding, mixed experts (LoRA and full weights) against per-expert
runs, no recompiles on new weights, stops, the long-prompt policy, 8-device sharding, the
engine's cost counters and its expert kinds."""

import jax
import numpy as np
import pytest
from test_sampling import CFG, random_params

from hs_jax.engine import expert_sets, sampling, stops
from hs_jax.engine.engine import Engine
from hs_jax.experts import full_models as fe
from hs_jax.experts.lora import LoraStack
from hs_jax.runtime import sharding

# Shared buckets so most tests reuse a few compiled programs.
BUCKETS = dict(length_buckets=(32,), new_token_buckets=(16,), batch_buckets=(8,))


class CharTokenizer:
    """Printable ASCII one char per token (ids 3..97); ids 98.. are multi-char tokens that only
    the model produces (they exercise the device check 'token text contains a stop string')."""

    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2
    EXTRA = ["\n\n", "the", "ing", ".\n", " a", "xyz"]

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 32 + 3 for c in text]

    def piece(self, i):
        if i < 3:
            return ""
        if i < 98:
            return chr(i - 3 + 32)
        extra = i - 98
        return self.EXTRA[extra] if extra < len(self.EXTRA) else f"<{i}>"

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.piece(int(i)) for i in ids)


TOK = CharTokenizer()
PROMPTS = ["Hello there, how are you today?", "abc", "The quick brown fox", "z", "0123456789"]


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


def lora_stack(n_experts=4, rank=4, seed=0, scale=0.5):
    """Random LoRA on q, v, up and down projections of every layer."""
    dims = {
        "q_proj": (CFG.d_model, CFG.q_dim),
        "v_proj": (CFG.d_model, CFG.kv_dim),
        "up_proj": (CFG.d_model, CFG.ffn_dim),
        "down_proj": (CFG.ffn_dim, CFG.d_model),
    }
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(CFG.n_layers):
        entry = {}
        for name, (d_in, d_out) in dims.items():
            a = rng.standard_normal((n_experts, d_in, rank)) / np.sqrt(d_in)
            b = scale * rng.standard_normal((n_experts, rank, d_out))
            entry[name] = {"a": a.astype(np.float32), "b": b.astype(np.float32)}
        layers.append(entry)
    return LoraStack(tuple(layers))


def merged_params(params, stack, e):
    """Base weights with expert e's LoRA folded in (W + a[e] @ b[e]): an independent reference."""

    def merge(path, w):
        names = sharding._path_str(path).split("/")
        if names[-1] != "kernel" or names[0] != "layers":
            return w
        entry = stack.layers[int(names[1])].get(names[3])
        return w if entry is None else np.asarray(w) + entry["a"][e] @ entry["b"][e]

    return jax.tree_util.tree_map_with_path(merge, params)


def test_batch_with_left_padding_equals_single_prompts(params):
    engine = Engine(CFG, params, TOK, **BUCKETS)
    batch = engine.generate(PROMPTS, max_new_tokens=12, return_logits=True)
    assert len(batch.texts) == len(PROMPTS) and batch.logits.shape == (5, CFG.vocab_size)
    for i, prompt in enumerate(PROMPTS):
        alone = engine.generate([prompt], max_new_tokens=12, return_logits=True)
        np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])
        assert batch.texts[i] == alone.texts[0] == TOK.decode(batch.tokens[i])
        np.testing.assert_allclose(batch.logits[i], alone.logits[0], rtol=1e-5, atol=1e-6)
        assert batch.prompt_tokens[i] == [2] + TOK.encode(prompt)
    assert engine.generate([], max_new_tokens=3).texts == []
    # Chunking into max_batch rows gives the same rows.
    small = Engine(CFG, params, TOK, max_batch=2, **BUCKETS)
    chunked = small.generate(PROMPTS, max_new_tokens=12)
    for a, b in zip(chunked.tokens, batch.tokens, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mixed_lora_batch_equals_each_expert_alone_and_no_retrace(params):
    stack = lora_stack()
    engine = Engine(CFG, params, TOK, experts=stack, **BUCKETS)
    ids = [0, 3, -1, 1, 2]
    mixed = engine.generate(PROMPTS, ids, max_new_tokens=10, return_logits=True)
    base = Engine(CFG, params, TOK, **BUCKETS).generate(PROMPTS, max_new_tokens=10)
    for i, e in enumerate(ids):
        p = params if e < 0 else merged_params(params, stack, e)
        alone = Engine(CFG, p, TOK, **BUCKETS).generate([PROMPTS[i]], max_new_tokens=10)
        np.testing.assert_array_equal(mixed.tokens[i], alone.tokens[0])
    # The experts really differ from the base model (else the test above proves little).
    assert sum(not np.array_equal(mixed.tokens[i], base.tokens[i]) for i in (0, 1, 3, 4)) >= 2

    # New weights of the same shapes and new prompts in the same buckets: no retrace.
    traces = sampling.TRACES["generate_tokens"]
    engine.set_experts(lora_stack(seed=5))
    again = engine.generate(PROMPTS[::-1], ids, max_new_tokens=9, return_logits=True)
    assert sampling.TRACES["generate_tokens"] == traces
    assert not all(np.array_equal(a, b) for a, b in zip(again.tokens[::-1], mixed.tokens))
    with pytest.raises(ValueError, match="shape"):
        engine.set_experts(lora_stack(rank=8))
    with pytest.raises(ValueError, match="out of range"):
        engine.generate(["a"], [4], max_new_tokens=2)


def test_zero_lora_equals_base(params):
    zero = jax.tree.map(np.zeros_like, lora_stack())
    with_zero = Engine(CFG, params, TOK, experts=zero, **BUCKETS)
    got = with_zero.generate(PROMPTS, [0, 1, 2, 3, 0], max_new_tokens=8, return_logits=True)
    base = Engine(CFG, params, TOK, **BUCKETS).generate(
        PROMPTS, max_new_tokens=8, return_logits=True
    )
    for a, b in zip(got.tokens, base.tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(got.logits, base.logits, rtol=1e-6, atol=1e-6)


def test_full_experts_grouped_per_expert(params):
    experts = fe.stack_params([random_params(CFG, seed=100 + i) for i in range(3)], CFG)
    engine = Engine(CFG, params, TOK, experts=experts, **BUCKETS)
    ids = [2, 0, -1, 2, 1]
    mixed = engine.generate(PROMPTS, ids, max_new_tokens=8)
    for i, e in enumerate(ids):
        p = params if e < 0 else experts.params_for(e)
        want = Engine(CFG, p, TOK, **BUCKETS).generate([PROMPTS[i]], max_new_tokens=8)
        np.testing.assert_array_equal(mixed.tokens[i], want.tokens[0])


def test_eos_and_stop_strings(params):
    free = Engine(CFG, params, TOK, eos_ids=(), **BUCKETS).generate(PROMPTS, max_new_tokens=16)
    assert all(r == "length" for r in free.finish_reasons)
    row = free.tokens[0].tolist()
    eos = row[4]
    got = Engine(CFG, params, TOK, eos_ids=(eos,), **BUCKETS).generate(PROMPTS, max_new_tokens=16)
    assert got.tokens[0].tolist() == row[: row.index(eos) + 1]
    assert got.finish_reasons[0] == "eos"

    # Stop strings: the text of a token row 2 produces at step 5 (and per-row stops).
    text = free.texts[2]
    stop = TOK.piece(free.tokens[2][5])
    assert stop
    engine = Engine(CFG, params, TOK, eos_ids=(), **BUCKETS)
    res = engine.generate(PROMPTS, max_new_tokens=16, stop=[stop])
    for i in range(len(PROMPTS)):
        want, stopped = stops.truncate_at_stop(free.texts[i], [stop])
        assert res.texts[i] == want
        assert res.finish_reasons[i] == ("stop" if stopped else "length")
        if stopped:  # the device stopped the row at the token that completed the stop string
            assert len(res.tokens[i]) < 16
            assert stop in TOK.decode(res.tokens[i]) and stop not in TOK.decode(res.tokens[i][:-1])
    assert res.texts[2] == text[: text.index(stop)]
    per_row = engine.generate(PROMPTS, max_new_tokens=16, stop=[(), (), [stop], (), ()])
    assert per_row.texts[2] == res.texts[2] and per_row.texts[0] == free.texts[0]


def test_long_prompt_policy(params):
    long = "a long prompt that does not fit " * 2  # 64 chars + BOS
    engine = Engine(CFG, params, TOK, max_prompt_len=20, **BUCKETS)
    got = engine.generate([long, "short"], max_new_tokens=6)
    kept = ([2] + TOK.encode(long))[-20:]
    assert got.prompt_tokens[0] == kept
    # Same as running those 20 tokens directly (no BOS added), and > sliding window 8.
    raw = Engine(CFG, params, TOK, add_bos=False, **BUCKETS)
    np.testing.assert_array_equal(raw.generate([TOK.decode(kept)], max_new_tokens=6).tokens[0],
                                  got.tokens[0])  # fmt: skip
    strict = Engine(CFG, params, TOK, max_prompt_len=20, truncate="error", **BUCKETS)
    with pytest.raises(ValueError, match="more than the allowed 20"):
        strict.generate([long], max_new_tokens=6)


def test_sampling_reproducible_with_key(params):
    engine = Engine(CFG, params, TOK, **BUCKETS)
    kw = dict(max_new_tokens=12, temperature=1.5, top_p=0.9)
    a = engine.generate(PROMPTS, key=jax.random.key(1), **kw)
    b = engine.generate(PROMPTS, key=jax.random.key(1), **kw)
    c = engine.generate(PROMPTS, key=jax.random.key(2), **kw)
    assert a.texts == b.texts
    assert a.texts != c.texts
    with pytest.raises(ValueError, match="key"):
        engine.generate(PROMPTS, temperature=1.0, max_new_tokens=2)


@pytest.mark.parametrize("data,model", [(8, 1), (4, 2)])
def test_sharded_equals_one_device(params, data, model):
    assert len(jax.devices()) >= 8
    stack = lora_stack()
    ids = [0, 3, -1, 1, 2]
    one = Engine(
        CFG,
        params,
        TOK,
        experts=stack,
        mesh=sharding.make_mesh(1, devices=jax.devices()[:1]),
        **BUCKETS,
    )
    mesh = sharding.make_mesh(data=data, model=model)
    many = Engine(CFG, params, TOK, experts=stack, mesh=mesh, **BUCKETS)
    a = one.generate(PROMPTS, ids, max_new_tokens=10, return_logits=True)
    b = many.generate(PROMPTS, ids, max_new_tokens=10, return_logits=True)
    for x, y in zip(a.tokens, b.tokens, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    if model > 1:
        q = many.params["layers"][0]["attn"]["q_proj"]["kernel"]
        assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model")


def test_rows_are_chunked_by_length_bucket(params, monkeypatch):
    """With a short answer budget, a short prompt does not pay for a long neighbour's padding
    (two calls), and results keep their order."""
    engine = Engine(CFG, params, TOK, length_buckets=(8, 512), new_token_buckets=(16,))
    prompts = ["ab", "x y " * 100, "cd", "y z " * 110]
    together = engine.generate(prompts, max_new_tokens=3)
    seen = []
    run = engine._run

    def spy(group, call, prompt_ids, *args, **kwargs):
        seen.append(sorted(len(p) for p in prompt_ids))
        return run(group, call, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(engine, "_run", spy)
    again = engine.generate(prompts, max_new_tokens=3)
    assert len(seen) == 2 and sorted(seen)[0] == [3, 3]  # BOS + text: one call per bucket
    assert all(8 < n <= 512 for n in sorted(seen)[1])
    assert again.texts == together.texts
    for prompt, text in zip(prompts, together.texts, strict=True):
        assert engine.generate([prompt], max_new_tokens=3).texts == [text]


def test_costs_count_every_generate_call(params):
    engine = Engine(CFG, params, TOK, **BUCKETS)
    a = engine.generate(PROMPTS, max_new_tokens=5)
    b = engine.generate(PROMPTS[:2], max_new_tokens=3)
    assert engine.generate([], max_new_tokens=3).costs.generate_calls == 0
    assert a.costs.rows == 5 and a.costs.generate_calls == 1
    assert a.costs.prompt_tokens == sum(len(p) for p in a.prompt_tokens)
    assert a.costs.generated_tokens == int(a.num_tokens.sum()) > 0
    assert engine.costs == a.costs + b.costs and engine.costs.generate_calls == 2
    assert (engine.costs - b.costs).as_dict() == a.costs.as_dict()


def test_expert_kinds_and_swaps(params):
    with pytest.raises(TypeError, match="LoraStack"):
        Engine(CFG, params, TOK, experts={"layers": ()}, **BUCKETS)
    other = CFG.replace(ffn_dim=48)
    with pytest.raises(ValueError, match="expert params"):
        Engine(CFG, params, TOK, experts=fe.stack_params([random_params(other)], other))
    engine = Engine(CFG, params, TOK, **BUCKETS)
    assert engine.n_experts == 0 and engine.experts is None
    engine.set_experts(lora_stack(n_experts=2))
    assert isinstance(engine.experts, expert_sets.LoraExperts) and engine.n_experts == 2
    engine.set_experts(expert_sets.LoraExperts(lora_stack(n_experts=2, seed=3)))
    with pytest.raises(ValueError, match="tree structure"):
        engine.set_experts(fe.stack_params([random_params(CFG)], CFG))
    full = Engine(CFG, params, TOK, experts=fe.stack_params([random_params(CFG)], CFG))
    assert isinstance(full.experts, expert_sets.FullWeightExperts) and full.n_experts == 1
