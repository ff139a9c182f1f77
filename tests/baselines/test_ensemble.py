"""Pack of LLMs and the engine's ensemble: the mixture step against numpy, an ensemble of one
expert (or all weight on one) against that expert's own generation, identical experts against
one, multi-step generation against a per-expert forward-pass reference, prompt NLLs against the
model's logits, costs, call planning, sharding, and the method end to end on the tiny config."""

import json
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_engine import BUCKETS, PROMPTS, TOK, lora_stack, merged_params
from test_sampling import CFG, _forward_no_cache, random_params

import hs_jax
from hs_jax.engine import call_plan, sampling, token_choice
from hs_jax.engine.engine import Engine
from hs_jax.experts import full_models as fe
from hs_jax.experts.lora import LoraStack
from hs_jax.methods.ensemble import packllm_weights
from hs_jax.runtime import sharding

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


@pytest.fixture(scope="module")
def stack():
    return lora_stack(n_experts=3)


@pytest.fixture(scope="module")
def engine(params, stack):
    return Engine(CFG, params, TOK, experts=stack, **BUCKETS)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def reference_mixture(logits, weights, fusion):
    """[V] scores of one group's mixture, numpy float64: log sum_r w_r softmax(s_r), or
    sum_r w_r s_r."""
    logits, weights = np.asarray(logits, np.float64), np.asarray(weights, np.float64)
    if fusion == "logits":
        return (weights[:, None] * logits).sum(axis=0)
    return np.log((weights[:, None] * np.exp(log_softmax(logits))).sum(axis=0))


@pytest.mark.parametrize("fusion", token_choice.FUSIONS)
def test_mixture_step_against_numpy(fusion):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 64)).astype(np.float32) * 3
    # Groups of 3, 2 and 1 rows, a weight of 0 in the first, two padding rows.
    group = np.array([0, 0, 0, 1, 1, 2, 6, 7], np.int32)
    weights = np.array([0.5, 0.0, 0.5, 0.2, 0.8, 1.0, 1.0, 1.0], np.float32)
    got = np.asarray(token_choice.mixture_scores(jnp.asarray(logits), weights, group, fusion))
    choice = token_choice.MixtureGreedy(jnp.asarray(weights), jnp.asarray(group), fusion=fusion)
    tokens, fell_back = choice(None, None, jnp.asarray(logits), jax.random.key(0), None)
    assert int(fell_back) == 0
    for g in (0, 1, 2, 6, 7):
        rows = group == g
        want = reference_mixture(logits[rows], weights[rows], fusion)
        np.testing.assert_allclose(got[g], want, rtol=1e-5, atol=1e-5)
        assert (np.asarray(tokens)[rows] == np.argmax(want)).all()
    assert np.isneginf(got[3]).all() if fusion == "probs" else (got[3] == 0).all()
    # One row of weight 1 (probabilities): its own log-softmax, unchanged.
    own = np.asarray(jax.nn.log_softmax(jnp.asarray(logits[5])))
    if fusion == "probs":
        np.testing.assert_array_equal(got[2], own)
    with pytest.raises(ValueError, match="fusion"):
        token_choice.mixture_scores(jnp.asarray(logits), weights, group, "votes")


@pytest.mark.parametrize("fusion", token_choice.FUSIONS)
def test_one_expert_ensemble_equals_its_own_generation(engine, fusion):
    kw = dict(max_new_tokens=10, fusion=fusion)
    for e in range(3):
        alone = engine.generate(PROMPTS, e, max_new_tokens=10)
        one = engine.generate_ensemble(PROMPTS, [e], [1.0], **kw)
        onehot = engine.generate_ensemble(PROMPTS, [0, 1, 2], np.eye(3)[e], **kw)
        for a, b, c in zip(alone.tokens, one.tokens, onehot.tokens, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        assert alone.texts == one.texts == onehot.texts
        assert alone.finish_reasons == one.finish_reasons
    # A different expert per prompt ([n, k] ids and weights) and calls of 2 prompts x 2 rows.
    ids = np.array([[0, 1], [2, 0], [1, 2], [0, 2], [2, 1]])
    w = np.array([[1, 0], [0, 3], [1, 0], [0, 1], [0.5, 0]])
    chosen = [int(ids[i, np.argmax(w[i])]) for i in range(5)]
    small = Engine(CFG, engine.params, TOK, experts=engine.experts, max_batch=4, **BUCKETS)
    got = small.generate_ensemble(PROMPTS, ids, w, **kw)
    want = engine.generate(PROMPTS, chosen, max_new_tokens=10)
    for a, b in zip(got.tokens, want.tokens, strict=True):
        np.testing.assert_array_equal(a, b)
    # The experts really differ (else the checks above prove little).
    outs = [engine.generate(PROMPTS, e, max_new_tokens=10).texts for e in range(3)]
    assert outs[0] != outs[1] and outs[1] != outs[2]


def test_identical_experts_equal_one(params, stack):
    twin = LoraStack(
        tuple(
            {name: {k: np.stack([v[0], v[0]]) for k, v in entry.items()}
             for name, entry in layer.items()}
            for layer in stack.layers
        )
    )  # fmt: skip
    engine = Engine(CFG, params, TOK, experts=twin, **BUCKETS)
    alone = engine.generate(PROMPTS, 0, max_new_tokens=10)
    for fusion in token_choice.FUSIONS:
        for w in ([0.5, 0.5], [0.1, 0.9], [3.0, 1.0]):
            got = engine.generate_ensemble(PROMPTS, [0, 1], w, max_new_tokens=10, fusion=fusion)
            for a, b in zip(got.tokens, alone.tokens, strict=True):
                np.testing.assert_array_equal(a, b)


def reference_ensemble(expert_params, weights, prompt, n_new, fusion, width=48):
    """Greedy decoding of the mixture by full forward passes of each expert (merged weights,
    no cache, numpy mixture): the independent reference of `generate_ensemble`."""
    seq = list(prompt)
    for _ in range(n_new):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(seq)] = seq
        positions = np.where(np.arange(width) < len(seq), np.arange(width), -1)[None]
        logits = [
            np.asarray(_forward_no_cache(p, tokens, positions)[0, len(seq) - 1])
            for p in expert_params
        ]
        seq.append(int(np.argmax(reference_mixture(np.stack(logits), weights, fusion))))
    return seq[len(prompt) :]


