"""AbstainQA end to end on the tiny model under both protocols, with the audit trail
(`outputs.save_prompts`): every node call of the best system on the test split, and the
test utility recomputed from it."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

import hs_jax

ROOT = Path(__file__).resolve().parents[1]

ITEMS = [
    {"question": f"What is {i} + {i}?", "choices": {"A": str(2 * i), "B": str(2 * i + 1)},
     "answer": "A", "id": f"q{i}"}
    for i in range(1, 7)
]  # fmt: skip


def _run(tmp_path, protocol):
    task = tmp_path / "mmlu_small.json"
    task.write_text(json.dumps({"dataset": "mmlu", "dev": ITEMS[:3], "test": ITEMS[3:]}))
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.task.name = "abstain"
    c.task.path = str(task)
    c.protocol = protocol
    c.outputs.save_prompts = True
    c.outputs.plots = False
    c.outputs.export_experts = False
    c.search.max_iterations = 1
    workdir = tmp_path / protocol
    results = hs_jax.run(c, workdir)
    rows = [json.loads(line) for line in (workdir / "test_prompts.jsonl").read_text().splitlines()]
    return results, rows


@pytest.mark.parametrize("protocol", ["hs_jax", "authors"])
def test_abstain_end_to_end_with_audit_trail(tmp_path, protocol):
    results, rows = _run(tmp_path, protocol)
    assert results["task"] == "abstain" and results["protocol"] == protocol
    best = results["best_system"]
    dag = hs_jax.Dag.from_dict(best["dag"])
    answer_rows = [r for r in rows if r["pass"] == "answer"]
    check_rows = [r for r in rows if r["pass"] == "check"]
    assert {r["id"] for r in rows} == {"q4", "q5", "q6"}
    assert len(answer_rows) == 3 * dag.n
    for r in answer_rows:
        assert r["expert"] == best["assignment"][r["node"]]
        assert r["parents"] == list(dag.parents(r["node"]))
        if protocol == "authors":
            assert "Please choose an option that best answers the question." in r["prompt"]
            assert r["prompt"].rstrip().endswith("The answer is")
        else:
            assert "Please choose an option" not in r["prompt"]
    if protocol == "authors":  # the whole graph answers the true/false check
        assert len(check_rows) == 3 * dag.n
        assert all("Is the proposed answer true or false?" in r["prompt"] for r in check_rows)
    else:  # the end node's expert alone answers a yes/no check
        assert len(check_rows) == 3 and all(r["node"] == dag.end for r in check_rows)
        assert all(
            r["prompt"].endswith("Please directly answer with Yes or No:") for r in check_rows
        )
    # The test utility, recomputed from the trail: +1 right and kept, -1 wrong and kept, 0 else.
    ends = {r["id"]: r for r in answer_rows if r["node"] == dag.end}
    kept = {r["id"]: r["kept"] for r in check_rows if r["node"] == dag.end}
    scores = [(2 * ends[i]["correct"] - 1) if kept[i] else 0.0 for i in ends]
    assert scores == [ends[i]["score"] for i in ends]
    assert np.mean(scores) == pytest.approx(best["test_utility"])
