"""Prompts exactly as the paper's Table 6/7 and the hs_jax protocol (docs/FIDELITY.md) specify,
and the judge."""

import numpy as np
import pytest

from hs_jax.tasks import (
    Item,
    Judge,
    NodeTemplates,
    abstain_check_prompt,
    context_chunk,
    format_question,
    get_spec,
    item_node_prompt,
    judge_prompt,
    multiple_choice_prompt,
    node_prompt,
    single_model_prompt,
    wrap_chat,
)

ENTRY = "Please answer the following question."
MIDDLE = (
    "Please answer the following question with the help of previous responses, "
    "feel free to ignore wrong or unhelpful responses."
)
END = MIDDLE + " Make sure to provide a final and definitive answer."


def test_entry_prompt():
    assert node_prompt("What is 2+2?") == f"{ENTRY}\nQuestion: What is 2+2?"
    # A one-node system: the end node without parents still gets the entry instruction.
    assert node_prompt("What is 2+2?", is_end=True) == f"{ENTRY}\nQuestion: What is 2+2?"


def test_middle_and_end_prompts_flatten_parent_outputs():
    parents = ["It is 4.\nI am sure.", "  Four\r\nor five \n"]
    want = (
        "Previous response 1: It is 4. I am sure.\n"
        "Previous response 2: Four or five\n"
        "Question: What is 2+2?"
    )
    assert node_prompt("What is 2+2?", parents) == f"{MIDDLE}\n{want}"
    assert node_prompt("What is 2+2?", parents, is_end=True) == f"{END}\n{want}"


def test_context_chunk_by_topological_position():
    chunks = ("chunk zero", "chunk one", "", "chunk three")
    assert context_chunk(chunks, 0) == "chunk zero"
    assert context_chunk(chunks, 3) == "chunk three"
    assert context_chunk(chunks, 2) is None  # empty chunk: no Context line
    assert context_chunk(chunks, 4) is None and context_chunk(None, 0) is None
    item = Item(index=0, id=1, question="Question: Who?", answer="x", context_chunks=chunks)
    assert item_node_prompt(item, position=1) == (f"{ENTRY}\nContext: chunk one\nQuestion: Who?")
    assert item_node_prompt(item, ["a\nb"], position=3, is_end=True) == (
        f"{END}\nPrevious response 1: a b\nContext: chunk three\nQuestion: Who?"
    )
    assert item_node_prompt(item, ["a"], position=2) == (
        f"{MIDDLE}\nPrevious response 1: a\nQuestion: Who?"
    )


MC_ITEM = Item(
    index=0,
    id=0,
    question="Capital of France?",
    answer="C",
    choices={"B": "Berlin", "A": "London", "D": "Rome", "C": "Paris"},
)


def test_multiple_choice_prompt_and_question():
    assert format_question(MC_ITEM) == "Capital of France?\nA: London\nB: Berlin\nC: Paris\nD: Rome"
    assert multiple_choice_prompt(MC_ITEM) == (
        "Please choose an option that best answers the question.\n"
        "Question: Capital of France?\nA: London\nB: Berlin\nC: Paris\nD: Rome\nThe answer is"
    )
    assert single_model_prompt(MC_ITEM, get_spec("mmlu")) == multiple_choice_prompt(MC_ITEM)
    assert node_prompt(format_question(MC_ITEM)) == (
        f"{ENTRY}\nQuestion: Capital of France?\nA: London\nB: Berlin\nC: Paris\nD: Rome"
    )


