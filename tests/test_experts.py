"""Pool building: all experts trained in one batched step, each only on its own slice."""

import jax
import numpy as np
import pytest

from hs_jax.experts import lora
from hs_jax.experts.pool import Example, SFTConfig, build_or_load_pool, train_pool
from hs_jax.models import init_params, tiny_config
from hs_jax.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def setup(gemma3_270m_gguf):
    tokenizer = load_tokenizer(gemma3_270m_gguf)
    cfg = tiny_config("gemma3").replace(vocab_size=len(tokenizer))
    return cfg, init_params(cfg, seed=0), tokenizer


YES = [Example(f"Is {i} even? Answer:", " Yes" if i % 2 == 0 else " No") for i in range(8)]
COLOR = [Example(f"Colour of item {i}? Answer:", " red") for i in range(8)]
CITY = [Example(f"Capital number {i}? Answer:", " Paris") for i in range(8)]
SFT = SFTConfig(rank=4, targets=("q_proj", "v_proj", "up_proj"), steps=12, learning_rate=3e-2)


def _leaves(stack, i):
    return [np.asarray(x) for x in jax.tree.leaves(lora.expert(stack, i))]


def test_training_lowers_loss_and_is_deterministic(setup):
    cfg, params, tok = setup
    stack, losses = train_pool(cfg, params, tok, [YES, COLOR], SFT)
    # A random tiny model starts near ln(vocab) = 12.5; LoRA moves it measurably in 12 steps.
    assert losses[-3:].mean() < losses[:3].mean() - 0.2
    again, losses_again = train_pool(cfg, params, tok, [YES, COLOR], SFT)
    np.testing.assert_array_equal(losses, losses_again)
    for x, y in zip(jax.tree.leaves(stack), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(x, y)


def test_experts_only_learn_from_their_own_slice(setup):
    """Expert 0 ends bitwise equal whatever expert 1 is trained on: one batched step never
    mixes gradients of different experts."""
    cfg, params, tok = setup
    with_color, _ = train_pool(cfg, params, tok, [YES, COLOR], SFT)
    with_city, _ = train_pool(cfg, params, tok, [YES, CITY], SFT)
    for x, y in zip(_leaves(with_color, 0), _leaves(with_city, 0), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(_leaves(with_color, 1), _leaves(with_city, 1), strict=True)
    )


def test_pool_saved_as_peft_and_reloaded_without_training(setup, tmp_path, monkeypatch):
    cfg, params, tok = setup
    names = ["parity", "colour"]
    first = build_or_load_pool(tmp_path, cfg, params, tok, [YES, COLOR], names, SFT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, "hs_jax_pool.json"])

    def no_training(*args, **kwargs):
        raise AssertionError("the pool exists and must not be trained again")

    monkeypatch.setattr("hs_jax.experts.pool.train_pool", no_training)
    second = build_or_load_pool(tmp_path, cfg, params, tok, [YES, COLOR], names, SFT)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_bad_sft_config():
    with pytest.raises(ValueError, match="steps"):
        SFTConfig(steps=0)


def test_last_layers_adapts_only_the_top_of_the_model(setup, tmp_path):
    cfg, params, tok = setup
    sft = SFTConfig(rank=2, targets=("q_proj",), steps=2, last_layers=1)
    stack, losses = train_pool(cfg, params, tok, [YES], sft)
    assert [bool(layer) for layer in stack.layers] == [False] * (cfg.n_layers - 1) + [True]
    assert np.all(np.isfinite(losses))
    # Exported and re-imported, the untouched layers come back as exact zeros.
    lora.export_peft_adapter(stack, 0, tmp_path / "e0")
    back = lora.load_peft_pool([tmp_path / "e0"], cfg)
    assert not np.any(np.asarray(back.layers[0]["q_proj"]["b"]))
    np.testing.assert_array_equal(back.layers[-1]["q_proj"]["a"], stack.layers[-1]["q_proj"]["a"])
