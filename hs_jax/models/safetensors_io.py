"""Load an HF checkpoint directory (config.json + safetensors, single file or sharded).

Handles Gemma, Gemma 2 and Gemma 3 text checkpoints, and the text part of multimodal Gemma 3
checkpoints (tensors under 'model.language_model.'; the vision tower is skipped). The
safetensors files are parsed here (header + memory map) so bfloat16 tensors need no torch, and
every failure names the file.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import nnx

from hs_jax.models.convert import (
    CheckpointError,
    LazyTensor,
    config_from_hf,
    params_from_state_dict,
)
from hs_jax.models.gemma_config import GemmaConfig, default_param_dtype

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"
# Multimodal Gemma 3 parts that are not the text decoder.
_VISION_PREFIXES = (
    "vision_tower.",
    "model.vision_tower.",
    "multi_modal_projector.",
    "model.multi_modal_projector.",
)


def _read_range(path: Path, start: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One tensor's bytes read into a fresh array (plain reads: no page of the file stays
    mapped once it is converted). The array lives in its own anonymous mapping, handed back to
    the system when it is freed, so reading a model tensor by tensor leaves no holes in the
    heap that the placed parameters would have to grow around."""
    nbytes = math.prod(shape) * dtype.itemsize
    out = np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), np.uint8)[:nbytes].view(dtype)
    out = out.reshape(shape)
    view = memoryview(out.reshape(-1).view(np.uint8))
    try:
        with open(path, "rb") as f:
            f.seek(start)
            done = 0
            while done < len(view):
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{path}: file ends inside a tensor (truncated?)")
                done += n
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file: {e}") from e
    return out


def read_safetensors(
    path: str | os.PathLike, *, lazy: bool = False
) -> dict[str, np.ndarray | LazyTensor]:
    """All tensors of one .safetensors file as read-only numpy arrays (memory mapped), or with
    `lazy` as `LazyTensor`s that read each tensor when asked (loading a model into a mesh)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: not a safetensors file (header length {n} exceeds the file size)"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read file: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (bad header: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if data_size else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} has a bad header entry {info}") from e
        if end - start != math.prod(shape) * dtype.itemsize or not 0 <= start <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} has data range [{start}, {end}) that does not fit "
                f"shape {shape} {info['dtype']} in {data_size} data bytes (truncated file?)"
            )
        if lazy:
            begin = 8 + n + start
            out[name] = LazyTensor(shape, functools.partial(_read_range, path, begin, dtype, shape))
        else:
            out[name] = data[start:end].view(dtype).reshape(shape)
    return out


def _shard_files(directory: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files of a checkpoint dir and, if sharded, the index's weight map."""
    index = directory / _INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable safetensors index ({e})") from e
        return [directory / f for f in sorted(set(weight_map.values()))], weight_map
    single = directory / _SINGLE
    if single.exists():
        return [single], None
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        raise CheckpointError(f"{directory}: no {_SINGLE}, {_INDEX} or *.safetensors file")
    return found, None


def read_hf_config(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a checkpoint directory."""
    path = Path(directory) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not an HF checkpoint directory)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e


def read_hf_state_dict(
    directory: str | os.PathLike, *, lazy: bool = False
) -> tuple[dict[str, np.ndarray | LazyTensor], dict]:
    """(HF-name state dict of the text decoder, tensor name -> source file) of a checkpoint dir
    (`lazy`: `LazyTensor`s, read when converted)."""
    directory = Path(directory)
    files, weight_map = _shard_files(directory)
    state_dict, sources = {}, {}
    for file in files:
        for name, value in read_safetensors(file, lazy=lazy).items():
            if name.startswith(_VISION_PREFIXES):
                continue
            if name in state_dict:
                raise CheckpointError(f"{file}: tensor {name!r} also appears in {sources[name]}")
            state_dict[name] = value
            sources[name] = str(file)
    if weight_map is not None:
        for name, file in weight_map.items():
            if name not in state_dict and not name.startswith(_VISION_PREFIXES):
                raise CheckpointError(
                    f"{directory / _INDEX}: tensor {name!r} is listed in {file} but not found there"
                )
    return state_dict, sources


def load_hf_dir(
    directory: str | os.PathLike, *, param_dtype: str | None = None, mesh=None
) -> tuple[GemmaConfig, nnx.State]:
    """(config, params state) of an HF Gemma/Gemma 2/Gemma 3 checkpoint directory.

    Params are converted to `param_dtype` (default: float32 on CPU, bfloat16 elsewhere), one
    tensor at a time, each read from its file when converted and placed on `mesh` slice by
    slice (`convert.params_from_state_dict`).
    """
    directory = Path(directory)
    config_json = read_hf_config(directory)
    config = config_from_hf(
        config_json,
        param_dtype=param_dtype or default_param_dtype(),
        source=str(directory / "config.json"),
    )
    state_dict, sources = read_hf_state_dict(directory, lazy=True)
    params = params_from_state_dict(
        config, state_dict, sources=sources, where=str(directory), mesh=mesh
    )
    return config, params
