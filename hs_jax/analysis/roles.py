"""Role labelling of node outputs by a judge model (the paper's section 6 "Role Statistics",
its Figure 4 and the prompt of its Table 8).

The paper names four roles an LLM can play in a multi-LLM system: divide (solves part of the
problem), refine (proposes a new (sub)answer from previous steps), feedback (comments on
previous steps) and irrelevant (text unrelated to the problem). A judge (the paper: Gemini 1.5
Flash; here any model behind a `generate(prompts) -> texts` function, so tests inject a fake
one) reads the problem and one intermediate output and answers with one of the four.

The cases come from a run's audit file (workdir/test_prompts.jsonl, written when
config.outputs.save_prompts is set: one row per node call on the test items with the node, its
expert and output). Intermediate outputs are those of every node but the end node (the end
node's output is the system's answer); `include_end` adds it. The problem text is the item's
question when the caller can give it (`questions`, by the item's position in the test split,
which audit rows record as 'item': ids may repeat), else the prompt of the item's first entry
node (the instruction and the question, nothing from other nodes).

A judge's reply is read by `parse_role`: the first scenario number 1-4, else the first role
word; neither gives None ('unparsed', counted apart).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from hs_jax.analysis.topology import positions
from hs_jax.swarm.graph import Dag
from hs_jax.tasks.chat_format import GEMMA, ChatFormat, chat_format
from hs_jax.tasks.prompts import flatten_response, wrap_chat

ROLES = ("divide", "refine", "feedback", "irrelevant")
UNPARSED = "unparsed"

# The paper's Table 8 instruction, with named fields for the two texts.
ROLE_TEMPLATE = (
    "Below is the output of a model solving part of a problem. Please judge whether the output "
    "is one of the four scenarios: 1. solving part of the problem, 2. refining the previous "
    "answer, 3. providing feedback, 4. irrelevant.\n\n"
    "The problem is: {problem}\n"
    "The output is: {output}"
)
# What the judge may write for each role, besides its scenario number.
_ROLE_WORDS = {
    "divide": ("solving part", "divide", "part of the problem"),
    "refine": ("refin",),
    "feedback": ("feedback",),
    "irrelevant": ("irrelevant",),
}

GenerateFn = Callable[[list[str]], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class RoleCase:
    """One intermediate output to label: the test item, the node, its expert and position
    (depth from the end node), the problem text and the output."""

    item: Any
    node: int
    expert: int
    position: int
    problem: str
    output: str


def role_prompt(
    problem: str,
    output: str,
    *,
    answer_prefix: str = "",
    chat: bool = False,
    chat_format: ChatFormat = GEMMA,
) -> str:
    """The judge's prompt for one output (both texts flattened to one line); `answer_prefix`
    (e.g. 'Scenario:') goes on a last line so a base model starts with its choice; `chat`
    wraps it in the judge model's chat turn (`chat_format`, default Gemma's)."""
    prompt = ROLE_TEMPLATE.format(
        problem=flatten_response(problem), output=flatten_response(output)
    )
    if answer_prefix:
        prompt = f"{prompt}\n{answer_prefix}"
    return wrap_chat(prompt, fmt=chat_format) if chat else prompt


def parse_role(text: str) -> str | None:
    """The role a judge's reply names (module docstring), or None."""
    digit = re.search(r"(?<![\d.])([1-4])(?![\d])", text)
    if digit:
        return ROLES[int(digit.group(1)) - 1]
    lowered = text.lower()
    hits = [
        (lowered.find(w), role)
        for role, words in _ROLE_WORDS.items()
        for w in words
        if w in lowered
    ]
    return min(hits)[1] if hits else None


def _key(row: Mapping[str, Any]) -> tuple[str, Any]:
    """An audit row's item: its position in the split when recorded (ids may repeat in a
    task file), else its id (audits written before positions were)."""
    return ("item", row["item"]) if "item" in row else ("id", row["id"])


