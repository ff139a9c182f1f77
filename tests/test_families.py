"""Llama, Mistral and Qwen 2 / 3 in the shared decoder against transformers' PyTorch models.

Tiny random checkpoints are built with transformers (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM), saved with save_pretrained and read back by our loader; float32
logits of a left-padded batch agree to 1e-4 relative, and the engine's greedy tokens (the jitted
sampler, KV cache, the greedy head with and without its screen) equal transformers' `generate` over
32 steps. The variants cover GQA with 2 kv heads, Llama 3's rope scaling, tied and untied heads, a
Mistral prompt 4x its sliding window, Qwen 2's q/k/v biases and Qwen 3's q/k norms. Per family, a
batch mixing LoRA experts equals per-expert runs and 8 CPU devices equal one; a written HF folder
loads in transformers.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from peft import LoraConfig, get_peft_model
from test_engine import TOK, merged_params
from test_models import RTOL, _left_padded_batch, _rel_err
from test_sampling import random_params

from hs_jax.engine.engine import Engine
from hs_jax.experts import lora
from hs_jax.experts.lora import LoraStack
from hs_jax.models import (
    PRESETS,
    config_from_hf,
    from_params,
    init_params,
    params_from_state_dict,
    state_dict_from_params,
    tiny_config,
)
from hs_jax.models.convert import CheckpointError
from hs_jax.models.safetensors_io import load_hf_dir
from hs_jax.runtime import sharding

VARIANTS = {
    # name: (family, changes to tiny_config(family))
    "llama3_untied": ("llama", {}),
    "llama3_tied": ("llama", {"tie_embeddings": True}),
    "llama2": ("llama", {"rope_llama3": None, "rope_scale_global": 1.0, "n_kv_heads": 4}),
    "mistral_window": ("mistral", {}),
    "qwen2_bias_tied": ("qwen2", {}),
    "qwen3_qk_norm": ("qwen3", {}),
}


def _config(variant):
    family, changes = VARIANTS[variant]
    return tiny_config(family).replace(**changes)


def _hf_config(config):
    """transformers config of the same architecture."""
    c = config
    rope = {"rope_type": "default", "rope_theta": c.rope_base_global}
    if c.rope_llama3 is not None:
        r = c.rope_llama3
        rope = {
            "rope_type": "llama3",
            "rope_theta": c.rope_base_global,
            "factor": c.rope_scale_global,
            "low_freq_factor": r.low_freq_factor,
            "high_freq_factor": r.high_freq_factor,
            "original_max_position_embeddings": r.original_max_positions,
        }
    common = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        rms_norm_eps=c.rms_eps,
        tie_word_embeddings=c.tie_embeddings,
        rope_parameters=rope,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    if c.family == "mistral":
        return tf.MistralConfig(**common, sliding_window=c.sliding_window)
    if c.family == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False)
    if c.family == "qwen3":
        return tf.Qwen3Config(**common, attention_bias=False, use_sliding_window=False)
    return tf.LlamaConfig(**common)


_HF_MODELS = {
    "llama": tf.LlamaForCausalLM,
    "mistral": tf.MistralForCausalLM,
    "qwen2": tf.Qwen2ForCausalLM,
    "qwen3": tf.Qwen3ForCausalLM,
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf_checkpoint(request, tmp_path_factory):
    """(our config, torch model, saved dir): random weights large enough that greedy text
    varies, norm weights spread around their init of 1."""
    config = _config(request.param)
    torch.manual_seed(0)
    model = _HF_MODELS[config.family](_hf_config(config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.25)
    model.generation_config.eos_token_id = None
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    model.save_pretrained(path)
    return config, model, path


def test_logits_match_transformers(hf_checkpoint):
    """Left-padded batch, prompts 2.5x the sliding window: logits agree to 1e-4 relative."""
    want, hf_model, path = hf_checkpoint
    config, params = load_hf_dir(path, param_dtype="float32")
    assert config == want  # config.json parsed back to the same architecture
    assert ("lm_head" in params) == (not config.tie_embeddings)
    tokens, mask, positions = _left_padded_batch(config.vocab_size, [20, 13, 5], 20)
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(positions, 0), dtype=torch.long),
        ).logits.numpy()
    logits, _ = from_params(config, params)(jnp.asarray(tokens), jnp.asarray(positions))
    assert np.isfinite(np.asarray(logits)).all()
    assert _rel_err(logits, ref, mask == 1) <= RTOL


PROMPTS = ["Hello there, how are you today?", "abc", "The quick brown fox"]


# The screened head reads the head table (tied or untied): both ways for one variant of each.
_BOTH_HEADS = ("llama3_untied", "qwen2_bias_tied")


def test_greedy_tokens_match_transformers_generate(hf_checkpoint):
    """32 greedy steps of the engine (a left-padded batch, KV cache, the screened greedy head)
    equal transformers' generate on each prompt alone."""
    _check_greedy(hf_checkpoint, screen=True)


