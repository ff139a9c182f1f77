"""Answer scoring as the authors' released code does it (``--config.task.scoring=authors``).

Kept only to reproduce their numbers: it is known to be wrong (docs/FIDELITY.md), and hs_jax's
default parsers (:mod:`hs_jax.tasks.parsing`) replace it.

* multiple choice: the first option letter (in the file's choice order) that occurs in the
  first 5 characters of the output, else in its last 5 characters, else the first option whose
  text occurs (case-insensitively) in the output, else "Z" (always wrong). So "As ..." reads A
  and "Answer: C" reads A.
* exact match: the gold string occurs as a substring of the output ("1" matches "11"; an output
  with both "Yes" and "No" is right for either). For gsm8k only the last 5 space-separated
  words of the output are searched.
* AbstainQA: the system keeps its answer only when "True" occurs in the check output.

What they parse is the end node's output stripped, its newlines turned into spaces
(`scoring_input`), not the raw text: the first and last 5 characters move with it.
"""

from __future__ import annotations

from collections.abc import Mapping

NO_CHOICE = "Z"


def scoring_input(output: str) -> str:
    """The end node's output as the authors parse it: ends stripped, newlines as spaces."""
    return output.strip().replace("\n", " ")


def authors_choice(output: str, choices: Mapping[str, str]) -> str:
    """The letter the authors' parser reads from a multiple-choice output ("Z" for none)."""
    for letter in choices:
        if letter in output[:5]:
            return letter
    for letter in choices:
        if letter in output[-5:]:
            return letter
    lowered = output.lower()
    for letter, text in choices.items():
        if text.lower() in lowered:
            return letter
    return NO_CHOICE


def authors_exact_match(output: str, gold: str, *, dataset: str = "") -> bool:
    """The authors' exact-match test: gold as a substring (gsm8k: of the last 5 words)."""
    if dataset == "gsm8k":
        output = " ".join(output.split(" ")[-5:])
    return gold in output


def authors_keeps_answer(check_output: str) -> bool:
    """AbstainQA check: the answer is kept only when the output says "True"."""
    return "True" in check_output
