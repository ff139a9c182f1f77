"""The controls (hs_jax.methods.controls: constant answer, self-consistency), every method's
test cost, the ablations' full budget and self-consistency's target in a comparison, on the
tiny config (a random tiny Gemma with 3 random experts)."""

import collections
import json
import math
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

from hs_jax.pipeline import door  # ANCHOR

ROOT = Path(__file__).resolve().parents[2]


def _tiny_config(method, **baselines):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    c.outputs.export_experts = False
    c.outputs.plots = False
    for field, value in baselines.items():
        c.baselines[field] = value
    return c


def _task(tmp_path, dataset, dev, test, name=None):
    """A task file of `dataset` with these items; the config that runs it."""
    path = tmp_path / f"{name or dataset}_task.json"
    path.write_text(json.dumps({"dataset": dataset, "dev": dev, "test": test}))
    return str(path)


def _mc(letters, prefix):
    choices = {"A": "red", "B": "green", "C": "blue"}
    return [
        {"question": f"Which colour {prefix}{i}?", "choices": choices, "answer": a,
         "id": f"{prefix}{i}"}
        for i, a in enumerate(letters)
    ]  # fmt: skip


def _em(answers, prefix):
    return [
        {"question": f"How long is path {prefix}{i}?", "answer": a, "id": f"{prefix}{i}"}
        for i, a in enumerate(answers)
    ]


def _archive(workdir):
    return [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]


@pytest.fixture
def captured_setup(monkeypatch):
    """The run's Setup, caught when a control scores the single experts."""
    from hs_jax.methods import controls

    caught = {}
    real = controls.score_singles

    def score_singles(setup):
        caught["setup"] = setup
        return real(setup)

    monkeypatch.setattr(controls, "score_singles", score_singles)
    return caught


# ----------------------------------------------------------------------------- constant answer


@pytest.mark.parametrize(
    "dataset, dev, test, answer, hits",
    [
        # Multiple choice: B is most frequent on dev; 3 of the 5 test golds are B.
        ("mmlu", _mc("BABCB", "d"), _mc("ABBCB", "t"), "B", 3),
        # A tie on dev (A twice, C twice): the answer met first.
        ("mmlu", _mc("CAAC", "d"), _mc("CCAB", "t"), "C", 2),
        # Exact match, numbers by value: "12" and "12.0" are one answer (2 of 4 dev golds).
        ("nlgraph", _em(["12", "7", "12.0", "Yes"], "d"),
         _em(["12.00", "13", "12", "No", "7"], "t"), "12", 2),
        # Yes / No: the share of "No" among the test golds.
        ("nlgraph", _em(["No", "Yes", "No"], "d"), _em(["No", "No", "Yes", "No"], "t"), "No", 3),
    ],
)  # fmt: skip
def test_constant_answer_scores_the_share_of_its_answer_among_the_test_golds(
    tmp_path, dataset, dev, test, answer, hits
):
    import hs_jax

    c = _tiny_config("constant_answer")
    c.task.name = dataset
    c.task.path = _task(tmp_path, dataset, dev, test)
    results = hs_jax.run(c, tmp_path / "run")
    best = results["best_system"]
    assert best["kind"] == "constant" and best["details"]["answer"] == answer
    assert best["details"]["reads_back"] is True
    assert best["test_utility"] == hits / len(test)  # exactly the share
    assert sum(best["test_item_scores"]) == hits
    assert results["best_system_test_outputs"] == {"0": [answer] * len(test)}
    assert best["test_cost"] == dict.fromkeys(
        ("generate_calls", "rows", "prompt_tokens", "generated_tokens"), 0
    )
    assert results["evaluations"] == 1 and len(_archive(tmp_path / "run")) == 1
    # The single experts are still scored (every result carries them), and nothing else ran.
    assert len(results["single_experts"]["test"]) == 3
    singles_rows = 3 * (len(dev) + len(test))
    assert results["cost"]["rows"] == singles_rows
    assert results["cost"]["generated_tokens"] > 0


