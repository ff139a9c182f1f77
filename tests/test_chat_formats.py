"""Per-family chat formats (hs_jax.tasks.chat_format): literal prompt strings of every format,
the format a model config picks, the run's format threaded through node prompts, the authors'
protocol, the judges and the scorer, the end-of-turn tokens that end a row, and, as an
independent reference, transformers' `apply_chat_template` with the official chat templates.

The templates below are test data, copied from public copies of the models'
tokenizer_config.json `chat_template` (each names its source); where a copy differed from the
official file only outside the branches a single user message takes (tool calls, assistant
turns), that part is written as in the official file."""

import dataclasses

import ml_collections
import pytest

from hs_jax.analysis import roles
from hs_jax.models.gemma_config import PRESETS, tiny_config
from hs_jax.setup import assembly
from hs_jax.tasks import (
    CHAT_FORMATS,
    GEMMA_CHAT,
    ChatFormat,
    Item,
    Judge,
    NodeTemplates,
    Protocol,
    authors_templates,
    chat_format,
    get_spec,
    judge_prompt,
    node_prompt,
    prompts,
    turn_end_ids,
    wrap_chat,
)
from hs_jax.tasks.chat_format import LLAMA3_1, LLAMA31_SYSTEM

MSG = "Is 7 prime?"
PADDED = "  Is 7 prime?\n\n"  # ends in whitespace, as qasper questions can