def test_icl_prefix_and_chat_wrapping():
    icl = "Question: 1+1?\nA: 2\nB: 3\nThe answer is A.\n"
    item = Item(
        index=0, id=0, question="q?", answer="A", choices={"A": "x", "B": "y"}, icl_prompt=icl
    )
    body = (
        "Please choose an option that best answers the question.\n"
        "Question: q?\nA: x\nB: y\nThe answer is"
    )
    assert multiple_choice_prompt(item) == "Question: 1+1?\nA: 2\nB: 3\nThe answer is A.\n\n" + body
    assert item_node_prompt(item, position=0).startswith(icl.rstrip() + "\n\n" + ENTRY)
    assert wrap_chat("hi") == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    chat = NodeTemplates(chat=True)
    assert node_prompt("q", templates=chat) == wrap_chat(f"{ENTRY}\nQuestion: q")
    # The few-shot prefix sits inside the user turn.
    assert item_node_prompt(item, position=0, templates=chat).startswith(
        "<start_of_turn>user\nQuestion: 1+1?"
    )
    assert single_model_prompt(item, get_spec("mmlu"), templates=chat) == wrap_chat(
        multiple_choice_prompt(item)
    )


def test_configurable_templates_and_answer_prefix():
    t = NodeTemplates(
        entry="E.", middle="M.", end="F.", previous="[{k}] {response}", question="Q) {question}"
    )
    assert node_prompt("x", templates=t) == "E.\nQ) x"
    assert node_prompt("x", ["a", "b"], is_end=True, templates=t) == "F.\n[1] a\n[2] b\nQ) x"
    base = NodeTemplates.for_task("multiple_choice", answer_prefix=True)
    assert node_prompt("x", templates=base) == f"{ENTRY}\nQuestion: x\nThe answer is"
    em = NodeTemplates.for_task("exact_match", answer_prefix=True)
    assert node_prompt("x", ["p"], templates=em).endswith("Question: x\nAnswer:")
    assert NodeTemplates.for_task("exact_match") == NodeTemplates()


def test_single_model_prompt_for_other_tasks():
    item = Item(index=0, id=0, question="2+2?", answer="4", context_chunks=("c0", "c1"))
    assert single_model_prompt(item, get_spec("gsm8k")) == f"{ENTRY}\nContext: c0\nQuestion: 2+2?"


def test_abstain_check_prompt():
    assert abstain_check_prompt("Capital?\nA: x", "The answer is\nA") == (
        "Question: Capital?\nA: x\nProposed answer: The answer is A\n"
        "Is the proposed answer correct? Please directly answer with Yes or No:"
    )


# ----------------------------------------------------------------------------- judge

TABLE7 = (
    "Please evaluate how similar is the following response to the ground truth answer. "
    "Please rate the response on a scale of 1 to 10, where 1 is the worst and 10 is the best. "
    "Please respond with Rating: ?/10 first and then provide your reason."
)


def test_judge_prompt_has_table7_text():
    p = judge_prompt("He was cured.", "He\nwas blind.")
    assert p == f"{TABLE7}\n\nGround truth: He was cured.\nGenerated response: He was blind."
    assert judge_prompt("g", "r", answer_prefix="Rating:").endswith(
        "Generated response: r\nRating:"
    )
    assert judge_prompt("g", "r", chat=True).startswith("<start_of_turn>user\n" + TABLE7)


def test_judge_with_injected_generate():
    seen = []

    def fake_generate(prompts):
        seen.append(list(prompts))
        return [" 8/10 close", " I cannot rate", " 3/10"][: len(prompts)]

    judge = Judge(fake_generate, answer_prefix="Rating:")
    items = [Item(index=i, id=i, question="q", answer=a) for i, a in enumerate(["x", "y", "z"])]
    result = judge.score_items(items, ["ox", "oy", "oz"])
    assert len(seen) == 1 and len(seen[0]) == 3  # one batched call
    assert "Ground truth: y\nGenerated response: oy\nRating:" in seen[0][1]
    np.testing.assert_allclose(result.scores, [0.8, 0.0, 0.3])
    assert result.ratings == (8.0, None, 3.0) and result.n_unparsed == 1
    judge.rate(["a"], ["b"])
    assert (judge.n_judged, judge.n_unparsed) == (4, 1)
    with pytest.raises(ValueError):
        judge.rate(["a", "b"], ["c"])
    bad = Judge(lambda prompts: ["Rating: 5/10"])
    with pytest.raises(ValueError, match="returned 1 texts for 2"):
        bad.rate(["a", "b"], ["c", "d"])
