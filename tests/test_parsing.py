"""Answer parsers and metrics on adversarial outputs (the cases the authors' parsing gets wrong)."""

from decimal import Decimal

import numpy as np
import pytest

from hs_jax.tasks import Item, make_spec, score_abstain, score_outputs
from hs_jax.tasks.metrics import (
    abstain_decision,
    accuracy,
    effective_reliability,
    normalize_rating,
    parse_rating,
    rating_scores,
    reliability_scores,
)
from hs_jax.tasks.parsing import (
    answer_kind,
    final_answer_span,
    match_exact,
    normalize_text,
    parse_choice,
    parse_number,
    parse_yes_no,
    strip_continuation,
    to_decimal,
)

CAPITALS = {"A": "London", "B": "Berlin", "C": "Paris", "D": "Rome"}


@pytest.mark.parametrize(
    "output, want",
    [
        ("As an AI, I think the answer is (C)", "C"),
        ("C: Paris", "C"),
        ("The answer is C.", "C"),
        ("(B)", "B"),
        ("Answer: D", "D"),
        ("Paris", "C"),
        ("paris.", "C"),
        ("It is Paris, of course.", "C"),
        (" C.\n\nQuestion: What is 2+2?\nA: 3\nB: 4\nThe answer is B", "C"),
        ("**C**", "C"),
        ("*D*", "D"),
        ("answer: (c)", "C"),
        ("The correct option is B", "B"),
        ("The correct answer is: (B) Berlin", "B"),
        ("The answer is A because London is the capital.", "A"),
        ("The answer is B. Wait, no, the answer is D.", "D"),
        ("B is correct", "B"),
        ("A. London", "A"),
        ("A", "A"),
        ("A)", "A"),
        ("[D]", "D"),
        ("I'd go with D", "D"),
        ("Option D.", "D"),
        ("The answer is I think C", "C"),
        ("Answer:\nB", "B"),
        ("Option A is wrong; option C is right", "C"),
        ("The capital of France is Paris, definitely not Rome or London", None),
        ("As a matter of fact, Answers vary", None),
        ("a", None),
        ("A lot of people think so", None),
        ("I am not sure", None),
        ("Apples and Bananas", None),
        ("", None),
        ("The answer is E", None),
        ("Both B and D look right", None),
    ],
)
def test_parse_choice(output, want):
    assert parse_choice(output, CAPITALS) == want


@pytest.mark.parametrize(
    "output, choices, want",
    [
        ("14", {"A": "-14", "B": "14", "C": "140"}, "B"),
        ("-14", {"A": "-14", "B": "14", "C": "140"}, "A"),
        ("It is 140", {"A": "-14", "B": "14", "C": "140"}, "C"),
        ("Paris, Texas", {"A": "Paris", "B": "Paris, Texas"}, "B"),
        ("(i), (ii), and (iii) only", {"I": "(i) only", "J": "(i), (ii), and (iii) only"}, "J"),
        ("C = 4πε₀a", {"C": "4πε₀a", "I": "C = 4πε₀a"}, "I"),
        ("12*sqrt(3)", {"A": "12", "C": "12*sqrt(3)"}, "C"),
        ("C: 1/C", {"A": "L", "C": "1/C", "D": "C"}, "C"),
        ("The answer is I.", {k: str(i) for i, k in enumerate("ABCDEFGHIJ")}, "I"),
        ("I", {k: str(i) for i, k in enumerate("ABCDEFGHIJ")}, "I"),
        ("J: 9", {k: str(i) for i, k in enumerate("ABCDEFGHIJ")}, "J"),
    ],
)
def test_parse_choice_text_matching(output, choices, want):
    assert parse_choice(output, choices) == want


def test_parse_choice_without_choices_accepts_any_capital():
    assert parse_choice("The answer is (F)") == "F"
    assert parse_choice("As we know") is None


@pytest.mark.parametrize(
    "output, want",
    [
        ("36,000", "36000"),
        ("$1,200.50", "1200.5"),
        ("The answer is 12.", "12"),
        ("12.0", "12"),
        ("First 5, then 7, finally 12", "12"),
        ("The answer is 5 + 3 = 8. Then 9 more apples", "8"),
        ("The answer is 150.\nQuestion: Tom has 3 apples", "150"),
        ("#### 1,450,000", "1450000"),
        ("\\boxed{42} since 6*7", "42"),
        ("She has -5 dollars", "-5"),
        ("1, 2", "2"),
        ("1,2345", "2345"),
        ("path 16 -> 1 -> 17 -> 19, the length of the shortest path is 11.", "11"),
        ("The shortest path from 16 to 19 has total weight 11 (16,1,17,19)", "11"),
        ("16 (weight 5) -> 17 (weight 2) -> 19 (weight 4), so 11", "11"),
        ("Answer: approximately 3.5 hours", "3.5"),
        ("It costs .5 dollars", "0.5"),
        ("node1 to node2", None),
        ("no numbers here", None),
    ],
)
def test_parse_number(output, want):
    got = parse_number(output)
    assert (got is None and want is None) or got == Decimal(want)


