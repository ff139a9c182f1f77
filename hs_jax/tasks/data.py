"""Task registry and a validating loader for the authors' JSON task files.

A task file is ``{"dataset": str, "dev": [item, ...], "test": [item, ...]}`` with an optional
top-level ``icl_prompt`` (a few-shot prefix, knowledge_crosswords). Every item has a
``question`` and an ``answer`` string; multiple-choice items add ``choices`` (letter -> text)
and a letter ``answer``; context tasks add ``context_chunks`` (a list of strings, one per node
by topological position). ``id`` and ``domain`` are optional; any other key is kept in
``Item.extra`` (the NLGraph generator adds ``type`` and ``path``).

Errors name the file, the split, the item index and the field, so a broken file is fixed in one
look instead of failing later inside a search.

Item ids that repeat within a split are warned about, naming them, not refused: the authors'
own files repeat them (gsm8k's dev split gives all 200 items id 0; knowledge_crosswords has
16 repeated ids in dev and 278 in test, different items asking the same question). hs_jax
tells items apart by their position (`Item.index`), so nothing is mixed up inside a run; only
a reader matching outputs to questions by id would be (test_prompts.jsonl rows, results.json's
`test_ids`, launch.analyze's role cases).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from absl import logging

TaskType = Literal["multiple_choice", "exact_match", "abstain", "judged"]
AnswerKind = Literal["letter", "auto", "number", "yes_no", "text"]

TASK_TYPES: tuple[str, ...] = ("multiple_choice", "exact_match", "abstain", "judged")
ANSWER_KINDS: tuple[str, ...] = ("letter", "auto", "number", "yes_no", "text")
SPLITS: tuple[str, ...] = ("dev", "test")

# Generation budgets of the authors' code (docs/FIDELITY.md), by task type.
DEFAULT_MAX_NEW_TOKENS: dict[str, int] = {
    "multiple_choice": 50,
    "exact_match": 50,
    "abstain": 50,
    "judged": 200,
}


class TaskDataError(ValueError):
    """A task file that does not have the authors' format; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """How a task is prompted and scored.

    Attributes:
      name: registry name (also the default file stem).
      type: 'multiple_choice' (letter answers), 'exact_match' (numbers, Yes/No, short strings),
        'abstain' (AbstainQA on multiple-choice items: answer, then a yes/no self-check) or
        'judged' (free text rated 1-10 by a judge model).
      max_new_tokens: generation budget per node.
      answer: how gold answers are compared ('letter' for choice tasks; 'auto' picks number,
        yes_no or text from the gold string, see parsing.answer_kind).
      filename: file name inside a data directory, None for generated tasks.
      check_max_new_tokens: budget of the AbstainQA yes/no self-check generation.
    """

    name: str
    type: TaskType
    max_new_tokens: int
    answer: AnswerKind = "auto"
    filename: str | None = None
    check_max_new_tokens: int = 10

    def __post_init__(self):
        if self.type not in TASK_TYPES:
            raise ValueError(
                f"TaskSpec {self.name!r}: unknown type {self.type!r}; one of {TASK_TYPES}"
            )
        if self.answer not in ANSWER_KINDS:
            raise ValueError(
                f"TaskSpec {self.name!r}: unknown answer kind {self.answer!r}; "
                f"one of {ANSWER_KINDS}"
            )
        if self.max_new_tokens <= 0:
            raise ValueError(f"TaskSpec {self.name!r}: max_new_tokens must be positive")

    @property
    def has_choices(self) -> bool:
        """Items carry lettered choices (multiple choice and AbstainQA)."""
        return self.type in ("multiple_choice", "abstain")


def make_spec(
    name: str,
    type: TaskType,
    *,
    max_new_tokens: int | None = None,
    answer: AnswerKind | None = None,
    filename: str | None = None,
) -> TaskSpec:
    """A spec for any file in the authors' format, with the defaults of its task type."""
    if type not in TASK_TYPES:
        raise ValueError(f"unknown task type {type!r}; one of {TASK_TYPES}")
    if answer is None:
        answer = "letter" if type in ("multiple_choice", "abstain") else "auto"
    return TaskSpec(
        name=name,
        type=type,
        max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS[type],
        answer=answer,
        filename=filename,
    )


