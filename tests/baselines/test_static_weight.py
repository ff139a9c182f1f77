"""The static-weight baselines end to end on the tiny config (hs_jax.run): uniform soup,
DARE-TIES, data merge (refused without training data, run with it), and the merged expert's
slot keeping the pool's structure (so the engine swaps it in without recompiling)."""

import json
import runpy
from pathlib import Path

import jax
import numpy as np
import pytest

import hs_jax
from hs_jax.engine.expert_sets import check_same_structure
from hs_jax.experts import lora
from hs_jax.methods import merging, static_weight
from hs_jax.methods.api import budget_of
from hs_jax.models import gemma_config
from hs_jax.pipeline import door

ROOT = Path(__file__).resolve().parents[2]


def _tiny(method):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.method = method
    return c


def _check_result(r, method):
    assert r["method"] == method
    best = r["best_system"]
    assert np.isfinite(best["dev_utility"]) and np.isfinite(best["test_utility"])
    assert best["kind"] == "dag" and best["assignment"] == [static_weight.SLOT]
    assert best["details"]["merge"] == method
    assert r["evaluations"] == 1 <= budget_of(door.resolve(_tiny(method)))
    assert len(best["test_item_scores"]) == r["n_test"]


def test_merged_expert_takes_slot_0_with_the_pools_structure():
    cfg = gemma_config.tiny_config("gemma3")
    stack = lora.init_lora_stack(cfg, 3, 2, ("q_proj", "v_proj"), jax.random.key(0),
                                 scheme="random")  # fmt: skip
    soup = merging.uniform_soup(stack)
    weights = static_weight.in_slot(stack, soup)
    check_same_structure(stack, weights)
    np.testing.assert_array_equal(
        np.asarray(weights.layers[0]["q_proj"]["a"][0]),
        np.asarray(soup.layers[0]["q_proj"]["a"][0]),
    )
    np.testing.assert_array_equal(
        np.asarray(weights.layers[0]["q_proj"]["b"][1:]),
        np.asarray(stack.layers[0]["q_proj"]["b"][1:]),
    )


@pytest.mark.parametrize("method", ["uniform_soup", "dare_ties"])
def test_merges_run_and_resume_to_the_same_results(tmp_path, method):
    """A rerun of the same workdir without results.json (a kill before the report) replays the
    archived evaluation (the DARE masks are seeded) and reports the same results."""
    workdir = tmp_path / "run"
    r = hs_jax.run(_tiny(method), workdir)
    _check_result(r, method)
    rows = [json.loads(line) for line in (workdir / "archive.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["system"]["assignment"] == [0]
    if method == "dare_ties":
        details = r["best_system"]["details"]
        assert details["dare_drop"] == 0.3 and details["rank"] == 2
        assert 0 <= details["svd_rel_error_mean"] <= details["svd_rel_error_max"] <= 1
    (workdir / "results.json").unlink()
    again = hs_jax.run(_tiny(method), workdir)
    r.pop("seconds"), again.pop("seconds")
    assert json.dumps(again, sort_keys=True) == json.dumps(r, sort_keys=True)
    assert len((workdir / "archive.jsonl").read_text().splitlines()) == 1


def test_dare_ties_refuses_a_bad_drop_rate_before_any_work(tmp_path):
    c = _tiny("dare_ties")
    c.baselines.dare_drop = 1.0
    with pytest.raises(ValueError, match=r"config\.method='dare_ties'.*dare_drop=1\.0"):
        hs_jax.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_data_merge_needs_training_data(tmp_path):
    c = _tiny("data_merge")
    assert c.experts.source == "random"
    with pytest.raises(ValueError) as e:
        hs_jax.run(c, tmp_path / "run")
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert "config.method='data_merge'" in message and "experts.source='train'" in message
    assert not (tmp_path / "run").exists()


def test_data_merge_trains_one_adapter_on_the_union(tmp_path):
    """On the tiny config with a few training steps (about 30 s on 2 CPU cores)."""
    c = _tiny("data_merge")
    c.experts.source = "train"
    c.experts.train_steps = 4
    c.experts.train_examples = 4
    workdir = tmp_path / "run"
    r = hs_jax.run(c, workdir)
    _check_result(r, "data_merge")
    assert r["best_system"]["details"]["rows_per_step"] == 3 * c.experts.batch_per_expert
    key = static_weight.training_key(door.resolve(c))
    folder = workdir / static_weight.DATA_MERGE_DIR / key / "data_merge"
    assert (folder / lora.ADAPTER_WEIGHTS).exists()
    # The adapter is the one in slot 0 of the exported best system.
    exported = lora.load_peft_adapter(
        workdir / "best_experts" / r["experts"][0],
        gemma_config.tiny_config("gemma3"),
    )
    saved = lora.load_peft_adapter(folder, gemma_config.tiny_config("gemma3"))
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(saved), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
