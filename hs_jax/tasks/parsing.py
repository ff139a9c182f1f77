"""Answer parsers that read a model's free text output: option letters, numbers, Yes/No, strings.

The authors' parsing (``authors_scoring.py``, docs/FIDELITY.md) takes the first option letter
in the first five characters (so "As an AI..." reads as A) and scores exact match by substring
(so "1" matches "11" and an output with both "Yes" and "No" is right either way). These
parsers read the output the way a person grading it would, and return None when they cannot
tell, so an unreadable output scores as wrong rather than as a lucky guess.

Shared rules (each parser's docstring adds its own):
  * Continuations are cut off: base models keep writing the next few-shot example, so
    everything from the first line that starts a new "Question:" / "Q:" block (after some
    answer text) is ignored (``strip_continuation``).
  * Markdown emphasis ("**C**", "*C*") is ignored; a "*" between digits or spaces stays
    (multiplication).
  * An explicit final-answer cue ("the answer is ...", "Answer: ...") beats everything else,
    and when there are several the LAST one wins: a model that revises itself ("the answer is
    B ... no wait, the answer is C") ends with its final word, which is what the end node is
    asked for ("Make sure to provide a final and definitive answer").
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

# A new example block starting on a fresh line ends the answer.
_CONTINUATION = re.compile(r"\n[ \t]*(?:Question|Q)[ \t]*:", re.IGNORECASE)


def strip_continuation(text: str) -> str:
    """The output up to the first new "Question:"/"Q:" line that follows some answer text."""
    for m in _CONTINUATION.finditer(text):
        if text[: m.start()].strip():
            return text[: m.start()]
    return text


# Markdown emphasis: "**bold**" and "*word*"; a "*" between words or spaces ("12*sqrt(3)",
# "5 * 3") is multiplication and stays.
_EMPHASIS = re.compile(r"\*\*|(?<![\w*])\*(?=\w)|(?<=\w)\*(?![\w*])")


def _clean(text: str) -> str:
    return _EMPHASIS.sub("", strip_continuation(text))


# ----------------------------------------------------------------------------- option letters

# A letter token: "(C)", "[C]" (any case inside brackets), or a bare capital letter that is not
# part of a word ("As", "A's", "C3" are words, not letters).
_LETTER = r"(?:\((?P<p>[A-Za-z])\)|\[(?P<b>[A-Za-z])\]|(?P<u>[A-Z])(?![A-Za-z0-9'’]))"

# Strong cues state the final answer.
_STRONG_CUE = re.compile(
    r"(?i:\banswer\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?"
    r"|\bcorrect\s+(?:option|choice)(?:\s+(?:is|would\s+be))?)"
    r"\s*[:=\-]?\s*(?i:(?:option|choice|letter)\s+)?" + _LETTER
)
# Weak cues mention an option ("option B", "choice (C)") without saying it is the answer.
_WEAK_CUE = re.compile(r"(?i:\b(?:option|choice)\b)\s*[:\-]?\s*" + _LETTER)
# A letter that opens the output: "C", "C.", "C: Paris", "(B) ...", "B is correct".
_LEADING = re.compile(r"^\s*[\"'`]*" + _LETTER)
# After a bare "I", these words make it the pronoun, not option I.
_PRONOUN_NEXT = re.compile(
    r"\s*(?:'|’|am\b|think\b|believe\b|would\b|will\b|guess\b|have\b|can\b|must\b|need\b|"
    r"feel\b|choose\b|chose\b|pick\b|say\b|do\b|don|agree\b)",
    re.IGNORECASE,
)
_ANY_LETTER = re.compile(r"(?<![A-Za-z0-9'’])" + _LETTER)


def _letter_of(m: re.Match, text: str, *, bare_words_ok: bool) -> str | None:
    """The letter a match names, or None when a bare "A"/"I" is really an English word.

    ``bare_words_ok``: after an explicit cue ("the answer is A because"), a bare A or I is an
    option unless the next word makes I a pronoun; elsewhere a bare A or I only counts when
    punctuation (".", ":", ")", ",") or the end of the text follows it.
    """
    if m.group("p") or m.group("b"):
        return (m.group("p") or m.group("b")).upper()
    letter = m.group("u")
    if letter not in ("A", "I"):
        return letter
    rest = text[m.end() :]
    if bare_words_ok:
        if letter == "I" and _PRONOUN_NEXT.match(rest):
            return None
        return letter
    if not rest.strip() or re.match(r"[ \t]*[.:),;\]]", rest) or rest.startswith("\n"):
        return letter
    return None


def normalize_text(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace.

    The SQuAD normalisation: "The Eiffel Tower." == "eiffel tower". Unicode punctuation is
    dropped too; symbols such as "¬" or "→" are kept.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(
        " " if (ch in string.punctuation or unicodedata.category(ch).startswith("P")) else ch
        for ch in text
    )
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return " ".join(text.split())


def _contains_tokens(haystack: str, needle: str) -> bool:
    """Whether the normalised ``needle`` occurs as whole words inside the normalised haystack."""
    h, n = normalize_text(haystack).split(), normalize_text(needle).split()
    if not n:
        return False
    return any(h[i : i + len(n)] == n for i in range(len(h) - len(n) + 1))


def _raw_choice_hits(text: str, choices: Mapping[str, str]) -> list[str]:
    """Choices whose exact text (whitespace collapsed) occurs, not glued to letters or digits."""
    flat = " ".join(text.split())
    hits = []
    for k, v in choices.items():
        v = " ".join(v.split())
        if v and re.search(r"(?<![A-Za-z0-9])" + re.escape(v) + r"(?![A-Za-z0-9])", flat):
            hits.append(k)
    return hits


def _only_maximal(hits: list[str], choices: Mapping[str, str], contains) -> str | None:
    """The single hit left after dropping hits found only inside a longer hit's text."""
    kept = [
        k
        for k in hits
        if not any(
            o != k and choices[o] != choices[k] and contains(choices[o], choices[k]) for o in hits
        )
    ]
    return kept[0] if len(kept) == 1 else None