@pytest.mark.parametrize("hf_checkpoint", _BOTH_HEADS, indirect=True)
def test_greedy_tokens_with_the_plain_head(hf_checkpoint):
    """The same with the head screen off, for a tied and an untied head (the plain head is
    one code path for every variant)."""
    _check_greedy(hf_checkpoint, screen=False)


def _check_greedy(hf_checkpoint, screen: bool) -> None:
    config, hf_model, path = hf_checkpoint
    _, params = load_hf_dir(path, param_dtype="float32")
    engine = Engine(
        config,
        params,
        TOK,
        eos_ids=(),
        length_buckets=(48,),
        new_token_buckets=(32,),
        batch_buckets=(4,),
        screen_head_min_rows=1 if screen else None,
    )
    out = engine.generate(PROMPTS, max_new_tokens=32)
    for i, prompt in enumerate(out.prompt_tokens):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([prompt], dtype=torch.long),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                pad_token_id=0,
            )[0, len(prompt) :].numpy()
        np.testing.assert_array_equal(out.tokens[i], ref, err_msg=f"prompt {i}")
    assert len(set(out.tokens[0].tolist())) > 3  # the text varies: the test sees the model
    if config.family == "mistral":
        assert len(out.prompt_tokens[0]) > 3 * config.sliding_window


def test_state_dict_round_trip_and_names():
    for variant in VARIANTS:
        config = _config(variant)
        params = init_params(config, seed=5, norm_std=0.1)
        sd = state_dict_from_params(config, params)
        assert ("lm_head.weight" in sd) == (not config.tie_embeddings)
        biases = [k for k in sd if k.endswith(".bias")]
        assert len(biases) == (3 * config.n_layers if config.qkv_bias else 0)
        assert any(".q_norm." in k for k in sd) == config.use_qk_norm
        again = state_dict_from_params(config, params_from_state_dict(config, sd))
        assert sd.keys() == again.keys()
        for k in sd:
            np.testing.assert_array_equal(sd[k], again[k])


def test_untied_head_in_a_tied_config_is_refused():
    config = _config("llama3_tied")
    sd = state_dict_from_params(config, init_params(config, seed=1))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1.0
    with pytest.raises(CheckpointError, match=r"untied output head"):
        params_from_state_dict(config, sd)
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # a tied copy: ignored
    params_from_state_dict(config, sd)


