"""Protocols: how a task's items become node prompts and how node outputs are read.

Two protocols, chosen by ``--config.protocol`` (docs/FIDELITY.md lists every rule of both):

* ``hs_jax`` (default): the paper's Table 6 templates (``prompts.NodeTemplates``): a node sees
  "Question: {question and its options}" with the context chunk on a line of its own before it,
  the end node's instruction adds " Make sure to provide a final and definitive answer.", the
  few-shot prefix goes in front of the whole prompt, chunks follow ``Dag.topological_order``,
  and answers are read by the strict parsers of :mod:`hs_jax.tasks.parsing`.
* ``authors``: the authors' released code as it runs. The question slot of every node is the
  task's single-model prompt (multiple choice: "Please choose an option that best answers the
  question.\\nQuestion: {q}\\n{letter}: {choice}\\n...The answer is"; knowledge_crosswords
  without the instruction line and with its few-shot prefix inside the slot; gsm8k with
  " Please end your response with 'The answer is'." appended), a context chunk is put at the
  front of the slot ("Question: Context: {chunk}\\n{slot}"), the end node uses the middle
  instruction unchanged, gsm8k / nlgraph / gaia / qasper / ltp prompts are wrapped in the chat
  template, chunks follow ``Dag.pass_order``, and AbstainQA reruns the whole graph on a
  true/false question about the proposed letter (:class:`CheckItem`).

Per-dataset rules key on ``dataset``: the registered task name a file's ``dataset`` field
resolves to (``data.registered_name``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from hs_jax.swarm.graph import Dag
from hs_jax.tasks import authors_scoring, metrics, parsing
from hs_jax.tasks.chat_format import GEMMA, ChatFormat
from hs_jax.tasks.data import Item, TaskSpec
from hs_jax.tasks.prompts import (
    DEFAULT_TEMPLATES,
    MIDDLE_INSTRUCTION,
    MULTIPLE_CHOICE_INSTRUCTION,
    NodeTemplates,
    abstain_check_prompt,
    format_question,
    item_node_prompt,
)

PROTOCOLS: tuple[str, ...] = ("hs_jax", "authors")
SCORINGS: tuple[str, ...] = ("hs_jax", "authors")

# Datasets whose every prompt the authors wrap in the chat template (the generated NLGraph
# task follows nlgraph).
AUTHORS_CHAT_DATASETS = frozenset({"gsm8k", "nlgraph", "nlgraph_gen", "gaia", "qasper", "ltp"})
GSM8K_SUFFIX = " Please end your response with 'The answer is'."
AUTHORS_CHECK_SUFFIX = (
    "\nProposed answer: {letter}\n"
    "Is the proposed answer true or false? Directly answer with true or false."
)
# The authors' AbstainQA answers get 100 new tokens (multiple choice elsewhere: 50).
AUTHORS_ABSTAIN_MAX_NEW_TOKENS = 100
# The authors' judge instruction (their code's wording of the paper's Table 7).
AUTHORS_JUDGE_TEMPLATE = (
    "Please evaluate how similar is the following response to the ground truth answer. "
    "Please rate the response on a scale of 1 to 10, where 1 is the worst and 10 is the best. "
    'Please respond with "Rating: ?/10" first and then provide your reason.\n\n'
    "Ground truth: {ground_truth}\n\n"
    "Generated response: {response}"
)


@dataclasses.dataclass(frozen=True)
class CheckItem:
    """An AbstainQA item with the letter a system proposed for it: the question of the authors'
    check pass, which runs the whole graph again."""

    item: Item
    proposed: str


def authors_templates(
    dataset: str, *, chat: bool | None = None, chat_format: ChatFormat = GEMMA
) -> NodeTemplates:
    """The authors' node text: the end node keeps the middle instruction; chat by dataset, in
    the base model's chat format (default Gemma's, the authors' models), the message rendered
    as that format's template does (``chat_trim``)."""
    if chat is None:
        chat = dataset in AUTHORS_CHAT_DATASETS
    return NodeTemplates(end=MIDDLE_INSTRUCTION, chat=chat, chat_trim=True, chat_format=chat_format)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Prompts and answer reading for one task under one protocol.

    Attributes:
      name: 'hs_jax' or 'authors' (see the module docstring).
      task_type: the task's type (``TaskSpec.type``): the authors' slot depends on it.
      dataset: registered task name whose per-dataset rules apply ('' = none).
      templates: node text pieces (``authors_templates`` under the authors' protocol).
      scoring: 'hs_jax' (strict parsers) or 'authors' (:mod:`hs_jax.tasks.authors_scoring`).
    """

    name: str = "hs_jax"
    task_type: str = "exact_match"
    dataset: str = ""
    templates: NodeTemplates = DEFAULT_TEMPLATES
    scoring: str = "hs_jax"

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; one of {PROTOCOLS}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {self.scoring!r}; one of {SCORINGS}")

    @property
    def authors(self) -> bool:
        return self.name == "authors"

    @property
    def abstain_reruns_graph(self) -> bool:
        """AbstainQA's check: the whole graph again (authors) or the end expert alone."""
        return self.authors

    def order(self, dag: Dag) -> tuple[int, ...]:
        """The topological order whose position i receives context chunk i."""
        return dag.pass_order if self.authors else dag.topological_order

    # ------------------------------------------------------------------------- prompts

    def node_prompt(
        self, item: Item | CheckItem, parent_outputs: Sequence[str], *, is_end: bool, position: int
    ) -> str:
        """One node's prompt (the executor's ``prompt_fn``)."""
        if not self.authors:
            if isinstance(item, CheckItem):
                raise TypeError("the hs_jax protocol checks answers with check_prompt")
            return item_node_prompt(
                item, parent_outputs, position=position, is_end=is_end, templates=self.templates
            )
        t = self.templates
        base = item.item if isinstance(item, CheckItem) else item
        slot = self.slot(item)
        chunks = base.context_chunks
        if chunks is not None and 0 <= position < len(chunks):
            slot = f"Context: {chunks[position]}\n{slot}"
        if parent_outputs:
            lines = [t.end if is_end else t.middle]
            lines += [
                t.previous.format(k=k, response=out.strip().replace("\n", " "))
                for k, out in enumerate(parent_outputs, start=1)
            ]
        else:
            lines = [t.entry]
        lines.append(t.question.format(question=slot))
        if t.answer_prefix:
            lines.append(t.answer_prefix)
        prompt = "\n".join(lines)
        return t.wrap(prompt)

    def slot(self, item: Item | CheckItem) -> str:
        """The authors' question slot: the task's single-model prompt."""
        if isinstance(item, CheckItem):
            return self.slot(item.item) + AUTHORS_CHECK_SUFFIX.format(letter=item.proposed)
        if self.task_type in ("multiple_choice", "abstain"):
            return self._choice_prompt(item)
        if self.dataset == "gsm8k":
            return item.question + GSM8K_SUFFIX
        return item.question

    def _choice_prompt(self, item: Item) -> str:
        # Options in the file's order, each line ending in a newline, then "The answer is".
        body = f"Question: {item.question}\n"
        body += "".join(f"{k}: {v}\n" for k, v in (item.choices or {}).items())
        body += "The answer is"
        if self.dataset == "knowledge_crosswords":
            return f"{item.icl_prompt or ''}\n{body}"
        return f"{MULTIPLE_CHOICE_INSTRUCTION}\n{body}"

    def check_prompt(self, item: Item, answer: str) -> str:
        """hs_jax's AbstainQA self-check, asked of the end node's expert alone."""
        return abstain_check_prompt(format_question(item), answer, templates=self.templates)

    # ------------------------------------------------------------------------- answers

    def choice(self, item: Item, output: str) -> str | None:
        """The option letter an output picks (authors' scoring: "Z" when none)."""
        if self.scoring == "authors":
            output = authors_scoring.scoring_input(output)
            return authors_scoring.authors_choice(output, item.choices or {})
        return parsing.parse_choice(output, item.choices)

    def correct(self, spec: TaskSpec, item: Item, output: str) -> float:
        """0/1 correctness of one output (multiple choice, exact match, abstain's answer)."""
        if spec.type == "judged":
            raise ValueError(f"task {spec.name!r} is judged: score it with tasks.Judge")
        if self.scoring == "authors":
            if spec.has_choices:
                return float(self.choice(item, output) == item.answer)
            output = authors_scoring.scoring_input(output)
            return float(
                authors_scoring.authors_exact_match(output, item.answer, dataset=self.dataset)
            )
        return metrics.score_item(spec, item, output)

    def score_outputs(
        self, spec: TaskSpec, items: Sequence[Item], outputs: Sequence[str]
    ) -> np.ndarray:
        """Per-item 0/1 correctness, [len(items)] float32."""
        if len(items) != len(outputs):
            raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
        return np.asarray([self.correct(spec, i, o) for i, o in zip(items, outputs)], np.float32)

    def keeps_answer(self, check_output: str) -> bool:
        """AbstainQA: whether the check output keeps the proposed answer."""
        # The check's question decides how its answer reads: true/false (authors) or yes/no.
        if self.authors:
            return authors_scoring.authors_keeps_answer(check_output)
        return not metrics.abstain_decision(check_output)

    def parsed_answer(self, spec: TaskSpec, item: Item, output: str) -> str | None:
        """What the scorer read from an output (for audits); None when nothing was read."""
        if spec.has_choices:
            return self.choice(item, output)
        if spec.type == "judged" or self.scoring == "authors":
            return None
        kind = spec.answer if spec.answer not in ("auto", "letter") else None
        kind = kind or parsing.answer_kind(item.answer)
        if kind == "number":
            number = parsing.parse_number(output)
            return None if number is None else str(number)
        if kind == "yes_no":
            return parsing.parse_yes_no(output)
        return parsing.final_answer_span(output)