def test_constant_answer_on_the_generated_task_matches_the_gold_share(tmp_path, captured_setup):
    import hs_jax

    c = _tiny_config("constant_answer")
    c.task.gen.n_dev, c.task.gen.n_test = 12, 20
    results = hs_jax.run(c, tmp_path / "run")
    setup = captured_setup["setup"]
    answer = results["best_system"]["details"]["answer"]
    golds = [item.answer.strip() for item in setup.dev]
    assert golds.count(answer) == max(golds.count(g) for g in golds)
    share = sum(item.answer.strip() == answer for item in setup.test) / len(setup.test)
    assert results["best_system"]["test_utility"] == share


@pytest.mark.parametrize("method", ["constant_answer", "self_consistency"])
@pytest.mark.parametrize("task", ["qasper", "abstain"])
def test_controls_do_not_apply_to_judged_or_abstain_tasks(tmp_path, method, task):
    import hs_jax
    from hs_jax.methods import METHODS
    from hs_jax.methods.api import NotApplicable

    c = _tiny_config(method)
    c.task.name = task
    task_type = {"qasper": "judged", "abstain": "abstain"}[task]
    why = METHODS[method].applies(c)
    assert why.startswith(f"{method} needs ") and why.endswith(f"not {task_type}")
    # A task whose type only its file tells: refused by the method itself.
    c.task.path = _task(tmp_path, "mmlu", _mc("AB", "d"), _mc("AB", "t"))
    if task == "abstain":
        assert METHODS[method].applies(c) is None
        with pytest.raises(NotApplicable, match=f"not {task_type}"):
            hs_jax.run(c, tmp_path / "run")


# ----------------------------------------------------------------------------- self-consistency


def _hand_vote(keys_per_sample):
    """Per item: the answer most samples give (None does not vote), ties to the one the
    earliest sample gave; the first sample giving it (sample 0 when no sample answers)."""
    chosen = []
    for j in range(len(keys_per_sample[0])):
        keys = [k[j] for k in keys_per_sample]
        counts = collections.Counter(k for k in keys if k is not None)
        if not counts:
            chosen.append(0)
            continue
        top = max(counts.values())
        winner = next(k for k in keys if k is not None and counts[k] == top)
        chosen.append(keys.index(winner))
    return chosen


def _sample(setup, expert, items, split_stream, s, temperature=0.7, top_p=1.0):
    prompts = [setup.protocol.node_prompt(item, [], is_end=True, position=0) for item in items]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(setup.config.seed), split_stream), s)
    out = setup.scorer.engine.generate(
        prompts, [expert] * len(items), max_new_tokens=setup.spec.max_new_tokens,
        temperature=temperature, top_p=top_p, key=key,
    )  # fmt: skip
    return list(out.texts), int(out.costs.generated_tokens), prompts


def test_self_consistency_is_the_majority_of_k_sampled_runs_of_the_best_expert(
    tmp_path, captured_setup, monkeypatch
):
    """sc_samples=3: the vote equals one written here over 3 samples of the best expert drawn
    with the same keys on the one-node prompt. The tiny model's random outputs rarely parse,
    so answers are read by a stand-in with two values (the first character's parity): most
    items then have a majority that is not the first sample."""
    import hs_jax
    from hs_jax.methods import trivial
    from hs_jax.methods.api import SINGLE

    def parity(protocol, spec, item, output):
        return ord(output[0]) % 2 if output else None

    monkeypatch.setattr(trivial, "vote_key", parity)
    c = _tiny_config("self_consistency", sc_samples=3)
    c.task.gen.n_test = 8
    results = hs_jax.run(c, tmp_path / "run")
    setup = captured_setup["setup"]
    best = results["best_system"]
    expert = results["best_single"]["expert"]
    details = best["details"]
    assert best["kind"] == "self_consistency" and details["k"] == 3
    assert (details["k_from"], details["expert"]) == ("sc_samples", expert)
    assert best["assignment"] == [expert]

    samples, tokens = [], 0
    for s in range(3):
        texts, generated, prompts = _sample(setup, expert, setup.test, 1, s)
        samples.append(texts)
        tokens += generated
    # The one-node prompt is the one the expert answers alone in a one-node system.
    setup.scorer.executor.clear_cache()
    setup.scorer.score([(SINGLE, (expert,))], setup.experts, setup.test)
    assert setup.scorer.last_run.node_prompts[0][0] == prompts
    keys = [[parity(None, None, None, out) for out in texts] for texts in samples]
    chosen = _hand_vote(keys)
    voted = [samples[s][j] for j, s in enumerate(chosen)]
    assert details["test_chosen_sample"] == chosen and any(s != 0 for s in chosen)
    assert results["best_system_test_outputs"] == {"0": voted}
    scores = setup.protocol.score_outputs(setup.spec, setup.test, voted)
    assert best["test_item_scores"] == [float(x) for x in scores]
    assert best["test_utility"] == float(np.mean(np.asarray(scores, np.float64)))
    assert best["test_cost"]["generate_calls"] == 3
    assert best["test_cost"]["rows"] == 3 * len(setup.test)
    assert best["test_cost"]["generated_tokens"] == tokens
    assert details["test_tokens_per_item"] == tokens / len(setup.test)
    dev_tokens = 0
    for s in range(3):
        dev_tokens += _sample(setup, expert, setup.dev, 0, s)[1]
    assert details["dev_tokens_per_item"][-1] == dev_tokens / len(setup.dev)
    assert results["evaluations"] == 1 and len(_archive(tmp_path / "run")) == 1