@pytest.mark.parametrize("fusion", token_choice.FUSIONS)
def test_ensemble_generation_against_forward_reference(params, stack, engine, fusion):
    merged = [merged_params(params, stack, e) for e in range(3)]
    w = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    prompts = PROMPTS[:2]
    got = engine.generate_ensemble(prompts, [0, 1, 2], w, max_new_tokens=8, fusion=fusion)
    for i, prompt in enumerate(prompts):
        ids = [2] + TOK.encode(prompt)
        want = reference_ensemble(merged, w[i], ids, 8, fusion)
        np.testing.assert_array_equal(got.tokens[i], want)
    # The mixture is not just one of the experts.
    singles = [engine.generate(prompts, e, max_new_tokens=8).tokens for e in range(3)]
    assert any(all(not np.array_equal(got.tokens[i], s[i]) for s in singles) for i in range(2))


def test_prompt_nll_against_the_model_logits(params, stack, engine, monkeypatch):
    ids = [0, 2, -1, 1, 0]
    scores = engine.prompt_nll(PROMPTS, ids)
    for i, e in enumerate(ids):
        p = params if e < 0 else merged_params(params, stack, e)
        seq = [2] + TOK.encode(PROMPTS[i])
        tokens = np.asarray([seq], np.int32)
        logits = _forward_no_cache(p, tokens, np.arange(len(seq))[None])[0]  # [T, V]
        lp = log_softmax(np.asarray(logits))
        nll = -lp[np.arange(len(seq) - 1), seq[1:]]
        assert scores.num_scored[i] == len(seq) - 1
        np.testing.assert_allclose(scores.nll_sum[i], nll.sum(), rtol=1e-5)
        np.testing.assert_allclose(scores.mean_nll[i], nll.mean(), rtol=1e-5)
    assert scores.prompt_tokens[0] == [2] + TOK.encode(PROMPTS[0])
    # The head in chunks of the sequence (a longer bucket, 8 slots a chunk): the same sums.
    monkeypatch.setattr(sampling, "NLL_CHUNK_ELEMENTS", 8 * 8 * CFG.vocab_size)
    chunked = Engine(
        CFG, params, TOK, experts=stack, length_buckets=(48,), new_token_buckets=(16,),
        batch_buckets=(8,),
    ).prompt_nll(PROMPTS, ids)  # fmt: skip
    np.testing.assert_allclose(chunked.nll_sum, scores.nll_sum, rtol=1e-5)
    assert sampling._nll_chunk(8, 48, CFG.vocab_size) == 8
    # No retrace for new prompts of the same bucket.
    traces = sampling.TRACES["prompt_nll"]
    engine.prompt_nll(PROMPTS[::-1], ids)
    assert sampling.TRACES["prompt_nll"] == traces
    one = engine.prompt_nll(["", "ab"], 0)
    assert one.num_scored.tolist() == [0, 2] and np.isnan(one.mean_nll[0])


def test_costs_count_every_row(params, stack):
    engine = Engine(CFG, params, TOK, experts=stack, **BUCKETS)
    out = engine.generate_ensemble(PROMPTS, [0, 1, 2], [1, 1, 1], max_new_tokens=5)
    assert out.costs.rows == 15 and out.costs.generate_calls == 1
    assert out.costs.prompt_tokens == 3 * sum(len(p) for p in out.prompt_tokens)
    assert out.costs.generated_tokens == 3 * int(out.num_tokens.sum()) > 0
    scores = engine.prompt_nll(PROMPTS, [0, 1, 2, 0, 1])
    assert scores.costs.rows == 5 and scores.costs.generated_tokens == 0
    assert scores.costs.prompt_tokens == sum(len(p) for p in scores.prompt_tokens)
    assert engine.costs == out.costs + scores.costs