TASKS: dict[str, TaskSpec] = {
    s.name: s
    for s in (
        make_spec("mmlu", "multiple_choice", filename="mmlu.json"),
        make_spec("mmlu_pro", "multiple_choice", filename="mmlu_pro.json"),
        make_spec("knowledge_crosswords", "multiple_choice", filename="knowledge_crosswords.json"),
        make_spec(
            "gsm8k", "exact_match", max_new_tokens=100, answer="number", filename="gsm8k.json"
        ),
        make_spec("nlgraph", "exact_match", max_new_tokens=80, filename="nlgraph.json"),
        make_spec("nlgraph_gen", "exact_match", max_new_tokens=80),
        make_spec("gaia", "exact_match", filename="gaia.json"),
        make_spec("qasper", "judged", filename="qasper.json"),
        make_spec("ltp", "judged", filename="ltp.json"),
        make_spec("abstain", "abstain", filename="mmlu.json"),
        # The paper's four remaining tasks: multiple choice in the authors' code and files.
        make_spec("com2", "multiple_choice", filename="com2.json"),
        make_spec("normad", "multiple_choice", filename="normad.json"),
        make_spec("abkg", "multiple_choice", filename="abkg.json"),
        make_spec("wow", "multiple_choice", filename="wow.json"),
    )
}

# Other spellings of registered tasks seen in task files' `dataset` fields and the paper.
_DATASET_ALIASES = {
    "ab_kg": "abkg",
    "k_cross": "knowledge_crosswords",
    "kcross": "knowledge_crosswords",
    "abstainqa": "abstain",
}


def registered_name(dataset: str | None) -> str | None:
    """The registered task a file's `dataset` field names, or None.

    Case and '-' / ' ' vs '_' do not matter: the authors' files say "GSM8k", "mmlu-pro" and
    "NLGraph" for gsm8k, mmlu_pro and nlgraph.
    """
    if not isinstance(dataset, str):
        return None
    key = dataset.strip().lower().replace("-", "_").replace(" ", "_")
    key = _DATASET_ALIASES.get(key, key)
    return key if key in TASKS else None


def get_spec(name: str) -> TaskSpec:
    """The registered spec of a known dataset (see TASKS)."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(
            f"unknown task {name!r}; known: {sorted(TASKS)} (use make_spec for other files)"
        ) from None


def task_path(data_dir: str | Path, spec: TaskSpec | str) -> Path:
    """Where a registered task's file lives inside ``data_dir``."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if spec.filename is None:
        raise ValueError(f"task {spec.name!r} has no file (it is generated)")
    return Path(data_dir) / spec.filename


@dataclasses.dataclass(frozen=True, eq=True)
class Item:
    """One validated example.

    ``index`` is the position in the file's split (stable under subsampling); ``icl_prompt`` is
    the file's few-shot prefix (shared by all items of a file, None when absent).
    """

    index: int
    id: int | str
    question: str
    answer: str
    choices: dict[str, str] | None = None
    context_chunks: tuple[str, ...] | None = None
    domain: str | None = None
    icl_prompt: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def type(self) -> str | None:
        """Question type for per-type expert pools: the item's ``type`` key, else its domain."""
        t = self.extra.get("type")
        return t if isinstance(t, str) else self.domain


_KNOWN_KEYS = {"question", "answer", "choices", "context_chunks", "id", "domain"}


