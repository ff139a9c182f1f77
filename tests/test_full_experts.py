"""Full-weight experts: stacking n parameter sets, selecting one, architecture checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from hs_jax.experts import full_models as fe
from hs_jax.models.gemma import abstract_model, from_params
from hs_jax.models.gemma_config import tiny_config
from hs_jax.models.safetensors_io import load_hf_dir

TOKENS = np.array([[2, 5, 17, 33, 9, 61, 4, 88, 12, 7], [2, 40, 41, 42, 1, 90, 77, 6, 5, 5]])


def _random_state(config, seed):
    """A params state of `config` with random values (host RNG: no per-shape compiles)."""
    rng = np.random.default_rng(seed)
    _, abstract = abstract_model(config)
    return jax.tree.map(
        lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), abstract
    )


def _assert_same_params(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_stack_params_for_unstack_replace():
    config = tiny_config("gemma3")
    states = [_random_state(config, seed) for seed in range(3)]
    experts = fe.stack_params(states, config, names=["a", "b", "c"])
    assert experts.n_experts == 3 and experts.names == ("a", "b", "c")
    assert jax.tree.leaves(experts.params)[0].shape[0] == 3
    for i, state in enumerate(states):
        _assert_same_params(experts.params_for(i), state)
    _assert_same_params(experts.params_for(-1), states[2])
    for got, want in zip(fe.unstack_params(experts), states, strict=True):
        _assert_same_params(got, want)
    assert fe.num_params(experts) == 3 * config.num_params()

    # Leaf-wise maps (what PSO does) keep the static config and names.
    moved = jax.tree.map(lambda x: 0.5 * x, experts)
    assert moved.config == config and moved.names == experts.names

    swapped = fe.replace_expert(experts, 1, states[0])
    _assert_same_params(swapped.params_for(1), states[0])
    _assert_same_params(swapped.params_for(2), states[2])
    with pytest.raises(IndexError):
        experts.params_for(3)


def test_stack_mismatch_errors():
    config = tiny_config("gemma3")
    other = config.replace(ffn_dim=48)
    states = [_random_state(config, 0), _random_state(config, 1), _random_state(other, 2)]
    with pytest.raises(ValueError, match=r"expert 2 \('z'\).*ffn_dim = 48.*expert 0 \('x'\)"):
        fe.stack_params(states, [config, config, other], names=["x", "y", "z"])
    # Claimed one config, but a tensor has another shape: the tensor is named.
    with pytest.raises(ValueError, match=r"expert 2 \('z'\) tensor .*_proj.*kernel.*\[48"):
        fe.stack_params(states, config, names=["x", "y", "z"])
    gemma1 = tiny_config("gemma")
    with pytest.raises(ValueError, match="expert 1.*family"):
        fe.stack_params([states[0], _random_state(gemma1, 0)], [config, gemma1])
    with pytest.raises(ValueError, match="2 names for 3"):
        fe.stack_params(states, config, names=["x", "y"])
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), states[1])
    with pytest.raises(ValueError, match=r"expert 1 .*bfloat16"):
        fe.stack_params([states[0], bf16], config)


def _save_torch_model(folder, seed, **overrides):
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=4,
        attn_implementation="eager",
    )
    kw.update(overrides)
    if "num_hidden_layers" in overrides:
        kw["layer_types"] = ["sliding_attention"] * overrides["num_hidden_layers"]
    model = Gemma3ForCausalLM(Gemma3TextConfig(**kw)).float().eval()
    with torch.no_grad():  # HF initialises norms to zero; random ones make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(str(folder))
    return model


def test_load_full_experts_from_hf_dirs(tmp_path):
    folders = [tmp_path / f"m{i}" for i in range(3)]
    torch_models = [_save_torch_model(f, seed=i) for i, f in enumerate(folders)]
    experts = fe.load_full_experts(folders, param_dtype="float32")
    assert experts.n_experts == 3 and experts.names == tuple(str(f) for f in folders)
    config = experts.config
    for i, folder in enumerate(folders):
        _assert_same_params(experts.params_for(i), load_hf_dir(folder, param_dtype="float32")[1])

    @jax.jit
    def logits(params, tokens):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return from_params(config, params)(tokens, positions)[0]

    # Each selected expert is that checkpoint's model: same logits as transformers.
    outs = []
    for i, model in enumerate(torch_models):
        with torch.no_grad():
            ref = model(torch.tensor(TOKENS)).logits.numpy()
        outs.append(np.asarray(logits(experts.params_for(i), jnp.asarray(TOKENS, jnp.int32))))
        assert np.max(np.abs(outs[-1] - ref)) / np.max(np.abs(ref)) <= 1e-4
    assert np.max(np.abs(outs[0] - outs[1])) > 1e-3  # the experts really differ


def test_load_full_experts_architecture_mismatch(tmp_path):
    _save_torch_model(tmp_path / "a", seed=0)
    _save_torch_model(tmp_path / "b", seed=1, num_hidden_layers=2)
    with pytest.raises(ValueError, match=r"expert 1 \('.*b'\).*n_layers = 2.*expert 0"):
        fe.load_full_experts([tmp_path / "a", tmp_path / "b"], param_dtype="float32")
    with pytest.raises(ValueError, match="at least one"):
        fe.load_full_experts([])
