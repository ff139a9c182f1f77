"""What a utility hides (hs_jax.pipeline.diagnostics): a collapsed system is flagged on a task that
mixes yes/no and number questions, per-type utilities, the method numbers a table shows."""

import types

import pytest

from hs_jax.pipeline import diagnostics
from hs_jax.tasks import Item, Protocol, get_spec


def _items():
    yes_no = [Item(i, i, f"q{i}", "Yes" if i % 2 else "No", extra={"type": "cycle"})
              for i in range(6)]  # fmt: skip
    numbers = [Item(6 + i, 6 + i, f"n{i}", str(i + 2), extra={"type": "degree"}) for i in range(4)]
    return yes_no + numbers


def _setup(name="nlgraph_gen", scoring="hs_jax"):
    spec = get_spec(name)
    return types.SimpleNamespace(
        spec=spec, protocol=Protocol("hs_jax", task_type=spec.type, dataset=name, scoring=scoring)
    )


@pytest.mark.parametrize("scoring", ["hs_jax", "authors"])
def test_no_to_everything_is_collapsed_even_where_no_number_can_be_read(scoring):
    items = _items()
    got = diagnostics.answers_of(_setup(scoring=scoring), ["No"] * len(items), items)
    # Six yes/no items read "No", four number items read nothing: one answer all the same.
    assert got == {"top": "no", "top_share": 1.0, "distinct": 1, "unread": 4, "read_top": "no",
                   "read_top_share": 1.0, "collapsed": True, "collapsed_on": "items"}  # fmt: skip
    assert diagnostics.gold_distribution(items) == {"top": "No", "top_share": 0.3}


def test_yes_to_every_yes_no_question_and_free_text_elsewhere_is_collapsed():
    """The study's random_roles systems: "Yes" to each yes/no question and text that reads as no
    number (its first lines differ) to each number question score exactly the share of "Yes"
    among the yes/no golds. On all items the top answer is only 60%; on the readable ones it is
    all of them, and that is the collapse."""
    items = _items()
    outputs = ["Yes"] * 6 + ["No", "Maybe so", "No, since", "I cannot tell"]
    got = diagnostics.answers_of(_setup(), outputs, items)
    assert got["top"] == "yes" and got["top_share"] == pytest.approx(0.6)
    assert got["distinct"] == 5 and got["unread"] == 4
    assert got["read_top"] == "yes" and got["read_top_share"] == 1.0
    assert got["collapsed"] and got["collapsed_on"] == "readable"
    # Nothing readable at all is not a collapse on readable answers (there are none).
    nothing = diagnostics.answer_distribution(["a", "b", "c"], unread=3, read=[False] * 3)
    assert nothing["read_top"] is None and not nothing["collapsed"]


def test_a_system_that_reasons_is_not_collapsed():
    items = _items()
    outputs = [item.answer for item in items]  # every item right
    got = diagnostics.answers_of(_setup(), outputs, items)
    assert got["top"] in ("yes", "no") and got["top_share"] == pytest.approx(0.3)  # a tie
    assert got["distinct"] == 6 and got["unread"] == 0 and not got["collapsed"]
    assert got["collapsed_on"] is None and got["read_top_share"] == pytest.approx(0.3)
    assert diagnostics.per_type(items, [1.0] * 6 + [0.0] * 4) == {
        "cycle": {"n": 6, "utility": 1.0},
        "degree": {"n": 4, "utility": 0.0},
    }


def test_answer_key_and_method_numbers():
    assert diagnostics.answer_key(None, "  No, because\nthe graph ...") == "no, because"
    assert diagnostics.answer_key("12", "the answer is 12") == "12"
    assert diagnostics.answer_key(None, "   ") is None
    assert diagnostics.final_outputs("dag", 2, {"0": ["a"], "2": ["b"]}) == ["b"]
    assert diagnostics.final_outputs("vote", None, {"0": ["a"]}) == ["a"]
    details = {"proposals": 8, "fallbacks": 6, "svd_rel_error_max": 0.7, "svd_rel_error_mean": 0.5}
    assert diagnostics.method_numbers(details) == {
        "svd_rel_error_max": 0.7, "svd_rel_error_mean": 0.5, "fallback_rate": 0.75,
    }  # fmt: skip
    assert diagnostics.answers_of(_setup("ltp"), ["x"], [_items()[0]]) is None  # judged
