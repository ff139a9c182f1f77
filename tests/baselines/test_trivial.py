"""The trivial baselines: the plurality vote on hand-made answers, and best single / prediction
merge end to end on the tiny config (hs_jax.run)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from hs_jax import tasks
from hs_jax.methods import trivial
from hs_jax.methods.api import budget_of
from hs_jax.pipeline import door
from hs_jax.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_plurality_vote_counts_answers_and_breaks_ties_by_dev_rank():
    A, B, C = "A", "B", "C"
    keys = [  # keys[e][j]: expert e's answer on item j
        [A, A, None, None, A, A],
        [A, B, B, None, B, B],
        [B, C, B, None, B, A],
        [C, A, C, None, C, B],
    ]
    rank = [3, 1, 0, 2]  # expert 3 has the best dev utility, then 1, 0, 2
    chosen = trivial.plurality_vote(keys, rank)
    assert chosen == [
        1,  # A 2 votes (experts 0, 1) beats B and C: the best-ranked A voter is expert 1
        3,  # A (0, 3) and B, C one each: A; expert 3 ranks above expert 0
        1,  # B 2 (experts 1, 2) vs C 1; an unread answer does not vote
        3,  # nothing read: the best-ranked expert's output
        1,  # B 2 (1, 2), A 1, C 1: plurality beats the best expert (3 said C)
        3,  # A 2 (0, 2) tie B 2 (1, 3): B, because expert 3 ranks first
    ]
    # One expert: its own outputs.
    assert trivial.plurality_vote([[A, None]], [0]) == [0, 0]
    with pytest.raises(ValueError, match="order"):
        trivial.plurality_vote(keys, [0, 1, 2])


def test_vote_keys_read_answers_as_the_protocol_does():
    spec = tasks.make_spec("toy", "exact_match")
    protocol = tasks.Protocol()
    item = tasks.Item(index=0, id=0, question="2 + 10?", answer="12")
    keys = [trivial.vote_key(protocol, spec, item, out) for out in
            ("The answer is 12.", "so 12.0", "answer: 13", "no idea")]  # fmt: skip
    assert keys[0] == keys[1] != keys[2]
    assert keys[3] is None
    yes = tasks.Item(index=1, id=1, question="Is there a path?", answer="Yes")
    assert trivial.vote_key(protocol, spec, yes, "Yes, there is.") == trivial.vote_key(
        protocol, spec, yes, "The answer is yes"
    )
    # The authors' exact match reads no answer: the hs_jax parsers count the votes there.
    authors = tasks.Protocol(name="authors", scoring="authors")
    assert trivial.vote_key(authors, spec, item, "The answer is 12.") == keys[0]


def _tiny(method):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    return c


def test_prediction_merge_refuses_tasks_without_countable_answers():
    c = _tiny("prediction_merge")
    c.task.type = "judged"
    with pytest.raises(ConfigError, match=r"config\.method='prediction_merge': does not apply"):
        door.check(door.resolve(c))
    assert trivial.prediction_merge_applies(door.resolve(_tiny("prediction_merge"))) is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import hs_jax

    out = {}
    for method in ("best_single", "prediction_merge"):
        workdir = tmp_path_factory.mktemp(method) / "run"
        out[method] = (hs_jax.run(_tiny(method), workdir), workdir)
    return out


@pytest.mark.parametrize("method", ["best_single", "prediction_merge"])
def test_trivial_methods_run_and_report_like_every_method(runs, method):
    r, workdir = runs[method]
    assert r["method"] == method
    best = r["best_system"]
    assert np.isfinite(best["dev_utility"]) and np.isfinite(best["test_utility"])
    assert len(best["test_item_scores"]) == r["n_test"]
    assert best["test_utility"] == pytest.approx(np.mean(best["test_item_scores"]))
    assert r["evaluations"] <= budget_of(door.resolve(_tiny(method)))
    assert json.loads((workdir / "results.json").read_text())["method"] == method
    single = r["best_single"]["expert"]
    assert best["assignment"] == [single]


def test_best_single_is_the_argmax_of_the_singles(runs):
    r, _ = runs["best_single"]
    singles = r["single_experts"]
    assert r["evaluations"] == 0
    assert r["best_single"]["expert"] == int(np.argmax(singles["dev"]))
    assert r["best_system"]["test_utility"] == pytest.approx(
        singles["test"][int(np.argmax(singles["dev"]))]
    )


def test_prediction_merge_scores_the_chosen_outputs_and_costs_the_singles(runs):
    r, workdir = runs["prediction_merge"]
    best, singles = r["best_system"], r["single_experts"]
    assert best["kind"] == "vote" and r["evaluations"] == 1
    chosen = best["details"]["test_chosen_expert"]
    assert len(chosen) == r["n_test"]
    # Each item's voted output is one expert's own output, scored the same way.
    for j, e in enumerate(chosen):
        assert best["test_item_scores"][j] == singles["test_item_scores"][e][j]
    assert best["details"]["rank"][0] == r["best_single"]["expert"]
    # What it costs: every expert on every dev and test item once, nothing more.
    n = len(r["experts"])
    assert r["cost"]["rows_requested"] == n * (r["n_dev"] + r["n_test"])
    rows = [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == "vote"
