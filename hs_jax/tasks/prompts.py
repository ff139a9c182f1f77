"""Prompt text: the question of each task type and the node prompts of a multi-LLM system.

These are the hs_jax protocol's prompts (the paper's Table 6; the authors' variant lives in
``protocol.py``, every difference in docs/FIDELITY.md):

  entry node (no parents)::

      Please answer the following question.
      Question: {question}

  other nodes::

      {middle or end instruction}
      Previous response 1: {output of the first parent, newlines -> spaces}
      Previous response 2: ...
      Question: {question}

  where the end node's instruction adds " Make sure to provide a final and definitive
  answer.". For tasks with context chunks the node at topological position i gets
  "Context: {chunk_i}" on the line before its question. All pieces are fields of
  ``NodeTemplates`` so a config can change them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from hs_jax.tasks.chat_format import GEMMA, ChatFormat
from hs_jax.tasks.data import Item, TaskSpec

ENTRY_INSTRUCTION = "Please answer the following question."
MIDDLE_INSTRUCTION = (
    "Please answer the following question with the help of previous responses, "
    "feel free to ignore wrong or unhelpful responses."
)
END_INSTRUCTION = MIDDLE_INSTRUCTION + " Make sure to provide a final and definitive answer."
MULTIPLE_CHOICE_INSTRUCTION = "Please choose an option that best answers the question."

# Answer prefixes that make a base (not instruction-tuned) model answer right away instead of
# continuing the question; opt in with NodeTemplates.for_task(..., answer_prefix=True).
BASE_MODEL_ANSWER_PREFIX: dict[str, str] = {
    "multiple_choice": "The answer is",
    "abstain": "The answer is",
    "exact_match": "Answer:",
    "judged": "Answer:",
}

# Gemma's chat turn (the default format: ``chat_format.GEMMA``).
CHAT_USER = GEMMA.user_prefix  # "<start_of_turn>user\n"
CHAT_MODEL = GEMMA.model_prefix  # "<start_of_turn>model\n"
CHAT_END = GEMMA.user_suffix  # "<end_of_turn>\n"


@dataclasses.dataclass(frozen=True)
class NodeTemplates:
    """The text pieces of node prompts (defaults: the paper's Table 6).

    ``previous`` is formatted with k (1-based parent number) and response; ``context`` with
    chunk; ``question`` with question. ``answer_prefix`` (default empty, as in the paper) is
    put on a last line of its own when non-empty. ``chat`` wraps the whole prompt in the chat
    turn of ``chat_format`` (default Gemma's; ``chat_format.chat_format`` gives each family's)
    for instruction-tuned bases; ``chat_trim`` renders the message as the format's official
    template does, the authors' way (they apply the model's chat template): its ends stripped
    where the template trims (``| trim``, as Gemma's and Llama's do: a question ending in
    whitespace, as qasper's can, then gives another prompt), kept where it does not (Mistral,
    Qwen).
    """

    entry: str = ENTRY_INSTRUCTION
    middle: str = MIDDLE_INSTRUCTION
    end: str = END_INSTRUCTION
    previous: str = "Previous response {k}: {response}"
    context: str = "Context: {chunk}"
    question: str = "Question: {question}"
    answer_prefix: str = ""
    chat: bool = False
    chat_trim: bool = False
    chat_format: ChatFormat = GEMMA

    def wrap(self, prompt: str) -> str:
        """The prompt as the model reads it: in the chat turn when ``chat``."""
        if not self.chat:
            return prompt
        trim = self.chat_trim and self.chat_format.trims
        return wrap_chat(prompt, trim=trim, fmt=self.chat_format)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text that ends the model's turn: the format's stop strings when ``chat``, else none."""
        return self.chat_format.stop_strings if self.chat else ()

    @classmethod
    def for_task(
        cls,
        task_type: str,
        *,
        answer_prefix: bool = False,
        chat: bool = False,
        chat_format: ChatFormat = GEMMA,
    ) -> NodeTemplates:
        """Paper templates, optionally with the base-model answer prefix of the task type."""
        prefix = BASE_MODEL_ANSWER_PREFIX.get(task_type, "") if answer_prefix else ""
        return cls(answer_prefix=prefix, chat=chat, chat_format=chat_format)


DEFAULT_TEMPLATES = NodeTemplates()


def flatten_response(text: str) -> str:
    """A parent's output on one line: every newline becomes a space, ends stripped."""
    return re.sub(r"\r\n|\r|\n", " ", text).strip()


def wrap_chat(prompt: str, *, trim: bool = False, fmt: ChatFormat = GEMMA) -> str:
    """One user turn in chat format ``fmt`` (default Gemma's), ending where the model's turn
    begins (`trim`: the message's ends stripped first, as Jinja's ``trim`` filter does).

    The BOS token is not included: the tokenizer adds it.
    """
    return fmt.wrap(prompt, trim=trim)


def _strip_question_label(question: str) -> str:
    # qasper questions already start with "Question: "; the template adds its own label.
    return re.sub(r"^\s*Question:\s*", "", question)