def _match_choice_text(text: str, choices: Mapping[str, str]) -> str | None:
    raw = _only_maximal(
        _raw_choice_hits(text, choices),
        choices,
        lambda big, small: bool(_raw_choice_hits(big, {"x": small})),
    )
    if raw is not None:
        return raw
    hits = [k for k, v in choices.items() if _contains_tokens(text, v)]
    return _only_maximal(hits, choices, _contains_tokens)


# A choice whose whole text is a letter ("C") cannot be told from a letter; letters win.
_LONE_LETTER_TEXT = re.compile(r"\s*[(\[]?[A-Za-z]?[)\]]?\s*")


def parse_choice(text: str, choices: Mapping[str, str] | None = None) -> str | None:
    """The option letter an output picks, or None.

    Rules, in order (the first that yields a valid letter wins; valid = a key of ``choices``,
    or any capital letter when ``choices`` is None):
      1. strong cue: "answer is (C)", "Answer: D", "The correct option is B", "answer: option
         C"; the LAST strong cue wins;
      2. the output opens with a choice's verbatim text (that choice: "(i), (ii) and (iii)"
         is not option I; a choice whose text is a lone letter, "C", does not count), else
         with a letter: "C", "C.", "C: Paris", "(B)", "B is correct" (a bare
         A or I only with punctuation or the end after it: "A lot" and "I think" are words);
      3. weak cues "option B" / "choice (C)", when all of them name the same letter;
      4. choice text without a letter: exactly one choice's text appears, e.g. "Paris" when C
         is Paris; first verbatim (not glued to letters or digits, so "14" is not found in
         "140"), then as whole normalised words (``normalize_text``); a choice only found
         inside a longer found choice ("14" inside "-14", "Paris" inside "Paris, Texas") does
         not count;
      5. lone letters anywhere ("I'd go with D"), when exactly one distinct valid letter
         appears (bare A/I again only before punctuation).
    A capital letter inside a word ("As", "Answer") and a lowercase "a" are never letters
    (lowercase only counts in brackets: "(c)").
    """
    clean = _clean(text)
    valid = set(choices) if choices is not None else None

    def ok(letter):
        return letter is not None and (valid is None or letter in valid)

    strong = [_letter_of(m, clean, bare_words_ok=True) for m in _STRONG_CUE.finditer(clean)]
    strong = [s for s in strong if ok(s)]
    if strong:
        return strong[-1]

    if choices:
        # An output that opens with a choice's own text is that choice, even when the text
        # itself starts like a letter ("(i), (ii) and (iii)", "C = 4 pi eps a", "H -> He").
        flat = " ".join(clean.split())
        opening = [
            k
            for k, v in choices.items()
            if not _LONE_LETTER_TEXT.fullmatch(v) and flat.startswith(" ".join(v.split()))
        ]
        by_opening = _only_maximal(opening, choices, lambda big, small: big.startswith(small))
        if by_opening is not None:
            return by_opening

    m = _LEADING.match(clean)
    if m:
        bare = m.group("u")
        # "B is correct": a bare opening letter other than A/I is an option whatever follows.
        letter = (
            bare if bare and bare not in ("A", "I") else _letter_of(m, clean, bare_words_ok=False)
        )
        if ok(letter):
            return letter

    weak = {_letter_of(m, clean, bare_words_ok=True) for m in _WEAK_CUE.finditer(clean)}
    weak = {w for w in weak if ok(w)}
    if len(weak) == 1:
        return weak.pop()

    if choices:
        by_text = _match_choice_text(clean, choices)
        if by_text is not None:
            return by_text

    lone = {_letter_of(m, clean, bare_words_ok=False) for m in _ANY_LETTER.finditer(clean)}
    lone = {w for w in lone if ok(w)}
    if len(lone) == 1:
        return lone.pop()
    return None