# Every format's prompt for MSG (the message trimmed or not makes no difference there).
EXPECTED = {
    "gemma": "<start_of_turn>user\nIs 7 prime?<end_of_turn>\n<start_of_turn>model\n",
    "llama2": "[INST] Is 7 prime? [/INST]",
    "llama3.0": (
        "<|start_header_id|>user<|end_header_id|>\n\nIs 7 prime?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "llama3.1": (
        "<|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nIs 7 prime?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral_v1": "[INST] Is 7 prime? [/INST]",
    "mistral_v3": "[INST] Is 7 prime?[/INST]",
    "qwen2.0": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nIs 7 prime?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen2.5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nIs 7 prime?<|im_end|>\n<|im_start|>assistant\n"
    ),
    "qwen3": (
        "<|im_start|>user\nIs 7 prime?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    ),
}
STOPS = {
    "gemma": ("<end_of_turn>",),
    "llama2": ("</s>",),
    "llama3.0": ("<|eot_id|>",),
    "llama3.1": ("<|eot_id|>",),
    "mistral_v1": ("</s>",),
    "mistral_v3": ("</s>",),
    "qwen2.0": ("<|im_end|>",),
    "qwen2.5": ("<|im_end|>",),
    "qwen3": ("<|im_end|>",),
}
TRIMS = {"gemma", "llama2", "llama3.0", "llama3.1"}  # the templates with `| trim` / .strip()


def test_every_format_literal():
    assert set(CHAT_FORMATS) == set(EXPECTED)
    for name, want in EXPECTED.items():
        fmt = CHAT_FORMATS[name]
        assert fmt.name == name
        assert fmt.wrap(MSG) == want and fmt.wrap(MSG, trim=True) == want
        assert wrap_chat(MSG, fmt=fmt) == want
        assert fmt.stop_strings == STOPS[name]
        assert fmt.trims == (name in TRIMS)
        assert "<bos>" not in want and "<s>" not in want and "<|begin_of_text|>" not in want


def test_trailing_whitespace_with_and_without_trim():
    for name, want in EXPECTED.items():
        fmt = CHAT_FORMATS[name]
        # trim=True: the message's ends stripped, as Jinja's `| trim` does.
        assert wrap_chat(PADDED, trim=True, fmt=fmt) == want
        # trim=False: the message exactly as given, between the format's pieces.
        kept = wrap_chat(PADDED, trim=False, fmt=fmt)
        assert kept == want.replace(MSG, PADDED, 1)
        assert kept == fmt.before + PADDED + fmt.user_suffix + fmt.model_prefix
    assert wrap_chat(PADDED, fmt=CHAT_FORMATS["qwen3"]) == (
        "<|im_start|>user\n  Is 7 prime?\n\n<|im_end|>\n<|im_start|>assistant\n"
        "<think>\n\n</think>\n\n"
    )
    assert wrap_chat(PADDED, fmt=CHAT_FORMATS["mistral_v3"]) == "[INST]   Is 7 prime?\n\n[/INST]"
    assert wrap_chat(PADDED, trim=True, fmt=CHAT_FORMATS["llama2"]) == "[INST] Is 7 prime? [/INST]"


def test_gemma_is_the_default_and_unchanged():
    assert GEMMA_CHAT is CHAT_FORMATS["gemma"]
    assert (prompts.CHAT_USER, prompts.CHAT_MODEL, prompts.CHAT_END) == (
        "<start_of_turn>user\n",
        "<start_of_turn>model\n",
        "<end_of_turn>\n",
    )
    assert wrap_chat("hi") == "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert wrap_chat(" hi\n", trim=True) == wrap_chat("hi")
    assert NodeTemplates() == NodeTemplates(chat_format=GEMMA_CHAT)
    assert NodeTemplates().chat_format is GEMMA_CHAT
    assert authors_templates("gsm8k") == dataclasses.replace(
        authors_templates("gsm8k", chat_format=chat_format("gemma3")), chat_format=GEMMA_CHAT
    )
    t = NodeTemplates(chat=True, chat_trim=True)
    assert t.wrap(" q \n") == wrap_chat("q")
    assert t.stop_strings == ("<end_of_turn>",) and NodeTemplates().stop_strings == ()


def test_chat_format_of_configs_and_names():
    by_preset = {
        "gemma-2b": "gemma",
        "gemma2-9b": "gemma",
        "gemma3-1b": "gemma",
        "llama2-7b": "llama2",
        "llama3.1-8b": "llama3.1",
        "llama3.2-1b": "llama3.1",
        "mistral-7b-v0.1": "mistral_v1",
        "mistral-7b-v0.3": "mistral_v3",
        "qwen2.5-0.5b": "qwen2.5",
        "qwen2.5-7b": "qwen2.5",
        "qwen3-0.6b": "qwen3",
    }
    for preset, name in by_preset.items():
        if preset in PRESETS:
            assert chat_format(PRESETS[preset]).name == name, preset
    # Llama 3.0: a Llama 3 vocabulary without the 3.1 rope scaling.
    llama30 = dataclasses.replace(PRESETS["llama3.1-8b"], rope_llama3=None, rope_scale_global=1.0)
    assert chat_format(llama30).name == "llama3.0"
    # Llama 2: neither the 3.1 rope scaling nor a Llama 3 vocabulary.
    assert chat_format(dataclasses.replace(llama30, vocab_size=32_000)).name == "llama2"
    # Tiny test configs (small vocabularies): the tiny Llama is Llama 3.1 shaped, the tiny
    # Mistral's tokenizer has v0.3's tokens.
    assert chat_format(tiny_config("llama")).name == "llama3.1"
    assert chat_format(tiny_config("mistral").replace(vocab_size=512)).name == "mistral_v3"
    assert chat_format(tiny_config("mistral")).name == "mistral_v3"
    assert chat_format(tiny_config("qwen3")).name == "qwen3"
    assert chat_format(tiny_config("gemma3")) is GEMMA_CHAT
    # Names: a family (its newest format) or a format.
    families = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "llama": "llama3.1",
                "mistral": "mistral_v3", "qwen2": "qwen2.5", "qwen3": "qwen3"}  # fmt: skip
    for family, name in families.items():
        assert chat_format(family).name == name
    for name, fmt in CHAT_FORMATS.items():
        assert chat_format(name) is fmt and chat_format(fmt) is fmt
    with pytest.raises(ValueError, match="unknown chat format or family 'gpt2'"):
        chat_format("gpt2")
    with pytest.raises(ValueError, match="no chat format for family"):
        chat_format(object())


