"""The authors' preset where it had no switch: their G-decode (rows summing to <= 0, exact
zeros, ties), their scoring input, their round 0 and their chat template's trim, each against
literal expectations of what their code does (REFERENCE.md's account of it, worked by hand)."""

import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

from hs_jax.pipeline import door
from hs_jax.runtime.errors import ConfigError
from hs_jax.swarm import graph, search
from hs_jax.tasks import Item, Protocol, authors_scoring, get_spec
from hs_jax.tasks.prompts import NodeTemplates, wrap_chat

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _decode(rows, rule):
    return graph.g_decode(np.array(rows, np.float64), RNG, top_p=0.0, rule=rule)


def test_a_row_summing_below_zero_is_their_least_likely_end_node():
    # Row sums -0.7, 0.7, 0.3: 1/row_sum = -1.43, 1.43, 3.33, so node 2 ends their system;
    # hs_jax's inverse (2 - d below 1) makes node 0 the likeliest end instead.
    a = [[0.0, -0.5, -0.2], [0.3, 0.0, 0.4], [0.2, 0.1, 0.0]]
    assert _decode(a, "authors") == graph.from_edges(3, [(1, 2), (0, 2)], end=2)
    assert _decode(a, "hs_jax").end == 0


def test_their_ties_go_to_the_higher_index():
    # Every row sums to 1: end = 2; then u in {0, 1} ties -> 1, its parent 2; then 0, whose
    # parents 1 and 2 tie -> 2. hs_jax's ties go to the lower index: end 0.
    a = np.full((3, 3), 0.5)
    np.fill_diagonal(a, 0.0)
    assert _decode(a, "authors") == graph.from_edges(3, [(1, 2), (0, 2)], end=2)
    assert _decode(a, "hs_jax").end == 0


def test_an_exact_zero_is_never_their_parent():
    # End 2 (1/d largest), then node 1 (d = 1) -> 2, then node 0: parent weights 0 (node 1)
    # and -1 (node 2). Their softmax gives the exact 0 no weight: 0 -> 2, not 0 -> 1.
    a = [[0.0, 0.0, -1.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.0]]
    assert _decode(a, "authors") == graph.from_edges(3, [(1, 2), (0, 2)], end=2)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[0.0, 0.5, -0.5], [0.5, 0.0, 0.5], [0.2, 0.3, 0.0]], "row 0 .* sums to 0"),
        ([[0.0, 1e-39, 0.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.0]], "row 0 .* overflows"),
        # The diagonal counts in their sums: node 0's only weight is its own, its parents'
        # weights are all exactly 0.
        ([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.0]], "parent candidate of node 0"),
    ],
)
def test_where_their_code_overflows_or_crashes_is_an_error(rows, message):
    with pytest.raises(ValueError, match=message):
        _decode(rows, "authors")
    _decode(rows, "hs_jax")  # well defined


def test_their_decode_is_argmax_only_and_the_preset_sets_it():
    with pytest.raises(ValueError, match="top_p must be 0"):
        graph.g_decode(np.eye(3), RNG, top_p=0.8, rule="authors")
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.protocol = "authors"
    resolved = door.resolve(c)
    assert resolved.search.decode == "authors" and resolved.search.top_p == 0.0
    c.search.top_p = 0.8  # the paper's top-p with the authors' other settings: one clear line
    with pytest.raises(ConfigError, match="decode='hs_jax' samples with a top-p"):
        door.check(door.resolve(c))
    c.search.decode = "hs_jax"
    door.check(door.resolve(c))
    default = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    assert door.resolve(default).search.decode == "hs_jax"


def test_their_scoring_reads_the_stripped_one_line_output():
    item = Item(0, 0, "q", "D", choices={"A": "one", "B": "two", "C": "three", "D": "four"})
    choice = Protocol("authors", task_type="multiple_choice", dataset="mmlu", scoring="authors")
    # Raw, neither the first 5 characters ("It is") nor the last 5 (newlines) hold a letter,
    # and no option's text occurs: "Z". Stripped, the last 5 are "ion D".
    output = "It is clearly option D\n\n\n\n\n"
    assert authors_scoring.scoring_input(output) == "It is clearly option D"
    assert authors_scoring.authors_choice(output, item.choices) == "Z"
    assert choice.choice(item, output) == "D"
    assert choice.correct(get_spec("mmlu"), item, output) == 1.0
    # gsm8k: the gold among the last 5 space-separated words. Raw, "42\nfoo" is one word of
    # the last 5; with the newline a space, 42 is the 6th word from the end.
    exact = Protocol("authors", task_type="exact_match", dataset="gsm8k", scoring="authors")
    output = "42\nfoo bar baz qux quux"
    assert authors_scoring.authors_exact_match(output, "42", dataset="gsm8k")
    assert exact.correct(get_spec("gsm8k"), Item(1, 1, "q", "42"), output) == 0.0


def test_their_chat_template_trims_the_message():
    turn = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
    assert wrap_chat("Question: why? \n") == turn.format("Question: why? \n")
    assert wrap_chat("Question: why? \n", trim=True) == turn.format("Question: why?")
    assert NodeTemplates(chat=True, chat_trim=True).wrap(" x ") == wrap_chat("x")
    assert NodeTemplates().wrap(" x ") == " x "


def _round0(score):
    cfg = search.SearchConfig(
        n_graphs=3, n_assignments=4, max_iterations=1, patience=5, schedule="authors", seed=1
    )
    experts = {"a": np.arange(12, dtype=np.float32).reshape(3, 4)}
    records = []
    search.run_search(experts, score, cfg, progress=False, callbacks=[records.append])
    return records[0]


def test_their_round_0_best_comes_from_the_graphs_only():
    """Utility = how many nodes run expert 0: the role step's identity assignment uses each
    expert once (1 of 3), JFK's random assignments often repeat expert 0 and score higher;
    round 0's all-time best is still the graphs' best."""

    def score(systems, weights):
        jax.tree.leaves(weights)
        return np.array([sum(e == 0 for e in a) / len(a) for _, a in systems])

    record = _round0(score)
    assert record["role"]["best"] == pytest.approx(1 / 3)
    assert record["weight"]["best"] > 1 / 3  # an assignment did better ...
    assert record["best_utility"] == pytest.approx(1 / 3)  # ... and is not the best yet
