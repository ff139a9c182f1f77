"""Both protocols against literal expected prompt strings (entry, middle and end nodes; context
chunks and their order; few-shot; chat template; AbstainQA's check), the authors' answer
scoring, and the config presets (docs/FIDELITY.md)."""

import pytest

from hs_jax import config as config_lib
from hs_jax.engine.executor import Executor, Generation, System
from hs_jax.pipeline import door
from hs_jax.swarm.graph import Dag
from hs_jax.tasks import (
    CheckItem,
    Item,
    Protocol,
    authors_templates,
    get_spec,
    registered_name,
)
from hs_jax.tasks.authors_scoring import authors_choice, authors_exact_match

ENTRY = "Please answer the following question."
MIDDLE = (
    "Please answer the following question with the help of previous responses, "
    "feel free to ignore wrong or unhelpful responses."
)
END = MIDDLE + " Make sure to provide a final and definitive answer."
CHOOSE = "Please choose an option that best answers the question."
USER, TURN_END, MODEL = "<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n"

# Choices deliberately out of letter order: the authors list them as the file does.
MC = Item(0, 7, "What is 2+2?", "B", choices={"B": "4", "A": "3"})
KC = Item(0, 8, "Who?", "A", choices={"A": "x", "B": "y"}, icl_prompt="Example: ... A")
GSM = Item(0, 9, "Tom has 3 apples. How many?", "3")
GAIA = Item(0, 10, "What is X?", "X", context_chunks=("c0", "c1", "c2", "c3", "c4"))
QASPER = Item(0, 11, "Question: Why?", "Because.", context_chunks=("c0",))
PARENTS = ["first\nanswer", "second"]


def hs(name):
    spec = get_spec(name)
    return Protocol("hs_jax", task_type=spec.type, dataset=name)


def authors(name):
    spec = get_spec(name)
    return Protocol("authors", spec.type, name, authors_templates(name), scoring="authors")


def prompt(protocol, item, parents=(), *, end=False, position=0):
    return protocol.node_prompt(item, list(parents), is_end=end, position=position)


def test_multiple_choice_hs_jax():
    body = "Question: What is 2+2?\nA: 3\nB: 4"
    assert prompt(hs("mmlu"), MC) == f"{ENTRY}\n{body}"
    previous = "Previous response 1: first answer\nPrevious response 2: second"
    assert prompt(hs("mmlu"), MC, PARENTS) == f"{MIDDLE}\n{previous}\n{body}"
    assert prompt(hs("mmlu"), MC, PARENTS, end=True) == f"{END}\n{previous}\n{body}"


def test_multiple_choice_authors():
    slot = f"{CHOOSE}\nQuestion: What is 2+2?\nB: 4\nA: 3\nThe answer is"
    assert prompt(authors("mmlu"), MC) == f"{ENTRY}\nQuestion: {slot}"
    previous = "Previous response 1: first answer\nPrevious response 2: second"
    want = f"{MIDDLE}\n{previous}\nQuestion: {slot}"
    assert prompt(authors("mmlu"), MC, PARENTS) == want
    # The authors' end node keeps the middle instruction.
    assert prompt(authors("mmlu"), MC, PARENTS, end=True) == want
    # A one-node system (a single expert) is an entry node.
    assert prompt(authors("mmlu"), MC, end=True) == f"{ENTRY}\nQuestion: {slot}"


def test_knowledge_crosswords_few_shot_placement():
    assert prompt(hs("knowledge_crosswords"), KC) == (
        f"Example: ... A\n\n{ENTRY}\nQuestion: Who?\nA: x\nB: y"
    )
    # Authors: no instruction line; the few-shot block sits inside the Question slot.
    assert prompt(authors("knowledge_crosswords"), KC) == (
        f"{ENTRY}\nQuestion: Example: ... A\nQuestion: Who?\nA: x\nB: y\nThe answer is"
    )