def test_node_templates_and_protocols_follow_the_format():
    qwen, llama = chat_format("qwen2.5"), chat_format("llama3.1")
    t = NodeTemplates(chat=True, chat_format=qwen)
    body = "Please answer the following question.\nQuestion: What is 2+2?"
    assert node_prompt("What is 2+2?", templates=t) == qwen.wrap(body)
    assert t.stop_strings == ("<|im_end|>",)
    assert NodeTemplates.for_task("exact_match", chat=True, chat_format=qwen) == t
    # chat_trim: the message as the format's template renders it (Qwen's keeps the spaces,
    # Llama's strips them).
    padded = "Question:  x \n"
    assert NodeTemplates(chat=True, chat_trim=True, chat_format=qwen).wrap(padded) == (
        qwen.wrap(padded)
    )
    assert NodeTemplates(chat=True, chat_trim=True, chat_format=llama).wrap(padded) == (
        llama.wrap("Question:  x")
    )
    # The authors' protocol: its chat datasets in the base model's format.
    spec = get_spec("gsm8k")
    gsm = Item(0, 9, "Tom has 3 apples. How many?", "3")
    suffix = " Please end your response with 'The answer is'."
    gemma_protocol = Protocol("authors", spec.type, "gsm8k", authors_templates("gsm8k"))
    protocol = Protocol(
        "authors", spec.type, "gsm8k", authors_templates("gsm8k", chat_format=llama)
    )
    want = f"Please answer the following question.\nQuestion: {gsm.question}{suffix}"
    assert protocol.node_prompt(gsm, [], is_end=True, position=0) == llama.wrap(want)
    assert gemma_protocol.node_prompt(gsm, [], is_end=True, position=0) == wrap_chat(want)
    # Datasets the authors do not wrap stay plain in every format.
    mmlu = authors_templates("mmlu", chat_format=llama)
    assert not mmlu.chat and mmlu.wrap("x") == "x" and mmlu.stop_strings == ()


def test_judges_follow_the_format():
    qwen = chat_format("qwen3")
    plain = judge_prompt("4", "four")
    assert judge_prompt("4", "four", chat=True, chat_format=qwen) == qwen.wrap(plain)
    assert judge_prompt("4", "four", chat=True) == wrap_chat(plain)
    seen = []
    judge = Judge(lambda ps: seen.extend(ps) or ["Rating: 8/10"] * len(ps), chat=True,
                  chat_format=qwen)  # fmt: skip
    assert judge.rate(["4"], ["four"]).ratings == (8.0,)
    assert seen == [qwen.wrap(plain)]
    # Role labelling: the judge function's own format, else Gemma's, else the one given.
    case = roles.RoleCase(0, 1, 0, 1, "What is 2+2?", "It is 4.")
    asked = []

    def generate(ps):
        asked.extend(ps)
        return ["1"] * len(ps)

    plain_role = roles.role_prompt(case.problem, case.output)
    assert roles.label_roles([case], generate, chat=True) == ["divide"]
    assert asked.pop() == wrap_chat(plain_role)
    generate.chat_format = qwen
    roles.label_roles([case], generate, chat=True)
    assert asked.pop() == qwen.wrap(plain_role)
    llama = chat_format("llama3.0")
    roles.label_roles([case], generate, chat=True, chat_format=llama)
    assert asked.pop() == llama.wrap(plain_role)
    roles.label_roles([case], generate)
    assert asked.pop() == plain_role


class SpecialTokenizer:
    """Whole special tokens as one id each; any other text one id per character."""

    SPECIAL = {"<end_of_turn>": 106, "<|eot_id|>": 128009, "<|im_end|>": 151645, "</s>": 2}

    def __init__(self, eos=1, stop_token_ids=None):
        self.eos_token_id = eos
        if stop_token_ids is not None:
            self.stop_token_ids = stop_token_ids

    def encode(self, text, add_special_tokens=False):
        if text in self.SPECIAL:
            return [self.SPECIAL[text]]
        return [1000 + ord(c) for c in text]


def test_turn_end_ids():
    tok = SpecialTokenizer()
    assert turn_end_ids(chat_format("gemma"), tok) == (106,)
    assert turn_end_ids(chat_format("llama3.1"), tok) == (128009,)
    assert turn_end_ids(chat_format("qwen2.5"), tok) == (151645,)
    assert turn_end_ids(chat_format("mistral_v3"), tok) == (2,)
    several = dataclasses.replace(chat_format("qwen3"), stop_strings=("<|im_end|>", "STOP"))
    assert turn_end_ids(several, tok) == (151645,)  # "STOP" is 4 tokens: not an end token