# ----------------------------------------------------------------------------- numbers

# A number: optional sign and "$", digits with optional thousands commas ("36,000"), optional
# decimals. Not glued to a preceding letter ("node1", "x2" are names, not numbers).
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_.])(?P<sign>[-−])?\$?\s?"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|\.\d+)"
)
_NUM_CUE = re.compile(
    r"(?i:(?:final\s+)?answer\s*(?:is|was|would\s+be|will\s+be|should\s+be|:|=)"
    r"|####|\\boxed\{"
    r"|total\s+(?:length|weight|distance|cost)\s*(?:is|was|=|:|of)?"
    r"|(?:length|weight|distance|cost)(?:\s+of\s+(?:the\s+)?(?:shortest\s+)?path)?"
    r"\s*(?:is|was|=|:|of))"
    r"\s*:?\s*(?i:(?:approximately|about|around|roughly)\s+)?"
)
_OPERATOR_NEXT = re.compile(r"\s*[-+*/×x÷]\s*\$?\d")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def to_decimal(s: str) -> Decimal | None:
    """A gold or predicted number string as a Decimal ("$1,200.50" -> 1200.50; "12." -> 12).

    Accepts an optional sign, "$", thousands commas and a trailing "%" or "."; anything else
    (words, several numbers) gives None.
    """
    t = s.strip().replace("−", "-")
    t = t.rstrip(".").rstrip("%").strip()
    m = re.fullmatch(r"(-)?\s*\$?\s*((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)", t)
    if not m:
        return None
    try:
        value = Decimal(m.group(2).replace(",", ""))
    except InvalidOperation:
        return None
    return -value if m.group(1) else value


def _number_at(m: re.Match) -> Decimal:
    value = Decimal(m.group("num").replace(",", ""))
    return -value if m.group("sign") else value


def parse_number(text: str) -> Decimal | None:
    """The number an output gives as its answer, or None.

    Rules:
      1. a final-answer cue directly followed by a number ("The answer is 12", "Answer: $1,200",
         "#### 36,000", "\\boxed{7}", "the length of the shortest path is 11", "total weight
         9"; a bare "weight 3" is not a cue, it echoes the graph); the LAST such cue wins.
         If the number starts an arithmetic chain ("the answer is 5 + 3 = 8"), the last
         number of that sentence is taken;
      2. otherwise the LAST number in the output (after cutting continuations).
    Numbers: thousands commas are grouping ("36,000" = 36000; "1, 2" are two numbers), "$"
    and a trailing period are ignored, "12.0" equals "12" (Decimal comparison), a number glued
    to a letter ("node1") is not read.
    """
    clean = _clean(text)
    best = None
    for cue in _NUM_CUE.finditer(clean):
        m = _NUMBER.match(clean, cue.end())
        if m is None:
            continue
        value = _number_at(m)
        if _OPERATOR_NEXT.match(clean, m.end()):
            end = _SENTENCE_END.search(clean, m.end())
            sentence = clean[m.end() : end.start() if end else len(clean)]
            tail = list(_NUMBER.finditer(sentence))
            if tail:
                value = _number_at(tail[-1])
        best = value
    if best is not None:
        return best
    numbers = list(_NUMBER.finditer(clean))
    return _number_at(numbers[-1]) if numbers else None


# ----------------------------------------------------------------------------- yes / no

_YN_CUE = re.compile(
    r"\banswer\b\s*(?:is|would\s+be|:|=)?\s*[:\-]?\s*[\"']?(?P<w>yes|no)\b", re.IGNORECASE
)
_YN_LEADING = re.compile(r"^\W*(?P<w>yes|no)\b", re.IGNORECASE)
_YN_WORD = re.compile(r"\b(?P<w>yes|no)\b", re.IGNORECASE)
_NEGATIVE_PHRASE = re.compile(
    r"\b(?:there\s+(?:is|exists)\s+not\b|there\s+isn['’]?t\b|not\s+connected\b|"
    r"doesn['’]?t\s+exist|does\s+not\s+exist|cannot\s+be\s+reached|can['’]?t\s+be\s+reached|"
    r"not\s+reachable|unreachable)",
    re.IGNORECASE,
)
_POSITIVE_PHRASE = re.compile(
    r"\b(?:there\s+(?:is|exists)\s+(?:a|an)\s+(?:path|cycle|route|loop)\b|"
    r"(?:is|are)\s+connected\b|reachable\b)",
    re.IGNORECASE,
)


