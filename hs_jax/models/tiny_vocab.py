"""Tiny tokenizers for tiny random models of each family, built in memory, without any file.

`tiny_tokenizer(family)` gives a `TextTokenizer` of `tiny_vocab_size(family)` tokens (512 for
every family) laid out and behaving as that family's real tokenizer does, only smaller:

* gemma, gemma2, gemma3: Gemma's sentencepiece byte-fallback BPE; <pad> 0, <eos> 1, <bos> 2,
  <unk> 3, <mask> 4, <start_of_turn>, <end_of_turn>, a newline token; BOS added; EOS <eos>,
  pad <pad>; stops <eos>, <end_of_turn>. A `GemmaTokenizer`.
* llama (Llama 3's conventions): byte-level BPE with Llama 3's split; <|begin_of_text|>,
  <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eom_id|>, <|eot_id|>, ...; BOS
  <|begin_of_text|> added; EOS <|end_of_text|>, no pad token (pad = EOS); stops EOS, <|eot_id|>,
  <|eom_id|>.
* mistral (v0.3's): sentencepiece byte-fallback BPE; <unk> 0, <s> 1, </s> 2, [INST], [/INST],
  [TOOL_CALLS]; BOS <s> added; EOS </s>, pad = EOS; stops </s>.
* qwen2, qwen3: byte-level BPE with Qwen's split; <|endoftext|>, <|im_start|>, <|im_end|>
  (Qwen3 also <think> and </think>, plain added tokens); no BOS; EOS <|im_end|>, pad
  <|endoftext|>; stops <|im_end|>, <|endoftext|>.

The pieces: every byte (byte tokens or the byte alphabet), the printable ASCII characters, and
merges spelling a fixed list of common words; the rest up to the size is the family's reserved
special tokens. The same builders as for GGUF files make them (`tokenizer.gemma_bpe`,
`sentencepiece_bpe`, `byte_level_bpe`), so they behave as the real families' tokenizers do.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer

from hs_jax.models.gemma_config import FAMILIES
from hs_jax.models.tokenizer import (
    GemmaTokenizer,
    TextTokenizer,
    byte_level_bpe,
    bytes_to_unicode,
    gemma_bpe,
    sentencepiece_bpe,
)

TINY_VOCAB_SIZE = 512

_WORDS = (
    "the of and to in is was for on that with as by at from it an be this which or are not "
    "but have has had were will would can could should may one two three four five six seven "
    "eight nine ten yes no true false answer question choice correct option model user graph "
    "node edge weight score because therefore however first second then when what where who "
    "how why there their they them these those than more most some any each other about into "
    "over after before between under again number value result return def class import print "
    "self if else elif while for range list dict str int float none"
).split()
_CONTROL, _USER_DEFINED, _BYTE, _NORMAL = 3, 4, 6, 1


def tiny_vocab_size(family: str) -> int:
    """Number of tokens of `tiny_tokenizer(family)` (its added tokens included): the vocab_size
    a tiny config of that family needs."""
    _check(family)
    return TINY_VOCAB_SIZE


def tiny_tokenizer(family: str) -> TextTokenizer:
    """A fresh tiny tokenizer with `family`'s special tokens and BOS/EOS conventions (module
    docstring), the same on every call."""
    _check(family)
    kind, settings = _layout(family)
    backend = Tokenizer.from_str(_backend_json(family))
    if kind == "gemma":
        return GemmaTokenizer(backend, source=f"tiny:{family}")
    return TextTokenizer(backend, **settings, source=f"tiny:{family}")


def _check(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _layout(family: str) -> tuple[str, dict]:
    """(builder kind, TextTokenizer keyword arguments) of a family."""
    if family.startswith("gemma"):
        return "gemma", {}
    if family == "llama":
        return "llama3", dict(
            bos_token="<|begin_of_text|>",
            eos_token="<|end_of_text|>",
            pad_token=None,
            add_bos=True,
            stop_tokens=("<|eot_id|>", "<|eom_id|>"),
        )
    if family == "mistral":
        return "mistral", dict(bos_token="<s>", eos_token="</s>", pad_token=None, add_bos=True)
    return "qwen", dict(
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        add_bos=False,
        stop_tokens=("<|endoftext|>",),
    )


def _word_pieces(prefix: str, alphabet_spelling, budget: int, have: set[str]) -> list[str]:
    """Up to `budget` new tokens (and their merges' order) spelling `prefix` + each word, left
    to right: each one is the previous piece plus one character."""
    pieces = []
    for word in _WORDS:
        spelled = alphabet_spelling(prefix + word)
        current = spelled[0]
        for char in spelled[1:]:
            current += char
            if current not in have:
                if len(pieces) == budget:
                    return pieces
                have.add(current)
                pieces.append(current)
    return pieces


@functools.cache
def _backend_json(family: str) -> str:
    kind, _ = _layout(family)
    if kind in ("gemma", "mistral"):
        return _sentencepiece_family(kind, family).to_str()
    return _byte_level_family(kind, family).to_str()


def _sentencepiece_family(kind: str, family: str) -> Tokenizer:
    if kind == "gemma":
        head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
        types = [_CONTROL] * len(head) + [_USER_DEFINED]
        head += ["\n"]
        fill = "<unused{}>"
    else:
        head = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"]
        types = [2] + [_CONTROL] * (len(head) - 1)
        fill = "[control_{}]"
    tokens = head + [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    chars = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    n_reserved = 8
    budget = TINY_VOCAB_SIZE - len(tokens) - len(chars) - n_reserved
    words = _word_pieces("\u2581", list, budget, set(tokens) | set(chars))
    # Longer pieces first (best scores), as a sentencepiece vocabulary ranks its merges.
    pieces = words + chars
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    reserved = [fill.format(i) for i in range(TINY_VOCAB_SIZE - len(tokens))]
    tokens += reserved
    types += [_CONTROL] * len(reserved)
    if kind == "gemma":
        return gemma_bpe(tokens, types)
    scores = [0.0] * len(head) + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    scores += [0.0] * len(reserved)
    specials = {"bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>"}
    return sentencepiece_bpe(tokens, types, scores=scores, specials=specials, add_bos=True)


def _byte_level_family(kind: str, family: str) -> Tokenizer:
    spelling = bytes_to_unicode()
    tokens = [spelling[b] for b in range(256)]

    def spell(text: str) -> list[str]:
        return [spelling[b] for b in text.encode("utf-8")]

    if kind == "llama3":
        head = [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ]
        head_types = [_CONTROL] * len(head)
        fill, pre = "<|reserved_special_token_{}|>", "llama-bpe"
        specials = {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": None, "unk": None}
        add_bos = True
    else:
        head = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        head_types = [_CONTROL] * 3
        if family == "qwen3":
            head += ["<think>", "</think>"]
            head_types += [_USER_DEFINED] * 2
        fill, pre = "<|extra_{}|>", "qwen2"
        specials = {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>", "unk": None}
        add_bos = False
    n_reserved = 8
    budget = TINY_VOCAB_SIZE - len(tokens) - len(head) - n_reserved
    merged = []
    for prefix in (" ", ""):
        merged += _word_pieces(prefix, spell, budget - len(merged), set(tokens) | set(merged))
    merges = []
    for piece in merged:  # each piece is a known piece plus its last character
        merges.append(f"{piece[:-1]} {piece[-1]}")
    tokens += merged
    types = [_NORMAL] * len(tokens) + head_types
    tokens += head
    reserved = [fill.format(i) for i in range(TINY_VOCAB_SIZE - len(tokens))]
    tokens += reserved
    types += [_CONTROL] * len(reserved)
    return byte_level_bpe(
        tokens, types, merges, pre=pre, specials=specials, add_bos=add_bos, add_eos=False
    )
