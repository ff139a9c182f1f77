"""Whole runs on tiny random models of each new family ('tiny:<family>'), as a Gemma pool runs.

For Llama, Mistral, Qwen 2 and Qwen 3: a search end to end through `hs_jax.run` with chat prompts
(the family's chat format, its tiny tokenizer's special tokens) and its best system answering a
new question through `load_system`, as `launch.answer` does; for Llama also a PEFT pool written
by `make_pool`, read back as the run's experts, and `launch.compare`'s library call over the
core controls. The parity of each family's forward pass is in test_families.py; this checks the
plumbing around it (spec, tokenizer, chat format, stops, pool, checkpoints, outputs).
"""

import json
import runpy
from pathlib import Path

import pytest

import hs_jax
from hs_jax.config.model_source import tiny_family_of
from hs_jax.models import tiny_vocab
from hs_jax.setup.assembly import load_base

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# The text that opens a user turn in each family's chat format.
USER_TURN = {
    "llama": "<|start_header_id|>user<|end_header_id|>",
    "mistral": "[INST]",
    "qwen2": "<|im_start|>user",
    "qwen3": "<|im_start|>user",
}


def _config(family: str):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.model.spec = f"tiny:{family}"
    c.task.chat_template = True
    c.search.max_iterations = 1
    c.search.patience = 1
    c.outputs.export_experts = True
    return c


def test_tiny_specs_name_their_family():
    assert tiny_family_of("tiny") == "gemma3"
    assert [tiny_family_of(f"tiny:{f}") for f in FAMILIES] == list(FAMILIES)
    assert tiny_family_of("some/model.gguf") is None
    with pytest.raises(ValueError, match="unknown family 'phi'"):
        tiny_family_of("tiny:phi")


def test_bad_tiny_family_is_named_before_any_work(tmp_path):
    c = _config("llama")
    c.model.spec = "tiny:phi"
    with pytest.raises(Exception, match=r"config\.model\.spec='tiny:phi': unknown family 'phi'"):
        hs_jax.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_family_search_and_answer(family, tmp_path):
    c = _config(family)
    base_cfg, _, tokenizer = load_base(c)
    assert base_cfg.family == family
    assert len(tokenizer) == base_cfg.vocab_size == tiny_vocab.tiny_vocab_size(family)

    hs_jax.run(c, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    best = results["best_system"]
    assert results["iterations"] == 1 and best["test_utility"] is not None
    assert results["cost"]["generate_calls"] > 0
    assert all(len(o) == results["n_test"] for o in results["best_system_test_outputs"].values())
    assert sorted(p.name for p in (tmp_path / "best_experts").iterdir())

    system = hs_jax.load_system(tmp_path)
    templates = system.protocol.templates
    assert templates.chat and USER_TURN[family] in templates.wrap("Is 1 linked to 2?")
    answers = system.answer(["In an undirected graph, is there a path between node 0 and 1?"])
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_tiny_llama_peft_pool_runs_and_compares(tmp_path):
    """A PEFT pool on a Llama base: written, loaded as the run's experts, compared."""
    from hs_jax.comparison.compare import compare

    c = _config("llama")
    folders = hs_jax.make_pool(c, tmp_path / "pool")
    config = json.loads((Path(folders[0]) / "adapter_config.json").read_text())
    assert set(config["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj"}
    c.experts.source = "peft"
    c.experts.peft_dirs = str(tmp_path / "pool" / "experts")
    c.outputs.export_experts = False
    entries = compare(
        c, tmp_path / "compare", method_list=["hs", "best_single", "constant_answer"],
        task_list=[], seeds=[0], progress=False,
    )  # fmt: skip
    assert {e["method"] for e in entries} == {"hs", "best_single", "constant_answer"}
    assert all(e["status"] == "done" for e in entries), entries
    assert (tmp_path / "compare" / "table.md").exists()


def test_tiny_qwen2_full_model_pool(tmp_path):
    """Full-weight experts of a Qwen 2 base (q/k/v biases, tied head): HF folders written by
    hs_jax's writer, searched over, the best ones exported as Qwen 2 folders that load back
    with the checkpoint's weights, and the found system answering as the run did."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hs_jax.models.hf_writer import save_hf_dir
    from hs_jax.models.safetensors_io import load_hf_dir
    from hs_jax.pipeline import door

    c = _config("qwen2")
    c.task.chat_template = False
    cfg, params, _ = load_base(door.resolve(c))
    dirs = []
    for i in range(2):
        rng = np.random.default_rng(i)
        noisy = jax.tree.map(
            lambda x, rng=rng: x + jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype),
            params,
        )
        dirs.append(save_hf_dir(cfg, noisy, tmp_path / f"model_{i}"))
    assert json.loads((Path(dirs[0]) / "config.json").read_text())["model_type"] == "qwen2"
    c.experts.source = "full"
    c.experts.model_dirs = ",".join(str(d) for d in dirs)
    c.experts.n = 2
    results = hs_jax.run(c, tmp_path / "run")
    assert results["experts"] == ["model_0", "model_1"]
    ckpt = hs_jax.read_checkpoint(tmp_path / "run")
    saved = list(ckpt.part("best_weights").values())
    for e in sorted(set(results["best_system"]["assignment"])):
        got_cfg, got = load_hf_dir(tmp_path / "run" / "best_experts" / results["experts"][e])
        assert got_cfg == cfg
        for leaf, stored in zip(jax.tree.leaves(got), saved, strict=True):
            np.testing.assert_array_equal(np.asarray(leaf), stored[e])
    system = hs_jax.load_system(tmp_path / "run")
    answers = system.answer(system.test_items)
    assert answers == results["best_system_test_outputs"][str(system.dag.end)]