def test_gsm8k_suffix_and_chat_template():
    assert prompt(hs("gsm8k"), GSM) == f"{ENTRY}\nQuestion: Tom has 3 apples. How many?"
    slot = "Tom has 3 apples. How many? Please end your response with 'The answer is'."
    assert prompt(authors("gsm8k"), GSM) == f"{USER}{ENTRY}\nQuestion: {slot}{TURN_END}{MODEL}"
    assert prompt(authors("gsm8k"), GSM, ["a"], end=True) == (
        f"{USER}{MIDDLE}\nPrevious response 1: a\nQuestion: {slot}{TURN_END}{MODEL}"
    )


@pytest.mark.parametrize("name", ["nlgraph", "nlgraph_gen", "gaia", "qasper", "ltp", "gsm8k"])
def test_authors_chat_datasets(name):
    assert authors_templates(name).chat
    assert not hs(name).templates.chat


@pytest.mark.parametrize("name", ["mmlu", "mmlu_pro", "knowledge_crosswords", "abstain", "com2"])
def test_authors_no_chat_for_choice_tasks(name):
    assert not authors_templates(name).chat


def test_context_chunk_placement():
    assert prompt(hs("gaia"), GAIA, position=2) == f"{ENTRY}\nContext: c2\nQuestion: What is X?"
    assert prompt(authors("gaia"), GAIA, position=2) == (
        f"{USER}{ENTRY}\nQuestion: Context: c2\nWhat is X?{TURN_END}{MODEL}"
    )
    # qasper questions carry their own "Question:" label: hs_jax drops it, the authors keep it.
    assert prompt(hs("qasper"), QASPER) == f"{ENTRY}\nContext: c0\nQuestion: Why?"
    assert prompt(authors("qasper"), QASPER) == (
        f"{USER}{ENTRY}\nQuestion: Context: c0\nQuestion: Why?{TURN_END}{MODEL}"
    )


def test_chunk_order_on_a_fixed_dag():
    dag = Dag(5, ((1, 0), (0, 4), (2, 4), (3, 4)), 4)
    assert dag.topological_order == (1, 0, 2, 3, 4)
    assert dag.pass_order == (1, 2, 3, 0, 4)
    assert hs("gaia").order(dag) == (1, 0, 2, 3, 4)
    assert authors("gaia").order(dag) == (1, 2, 3, 0, 4)
    # A chain whose edges point down the indices needs one pass per node.
    chain = Dag(3, ((2, 1), (1, 0)), 0)
    assert chain.pass_order == chain.topological_order == (2, 1, 0)


@pytest.mark.parametrize("protocol, chunk_of", [("hs_jax", [1, 0, 2, 3, 4]), ("authors", None)])
def test_executor_hands_chunks_by_the_protocols_order(protocol, chunk_of):
    dag = Dag(5, ((1, 0), (0, 4), (2, 4), (3, 4)), 4)
    proto = hs("gaia") if protocol == "hs_jax" else authors("gaia")
    seen = {}

    def generate(prompts, experts):
        for p, e in zip(prompts, experts, strict=True):
            seen[e] = p
        return Generation([f"out{e}" for e in experts])

    Executor(generate, proto.node_prompt, order=proto.order).run(
        [System(dag, (0, 1, 2, 3, 4))], [GAIA]
    )
    positions = {node: i for i, node in enumerate(proto.order(dag))}
    for node, text in seen.items():
        assert f"Context: c{positions[node]}\n" in text
    if chunk_of is not None:  # node 0 is second in hs_jax's order, fourth in the authors'
        assert "Context: c1\n" in seen[0]
    else:
        assert "Context: c3\n" in seen[0]


def test_authors_abstain_check_prompt():
    spec = get_spec("abstain")
    proto = Protocol("authors", spec.type, "abstain", authors_templates("abstain"))
    slot = (
        f"{CHOOSE}\nQuestion: What is 2+2?\nB: 4\nA: 3\nThe answer is"
        "\nProposed answer: B\nIs the proposed answer true or false? Directly answer with true "
        "or false."
    )
    assert prompt(proto, CheckItem(MC, "B")) == f"{ENTRY}\nQuestion: {slot}"
    assert proto.keeps_answer("True.") and not proto.keeps_answer("false")
    assert not proto.keeps_answer("Yes")  # the authors keep an answer only on "True"