@pytest.mark.parametrize(
    "gold, output, right",
    [
        ("36,000", "The answer is 36000", True),
        ("36,000", "36,000 dollars", True),
        ("1200", "$1,200.00", True),
        ("12", "12.0", True),
        ("1", "11", False),
        ("11", "1", False),
        ("5", "I count 5 apples, then 3 more, so 8", False),
        ("8", "I count 5 apples, then 3 more, so 8", True),
        ("Yes", "Yes, there is a path between node 1 and node 3.", True),
        ("No", "Yes, there is a path. No doubt.", False),
        ("No", "No.", True),
        ("Yes", "Yes and No", True),
        ("No", "Is there? Yes or no: I say no", False),
        ("Yes", "Nobody knows", False),
        ("No", "There is no path between them", True),
        ("Roger Miller", "The answer is Roger Miller.", True),
        ("Roger Miller", "roger miller", True),
        ("The World of the Twenty First Century", "world of the twenty-first century", True),
        ("St. Louis", "The answer is St. Louis.", True),
        ("U.S. Army", "The answer is the U.S. Army! It won.", True),
        ("cloak", "cloakroom", False),
        ("Guatemala", "The answer is Mexico. Guatemala is close.", False),
        ("Brunei, China, Morocco, Singapore", "Answer: Brunei, China, Morocco, Singapore", True),
    ],
)
def test_match_exact(gold, output, right):
    assert match_exact(output, gold) is right


@pytest.mark.parametrize(
    "output, want",
    [
        ("Yes", "Yes"),
        ("yes.", "Yes"),
        ("No, there is no path.", "No"),
        ("Yes, but there is no cycle in part of it", "Yes"),
        ("The answer is yes.", "Yes"),
        ("I said yes before, but the answer is No", "No"),
        ("There is no path", "No"),
        ("Nobody knows; yesterday it rained", None),
        ("Maybe yes, maybe no", None),
        ("there isn't a path from 1 to 5", "No"),
        ("Node 1 and node 5 are not connected", "No"),
        ("There is a path from 1 to 5", "Yes"),
        ("Node 3 and node 4 are connected", "Yes"),
        ("The graph has node 3", None),
        ("Yes\nQuestion: Is there a cycle? No", "Yes"),
    ],
)
def test_parse_yes_no(output, want):
    assert parse_yes_no(output) == want


def test_helpers():
    assert strip_continuation("B\nQuestion: next") == "B"
    assert strip_continuation("\nQuestion: echo\nB") == "\nQuestion: echo\nB"
    assert normalize_text("The  Eiffel-Tower!") == "eiffel tower"
    assert normalize_text("An apple, a pear") == "apple pear"
    assert final_answer_span("blah\nAnswer: Roger Miller\nmore") == "Roger Miller"
    assert final_answer_span("just text") == "just text"
    assert to_decimal("36,000") == Decimal(36000) and to_decimal("$5.") == Decimal(5)
    assert to_decimal("-3%") == Decimal(-3) and to_decimal("12 apples") is None
    assert [answer_kind(g) for g in ("Yes", "no", "3,000", "Paris", "1954")] == [
        "yes_no",
        "yes_no",
        "number",
        "text",
        "number",
    ]
    with pytest.raises(ValueError):
        match_exact("1", "abc", "number")


# ----------------------------------------------------------------------------- metrics


def _mc(answer="C"):
    return Item(index=0, id=0, question="Capital?", answer=answer, choices=CAPITALS)


def test_score_outputs_per_type():
    mc = make_spec("m", "multiple_choice")
    outs = ["As an AI, the answer is (C)", "A lot", "C: Paris", "As"]
    np.testing.assert_array_equal(score_outputs(mc, [_mc()] * 4, outs), [1, 0, 1, 0])
    em = make_spec("g", "exact_match", answer="number")
    items = [Item(index=i, id=i, question="q", answer=a) for i, a in enumerate(["1", "36,000"])]
    np.testing.assert_array_equal(score_outputs(em, items, ["11", "so 36000."]), [0, 1])
    with pytest.raises(ValueError, match="judge"):
        score_outputs(make_spec("j", "judged"), items, ["a", "b"])
    with pytest.raises(ValueError):
        score_outputs(mc, [_mc()], ["a", "b"])
    assert accuracy([1, 0, 1, 1]) == 0.75 and accuracy([]) == 0.0


def test_effective_reliability():
    correct = [True, False, True, False, True]
    abstained = [False, False, True, True, False]
    np.testing.assert_array_equal(reliability_scores(correct, abstained), [1, -1, 0, 0, 1])
    assert effective_reliability(correct, abstained) == pytest.approx(1 / 5)
    assert effective_reliability([False] * 3, [False] * 3) == -1.0
    assert effective_reliability([False] * 3, [True] * 3) == 0.0
    with pytest.raises(ValueError):
        reliability_scores([True], [True, False])


def test_abstain_decision_and_scores():
    assert abstain_decision("No, it is wrong.") is True
    assert abstain_decision("Yes") is False
    assert abstain_decision("hmm") is False
    items = [_mc("C"), _mc("C"), _mc("A"), _mc("B")]
    answers = ["C", "C", "B", "B"]
    checks = ["Yes", "No", "Yes", "gibberish"]
    np.testing.assert_array_equal(score_abstain(items, answers, checks), [1, 0, -1, 1])


@pytest.mark.parametrize(
    "text, want",
    [
        ("Rating: 7/10\nThe response is close.", 7.0),
        ("**Rating:** 8/10", 8.0),
        ("Rating: 7.5/10", 7.5),
        ("rating of 6 out of 10", 6.0),
        ("Rating: 9", 9.0),
        ("I'd say 4/10 at best", 4.0),
        ("Rating: 85/100", 8.5),
        ("Rating: 3/10. Earlier drafts deserved 9/10", 3.0),
        ("Rating: ?/10", None),
        ("Rating: 11/10", None),
        ("Great answer!", None),
        ("", None),
    ],
)
def test_parse_rating(text, want):
    assert parse_rating(text) == want


def test_rating_normalisation():
    assert (
        normalize_rating(10) == 1.0 and normalize_rating(1) == 0.1 and normalize_rating(None) == 0
    )
    r = rating_scores(["Rating: 10/10", "no idea", "Rating: 5/10"])
    np.testing.assert_allclose(r.scores, [1.0, 0.0, 0.5])
    assert r.n_unparsed == 1 and r.ratings == (10.0, None, 5.0)
