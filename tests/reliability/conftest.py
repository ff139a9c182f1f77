"""Fixtures shared by the reliability tests."""

import pytest


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """(model config, a valid exported PEFT folder adapting q_proj and v_proj of the tiny
    Gemma 3)."""
    import jax

    from hs_jax.experts import lora
    from hs_jax.models.gemma_config import tiny_config

    config = tiny_config("gemma3")
    stack = lora.init_lora_stack(
        config, 1, 2, ("q_proj", "v_proj"), jax.random.key(0), scheme="random", init_scale=0.1
    )
    folder = tmp_path_factory.mktemp("peft") / "good"
    lora.export_peft_adapter(stack, 0, folder)
    return config, folder
