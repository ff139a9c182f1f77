"""Chat formats: how an instruction-tuned model of each family reads one user turn.

A ``ChatFormat`` is the text an official chat template (the Jinja ``chat_template`` of the
model's tokenizer_config.json, as transformers' ``apply_chat_template(messages, tokenize=False,
add_generation_prompt=True)`` renders it with its default arguments) writes around one user
message, without the BOS token (the tokenizer adds it)::

    {system}{user_prefix}{message}{user_suffix}{model_prefix}

``system`` is the system turn a template adds when none is given (Llama 3.1, Qwen 2 / 2.5),
``stop_strings`` the text that ends a model turn, and ``trims`` whether the template strips the
message's ends (Jinja's ``| trim``, Python's ``.strip()``).

The formats, by name (``FORMATS``):

* ``gemma`` (Gemma 1, 2, 3): ``<start_of_turn>user\\n{msg}<end_of_turn>\\n<start_of_turn>model
  \\n``; trims.
* ``llama2`` (Llama 2 chat): ``[INST] {msg} [/INST]``; trims (``content.strip()``). The
  template's ``<s>`` before ``[INST]`` is the BOS.
* ``llama3.0`` (Meta-Llama-3-*-Instruct): ``<|start_header_id|>user<|end_header_id|>\\n\\n{msg}
  <|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``; trims.
* ``llama3.1`` (Llama 3.1, 3.2, 3.3 instruct): the same user turn after the system turn these
  templates always write, ``<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge
  Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n<|eot_id|>``. 26 Jul 2024 is Llama 3.1's
  default ``date_string``; Llama 3.2's template writes the day it runs instead
  (``strftime_now``): the date is pinned here so prompts are the same on every day.
* ``mistral_v1`` (Mistral 7B Instruct v0.1 / v0.2, tokenizer V1): ``[INST] {msg} [/INST]``, no
  trim. Mistral's current v0.1 template writes ``<s> [INST] ...``: that space is the one
  sentencepiece puts in front of the text (mistral_common's tokens are ``<s>``, ``▁[``, ...),
  which a sentencepiece tokenizer adds to ``[INST]`` here.
* ``mistral_v3`` (Mistral 7B Instruct v0.3, tokenizer V3): ``[INST] {msg}[/INST]`` (no space
  before ``[/INST]``), no trim: the v0.3 template is followed (v0.1's differs in these spaces).
* ``qwen2.0`` (Qwen2-*-Instruct): ChatML, ``<|im_start|>user\\n{msg}<|im_end|>\\n<|im_start|>
  assistant\\n`` after the default system turn ``<|im_start|>system\\nYou are a helpful
  assistant.<|im_end|>\\n``; no trim.
* ``qwen2.5`` (Qwen2.5-*-Instruct): the same, whose default system turn is "You are Qwen,
  created by Alibaba Cloud. You are a helpful assistant.".
* ``qwen3`` (Qwen3): ChatML without a system turn; no trim; thinking off, as the template
  writes it with ``enable_thinking=False``: the model's turn opens with an empty think block
  (``<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n``). A node's answer is short and
  read by the task's parser, and the paper's systems do not think first; a thinking model would
  spend the node's token budget inside ``<think>`` and leave no answer to read.

``chat_format(model)`` picks one from a model config (``GemmaConfig``: family, vocabulary size,
Llama 3.1 rope scaling) or a name. A family name alone cannot tell Llama 2 from Llama 3 or
Mistral v0.1 from v0.3; the config can:

* ``llama``: Llama 3.1's rope scaling (``rope_llama3`` set: Llama 3.1, 3.2, 3.3) is
  ``llama3.1``; else a vocabulary of 128,000 tokens or more (Llama 3's 128,256) is Llama 3.0
  (``llama3.0``), a smaller one Llama 2 (``llama2``, 32,000). The tiny test Llama, Llama 3.1
  shaped with a small vocabulary of Llama 3's special tokens, is ``llama3.1``.
* ``mistral``: the 32,000-token vocabulary (tokenizer V1: v0.1, v0.2) is ``mistral_v1``, any
  other ``mistral_v3`` (v0.3's 32,768; the tiny test Mistral, which has v0.3's tokens; newer
  Tekken models, 131,072, write no space after ``[INST]`` and are not told apart).
* ``qwen2`` is Qwen2.5's template (``qwen2.5``: the config cannot tell Qwen2 from Qwen2.5);
  ``qwen3`` Qwen3's; ``gemma``, ``gemma2``, ``gemma3`` Gemma's.

A family name without a config gets the newest: ``llama`` -> ``llama3.1``, ``mistral`` ->
``mistral_v3``, ``qwen2`` -> ``qwen2.5``.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """One user turn of a family's chat template (module docstring).

    Attributes:
      name: the format's name (a key of ``FORMATS``).
      user_prefix: the text right before the user message.
      user_suffix: the text right after it.
      model_prefix: the start of the model's turn (where generation begins).
      stop_strings: text that ends a model turn (its end-of-turn token's text).
      trims: whether the official template strips the message's ends.
      system: the system turn the template writes when none is given ('' for none).
    """

    name: str
    user_prefix: str
    user_suffix: str
    model_prefix: str
    stop_strings: tuple[str, ...]
    trims: bool
    system: str = ""

    @property
    def before(self) -> str:
        """All the text before the user message (the default system turn included)."""
        return self.system + self.user_prefix

    def wrap(self, message: str, *, trim: bool = False) -> str:
        """One user turn ending where the model's turn begins (``trim``: the message's ends
        stripped first). No BOS: the tokenizer adds it."""
        body = message.strip() if trim else message
        return f"{self.before}{body}{self.user_suffix}{self.model_prefix}"


GEMMA = ChatFormat(
    "gemma",
    user_prefix="<start_of_turn>user\n",
    user_suffix="<end_of_turn>\n",
    model_prefix="<start_of_turn>model\n",
    stop_strings=("<end_of_turn>",),
    trims=True,
)
LLAMA2 = ChatFormat(
    "llama2",
    user_prefix="[INST] ",
    user_suffix=" [/INST]",
    model_prefix="",
    stop_strings=("</s>",),
    trims=True,
)
LLAMA3_0 = ChatFormat(
    "llama3.0",
    user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
    user_suffix="<|eot_id|>",
    model_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
    stop_strings=("<|eot_id|>",),
    trims=True,
)
LLAMA31_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
)
LLAMA3_1 = dataclasses.replace(LLAMA3_0, name="llama3.1", system=LLAMA31_SYSTEM)
MISTRAL_V1 = ChatFormat(
    "mistral_v1",
    user_prefix="[INST] ",
    user_suffix=" [/INST]",
    model_prefix="",
    stop_strings=("</s>",),
    trims=False,
)
MISTRAL_V3 = dataclasses.replace(MISTRAL_V1, name="mistral_v3", user_suffix="[/INST]")
CHATML = ChatFormat(
    "chatml",
    user_prefix="<|im_start|>user\n",
    user_suffix="<|im_end|>\n",
    model_prefix="<|im_start|>assistant\n",
    stop_strings=("<|im_end|>",),
    trims=False,
)
# Thinking off: the empty think block Qwen3's template writes with enable_thinking=False.
QWEN3 = dataclasses.replace(
    CHATML, name="qwen3", model_prefix="<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
QWEN2_0 = dataclasses.replace(
    CHATML,
    name="qwen2.0",
    system="<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
)
QWEN2_5 = dataclasses.replace(
    CHATML,
    name="qwen2.5",
    system=(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
        "You are a helpful assistant.<|im_end|>\n"
    ),
)

FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (GEMMA, LLAMA2, LLAMA3_0, LLAMA3_1, MISTRAL_V1, MISTRAL_V3, QWEN2_0, QWEN2_5, QWEN3)
}
# The format of a family named without its config (the newest of the family).
FAMILY_FORMATS: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "llama": "llama3.1",
    "mistral": "mistral_v3",
    "qwen2": "qwen2.5",
    "qwen3": "qwen3",
}
LLAMA3_MIN_VOCAB = 128_000
MISTRAL_V1_VOCAB = 32_000


def chat_format(model: Any) -> ChatFormat:
    """The chat format of a model config (anything with ``family`` and ``vocab_size``, e.g.
    ``GemmaConfig``), a family name or a format name (module docstring)."""
    if isinstance(model, ChatFormat):
        return model
    if isinstance(model, str):
        if model in FORMATS:
            return FORMATS[model]
        if model in FAMILY_FORMATS:
            return FORMATS[FAMILY_FORMATS[model]]
        raise ValueError(
            f"unknown chat format or family {model!r}; formats: {', '.join(FORMATS)}; "
            f"families: {', '.join(FAMILY_FORMATS)}"
        )
    family = getattr(model, "family", None)
    if family not in FAMILY_FORMATS:
        raise ValueError(f"no chat format for family {family!r} (of {type(model).__name__})")
    vocab = int(model.vocab_size)
    if family == "llama":
        if getattr(model, "rope_llama3", None) is not None:
            return LLAMA3_1
        return LLAMA3_0 if vocab >= LLAMA3_MIN_VOCAB else LLAMA2
    if family == "mistral":
        return MISTRAL_V1 if vocab == MISTRAL_V1_VOCAB else MISTRAL_V3
    return FORMATS[FAMILY_FORMATS[family]]


def turn_end_ids(fmt: ChatFormat, tokenizer: Any) -> tuple[int, ...]:
    """Ids of the format's stop strings that the tokenizer encodes as one token (end-of-turn
    tokens: what stops a row on the device, as decoded texts skip special tokens); a stop
    string of several tokens gives none."""
    ids = []
    for s in fmt.stop_strings:
        toks = list(tokenizer.encode(s, add_special_tokens=False))
        if len(toks) == 1:
            ids.append(int(toks[0]))
    return tuple(dict.fromkeys(ids))
