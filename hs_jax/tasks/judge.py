"""LLM-as-a-judge scoring for free-text tasks (ltp, qasper).

The paper rates outputs with Gemini and the prompt of its Table 7; here any local model
judges: ``Judge`` takes a ``generate`` function (list of prompts -> list of texts), e.g. a
closure over ``Engine.generate`` with the judge's expert id and max_new_tokens, so tests can
inject a fake one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from hs_jax.tasks.chat_format import GEMMA, ChatFormat
from hs_jax.tasks.data import Item
from hs_jax.tasks.metrics import normalize_rating, parse_rating
from hs_jax.tasks.prompts import flatten_response, wrap_chat

# The paper's Table 7 instruction, with named fields for the two texts.
JUDGE_TEMPLATE = (
    "Please evaluate how similar is the following response to the ground truth answer. "
    "Please rate the response on a scale of 1 to 10, where 1 is the worst and 10 is the best. "
    "Please respond with Rating: ?/10 first and then provide your reason.\n\n"
    "Ground truth: {ground_truth}\n"
    "Generated response: {response}"
)

GenerateFn = Callable[[list[str]], Sequence[str]]


def judge_prompt(
    ground_truth: str,
    response: str,
    *,
    template: str = JUDGE_TEMPLATE,
    answer_prefix: str = "",
    chat: bool = False,
    chat_format: ChatFormat = GEMMA,
) -> str:
    """The judge's prompt for one output (the response flattened to one line).

    ``answer_prefix`` (e.g. "Rating:") goes on a last line of its own, so a base model starts
    with the rating; ``chat`` wraps the prompt in the judge model's chat turn (``chat_format``,
    default Gemma's).
    """
    prompt = template.format(ground_truth=ground_truth, response=flatten_response(response))
    if answer_prefix:
        prompt = f"{prompt}\n{answer_prefix}"
    return wrap_chat(prompt, fmt=chat_format) if chat else prompt


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    """Scores in [0, 1] ([B] float32), raw 1-10 ratings (None: unparseable), judge texts."""

    scores: np.ndarray
    ratings: tuple[float | None, ...]
    texts: tuple[str, ...]

    @property
    def n_unparsed(self) -> int:
        return sum(r is None for r in self.ratings)


class Judge:
    """Rates outputs against ground truths with an injected generate function.

    Scores are rating / 10 (``metrics.normalize_rating``); an unparseable rating scores 0 and
    is counted in ``n_unparsed`` (cumulative over calls, next to ``n_judged``). ``chat`` wraps
    the prompts in ``chat_format``'s chat turn (the judge model's; default Gemma's).
    """

    def __init__(
        self,
        generate: GenerateFn,
        *,
        template: str = JUDGE_TEMPLATE,
        answer_prefix: str = "",
        chat: bool = False,
        chat_format: ChatFormat = GEMMA,
    ):
        self.generate = generate
        self.template = template
        self.answer_prefix = answer_prefix
        self.chat = chat
        self.chat_format = chat_format
        self.n_judged = 0
        self.n_unparsed = 0

    def prompts(self, ground_truths: Sequence[str], responses: Sequence[str]) -> list[str]:
        if len(ground_truths) != len(responses):
            raise ValueError(f"{len(ground_truths)} ground truths but {len(responses)} responses")
        return [
            judge_prompt(
                g,
                r,
                template=self.template,
                answer_prefix=self.answer_prefix,
                chat=self.chat,
                chat_format=self.chat_format,
            )
            for g, r in zip(ground_truths, responses)
        ]

    def rate(self, ground_truths: Sequence[str], responses: Sequence[str]) -> JudgeResult:
        """Judge a batch in one generate call."""
        prompts = self.prompts(ground_truths, responses)
        if not prompts:
            return JudgeResult(np.zeros((0,), np.float32), (), ())
        texts = tuple(self.generate(prompts))
        if len(texts) != len(prompts):
            raise ValueError(f"judge returned {len(texts)} texts for {len(prompts)} prompts")
        # The prefix was part of the prompt, so it is put back in front before parsing.
        ratings = tuple(parse_rating(f"{self.answer_prefix} {t}") for t in texts)
        scores = np.asarray([normalize_rating(r) for r in ratings], np.float32)
        result = JudgeResult(scores, ratings, texts)
        self.n_judged += len(texts)
        self.n_unparsed += result.n_unparsed
        return result

    def score_items(self, items: Sequence[Item], outputs: Sequence[str]) -> JudgeResult:
        """Judge outputs against the items' gold answers."""
        return self.rate([it.answer for it in items], outputs)