@pytest.mark.parametrize(
    "fields, rule",
    [
        ({"sc_tokens": 4.0}, "sc_tokens"),  # the fewest samples reaching 4 tokens per dev item
        ({"sc_tokens": 1000.0, "sc_max_samples": 4}, "sc_tokens"),  # capped
        ({}, "pool_size"),  # both 0: one sample per expert of the pool
    ],
)
def test_self_consistency_chooses_k_as_documented(tmp_path, captured_setup, fields, rule):
    import hs_jax

    results = hs_jax.run(_tiny_config("self_consistency", **fields), tmp_path / "run")
    setup = captured_setup["setup"]
    details = results["best_system"]["details"]
    k, per_item = details["k"], details["dev_tokens_per_item"]
    assert details["k_from"] == rule and len(per_item) == k
    expert = details["expert"]
    total = 0
    for s in range(k):  # the recorded dev tokens are those of the seeded dev samples
        total += _sample(setup, expert, setup.dev, 0, s)[1]
        assert per_item[s] == total / len(setup.dev)
    if rule == "pool_size":
        assert k == 3 and details["target_tokens_per_item"] is None
    elif fields.get("sc_max_samples"):
        assert k == 4 and per_item[-1] < 1000.0
    else:
        target = fields["sc_tokens"]
        assert details["target_tokens_per_item"] == target
        assert per_item[-1] >= target and all(t < target for t in per_item[:-1])
    assert results["best_system"]["test_cost"]["generate_calls"] == k


# ----------------------------------------------------------------------------- test cost


def test_the_search_and_a_baseline_report_their_test_scoring_from_an_empty_cache(tmp_path):
    """test_cost: one row per test item and live node of the best system, every one generated
    (no cache hit), for 'hs' and for a method scored by `Evaluator.finish`."""
    import hs_jax
    from hs_jax.swarm.graph import Dag

    for method in ("hs", "random_roles"):
        c = _tiny_config(method)
        results = hs_jax.run(c, tmp_path / method)
        best = results["best_system"]
        live = len(Dag.from_dict(best["dag"]).reaching_end)
        cost = best["test_cost"]
        assert cost["rows"] == live * results["n_test"], method
        assert cost["generated_tokens"] > 0 and 1 <= cost["generate_calls"] <= live, method
        assert cost["generated_tokens"] <= cost["rows"] * c.task.max_new_tokens


# ----------------------------------------------------------------------------- comparison


