"""Host-side text of a generate call: prompts to token ids, generated ids to texts and reasons.

The engine (hs_jax.engine.engine) works in token ids; this module is the tokenizer side around it:
prompt ids as run (BOS, the long-prompt policy), continuations decoded and cut at their stop
strings, and why each row ended. The tokenizer is HF-like: `encode(text,
add_special_tokens=False)`, `decode(ids, skip_special_tokens=True)`, `bos_token_id`, and
optionally a batch call (`tokenizer(texts)`, `batch_decode`) that is used when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from hs_jax.engine import stops as stops_lib
from hs_jax.models.tokenizer import bos_of


def encode_batch(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens; uses the tokenizer's batch call when it has one."""
    if not texts:
        return []
    if callable(tokenizer) and hasattr(tokenizer, "batch_decode"):
        return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    return [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]


def decode_batch(tokenizer: Any, seqs: Sequence[Sequence[int]]) -> list[str]:
    """Texts of token id sequences, special tokens skipped."""
    seqs = [[int(t) for t in s] for s in seqs]
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode(seqs, skip_special_tokens=True))
    return [tokenizer.decode(s, skip_special_tokens=True) for s in seqs]


def vocab_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Decoded text of every token id alone: a continuation's first token as the host decodes
    it (what the device's stop-token table for a row's first token is built from)."""
    return decode_batch(tokenizer, [[i] for i in range(vocab_size)])


def vocab_texts_in_context(
    tokenizer: Any, vocab_size: int, alone: Sequence[str] | None = None
) -> list[str]:
    """Decoded text of every token id after other text, as it appears inside a decoded
    continuation: a sentencepiece tokenizer (Llama 2, Mistral) drops a token's leading space
    when it is decoded alone, not after another token. Each id is decoded behind an anchor
    token (the last id of "a") and the anchor's own text removed; an id whose pair does not
    start with the anchor's text keeps its text alone (`alone`: `vocab_texts`, when the caller
    has it already)."""
    alone = list(vocab_texts(tokenizer, vocab_size) if alone is None else alone)
    anchor_ids = encode_batch(tokenizer, ["a"])[0]
    if not anchor_ids:
        return alone
    anchor = int(anchor_ids[-1])
    prefix = alone[anchor]
    if not prefix:
        return alone
    pairs = decode_batch(tokenizer, [[anchor, i] for i in range(vocab_size)])
    return [p[len(prefix) :] if p.startswith(prefix) else a for p, a in zip(pairs, alone)]


def fit_prompts(
    prompts: Sequence[Sequence[int]], max_len: int, truncate: str = "left"
) -> list[list[int]]:
    """Applies the long-prompt policy: keep the last `max_len` tokens ('left') or raise ('error').

    Left truncation keeps the end of the prompt, which is the part the continuation depends on
    most; it is logged as a warning so it is never silent.
    """
    if truncate not in ("left", "error"):
        raise ValueError(f"truncate must be 'left' or 'error', got {truncate!r}")
    out = []
    for i, p in enumerate(prompts):
        p = list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty (no tokens)")
        if len(p) > max_len:
            if truncate == "error":
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens, more than the allowed {max_len} "
                    "(raise max_prompt_len or use truncate='left')"
                )
            logging.warning(
                "prompt %d has %d tokens > max_prompt_len %d: keeping the last %d tokens",
                i,
                len(p),
                max_len,
                max_len,
            )
            p = p[-max_len:]
        out.append(p)
    return out


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], *, add_bos: bool, max_len: int, truncate: str
) -> list[list[int]]:
    """Prompt ids as run: BOS (if `add_bos` and the tokenizer has one) + text ids, the
    long-prompt policy applied."""
    ids = encode_batch(tokenizer, prompts)
    bos = bos_of(tokenizer)
    if add_bos and bos is not None:
        ids = [[int(bos)] + p for p in ids]
    return fit_prompts(ids, max_len, truncate)


def continuations(
    tokenizer: Any,
    tokens: Sequence[np.ndarray],
    stops: Sequence[tuple[str, ...]],
    eos_ids: Sequence[int],
) -> tuple[list[str], list[str]]:
    """(texts, finish reasons) of generated rows: each text decoded and cut before its first
    stop string; the reason is 'stop' (cut there), 'eos' (the row ended with an EOS id) or
    'length' (it ran out of new tokens)."""
    texts, reasons = [], []
    eos = set(eos_ids)
    for text, toks, row_stops in zip(decode_batch(tokenizer, tokens), tokens, stops, strict=True):
        text, stopped = stops_lib.truncate_at_stop(text, row_stops)
        texts.append(text)
        if stopped:
            reasons.append("stop")
        elif len(toks) and int(toks[-1]) in eos:
            reasons.append("eos")
        else:
            reasons.append("length")
    return texts, reasons