def parse_yes_no(text: str) -> str | None:
    """'Yes', 'No' or None for an output to a yes/no question.

    Rules:
      1. an explicit cue "answer is yes" / "Answer: No"; the LAST cue wins;
      2. the output opens with Yes or No ("Yes, there is a path ..."), whatever follows;
      3. otherwise the whole words yes / no: if only one of them occurs it is the answer; if
         both occur (with no cue and neither opening the output) the output is ambiguous: None;
      4. with neither word, phrases: "there isn't a path", "not connected", "unreachable" ->
         No; "there is a path/cycle", "are connected" -> Yes; both kinds -> None.
    "Yes"/"No" inside words ("Nobody", "yesterday", "node") never count.
    """
    clean = _clean(text)
    cues = [m.group("w") for m in _YN_CUE.finditer(clean)]
    if cues:
        return cues[-1].capitalize()
    m = _YN_LEADING.match(clean)
    if m:
        return m.group("w").capitalize()
    words = {w.group("w").lower() for w in _YN_WORD.finditer(clean)}
    if len(words) == 1:
        return words.pop().capitalize()
    if words:
        return None
    neg = bool(_NEGATIVE_PHRASE.search(clean))
    pos = bool(_POSITIVE_PHRASE.search(re.sub(_NEGATIVE_PHRASE, " ", clean)))
    if neg != pos:
        return "No" if neg else "Yes"
    return None


# ----------------------------------------------------------------------------- strings

_TEXT_CUE = re.compile(r"\b(?:final\s+)?answer\b\s*(?:is|would\s+be|was|:|=)\s*:?", re.IGNORECASE)


# The end of the answer sentence: a newline, or ".", "!", "?" before a space or the end, except
# after a short capitalised abbreviation ("St. Louis", "U.S. Army", "Dr. No").
_SPAN_END = re.compile(r"\n|(?<!\b[A-Z])(?<!\b[A-Z][a-z])(?<!\b[A-Z][a-z][a-z])[.!?](?=\s|$)")


def final_answer_span(text: str) -> str:
    """The part of an output that states the answer.

    After cutting continuations: the text after the LAST "answer is"/"Answer:" cue up to the
    end of its sentence or line ("The answer is Mexico. Guatemala is close." -> "Mexico"), or
    the whole output when there is no cue.
    """
    clean = _clean(text)
    cues = list(_TEXT_CUE.finditer(clean))
    if not cues:
        return clean
    rest = clean[cues[-1].end() :].lstrip()
    end = _SPAN_END.search(rest)
    return rest[: end.start()] if end else rest


def answer_kind(gold: str) -> str:
    """How a gold answer is compared: 'yes_no', 'number' or 'text' (see match_exact)."""
    if gold.strip().lower().rstrip(".") in ("yes", "no"):
        return "yes_no"
    if to_decimal(gold) is not None:
        return "number"
    return "text"


def match_exact(prediction: str, gold: str, kind: str = "auto") -> bool:
    """Whether an output gives the gold answer of an exact-match item.

    kind 'auto' picks from the gold string (``answer_kind``):
      * number: ``parse_number(prediction)`` equals the gold number (Decimal equality:
        "36,000" == "36000", "12.0" == "12"; "1" never matches "11");
      * yes_no: ``parse_yes_no(prediction)`` equals the gold word;
      * text: the normalised gold (``normalize_text``) equals, or occurs as whole words in, the
        normalised final-answer span (``final_answer_span``). Whole words keep "1" from
        matching "11" and "cat" from matching "category".
    """
    if kind == "auto":
        kind = answer_kind(gold)
    if kind == "number":
        want = to_decimal(gold)
        if want is None:
            raise ValueError(f"gold answer {gold!r} is not a number")
        got = parse_number(prediction)
        return got is not None and got == want
    if kind == "yes_no":
        want = gold.strip().rstrip(".").capitalize()
        return parse_yes_no(prediction) == want
    if kind == "text":
        span = final_answer_span(prediction)
        return bool(normalize_text(gold)) and _contains_tokens(span, gold)
    raise ValueError(f"unknown answer kind {kind!r}")