def _where(
    path: Path, split: str | None = None, index: int | None = None, field: str | None = None
):
    parts = [str(path)]
    if split is not None:
        parts.append(f"split {split!r}")
    if index is not None:
        parts.append(f"item {index}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


def _fail(path, split=None, index=None, field=None, msg=""):
    raise TaskDataError(f"{_where(path, split, index, field)}: {msg}")


def _type_name(v) -> str:
    return type(v).__name__


def _validate_item(raw, path: Path, split: str, i: int, spec: TaskSpec, icl: str | None) -> Item:
    if not isinstance(raw, dict):
        _fail(path, split, i, None, f"item must be an object, got {_type_name(raw)}")
    for key in ("question", "answer"):
        if key not in raw:
            _fail(path, split, i, key, "missing")
        if not isinstance(raw[key], str):
            _fail(path, split, i, key, f"must be a string, got {_type_name(raw[key])}")
    if not raw["question"].strip():
        _fail(path, split, i, "question", "is empty")
    if not raw["answer"].strip():
        _fail(path, split, i, "answer", "is empty")

    item_id = raw.get("id", i)
    if isinstance(item_id, bool) or not isinstance(item_id, int | str):
        _fail(path, split, i, "id", f"must be an int or a string, got {_type_name(item_id)}")
    domain = raw.get("domain")
    if domain is not None and not isinstance(domain, str):
        _fail(path, split, i, "domain", f"must be a string, got {_type_name(domain)}")

    choices = None
    if spec.has_choices:
        if "choices" not in raw:
            _fail(path, split, i, "choices", f"missing (needed by {spec.type} task {spec.name!r})")
        raw_choices = raw["choices"]
        if not isinstance(raw_choices, dict) or len(raw_choices) < 2:
            _fail(path, split, i, "choices", "must be an object with at least two letters")
        for letter, text in raw_choices.items():
            if len(letter) != 1 or not ("A" <= letter <= "Z"):
                _fail(path, split, i, "choices", f"key {letter!r} is not a single letter A-Z")
            if not isinstance(text, str):
                _fail(path, split, i, "choices", f"choice {letter} must be a string")
        choices = dict(raw_choices)
        if raw["answer"] not in choices:
            _fail(
                path,
                split,
                i,
                "answer",
                f"unknown answer letter {raw['answer']!r}; choices are {sorted(choices)}",
            )
    elif "choices" in raw:
        choices_raw = raw["choices"]
        if isinstance(choices_raw, dict) and all(isinstance(v, str) for v in choices_raw.values()):
            choices = dict(choices_raw)

    chunks = None
    if "context_chunks" in raw:
        raw_chunks = raw["context_chunks"]
        if not isinstance(raw_chunks, list) or not all(isinstance(c, str) for c in raw_chunks):
            _fail(path, split, i, "context_chunks", "must be a list of strings")
        chunks = tuple(raw_chunks)

    extra = {k: v for k, v in raw.items() if k not in _KNOWN_KEYS}
    if "type" in extra and not isinstance(extra["type"], str):
        _fail(path, split, i, "type", f"must be a string, got {_type_name(extra['type'])}")
    return Item(
        index=i,
        id=item_id,
        question=raw["question"],
        answer=raw["answer"],
        choices=choices,
        context_chunks=chunks,
        domain=domain,
        icl_prompt=icl,
        extra=extra,
    )


def read_task_file(path: str | Path) -> dict:
    """Parse a task file and check its top level (object, icl_prompt).

    Every failure, parsing included, is a TaskDataError whose message starts with the path:
    json's own errors (UnicodeDecodeError, RecursionError) do not say which file they read.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskDataError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: not valid JSON: {e}") from e
    except RecursionError as e:
        raise TaskDataError(f"{path}: nested too deeply to parse as JSON") from e
    except ValueError as e:  # e.g. an integer beyond Python's int_max_str_digits
        raise TaskDataError(f"{path}: cannot parse as JSON: {e}") from e
    if not isinstance(data, dict):
        _fail(path, msg=f"top level must be an object, got {_type_name(data)}")
    icl = data.get("icl_prompt")
    if icl is not None and not isinstance(icl, str):
        _fail(path, field="icl_prompt", msg=f"must be a string, got {_type_name(icl)}")
    return data


def load_task(
    path: str | Path,
    split: str,
    *,
    spec: TaskSpec | str,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Item]:
    """Load and validate one split of a task file.

    Every item of the split is validated (not only the subsample), so a broken file fails at
    once. With ``limit``, keeps ``limit`` items: the first ones when ``seed`` is None, else a
    uniformly random subset drawn with ``numpy.random.default_rng(seed)``; the kept items stay
    in file order (``Item.index`` is their position in the file).

    Args:
      path: a JSON file in the authors' format.
      split: 'dev' or 'test' (any key holding a list of items is accepted).
      spec: a TaskSpec or the name of a registered one.
      limit: keep at most this many items (None: all).
      seed: seed of the random subset (None: the first ``limit`` items).
    Raises:
      TaskDataError naming the file, split, item index and field of the first problem.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    path = Path(path)
    data = read_task_file(path)
    if split not in data:
        _fail(path, split, msg=f"missing split; keys are {sorted(data)}")
    raw_items = data[split]
    if not isinstance(raw_items, list):
        _fail(path, split, msg=f"split must be a list of items, got {_type_name(raw_items)}")
    if not raw_items:
        _fail(path, split, msg="split is empty")
    icl = data.get("icl_prompt")
    items = [_validate_item(r, path, split, i, spec, icl) for i, r in enumerate(raw_items)]
    _warn_repeated_ids(path, split, items)
    return subsample(items, limit=limit, seed=seed)


def repeated_ids(items: list[Item]) -> dict[int | str, list[int]]:
    """The ids that more than one item has, each with those items' indices (file order)."""
    where: dict[int | str, list[int]] = {}
    for item in items:
        where.setdefault(item.id, []).append(item.index)
    return {k: v for k, v in where.items() if len(v) > 1}


def describe_repeated_ids(repeated: Mapping[int | str, list[int]], show: int = 3) -> str:
    """'id 0 (items 0, 1, 2 and 197 more), id 'a' (items 4, 9)': the first `show` ids."""

    def items(at: list[int]) -> str:
        more = f" and {len(at) - show} more" if len(at) > show else ""
        return ", ".join(map(str, at[:show])) + more

    parts = [f"id {k!r} (items {items(at)})" for k, at in list(repeated.items())[:show]]
    more = f" and {len(repeated) - show} more ids" if len(repeated) > show else ""
    return ", ".join(parts) + more


# (file, split) already warned about in this process: a comparison loads a file per cell.
_warned: set[tuple[str, str]] = set()


def _warn_repeated_ids(path: Path, split: str, items: list[Item]) -> None:
    repeated = repeated_ids(items)
    key = (str(path.resolve()), split)
    if not repeated or key in _warned:
        return
    _warned.add(key)
    count = "1 item id is" if len(repeated) == 1 else f"{len(repeated)} item ids are"
    logging.warning(
        "%s: %s not unique: %s; hs_jax tells items apart by position (Item.index), but "
        "outputs matched to questions by id (launch.analyze's role cases) may be mixed up",
        _where(path, split),
        count,
        describe_repeated_ids(repeated),
    )


def subsample(items: list[Item], *, limit: int | None, seed: int | None) -> list[Item]:
    """Keep ``limit`` items: the first ones (seed None) or a seeded random subset in order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if seed is None:
        return list(items[:limit])
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[int(k)] for k in keep]


def item_dict(item: Item) -> dict[str, Any]:
    """The item back in the authors' JSON shape (for writing generated or filtered files)."""
    out: dict[str, Any] = {"question": item.question, "answer": item.answer, "id": item.id}
    if item.choices is not None:
        out["choices"] = dict(item.choices)
    if item.context_chunks is not None:
        out["context_chunks"] = list(item.context_chunks)
    if item.domain is not None:
        out["domain"] = item.domain
    out.update(item.extra)
    return out


def count_by_type(items: list[Item]) -> Mapping[str | None, int]:
    """How many items of each question type (``Item.type``) a list holds."""
    counts: dict[str | None, int] = {}
    for it in items:
        counts[it.type] = counts.get(it.type, 0) + 1
    return counts