def test_hs_jax_abstain_check_prompt():
    proto = hs("abstain")
    assert proto.check_prompt(MC, "B: 4\n") == (
        "Question: What is 2+2?\nA: 3\nB: 4\nProposed answer: B: 4\n"
        "Is the proposed answer correct? Please directly answer with Yes or No:"
    )
    assert proto.keeps_answer("Yes") and proto.keeps_answer("maybe")
    assert not proto.keeps_answer("No, it is wrong")


def test_authors_scoring_reproduces_their_parser():
    choices = {"A": "Paris", "B": "Rome", "C": "Oslo"}
    assert authors_choice("Answer: C", choices) == "A"  # "A" of "Answer" in the first 5 chars
    assert authors_choice("The capital is Rome", choices) == "B"  # text match
    assert authors_choice("I think it is (C)", choices) == "C"  # last 5 characters
    assert authors_choice("no idea at all", choices) == "Z"
    assert authors_exact_match("the answer is 11", "1")  # substring
    assert authors_exact_match("Yes and No", "No") and authors_exact_match("Yes and No", "Yes")
    words = "The answer is 18. Then 3 more is 21 in total"
    assert not authors_exact_match(words, "18", dataset="gsm8k")  # only the last 5 words
    assert authors_exact_match(words, "18")
    spec = get_spec("mmlu")
    item = Item(0, 0, "q", "C", choices=choices)
    assert authors("mmlu").correct(spec, item, "Answer: C") == 0.0
    assert hs("mmlu").correct(spec, item, "Answer: C") == 1.0


@pytest.mark.parametrize(
    "dataset, name",
    [("GSM8k", "gsm8k"), ("mmlu-pro", "mmlu_pro"), ("NLGraph", "nlgraph"), ("AB-kg", "abkg"),
     ("com2", "com2"), ("Normad", "normad"), ("WoW", "wow"), ("knowledge_crosswords",
     "knowledge_crosswords"), ("something else", None), (None, None)],
)  # fmt: skip
def test_registered_name_of_the_authors_spellings(dataset, name):
    assert registered_name(dataset) == name


def test_config_presets():
    hs_cfg = door.resolve(config_lib.base_config())
    assert hs_cfg.search.top_p == 0.8 and hs_cfg.search.schedule == "hs_jax"
    assert hs_cfg.task.scoring == "hs_jax"
    for name in ("roles_pso", "weights_pso"):
        pso = hs_cfg.search[name]
        assert (pso.init_velocity, pso.restart_rule, pso.restart_patience, pso.patience) == (
            "zero", "hs_jax", None, 1,
        )  # fmt: skip
    c = config_lib.base_config()
    c.protocol = "authors"
    au = door.resolve(c)
    assert au.search.top_p == 0.0 and au.search.schedule == "authors"
    assert au.task.scoring == "authors"
    for name in ("roles_pso", "weights_pso"):
        pso = au.search[name]
        assert (pso.init_velocity, pso.restart_rule, pso.restart_patience, pso.patience) == (
            "random", "authors", 0.67, au.search.patience,
        )  # fmt: skip
    # A value set by the user wins over the preset; restart_patience=0 switches restarts off.
    c.search.top_p = 0.5
    c.task.scoring = "hs_jax"
    c.search.weights_pso.restart_patience = 0.0
    au = door.resolve(c)
    assert au.search.top_p == 0.5 and au.task.scoring == "hs_jax"
    assert au.search.weights_pso.restart_patience is None
    c.protocol = "paper"
    with pytest.raises(ValueError, match="config.protocol='paper'"):
        door.resolve(c)


def test_fidelity_doc_names_only_real_switches():
    """Every config field docs/FIDELITY.md names as a switch exists in the base config."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md").read_text()
    c = config_lib.base_config()
    named = set()
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) < 6 or cells[1] in ("rule", "---"):
            continue
        for field in re.findall(r"`((?:task|search|outputs)\.[\w.*]+)", cells[5]):
            named.add(field.split("=")[0])
    assert {"task.scoring", "search.top_p", "search.schedule"} <= named
    for field in named:
        for expanded in (field.replace("*_pso", p) for p in ("roles_pso", "weights_pso")):
            node = c
            for part in expanded.split("."):
                assert part in node, f"docs/FIDELITY.md names {field}, which is not a field"
                node = node[part]