def cases_from_audit(
    rows: Iterable[Mapping[str, Any]],
    dag: Dag,
    *,
    questions: Mapping[Any, str] | None = None,
    include_end: bool = False,
) -> list[RoleCase]:
    """The role cases of a best system's audit rows (test_prompts.jsonl; the 'answer' pass
    only), in file order."""
    rows = [r for r in rows if r.get("pass", "answer") == "answer"]
    pos = positions(dag)
    entry_prompt: dict[Any, str] = {}
    for r in rows:
        if not r.get("parents") and _key(r) not in entry_prompt:
            entry_prompt[_key(r)] = r["prompt"]
    cases = []
    for r in rows:
        node = int(r["node"])
        if (node == dag.end and not include_end) or node not in pos:
            continue
        known = (questions or {}).get(r["item"]) if "item" in r else None
        problem = known if known is not None else entry_prompt.get(_key(r), "")
        cases.append(RoleCase(r["id"], node, int(r["expert"]), pos[node], problem, r["output"]))
    return cases


def label_roles(
    cases: Sequence[RoleCase],
    generate: GenerateFn,
    *,
    answer_prefix: str = "",
    chat: bool = False,
    chat_format: ChatFormat | None = None,
    batch: int = 64,
) -> list[str]:
    """The role of each case (one of ROLES, or UNPARSED), asking `generate` `batch` prompts at
    a time. `chat_format` (for `chat`): default the judge's own, `generate.chat_format`, which
    `engine_judge` sets from its model; Gemma's for a function without one."""
    if chat_format is None:
        chat_format = getattr(generate, "chat_format", GEMMA)
    prompts = [
        role_prompt(
            c.problem, c.output, answer_prefix=answer_prefix, chat=chat, chat_format=chat_format
        )
        for c in cases
    ]
    labels: list[str] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        texts = list(generate(chunk))
        if len(texts) != len(chunk):
            raise ValueError(f"the judge returned {len(texts)} texts for {len(chunk)} prompts")
        labels += [parse_role(t) or UNPARSED for t in texts]
    return labels


def _fractions(counter: Counter) -> dict[str, float]:
    total = sum(counter.values())
    return {r: counter.get(r, 0) / total if total else 0.0 for r in (*ROLES, UNPARSED)}


def tally(cases: Sequence[RoleCase], labels: Sequence[str]) -> dict[str, Any]:
    """Role counts and fractions: overall, per position (depth from the end) and per expert
    (Figure 4's aggregates)."""
    if len(cases) != len(labels):
        raise ValueError(f"{len(cases)} cases but {len(labels)} labels")
    overall: Counter = Counter(labels)
    by_position: dict[int, Counter] = defaultdict(Counter)
    by_expert: dict[int, Counter] = defaultdict(Counter)
    for case, label in zip(cases, labels, strict=True):
        by_position[case.position][label] += 1
        by_expert[case.expert][label] += 1
    return {
        "labelled": len(labels),
        "counts": dict(overall),
        "fractions": _fractions(overall),
        "by_position": {str(p): _fractions(c) for p, c in sorted(by_position.items())},
        "by_expert": {str(e): _fractions(c) for e, c in sorted(by_expert.items())},
    }


def engine_judge(model: str, *, max_new_tokens: int = 16) -> GenerateFn:
    """A judge from a model spec (GGUF path, HF dir or the PyPI model name): greedy
    generations of the plain base model (`hs_jax.engine.engine.load_engine`), loaded here and only
    here, so the rest of the analysis never loads a model. The function's `chat_format` is the
    model's (`label_roles` wraps chat prompts in it)."""
    from hs_jax.engine.engine import load_engine

    engine = load_engine(model)

    def generate(prompts: list[str]) -> list[str]:
        return list(engine.generate(prompts, None, max_new_tokens=max_new_tokens).texts)

    generate.chat_format = chat_format(engine.config)
    return generate
