"""Which task spec a run gets: a registered config name, else the registered task the file's
`dataset` field names (through any config, configs/tiny.py included), else config.task.type;
and configs/paper.py builds every registered file task."""

import json
import runpy
from pathlib import Path

import pytest

from hs_jax import tasks
from hs_jax.models.gemma_config import tiny_config
from hs_jax.pipeline import door
from hs_jax.setup import assembly

ROOT = Path(__file__).resolve().parents[1]
# The tiny configs' base model (a Gemma 3): its chat format is the one their prompts use.
_BASE = tiny_config("gemma3")


def _config(name, arg=None):
    return runpy.run_path(str(ROOT / "configs" / f"{name}.py"))["get_config"](arg)


def _file(tmp_path, dataset, kind="exact_match"):
    if kind == "multiple_choice":
        item = {"question": "q?", "choices": {"A": "x", "B": "y"}, "answer": "A"}
    else:
        item = {"question": "q?", "answer": "12"}
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"dataset": dataset, "dev": [item], "test": [item]}))
    return path


@pytest.mark.parametrize(
    "dataset, kind, name, type_, budget",
    [("GSM8k", "exact_match", "gsm8k", "exact_match", 100),
     ("NLGraph", "exact_match", "nlgraph", "exact_match", 80),
     ("mmlu-pro", "multiple_choice", "mmlu_pro", "multiple_choice", 50),
     ("com2", "multiple_choice", "com2", "multiple_choice", 50)],
)  # fmt: skip
def test_tiny_config_takes_the_files_registered_task(tmp_path, dataset, kind, name, type_, budget):
    c = _config("tiny")
    c.task.max_new_tokens = 0
    spec = assembly.task_spec(c, _file(tmp_path, dataset, kind))
    assert (spec.name, spec.type, spec.max_new_tokens) == (name, type_, budget)
    protocol = assembly.protocol_for(door.resolve(c), spec, _BASE)
    assert protocol.dataset == name


def test_custom_task_without_a_type_uses_the_dataset_or_asks(tmp_path):
    c = _config("custom_task")
    assert assembly.task_spec(c, _file(tmp_path, "mmlu", "multiple_choice")).name == "mmlu"
    with pytest.raises(ValueError, match="config.task.type is empty .* 'mine'"):
        assembly.task_spec(c, _file(tmp_path, "mine"))
    c.task.type = "exact_match"
    spec = assembly.task_spec(c, _file(tmp_path, "mine"))
    assert (spec.name, spec.type) == ("mine", "exact_match")  # labelled by the dataset
    with pytest.raises(ValueError, match="config.task.type='exact_match'.*'mmlu'"):
        assembly.task_spec(c, _file(tmp_path, "mmlu", "multiple_choice"))


def test_unregistered_dataset_on_the_tiny_config_is_labelled_by_it(tmp_path):
    spec = assembly.task_spec(_config("tiny"), _file(tmp_path, "my_graphs"))
    assert spec.name == "my_graphs" and spec.type == "exact_match"


def test_registered_config_name_wins_over_the_dataset(tmp_path):
    c = _config("paper", f"abstain,{tmp_path}")  # the abstain task reads mmlu's file
    spec = assembly.task_spec(c, _file(tmp_path, "mmlu", "multiple_choice"))
    assert spec.name == "abstain" and spec.max_new_tokens == 50
    c.protocol = "authors"
    spec = assembly.task_spec(c, _file(tmp_path, "mmlu", "multiple_choice"))
    assert spec.max_new_tokens == tasks.AUTHORS_ABSTAIN_MAX_NEW_TOKENS


@pytest.mark.parametrize("name", sorted(n for n, s in tasks.TASKS.items() if s.filename))
def test_paper_config_for_every_registered_task(name):
    c = _config("paper", f"{name},/data/eval")
    assert c.task.name == name
    assert c.task.path == f"/data/eval/{tasks.get_spec(name).filename}"
    assert c.experts.source == "peft"
