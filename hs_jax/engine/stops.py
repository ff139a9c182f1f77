"""Stop strings: per-row stop sets, the device-side check, and the exact host-side cut.

A row of a generate call may end at any of its stop strings. The device stops the row as soon
as it can see a stop (`build_stop_tables` on the host, `stop_hits` inside the decode loop), so
no steps are wasted on text that will be cut; the host then cuts the decoded text exactly before
the first stop string (`truncate_at_stop`), which also catches spellings the device check
cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Longest stop-token sequence checked on the device; longer stop strings are still cut exactly on
# the host, their rows just run until EOS or max_new_tokens.
MAX_DEVICE_STOP_LEN = 16


def normalise_stops(stop, n: int) -> list[tuple[str, ...]]:
    """One tuple of stop strings per row; `stop` is a string, a sequence of strings (all rows)
    or one string or sequence of strings per row."""
    if isinstance(stop, str):
        return [(stop,)] * n
    stop = list(stop)
    if all(isinstance(s, str) for s in stop):
        return [tuple(stop)] * n
    if len(stop) != n:
        raise ValueError(f"per-row stop has {len(stop)} entries for {n} prompts")
    return [(s,) if isinstance(s, str) else tuple(s) for s in stop]


@struct.dataclass
class StopTables:
    """Device-side stop detection, one group per distinct set of stop strings.

    tokens: [G, V] bool, True for a token whose text after other text contains one of the
      group's strings (a row's second token on).
    first_tokens: [G, V] bool, the same for a row's first token, whose text is decoded at the
      start of the continuation: a sentencepiece tokenizer drops its leading space there, so
      " Question" is in the text of "▁Question" after other tokens but not as the first one.
    seqs: [G, M, S] int32, token sequences of the stop strings, right aligned, -1 = unused.
    group: [B] int32, the group of each row.
    """

    tokens: np.ndarray
    first_tokens: np.ndarray
    seqs: np.ndarray
    group: np.ndarray


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def build_stop_tables(
    stops_per_row: Sequence[Sequence[str]],
    n_rows: int,
    vocab_size: int,
    encode=None,
    vocab_texts: Sequence[str] | None = None,
    eos_ids: Sequence[int] = (),
    vocab_texts_in_context: Sequence[str] | None = None,
) -> StopTables:
    """Stop tables for the device loop (conservative: a hit there means the text has a stop).

    A row stops on the device when its last token's text contains a stop string or when its
    last tokens equal the tokenisation of a stop string (needs `encode(text) -> list[int]`).
    A token's text is `vocab_texts[i]` (the token decoded alone) for a row's first token and
    `vocab_texts_in_context[i]` (its text after other text, `text.vocab_texts_in_context`;
    `vocab_texts` when not given) after it, as the host decodes the continuation. Other
    ways of spelling a stop string are only caught by the exact host-side truncation
    (`truncate_at_stop`).
    The EOS ids are stop tokens of every group (data, not a static value: no recompile).
    Table sizes are rounded to powers of two so calls rarely change the compiled shapes.
    """
    groups: dict[tuple[str, ...], int] = {}
    row_group = np.zeros((n_rows,), np.int32)
    for i, stops in enumerate(stops_per_row):
        key = tuple(sorted({s for s in stops if s}))
        row_group[i] = groups.setdefault(key, len(groups))
    if not groups:
        groups[()] = 0
    n_groups = _pow2(len(groups))
    in_context = vocab_texts if vocab_texts_in_context is None else vocab_texts_in_context
    tok = np.zeros((n_groups, vocab_size), bool)
    tok[:, list(eos_ids)] = True
    first = tok.copy()
    seq_lists: list[list[list[int]]] = [[] for _ in range(n_groups)]
    for key, g in groups.items():
        for s in key:
            if vocab_texts is not None:
                first[g, [i for i, t in enumerate(vocab_texts) if s in t]] = True
                tok[g, [i for i, t in enumerate(in_context) if s in t]] = True
            if encode is not None:
                ids = list(encode(s))
                if 0 < len(ids) <= MAX_DEVICE_STOP_LEN and ids not in seq_lists[g]:
                    seq_lists[g].append(ids)
    m = _pow2(max(1, max(len(x) for x in seq_lists)))
    s_len = _pow2(max([1] + [len(ids) for x in seq_lists for ids in x]))
    seqs = np.full((n_groups, m, s_len), -1, np.int32)
    for g, lst in enumerate(seq_lists):
        for j, ids in enumerate(lst):
            seqs[g, j, s_len - len(ids) :] = ids
    return StopTables(tokens=tok, first_tokens=first, seqs=seqs, group=row_group)


def stop_hits(
    tables: StopTables, token: jax.Array, recent: jax.Array, *, first: bool = False
) -> jax.Array:
    """[B] bool, inside jit: the row's new token is EOS or a stop token, or its recent tokens
    end with one of its group's stop sequences. token: [B] int32; recent: [B, S] int32, the
    row's last S tokens, newest last; `first` (static): the token is the row's first."""
    hit = (tables.first_tokens if first else tables.tokens)[tables.group, token]
    seqs = tables.seqs[tables.group]  # [B, M, S]
    match = jnp.all((seqs == -1) | (seqs == recent[:, None, :]), axis=-1)
    match &= jnp.any(seqs != -1, axis=-1)
    return hit | jnp.any(match, axis=-1)


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cuts `text` before the earliest occurrence of any stop string; returns (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