def test_the_comparison_gives_self_consistency_the_hs_cells_tokens(tmp_path):
    from hs_jax.comparison import compare
    from hs_jax.store import workdir as workdir_lib

    task = compare.task_refs(["nlgraph_gen"], "")[0]
    hs_dir = tmp_path / compare.Cell("hs", task, 0).subdir()
    hs_dir.mkdir(parents=True)
    workdir_lib.write_json(
        hs_dir / workdir_lib.RESULTS_JSON,
        {"evaluations": 8, "n_test": 3, "best_system": {"test_cost": {"generated_tokens": 13}}},
    )
    cell = compare.Cell("self_consistency", task, 0)
    entry = compare.run_cell(_tiny_config("hs"), cell, tmp_path, budget_from_hs=True)
    assert entry["status"] == "done", entry
    assert (entry["sc_tokens"], entry["sc_tokens_from"]) == (13 / 3, "hs")
    results = json.loads((tmp_path / cell.subdir() / "results.json").read_text())
    assert results["best_system"]["details"]["target_tokens_per_item"] == 13 / 3
    assert results["best_system"]["details"]["k_from"] == "sc_tokens"
    own = compare.run_cell(
        _tiny_config("hs"), compare.Cell("self_consistency", task, 1), tmp_path,
        budget_from_hs=True,
    )  # fmt: skip
    assert (own["sc_tokens"], own["sc_tokens_from"]) == (0.0, "config")  # no 'hs' cell of seed 1


# ----------------------------------------------------------------------------- ablation budget


def _resolved(method, **search):

    c = _tiny_config(method)
    for field, value in search.items():
        if field == "protocol":
            c.protocol = value
        else:
            c.search[field] = value
    return door.resolve(c)


@pytest.mark.parametrize(
    "settings, no_role, no_weight",
    [
        # tiny: N = M = 2, 2 iterations: hs spends at most 8.
        ({}, 3, 4),  # 2 + 3 x 2 = 8; 4 x 2 = 8
        ({"n_graphs": 3, "max_iterations": 5}, 11, 9),  # 25: 3 + 11 x 2 = 25; 9 x 3 = 27 >= 25
        ({"protocol": "authors"}, 4, 5),  # 3 rounds x 4 = 12: 2 + 5 x 2 = 12; 6 x 2 = 12
    ],
)
def test_the_ablations_get_the_search_budget(settings, no_role, no_weight):
    from hs_jax.methods.api import default_budget

    hs = _resolved("hs", **settings)
    budget = default_budget(hs)
    n, m, authors = hs.search.n_graphs, hs.search.n_assignments, hs.search.schedule == "authors"
    for method, iterations in (("hs_no_role", no_role), ("hs_no_weight", no_weight)):
        c = _resolved(method, **settings)
        assert c.search.max_iterations == iterations and c.budget == budget, method
        assert door.resolve(c).search.max_iterations == iterations  # idempotent
        rounds = iterations + authors
        most = n + rounds * m if method == "hs_no_role" else rounds * n
        fewer = n + (rounds - 1) * m if method == "hs_no_role" else (rounds - 1) * n
        assert most >= budget > fewer, method  # the fewest iterations that reach it
    assert hs.search.max_iterations == settings.get("max_iterations", 2)
    assert math.isclose(budget, (hs.search.max_iterations + authors) * (n + m))


@pytest.mark.parametrize("method", ["hs_no_role", "hs_no_weight"])
def test_an_ablation_without_early_stop_spends_the_search_budget(tmp_path, method):
    import hs_jax

    c = _tiny_config(method)
    c.search.patience = 100
    results = hs_jax.run(c, tmp_path / "run")
    assert results["evaluations"] == 8 and results["stop_reason"] == "max_iterations"


def test_bad_self_consistency_settings_are_named_before_anything_loads():
    from hs_jax.runtime.errors import ConfigError

    c = _tiny_config(
        "self_consistency", sc_samples=-1, sc_tokens=-2.0, sc_max_samples=0, sc_temperature=0.0,
        sc_top_p=1.5,
    )  # fmt: skip
    with pytest.raises(ConfigError) as e:
        door.check(door.resolve(c))
    for field in ("sc_samples", "sc_tokens", "sc_max_samples", "sc_temperature", "sc_top_p"):
        assert f"config.baselines.{field}=" in str(e.value), field
    door.check(door.resolve(_tiny_config("self_consistency")))
