"""Task loader: every real file loads, every malformed file fails with a precise message."""

import json
import logging
from pathlib import Path

import pytest

from hs_jax.tasks import (
    TASKS,
    TaskDataError,
    TaskSpec,
    get_spec,
    item_dict,
    load_task,
    make_spec,
    score_outputs,
    task_path,
)
from hs_jax.tasks.parsing import parse_choice

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
needs_data = pytest.mark.skipif(not EVAL_DIR.is_dir(), reason="shared eval data not present")

# (dev, test) sizes of the authors' files.
REAL_SIZES = {
    "mmlu": (200, 1000),
    "mmlu_pro": (70, 1000),
    "knowledge_crosswords": (200, 1000),
    "gsm8k": (200, 1000),
    "nlgraph": (200, 1000),
    "gaia": (13, 28),
    "qasper": (100, 100),
    "ltp": (20, 50),
    "abstain": (200, 1000),
}

MC = make_spec("t", "multiple_choice")
EM = make_spec("t", "exact_match")


def _mc_item(**kw):
    item = {"question": "Capital of France?", "choices": {"A": "Rome", "B": "Paris"}, "answer": "B"}
    item.update(kw)
    return item


def _write(tmp_path, data, name="task.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# ----------------------------------------------------------------------------- real files


@needs_data
@pytest.mark.parametrize("name", sorted(REAL_SIZES))
@pytest.mark.parametrize("split", ["dev", "test"])
def test_real_files_load(name, split):
    spec = get_spec(name)
    items = load_task(task_path(EVAL_DIR, spec), split, spec=spec)
    assert len(items) == REAL_SIZES[name][split == "test"]
    assert [it.index for it in items] == list(range(len(items)))
    if spec.has_choices:
        assert all(it.answer in it.choices for it in items)
    if name in ("gaia", "qasper"):
        # Ten chunks, one per node (one qasper test item has 12).
        assert all(len(it.context_chunks) >= 10 for it in items)
    if name == "knowledge_crosswords":
        assert items[0].icl_prompt.startswith("Question:")
        assert items[0].icl_prompt.rstrip().endswith("The answer is D.")
    else:
        assert items[0].icl_prompt is None


@needs_data
def test_every_file_in_eval_dir_loads_with_an_explicit_type(tmp_path):
    # Any file in the format loads with a spec made on the spot (the judged type accepts all).
    for path in sorted(EVAL_DIR.glob("*.json")):
        spec = make_spec(path.stem, "judged")
        for split in ("dev", "test"):
            assert load_task(path, split, spec=spec)


@needs_data
@pytest.mark.parametrize("name", ["gsm8k", "nlgraph", "gaia"])
def test_gold_answers_score_one_on_real_exact_match_files(name):
    spec = get_spec(name)
    items = load_task(task_path(EVAL_DIR, spec), "test", spec=spec)
    wrapped = [f"Let me think. The answer is {it.answer}." for it in items]
    assert score_outputs(spec, items, [it.answer for it in items]).min() == 1.0
    assert score_outputs(spec, items, wrapped).min() == 1.0


@needs_data
@pytest.mark.parametrize("name", ["mmlu", "mmlu_pro", "knowledge_crosswords"])
def test_every_real_gold_choice_parses_from_letter_or_text(name):
    spec = get_spec(name)
    items = load_task(task_path(EVAL_DIR, spec), "test", spec=spec)
    for it in items:
        text = it.choices[it.answer]
        assert parse_choice(text, it.choices) == it.answer, (it.id, text)
        assert parse_choice(f"{it.answer}: {text}", it.choices) == it.answer
        assert parse_choice(f"The answer is ({it.answer}).", it.choices) == it.answer


def test_registry_types_and_budgets():
    assert {n: s.type for n, s in TASKS.items()} == {
        "mmlu": "multiple_choice",
        "mmlu_pro": "multiple_choice",
        "knowledge_crosswords": "multiple_choice",
        "gsm8k": "exact_match",
        "nlgraph": "exact_match",
        "nlgraph_gen": "exact_match",
        "gaia": "exact_match",
        "qasper": "judged",
        "ltp": "judged",
        "abstain": "abstain",
        "com2": "multiple_choice",
        "normad": "multiple_choice",
        "abkg": "multiple_choice",
        "wow": "multiple_choice",
    }
    for name in ("com2", "normad", "abkg", "wow"):  # the authors' multiple-choice budget
        assert get_spec(name).max_new_tokens == 50 and get_spec(name).filename == f"{name}.json"
    assert get_spec("gsm8k").max_new_tokens == 100
    assert get_spec("nlgraph").max_new_tokens == 80
    assert get_spec("mmlu").max_new_tokens == 50
    assert get_spec("ltp").max_new_tokens == 200
    assert get_spec("abstain").filename == "mmlu.json"
    with pytest.raises(KeyError, match="unknown task"):
        get_spec("nope")
    with pytest.raises(ValueError, match="unknown type"):
        TaskSpec("x", "essay", 10)
    with pytest.raises(ValueError, match="unknown task type"):
        make_spec("x", "essay")
    with pytest.raises(ValueError, match="generated"):
        task_path("/tmp", "nlgraph_gen")


# ----------------------------------------------------------------------------- failure paths


def _expect(tmp_path, data, match, *, spec=MC, split="dev"):
    path = _write(tmp_path, data)
    with pytest.raises(TaskDataError) as e:
        load_task(path, split, spec=spec)
    msg = str(e.value)
    assert str(path) in msg
    for part in match:
        assert part in msg, (part, msg)
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(TaskDataError, match="cannot read"):
        load_task(tmp_path / "absent.json", "dev", spec=MC)


def test_not_json(tmp_path):
    _expect(tmp_path, "{not json", ["not valid JSON"])


def test_top_level_not_object(tmp_path):
    _expect(tmp_path, [1, 2], ["top level must be an object"])


def test_missing_split(tmp_path):
    _expect(tmp_path, {"dataset": "x", "test": [_mc_item()]}, ["split 'dev'", "missing split"])


def test_split_not_list(tmp_path):
    _expect(tmp_path, {"dev": {"a": 1}}, ["split 'dev'", "must be a list"])


def test_empty_split(tmp_path):
    _expect(tmp_path, {"dev": [], "test": [_mc_item()]}, ["split 'dev'", "empty"])


def test_icl_prompt_wrong_type(tmp_path):
    _expect(tmp_path, {"dev": [_mc_item()], "icl_prompt": 3}, ["field 'icl_prompt'"])


def test_item_not_object(tmp_path):
    _expect(tmp_path, {"dev": [_mc_item(), "q?"]}, ["item 1", "must be an object"])


@pytest.mark.parametrize("field", ["question", "answer"])
def test_missing_required_field(tmp_path, field):
    bad = _mc_item()
    del bad[field]
    _expect(
        tmp_path, {"dev": [_mc_item(), _mc_item(), bad]}, ["item 2", f"field '{field}'", "missing"]
    )


@pytest.mark.parametrize(
    "field, value",
    [("question", 3), ("question", None), ("answer", 1), ("answer", ["B"])],
)
def test_required_field_wrong_type(tmp_path, field, value):
    _expect(
        tmp_path, {"dev": [_mc_item(**{field: value})]}, ["item 0", f"field '{field}'", "string"]
    )


@pytest.mark.parametrize("field", ["question", "answer"])
def test_required_field_empty(tmp_path, field):
    _expect(tmp_path, {"dev": [_mc_item(**{field: "  "})]}, ["item 0", f"field '{field}'", "empty"])


@pytest.mark.parametrize("value", [1.5, None, [1], True])
def test_id_wrong_type(tmp_path, value):
    _expect(tmp_path, {"dev": [_mc_item(id=value)]}, ["item 0", "field 'id'"])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_repeated_ids_are_warned_about_naming_them(tmp_path, caplog):
    """Warned, not refused: the authors' own files repeat ids (see hs_jax.tasks.data)."""
    dev = [_mc_item(id=7), _mc_item(id="a"), _mc_item(id=7), _mc_item(id="a"), _mc_item()]
    path = _write(tmp_path, {"dev": dev, "test": [_mc_item(id=7)]})
    with caplog.at_level(logging.WARNING):
        items = load_task(path, "dev", spec=MC)
        load_task(path, "dev", spec=MC, limit=1)  # once per file and split
        load_task(path, "test", spec=MC)  # an id may be in both splits
    assert [item.id for item in items] == [7, "a", 7, "a", 4]
    (warning,) = _warnings(caplog)
    assert warning.startswith(
        f"{path}, split 'dev': 2 item ids are not unique: id 7 (items 0, 2), id 'a' (items 1, 3);"
    )


def test_a_default_id_that_repeats_an_explicit_one_is_warned_about(tmp_path, caplog):
    path = _write(tmp_path, {"dev": [_mc_item(id=1), _mc_item()]})  # item 1's id is 1
    with caplog.at_level(logging.WARNING):
        load_task(path, "dev", spec=MC)
    (warning,) = _warnings(caplog)
    assert "1 item id is not unique: id 1 (items 0, 1)" in warning


def test_unique_ids_are_not_warned_about(tmp_path, caplog):
    path = _write(tmp_path, {"dev": [_mc_item(id=1), _mc_item(id="1"), _mc_item()]})
    with caplog.at_level(logging.WARNING):
        load_task(path, "dev", spec=MC)
    assert not _warnings(caplog)


@needs_data
def test_the_authors_repeated_ids_load_with_a_warning(caplog, monkeypatch):
    from hs_jax.tasks import data

    monkeypatch.setattr(data, "_warned", set())  # test_real_files_load read it before
    with caplog.at_level(logging.WARNING):
        items = load_task(task_path(EVAL_DIR, "gsm8k"), "dev", spec="gsm8k")
    assert len(items) == 200
    assert any("id 0 (items 0, 1, 2 and 197 more)" in w for w in _warnings(caplog))


def test_domain_wrong_type(tmp_path):
    _expect(tmp_path, {"dev": [_mc_item(domain=7)]}, ["item 0", "field 'domain'"])


def test_type_wrong_type(tmp_path):
    _expect(tmp_path, {"dev": [_mc_item(type=["a"])]}, ["item 0", "field 'type'"])


def test_choices_missing_for_multiple_choice(tmp_path):
    bad = _mc_item()
    del bad["choices"]
    _expect(tmp_path, {"dev": [bad]}, ["item 0", "field 'choices'", "missing"])


@pytest.mark.parametrize(
    "choices, why",
    [
        (["Rome", "Paris"], "at least two letters"),
        ({"A": "Rome"}, "at least two letters"),
        ({"A": "Rome", "b": "Paris"}, "not a single letter"),
        ({"A": "Rome", "BB": "Paris"}, "not a single letter"),
        ({"A": "Rome", "B": 2}, "must be a string"),
    ],
)
def test_choices_malformed(tmp_path, choices, why):
    _expect(tmp_path, {"dev": [_mc_item(choices=choices)]}, ["item 0", "field 'choices'", why])


@pytest.mark.parametrize("answer", ["C", "Paris", "b"])
def test_unknown_answer_letter(tmp_path, answer):
    msg = _expect(
        tmp_path,
        {"test": [_mc_item(answer=answer)]},
        ["split 'test'", "item 0", "field 'answer'"],
        split="test",
    )
    assert "unknown answer letter" in msg


@pytest.mark.parametrize("chunks", ["one chunk", [1, 2], ["ok", None], {"0": "a"}])
def test_context_chunks_not_list_of_strings(tmp_path, chunks):
    item = {"question": "q", "answer": "a", "context_chunks": chunks}
    _expect(
        tmp_path, {"dev": [item]}, ["item 0", "field 'context_chunks'", "list of strings"], spec=EM
    )


def test_exact_match_items_need_no_choices(tmp_path):
    path = _write(tmp_path, {"dev": [{"question": "1+1?", "answer": "2", "id": "x", "extra": 5}]})
    (item,) = load_task(path, "dev", spec=EM)
    assert (item.id, item.question, item.answer, item.choices) == ("x", "1+1?", "2", None)
    assert item.extra == {"extra": 5}


# ----------------------------------------------------------------------------- subsampling


def _numbered(tmp_path, n=50):
    items = [{"question": f"q{i}", "answer": str(i), "id": i} for i in range(n)]
    return _write(tmp_path, {"dev": items, "test": items[:3]})


def test_subsample_first_and_seeded(tmp_path):
    path = _numbered(tmp_path)
    assert [it.id for it in load_task(path, "dev", spec=EM, limit=5)] == [0, 1, 2, 3, 4]
    a = load_task(path, "dev", spec=EM, limit=10, seed=3)
    b = load_task(path, "dev", spec=EM, limit=10, seed=3)
    c = load_task(path, "dev", spec=EM, limit=10, seed=4)
    assert [it.id for it in a] == [it.id for it in b]
    assert [it.id for it in a] != [it.id for it in c]
    ids = [it.id for it in a]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert all(it.index == it.id for it in a)
    assert len(load_task(path, "test", spec=EM, limit=10, seed=1)) == 3
    assert len(load_task(path, "dev", spec=EM, limit=0)) == 0
    with pytest.raises(ValueError):
        load_task(path, "dev", spec=EM, limit=-1, seed=0)


def test_subsample_validates_the_whole_split(tmp_path):
    items = [{"question": "q", "answer": "1"}] * 5 + [{"question": "q"}]
    path = _write(tmp_path, {"dev": items})
    with pytest.raises(TaskDataError, match="item 5"):
        load_task(path, "dev", spec=EM, limit=2)


def test_item_dict_round_trip(tmp_path):
    data = {
        "dataset": "x",
        "icl_prompt": "Q: 1?\nThe answer is A.",
        "dev": [
            _mc_item(id=1, domain="geo", type="capitals"),
            {"question": "q", "answer": "a", "id": 2, "context_chunks": ["c0", ""]},
        ],
    }
    spec = make_spec("x", "judged")
    items = load_task(_write(tmp_path, data), "dev", spec=spec)
    again = load_task(
        _write(
            tmp_path,
            {"dev": [item_dict(i) for i in items], "icl_prompt": data["icl_prompt"]},
            "b.json",
        ),
        "dev",
        spec=spec,
    )
    assert items == again
    assert items[0].type == "capitals" and items[1].type is None
    assert items[1].context_chunks == ("c0", "")