def test_run_eos_ids():
    tok = SpecialTokenizer(eos=151643)
    assert assembly.eos_ids_for(tiny_config("gemma3"), tok) is None  # Gemma: as before
    assert assembly.eos_ids_for(PRESETS["qwen2.5-7b"], tok) == [151643, 151645]
    assert assembly.eos_ids_for(PRESETS["llama3.1-8b"], SpecialTokenizer(eos=128001)) == [
        128001,
        128009,
    ]
    both = SpecialTokenizer(eos=128001, stop_token_ids=[128001, 128008, 128009])
    assert assembly.eos_ids_for(PRESETS["llama3.1-8b"], both) == [128001, 128008, 128009]
    assert assembly.eos_ids_for(PRESETS["mistral-7b-v0.3"], SpecialTokenizer(eos=2)) == [2]


def test_engine_default_eos_ids_are_the_eos_alone():
    """A bare Engine stops at the tokenizer's EOS, as it always has (Gemma runs and checkpoints
    unchanged); a run's engine gets the family's end-of-turn ids from `eos_ids_for`."""
    from test_sampling import CFG, random_params

    from hs_jax.engine.engine import Engine

    params = random_params(CFG)
    buckets = dict(length_buckets=(32,), new_token_buckets=(16,), batch_buckets=(8,))
    assert Engine(CFG, params, SpecialTokenizer(eos=1), **buckets).eos_ids == (1,)
    tok = SpecialTokenizer(eos=1, stop_token_ids=[1, 106])
    assert Engine(CFG, params, tok, **buckets).eos_ids == (1,)
    assert Engine(CFG, params, tok, eos_ids=(5,), **buckets).eos_ids == (5,)


def _config(protocol="hs_jax", chat=True):
    return ml_collections.ConfigDict(
        {
            "protocol": protocol,
            "task": {"chat_template": chat, "answer_prefix": "", "scoring": ""},
            "engine": {
                "max_batch": 4,
                "max_prompt_len": 64,
                "batch_buckets": (4,),
                "length_buckets": (64,),
            },
        }
    )


def test_assembly_picks_the_format_of_the_model():
    spec = get_spec("gsm8k")
    qwen_cfg, llama_cfg = PRESETS["qwen2.5-7b"], PRESETS["llama3.1-8b"]
    for protocol in ("hs_jax", "authors"):
        c = _config(protocol)
        gemma = assembly.protocol_for(c, spec, tiny_config("gemma3"))
        assert gemma.templates.chat_format is GEMMA_CHAT
        assert assembly.protocol_for(c, spec, PRESETS["gemma3-270m"]) == gemma
        got = assembly.protocol_for(c, spec, qwen_cfg).templates
        assert got.chat and got.chat_format == chat_format("qwen2.5")
        assert got.chat_trim == (protocol == "authors")
    # The model's config is required: no protocol silently takes Gemma's format.
    with pytest.raises(TypeError):
        assembly.protocol_for(_config(), spec)  # type: ignore[call-arg]
    # A protocol built for one model is put in the engine's model's format.
    c = _config()
    protocol = assembly.protocol_for(c, spec, tiny_config("gemma3"))
    assert assembly.in_model_format(protocol, None) is protocol
    assert assembly.in_model_format(protocol, tiny_config("gemma3")) is protocol
    fitted = assembly.in_model_format(protocol, llama_cfg)
    assert fitted.templates == dataclasses.replace(
        protocol.templates, chat_format=chat_format("llama3.1")
    )
    fake_engine = type("FakeEngine", (), {"config": qwen_cfg})()
    scorer = assembly.make_scorer(c, fake_engine, spec, protocol)
    assert scorer.protocol.templates.chat_format == chat_format("qwen2.5")
    assert scorer.judge.chat and scorer.judge.chat_format == chat_format("qwen2.5")
    item = Item(0, 1, "What is 2+2?", "4")
    want = chat_format("qwen2.5").wrap(
        "Please answer the following question.\nQuestion: " + item.question
    )
    assert scorer.protocol.node_prompt(item, [], is_end=True, position=0) == want


# ----------------------------------------------------------------------------- reference

# google/gemma-7b-it (mistral.rs's chat template tests, generated with transformers).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user')"
    " != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

# meta-llama/Llama-2-13b-chat-hf (same source).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and "
    "system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}"
    "{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
    "eos_token }}{% endif %}{% endfor %}"
)

# meta-llama/Meta-Llama-3-8B-Instruct.
LLAMA30_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# meta-llama/Llama-3.1-8B-Instruct (Llama 3.3's is the same file; from marin's copy, whose
# {% generation %} tags for assistant turns are left out here).
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""  # noqa: E501

