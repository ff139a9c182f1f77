"""What a result's utility alone does not show: per-type accuracy and the answer distribution.

A system that answers "No" to every yes/no question scores exactly the share of "No" among
the gold answers, and a table of utilities cannot tell it from a system that reasons. So every
results.json carries `diagnostics` (`of_run`):

- `per_type`: the best system's test utility per question type (the items' `type`, else their
  `domain`; items with neither are 'all'), with the item count;
- `answers`: the end node's test answers, each read as the protocol reads it (for the authors'
  substring scoring, which reads no answer, by hs_jax's parsers), or where nothing can be read
  for its item (a "No" to a question that wants a number) as its own text (`answer_key`): the
  most common one, its share of all items, how many distinct answers and unreadable outputs
  there were; `read_top` / `read_top_share`: the most common answer among the outputs an
  answer was read from, and its share of them; and `collapsed`: one answer for at least
  `COLLAPSE_SHARE` of the items (so "No" to every question of a task that mixes yes/no and
  number questions is flagged), or for at least that share of the readable answers (`"Yes"`
  to every yes/no question and unreadable text to every number question scores exactly the
  share of "Yes" among the yes/no golds, and its free text does not make it a system that
  reasons); `collapsed_on` says which ('items' or 'readable');
- `gold`: the most common gold answer on test and its share (what a constant answer scores);
- `singles_dev`: every single expert's dev utility (what every method sees first);
- method-specific numbers lifted from the method's details so a table can show them:
  `fallback_rate` (the meta-agent designer's proposals replaced by random DAGs) and
  `svd_rel_error_max` / `svd_rel_error_mean` (DARE-TIES' merged delta run at the pool's rank).

Judged tasks have no answers to count (`answers` and `gold` are None).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

COLLAPSE_SHARE = 0.9


def final_outputs(kind: str, dag_end: int | None, test_outputs: Mapping[str, Sequence[str]]):
    """The outputs the test utility scored: the end node's for a DAG, else the method's one
    output list (a vote, an ensemble, a constant)."""
    if kind == "dag" and dag_end is not None and str(dag_end) in test_outputs:
        return list(test_outputs[str(dag_end)])
    if len(test_outputs) == 1:
        return list(next(iter(test_outputs.values())))
    return None


def answer_reader(protocol, spec):
    """A function output, item -> the answer the protocol reads (None: nothing readable). The
    authors' exact-match scoring reads no answer (it matches substrings), so hs_jax's parsers
    read it there."""
    if spec.type == "judged":
        return None
    if protocol.scoring == "authors" and not spec.has_choices:
        protocol = dataclasses.replace(protocol, scoring="hs_jax")
    return lambda output, item: protocol.parsed_answer(spec, item, output)


def answer_key(parsed: str | None, output: str) -> str | None:
    """What counts as one answer: the parsed answer, else the output's own first line
    (case and spacing aside; None when empty), both case-folded."""
    if parsed is not None:
        return str(parsed).strip().casefold()
    lines = str(output).strip().splitlines()
    text = " ".join(lines[0].split()).casefold() if lines else ""
    return text[:40] or None


def answer_distribution(
    answers: Sequence[str | None], unread: int = 0, read: Sequence[bool] | None = None
) -> dict[str, Any]:
    """The most common answer (`answer_key`s), its share of all items, the distinct answers,
    `unread`: the outputs the protocol read no answer from, and (given `read`, which answers
    were read) the most common readable answer and its share of the readable ones."""
    n = len(answers)
    counts = collections.Counter(a for a in answers if a is not None)
    top, top_count = counts.most_common(1)[0] if counts else (None, 0)
    share = top_count / n if n else 0.0
    out = {"top": top, "top_share": share, "distinct": len(counts), "unread": unread}
    collapsed_on = "items" if n and share >= COLLAPSE_SHARE else None
    if read is not None:
        readable = collections.Counter(
            a for a, r in zip(answers, read, strict=True) if r and a is not None
        )
        read_top, read_count = readable.most_common(1)[0] if readable else (None, 0)
        read_share = read_count / sum(readable.values()) if readable else 0.0
        out |= {"read_top": read_top, "read_top_share": read_share}
        if collapsed_on is None and read_count and read_share >= COLLAPSE_SHARE:
            collapsed_on = "readable"
    return out | {"collapsed": collapsed_on is not None, "collapsed_on": collapsed_on}


def answers_of(setup_like, outputs: Sequence[str], items: Sequence[Any]) -> dict[str, Any] | None:
    """`answer_distribution` of final outputs on their items (None for judged tasks)."""
    read = answer_reader(setup_like.protocol, setup_like.spec)
    if read is None:
        return None
    parsed = [read(o, item) for o, item in zip(outputs, items, strict=True)]
    keys = [answer_key(p, o) for p, o in zip(parsed, outputs, strict=True)]
    read_flags = [p is not None for p in parsed]
    return answer_distribution(keys, unread=read_flags.count(False), read=read_flags)


def per_type(items: Sequence[Any], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """{type: {'n': items, 'utility': mean score}} in order of first appearance."""
    groups: dict[str, list[float]] = {}
    for item, score in zip(items, scores, strict=True):
        groups.setdefault(item.type or "all", []).append(float(score))
    return {t: {"n": len(v), "utility": float(np.mean(v))} for t, v in groups.items()}


def gold_distribution(items: Sequence[Any]) -> dict[str, Any]:
    counts = collections.Counter(str(item.answer).strip() for item in items)
    top, k = counts.most_common(1)[0]
    return {"top": top, "top_share": k / len(items)}


def method_numbers(details: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a table shows from a method's details (module docstring)."""
    out = {}
    for key in ("svd_rel_error_max", "svd_rel_error_mean"):
        if isinstance(details.get(key), int | float):
            out[key] = float(details[key])
    proposals = details.get("proposals")
    if "fallbacks" in details and isinstance(proposals, int) and proposals:
        out["fallback_rate"] = int(details["fallbacks"]) / proposals
    return out


def of_run(setup, found, test_items_scores: Sequence[float]) -> dict[str, Any]:
    """results.json's `diagnostics` of a finished method (module docstring)."""
    items = setup.test
    best = found.best
    end = getattr(getattr(best, "dag", None), "end", None)
    outputs = final_outputs(found.kind, end, found.test_outputs)
    answers = gold = None
    if outputs is not None and len(outputs) == len(items):
        answers = answers_of(setup, outputs, items)
        gold = gold_distribution(items) if answers is not None else None
    return {
        "per_type": per_type(items, test_items_scores) if test_items_scores else {},
        "answers": answers,
        "gold": gold,
        "singles_dev": list(found.singles.dev),
        **method_numbers(found.details or {}),
    }
