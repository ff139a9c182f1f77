"""Gemma models: config, Flax NNX decoder, checkpoint conversion and loading."""

from hs_jax.models.convert import (
    CheckpointError,
    config_from_hf,
    init_params,
    params_from_state_dict,
    state_dict_from_params,
)
from hs_jax.models.gemma import Gemma, KVCache, abstract_model, from_params
from hs_jax.models.gemma_config import PRESETS, GemmaConfig, tiny_config
from hs_jax.models.gguf_io import PYPI_MODEL_NAME, GGUFError, pypi_gguf_path, read_gguf
from hs_jax.models.loading import load_model
from hs_jax.models.safetensors_io import load_hf_dir
from hs_jax.models.tiny_vocab import tiny_tokenizer, tiny_vocab_size
from hs_jax.models.tokenizer import GemmaTokenizer, TextTokenizer, load_tokenizer

__all__ = [
    "PRESETS",
    "PYPI_MODEL_NAME",
    "CheckpointError",
    "GGUFError",
    "Gemma",
    "GemmaConfig",
    "GemmaTokenizer",
    "KVCache",
    "TextTokenizer",
    "abstract_model",
    "config_from_hf",
    "from_params",
    "init_params",
    "load_hf_dir",
    "load_model",
    "load_tokenizer",
    "params_from_state_dict",
    "pypi_gguf_path",
    "read_gguf",
    "state_dict_from_params",
    "tiny_config",
    "tiny_tokenizer",
    "tiny_vocab_size",
]