def format_choices(choices: dict[str, str]) -> str:
    """Options one per line, "A: text", in letter order."""
    return "\n".join(f"{k}: {choices[k]}" for k in sorted(choices))


def format_question(item: Item) -> str:
    """The question text a node sees: the question, then its options for choice items.

    A leading "Question:" label in the data (qasper) is removed so the templates' own label is
    not doubled.
    """
    q = _strip_question_label(item.question)
    if item.choices:
        return f"{q}\n{format_choices(item.choices)}"
    return q


def with_icl(prompt: str, icl_prompt: str | None) -> str:
    """The few-shot prefix of a task file (knowledge_crosswords) in front of a prompt."""
    if not icl_prompt:
        return prompt
    return f"{icl_prompt.rstrip()}\n\n{prompt}"


def multiple_choice_prompt(item: Item) -> str:
    """The single-model multiple-choice prompt (with the icl prefix).

    "Please choose an option that best answers the question.\\nQuestion: {q}\\nA: ...\\n
    B: ...\\nThe answer is"
    """
    if not item.choices:
        raise ValueError(f"item {item.id!r} has no choices")
    body = f"{MULTIPLE_CHOICE_INSTRUCTION}\nQuestion: {format_question(item)}\nThe answer is"
    return with_icl(body, item.icl_prompt)


def context_chunk(chunks: Sequence[str] | None, position: int) -> str | None:
    """The context chunk of the node at topological position ``position`` (0-based).

    None when the task has no chunks, when there are fewer chunks than positions, or when the
    chunk is empty (gaia pads to 10 chunks with empty strings): such nodes get no Context line.
    """
    if chunks is None or position < 0 or position >= len(chunks):
        return None
    chunk = chunks[position]
    return chunk if chunk.strip() else None


def node_prompt(
    question: str,
    parent_outputs: Sequence[str] = (),
    *,
    is_end: bool = False,
    chunk: str | None = None,
    templates: NodeTemplates = DEFAULT_TEMPLATES,
    icl_prompt: str | None = None,
) -> str:
    """The prompt of one node of a multi-LLM system.

    The role follows from the graph: a node without parents uses the entry instruction (also
    when it is the end node of a one-node system); otherwise the end node uses the end
    instruction and every other node the middle one. Parents are listed in the given order as
    "Previous response 1..k", each flattened to one line.

    Args:
      question: the formatted question (``format_question``).
      parent_outputs: outputs of the node's parents, in order.
      is_end: whether this node is the system's end node.
      chunk: this node's context chunk (``context_chunk``), None for none.
      templates: the text pieces.
      icl_prompt: few-shot prefix put in front (inside the chat turn when chat=True).
    """
    t = templates
    if not parent_outputs:
        lines = [t.entry]
    else:
        lines = [t.end if is_end else t.middle]
        lines += [
            t.previous.format(k=k, response=flatten_response(r))
            for k, r in enumerate(parent_outputs, start=1)
        ]
    if chunk is not None:
        lines.append(t.context.format(chunk=chunk))
    lines.append(t.question.format(question=question))
    if t.answer_prefix:
        lines.append(t.answer_prefix)
    prompt = with_icl("\n".join(lines), icl_prompt)
    return t.wrap(prompt)


def item_node_prompt(
    item: Item,
    parent_outputs: Sequence[str] = (),
    *,
    position: int,
    is_end: bool = False,
    templates: NodeTemplates = DEFAULT_TEMPLATES,
) -> str:
    """``node_prompt`` for an item: its question, its icl prefix, and the chunk of ``position``."""
    return node_prompt(
        format_question(item),
        parent_outputs,
        is_end=is_end,
        chunk=context_chunk(item.context_chunks, position),
        templates=templates,
        icl_prompt=item.icl_prompt,
    )


def single_model_prompt(
    item: Item, spec: TaskSpec, *, templates: NodeTemplates = DEFAULT_TEMPLATES
) -> str:
    """The prompt for evaluating one model alone (the best-single baseline).

    Multiple-choice and AbstainQA items use ``multiple_choice_prompt``; other tasks use the
    entry-node prompt with the first context chunk.
    """
    if spec.has_choices:
        prompt = multiple_choice_prompt(item)
        return templates.wrap(prompt)
    return item_node_prompt(item, (), position=0, is_end=True, templates=templates)


def abstain_check_prompt(
    question: str, proposed_answer: str, *, templates: NodeTemplates = DEFAULT_TEMPLATES
) -> str:
    """AbstainQA self-check: ask whether a proposed answer is correct (Yes keeps it, No abstains).

    "Question: {q}\\nProposed answer: {answer}\\nIs the proposed answer correct? Please directly
    answer with Yes or No:" (the answer flattened to one line).
    """
    prompt = (
        f"{templates.question.format(question=question)}\n"
        f"Proposed answer: {flatten_response(proposed_answer)}\n"
        "Is the proposed answer correct? Please directly answer with Yes or No:"
    )
    return templates.wrap(prompt)