# mistralai/Mistral-7B-Instruct-v0.1, its first template (mistral.rs's tests); the current file
# writes ' [INST] ' (module docstring of hs_jax.tasks.chat_format).
MISTRAL_V1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# mistralai/Mistral-7B-Instruct-v0.3 (the chat template in lmstudio-community's GGUF of it).
MISTRAL_V3_TEMPLATE = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# Qwen/Qwen2-7B-Instruct.
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen/Qwen2.5-7B-Instruct (several identical public copies).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501

# Qwen/Qwen3-8B (a public copy of the file, with the generation prompt block as several other
# copies of the official template have it).
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
"""  # noqa: E501

# (format, template, BOS the tokenizer adds and the template writes, EOS)
REFERENCES = {
    "gemma": (GEMMA_TEMPLATE, "<bos>", "<eos>"),
    "llama2": (LLAMA2_TEMPLATE, "<s>", "</s>"),
    "llama3.0": (LLAMA30_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1": (LLAMA31_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
    "mistral_v1": (MISTRAL_V1_TEMPLATE, "<s>", "</s>"),
    "mistral_v3": (MISTRAL_V3_TEMPLATE, "<s>", "</s>"),
    "qwen2.0": (QWEN2_TEMPLATE, None, "<|im_end|>"),
    "qwen2.5": (QWEN25_TEMPLATE, None, "<|im_end|>"),
    "qwen3": (QWEN3_TEMPLATE, None, "<|im_end|>"),
}
MESSAGES = [
    MSG,
    PADDED,
    "Please answer the following question.\nQuestion: What is 2+2?\nThe answer is",
    "\tContext: a b\n\nQuestion:  spaced  ",
    "Ünïcode — ✓ 日本語",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _render(tok, template, bos, eos, message, **kwargs):
    if template is QWEN3_TEMPLATE:  # hs_jax's Qwen3 format: thinking off
        kwargs.setdefault("enable_thinking", False)
    tok.bos_token, tok.eos_token = bos, eos
    return tok.apply_chat_template(
        [{"role": "user", "content": message}],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=True,
        **kwargs,
    )


def test_formats_equal_the_official_templates(hf_tokenizer):
    assert set(REFERENCES) == set(CHAT_FORMATS)
    for name, (template, bos, eos) in REFERENCES.items():
        fmt = CHAT_FORMATS[name]
        for message in MESSAGES:
            theirs = _render(hf_tokenizer, template, bos, eos, message)
            ours = (bos or "") + wrap_chat(message, trim=fmt.trims, fmt=fmt)
            assert ours == theirs, (name, message)
            # The authors' rendering (chat_trim) is the template's, in every format.
            t = NodeTemplates(chat=True, chat_trim=True, chat_format=fmt)
            assert (bos or "") + t.wrap(message) == theirs, (name, message)


def test_qwen3_format_turns_thinking_off(hf_tokenizer):
    fmt = CHAT_FORMATS["qwen3"]
    off = _render(hf_tokenizer, QWEN3_TEMPLATE, None, "<|im_end|>", MSG, enable_thinking=False)
    assert off == fmt.wrap(MSG)
    on = _render(hf_tokenizer, QWEN3_TEMPLATE, None, "<|im_end|>", MSG, enable_thinking=True)
    assert on + "<think>\n\n</think>\n\n" == fmt.wrap(MSG)


def test_llama31_date_is_the_templates_default(hf_tokenizer):
    dated = _render(
        hf_tokenizer, LLAMA31_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", MSG,
        date_string="1 Jan 2025",
    )  # fmt: skip
    assert dated != "<|begin_of_text|>" + CHAT_FORMATS["llama3.1"].wrap(MSG)
    assert dated.replace("1 Jan 2025", "26 Jul 2024") == (
        "<|begin_of_text|>" + CHAT_FORMATS["llama3.1"].wrap(MSG)
    )


def test_chat_format_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GEMMA_CHAT.name = "x"
    assert isinstance(LLAMA3_1, ChatFormat) and LLAMA3_1 is CHAT_FORMATS["llama3.1"]
    assert LLAMA3_1.before == LLAMA31_SYSTEM + CHAT_FORMATS["llama3.0"].user_prefix