def test_bad_ensembles_are_refused(params, stack, engine):
    for w, match in (([1, -1, 1], ">= 0"), ([0, 0, 0], "all be 0"), ([1, 1], "shape")):
        with pytest.raises(ValueError, match=match):
            engine.generate_ensemble(PROMPTS, [0, 1, 2], w, max_new_tokens=3)
    with pytest.raises(ValueError, match="fusion"):
        engine.generate_ensemble(PROMPTS, [0], [1], max_new_tokens=3, fusion="votes")
    with pytest.raises(ValueError, match="out of range"):
        engine.generate_ensemble(PROMPTS, [0, 3], [1, 1], max_new_tokens=3)
    with pytest.raises(ValueError, match="max_batch"):
        Engine(CFG, params, TOK, experts=lora_stack(n_experts=3), max_batch=2).generate_ensemble(
            PROMPTS, [0, 1, 2], [1, 1, 1], max_new_tokens=3
        )
    full = Engine(CFG, params, TOK, experts=fe.stack_params([params, params], CFG), **BUCKETS)
    with pytest.raises(ValueError, match="one program"):
        full.generate_ensemble(PROMPTS, [0, 1], [1, 1], max_new_tokens=3)
    assert engine.generate_ensemble([], [0], [1], max_new_tokens=3).texts == []


def test_plan_keeps_a_prompts_rows_in_one_call():
    b = call_plan.Buckets.make((8, 64), (16,), (1, 2, 4, 8), max_batch=8)
    cost = call_plan.CostModel(1.0, 16)
    plan = call_plan.plan_calls([3] * 7, 4, b, cost, rows_per_prompt=3)
    assert [len(c.rows) for c in plan] == [2, 2, 2, 1]  # 8 rows hold 2 prompts of 3
    assert all(c.batch >= 3 * len(c.rows) and c.batch <= 8 for c in plan)
    assert sorted(r for c in plan for r in c.rows) == list(range(7))
    assert call_plan.plan_calls([3] * 7, 4, b, cost) == call_plan.plan_calls(
        [3] * 7, 4, b, cost, rows_per_prompt=1
    )
    with pytest.raises(ValueError, match="rows_per_prompt"):
        call_plan.plan_calls([3], 4, b, cost, rows_per_prompt=9)


def test_sharded_ensemble_equals_one_device(params, stack, engine):
    mesh = sharding.make_mesh(data=8, model=1)
    many = Engine(CFG, params, TOK, experts=stack, mesh=mesh, **BUCKETS)
    w = np.array([0.6, 0.3, 0.1])
    a = engine.generate_ensemble(PROMPTS, [0, 1, 2], w, max_new_tokens=8)
    b = many.generate_ensemble(PROMPTS, [0, 1, 2], w, max_new_tokens=8)
    for x, y in zip(a.tokens, b.tokens, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(
        many.prompt_nll(PROMPTS, 1).nll_sum, engine.prompt_nll(PROMPTS, 1).nll_sum, rtol=1e-5
    )


def test_packllm_weights():
    nll = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, np.nan]])
    w = packllm_weights(nll, 1.0)
    e = np.exp(-nll[0])
    np.testing.assert_allclose(w[0], e / e.sum())  # proportional to 1 / perplexity
    np.testing.assert_allclose(w[1], [1 / 3] * 3)
    sharp = packllm_weights(nll[:1], 0.1)
    assert sharp[0, 0] > w[0, 0] and np.isclose(sharp.sum(), 1.0)
    with pytest.raises(ValueError, match="tau"):
        packllm_weights(nll, 0.0)


def test_pack_llm_end_to_end(tmp_path):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = "pack_llm"
    c.outputs.save_prompts = True
    results = hs_jax.run(c, tmp_path / "run")
    best = results["best_system"]
    assert results["method"] == "pack_llm" and best["kind"] == "ensemble"
    assert results["evaluations"] == 1 and results["iterations"] == 1
    assert len(best["test_item_scores"]) == results["n_test"]
    assert best["test_utility"] == pytest.approx(np.mean(best["test_item_scores"]))
    assert best["assignment"] == [results["best_single"]["expert"]]
    weights = best["details"]["dev_mean_weights"]
    assert len(weights) == len(results["experts"]) and sum(weights) == pytest.approx(1.0)
    assert len(results["best_system_test_outputs"]["0"]) == results["n_test"]
    archive = [json.loads(x) for x in (tmp_path / "run" / "archive.jsonl").read_text().splitlines()]
    assert len(archive) == 1 and archive[0]["dev_utility"] == pytest.approx(best["dev_utility"])
    audit = (tmp_path / "run" / "test_prompts.jsonl").read_text().splitlines()
    assert len(audit) == results["n_test"]
    # The ensemble's rows are counted: more rows than the singles' node calls alone.
    assert results["cost"]["rows"] > results["cost"]["node_rows"]