def test_config_from_hf_matches_presets():
    """Real checkpoints' config.json keys (old-style rope_theta / rope_scaling included)."""
    llama31 = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128_256,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500_000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }
    assert config_from_hf(llama31) == PRESETS["llama3.1-8b"]
    llama32 = {
        **llama31,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rope_scaling": {**llama31["rope_scaling"], "factor": 32.0},
    }
    assert config_from_hf(llama32) == PRESETS["llama3.2-1b"]
    llama2 = tf.LlamaConfig(rms_norm_eps=1e-5).to_dict()
    assert config_from_hf(llama2) == PRESETS["llama2-7b"]
    mistral01 = tf.MistralConfig(rms_norm_eps=1e-5).to_dict()
    assert config_from_hf(mistral01) == PRESETS["mistral-7b-v0.1"]
    mistral03 = {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "vocab_size": 32_768,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1_000_000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    assert config_from_hf(mistral03) == PRESETS["mistral-7b-v0.3"]
    qwen25 = dict(
        vocab_size=151_936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=32_768,
        max_window_layers=21,
    )
    assert config_from_hf({"model_type": "qwen2", **qwen25}) == PRESETS["qwen2.5-0.5b"]
    hf_qwen = tf.Qwen2Config(**{**qwen25, "rope_parameters": {"rope_theta": 1e6}}).to_dict()
    assert config_from_hf(hf_qwen) == PRESETS["qwen2.5-0.5b"]
    qwen3 = dict(
        vocab_size=151_936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        attention_bias=False,
    )
    assert config_from_hf({"model_type": "qwen3", **qwen3}) == PRESETS["qwen3-0.6b"]
    # The published counts (Llama 3.2 1B's 1.24B is its tied count).
    counts = {"llama3.1-8b": 8_030_261_248, "mistral-7b-v0.3": 7_248_023_552}
    counts["llama3.2-1b"] = 1_235_814_400
    counts["qwen2.5-0.5b"], counts["qwen2.5-7b"] = 494_032_768, 7_615_616_512
    counts["qwen3-0.6b"] = 596_049_920
    for name, n in counts.items():
        assert PRESETS[name].num_params() == n, name


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_act": "gelu"}, "activation"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ],
)
def test_unsupported_llama_configs_are_refused(changes, match):
    cfg = {**tf.LlamaConfig().to_dict(), **changes}
    if "rope_scaling" in changes:
        cfg.pop("rope_parameters")
    with pytest.raises(CheckpointError, match=match):
        config_from_hf(cfg, source="x/config.json")


@pytest.mark.parametrize("variant", ["llama3_untied", "mistral_window", "qwen2_bias_tied"])
def test_written_folder_loads_in_transformers(variant, tmp_path):
    """A full-weight expert exported by `save_hf_dir` is read by transformers as the same model
    (logits to 1e-4) and by our loader as the same config and weights."""
    from hs_jax.models.hf_writer import save_hf_dir

    config = _config(variant)
    params = init_params(config, seed=7, norm_std=0.3)
    save_hf_dir(config, params, tmp_path)
    hf_model = tf.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    assert type(hf_model) is _HF_MODELS[config.family]
    tokens, mask, positions = _left_padded_batch(config.vocab_size, [20, 9], 20, seed=2)
    with torch.no_grad():
        ref = hf_model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(positions, 0), dtype=torch.long),
        ).logits.numpy()
    logits, _ = from_params(config, params)(jnp.asarray(tokens), jnp.asarray(positions))
    assert _rel_err(logits, ref, mask == 1) <= RTOL
    again, _ = load_hf_dir(tmp_path, param_dtype="float32")
    assert again == config


FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ENGINE_PROMPTS = ["Hello there, how are you today?", "abc", "The quick brown fox", "z"]
ENGINE_BUCKETS = dict(length_buckets=(32,), new_token_buckets=(16,), batch_buckets=(4,))


def _engine_params(config):
    """test_sampling's random weights (greedy text that varies), norms around what multiplies
    by 1 in this family."""

    def shift(path, w):
        return w + (1.0 - config.norm_offset) if sharding._path_str(path).endswith("scale") else w

    return jax.tree_util.tree_map_with_path(shift, random_params(config))


