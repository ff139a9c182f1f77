"""Per-item scores and their aggregates for every task type.

* multiple_choice: 1 when ``parse_choice`` reads the gold letter, else 0; mean = accuracy.
* exact_match: 1 when ``match_exact`` accepts the output, else 0; mean = accuracy.
* abstain (AbstainQA, Feng et al. 2024b): the system answers a multiple-choice item, then
  says whether its answer is correct; per item +1 right and kept, -1 wrong and kept, 0
  abstained; mean = effective reliability.
* judged: a judge model rates the output 1-10 ("Rating: x/10"); the score is x/10 (the paper
  normalises to 0-1 without saying how; x/10 keeps a perfect 10 at 1.0 and the worst rating 1
  at 0.1, above an unparseable rating, which scores 0 and is counted).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from hs_jax.tasks.data import Item, TaskSpec
from hs_jax.tasks.parsing import match_exact, parse_choice, parse_yes_no


def score_multiple_choice(output: str, item: Item) -> float:
    """1.0 when the output picks the gold letter, else 0.0."""
    return float(parse_choice(output, item.choices) == item.answer)


def score_exact_match(output: str, item: Item, kind: str = "auto") -> float:
    """1.0 when the output gives the gold answer (``parsing.match_exact``), else 0.0."""
    return float(match_exact(output, item.answer, kind))


def score_item(spec: TaskSpec, item: Item, output: str) -> float:
    """Correctness (0/1) of one output; for abstain tasks, of the answer before the self-check.

    Judged tasks need a judge model: use ``judge.Judge``.
    """
    if spec.type in ("multiple_choice", "abstain"):
        return score_multiple_choice(output, item)
    if spec.type == "exact_match":
        return score_exact_match(output, item, spec.answer if spec.answer != "letter" else "auto")
    raise ValueError(f"task {spec.name!r} is judged: score it with hs_jax.tasks.judge.Judge")


def score_outputs(spec: TaskSpec, items: Sequence[Item], outputs: Sequence[str]) -> np.ndarray:
    """Per-item 0/1 correctness, [len(items)] float32 (see ``score_item``)."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    return np.asarray([score_item(spec, it, o) for it, o in zip(items, outputs)], np.float32)


def accuracy(scores: Sequence[float] | np.ndarray) -> float:
    """Mean of per-item scores; 0.0 for no items."""
    scores = np.asarray(scores, np.float64)
    return float(scores.mean()) if scores.size else 0.0


# ----------------------------------------------------------------------------- AbstainQA


def abstain_decision(check_output: str) -> bool:
    """Whether a yes/no self-check output means "abstain".

    Only an explicit No (``parse_yes_no``) abstains: the system already gave an answer, and an
    unreadable self-check is not a decision to withdraw it.
    """
    return parse_yes_no(check_output) == "No"


def reliability_scores(
    correct: Sequence[bool] | np.ndarray, abstained: Sequence[bool] | np.ndarray
) -> np.ndarray:
    """Per-item AbstainQA scores, [B] float32: +1 right and kept, -1 wrong and kept, 0 abstained."""
    correct = np.asarray(correct, bool)
    abstained = np.asarray(abstained, bool)
    if correct.shape != abstained.shape:
        raise ValueError(f"shapes differ: correct {correct.shape}, abstained {abstained.shape}")
    return np.where(abstained, 0.0, np.where(correct, 1.0, -1.0)).astype(np.float32)


def effective_reliability(
    correct: Sequence[bool] | np.ndarray, abstained: Sequence[bool] | np.ndarray
) -> float:
    """AbstainQA's effective reliability: the mean of ``reliability_scores`` (in [-1, 1])."""
    return accuracy(reliability_scores(correct, abstained))


def score_abstain(
    items: Sequence[Item], answers: Sequence[str], checks: Sequence[str]
) -> np.ndarray:
    """AbstainQA per-item scores from the answers and the self-check outputs, [B] float32."""
    if not len(items) == len(answers) == len(checks):
        raise ValueError(f"{len(items)} items, {len(answers)} answers, {len(checks)} checks")
    correct = [score_multiple_choice(a, it) == 1.0 for it, a in zip(items, answers)]
    abstained = [abstain_decision(c) for c in checks]
    return reliability_scores(correct, abstained)


# ----------------------------------------------------------------------------- judged tasks

_RATING = re.compile(
    r"rating\s*(?:is|of)?\s*[:=]?\s*(?P<x>\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(?P<d>\d+))?",
    re.IGNORECASE,
)
_BARE_RATING = re.compile(
    r"(?<![\d.])(?P<x>\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*(?P<d>10)(?!\d)", re.IGNORECASE
)


def parse_rating(text: str) -> float | None:
    """A judge's rating on the 1-10 scale, or None.

    Reads the FIRST "Rating: x/10" (the judge is asked to start with it; markdown ``*`` is
    ignored; "Rating: 7", "rating of 7 out of 10" and "Rating: 7.5/10" also count), else the
    first bare "x/10". A rating out of another denominator ("8/100") is rescaled to 10.
    Ratings outside [0, 10] after rescaling, or the template echoed back ("Rating: ?/10"),
    give None.
    """
    clean = re.sub(r"\*+", "", text)
    m = _RATING.search(clean) or _BARE_RATING.search(clean)
    if m is None:
        return None
    x = float(m.group("x"))
    d = float(m.group("d")) if m.group("d") else 10.0
    if d <= 0:
        return None
    x = x * 10.0 / d
    return x if 0.0 <= x <= 10.0 else None


def normalize_rating(rating: float | None) -> float:
    """A 1-10 rating as a 0-1 score: rating / 10; an unparseable rating (None) scores 0."""
    return 0.0 if rating is None else rating / 10.0


@dataclasses.dataclass(frozen=True)
class RatingScores:
    """Normalised judge scores [B] float32, the raw ratings, and how many did not parse."""

    scores: np.ndarray
    ratings: tuple[float | None, ...]
    n_unparsed: int


def rating_scores(judge_outputs: Sequence[str]) -> RatingScores:
    """Parse and normalise a batch of judge outputs (``parse_rating``, ``normalize_rating``)."""
    ratings = tuple(parse_rating(t) for t in judge_outputs)
    scores = np.asarray([normalize_rating(r) for r in ratings], np.float32)
    return RatingScores(scores, ratings, sum(r is None for r in ratings))