def _family_lora(config, n_experts=3, rank=4, seed=0):
    c = config
    dims = {
        "q_proj": (c.d_model, c.q_dim),
        "v_proj": (c.d_model, c.kv_dim),
        "o_proj": (c.q_dim, c.d_model),
        "up_proj": (c.d_model, c.ffn_dim),
        "down_proj": (c.ffn_dim, c.d_model),
    }
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(c.n_layers):
        entry = {}
        for name, (d_in, d_out) in dims.items():
            a = rng.standard_normal((n_experts, d_in, rank)) / np.sqrt(d_in)
            b = 0.5 * rng.standard_normal((n_experts, rank, d_out))
            entry[name] = {"a": a.astype(np.float32), "b": b.astype(np.float32)}
        layers.append(entry)
    return LoraStack(tuple(layers))


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_lora_batch_equals_each_expert_alone_and_sharded(family):
    """Per family: a batch mixing LoRA experts equals each row alone with that expert's merged
    weights (W + a @ b), and the same batch on 8 CPU devices (data 4 x model 2: kv heads, the
    untied head and the kernels split) equals one device."""
    config = tiny_config(family)
    params = _engine_params(config)
    stack = _family_lora(config)
    ids = [0, 2, -1, 1]
    one_device = sharding.make_mesh(1, devices=jax.devices()[:1])
    engine = Engine(config, params, TOK, experts=stack, mesh=one_device, **ENGINE_BUCKETS)
    mixed = engine.generate(ENGINE_PROMPTS, ids, max_new_tokens=12, return_logits=True)
    base = Engine(config, params, TOK, **ENGINE_BUCKETS).generate(ENGINE_PROMPTS, max_new_tokens=12)
    for i, e in enumerate(ids):
        p = params if e < 0 else merged_params(params, stack, e)
        alone = Engine(config, p, TOK, **ENGINE_BUCKETS).generate(
            [ENGINE_PROMPTS[i]], max_new_tokens=12
        )
        np.testing.assert_array_equal(mixed.tokens[i], alone.tokens[0], err_msg=f"row {i}")
    assert sum(not np.array_equal(mixed.tokens[i], base.tokens[i]) for i in (0, 1, 3)) >= 2

    mesh = sharding.make_mesh(data=4, model=2)
    many = Engine(config, params, TOK, experts=stack, mesh=mesh, **ENGINE_BUCKETS)
    split = many.generate(ENGINE_PROMPTS, ids, max_new_tokens=12, return_logits=True)
    for x, y in zip(mixed.tokens, split.tokens, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(mixed.logits, split.logits, rtol=1e-5, atol=1e-5)
    head = many.params["embedder" if config.tie_embeddings else "lm_head"]["embedding"]
    assert head.sharding.spec == jax.sharding.PartitionSpec("model", None)


@pytest.mark.parametrize("preset", ["mistral-7b-v0.3", "llama3.1-8b", "qwen2.5-7b"])
def test_dry_run_plan_splits_the_untied_head(preset):
    """`--dry_run` for the paper's Table 4 base and the other 7-8B bases: every parameter
    counted once, the untied head split along 'model' like the embedding."""
    from test_memory import _config as plan_config

    from hs_jax.pipeline import memory_plan

    one = memory_plan.plan(plan_config(preset, "bfloat16", model=1, data=1), 8)
    model8 = memory_plan.plan(plan_config(preset, "bfloat16", model=8, data=1), 8)
    base = one.parts["base parameters"]
    assert base == PRESETS[preset].num_params() * 2
    assert base / 8 < model8.parts["base parameters"] < base / 7.9  # norms, biases replicated


def test_peft_adapter_matches_peft_logits(hf_checkpoint, tmp_path):
    """A PEFT LoRA adapter (all seven projections) on each variant's transformers model, applied
    by hs_jax as a 1-expert stack, gives peft's logits."""
    config, hf_model, path = hf_checkpoint
    _, params = load_hf_dir(path, param_dtype="float32")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    torch.manual_seed(3)
    peft_config = LoraConfig(init_lora_weights=False, r=4, lora_alpha=8, target_modules=targets)
    peft_model = get_peft_model(copy.deepcopy(hf_model), peft_config).eval()
    peft_model.save_pretrained(tmp_path)
    tokens, mask, positions = _left_padded_batch(config.vocab_size, [12, 7], 12, seed=5)
    with torch.no_grad():
        kw = dict(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(np.maximum(positions, 0), dtype=torch.long),
        )
        ref = peft_model(**kw).logits.numpy()
        base = hf_model(**kw).logits.numpy()
    stack = lora.load_peft_adapter(tmp_path, config)
    assert set(stack.targets) == set(targets)
    ours, _ = from_params(config, params)(
        jnp.asarray(tokens), jnp.asarray(positions), lora=stack, expert_ids=jnp.zeros(2, jnp.int32)
    )
    assert _rel_err(ours, ref, mask == 1) <= RTOL
    assert _rel_err(base, ref, mask == 1) > 1e-2  # the adapter changes the output
