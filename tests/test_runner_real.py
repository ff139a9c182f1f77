"""One whole search on the real Gemma 3 270M, on a few generated items (about a minute)."""

import json
import runpy
from pathlib import Path

import pytest

import hs_jax

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_real_model_search_on_generated_items(gemma3_270m_gguf, tmp_path):
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.model.spec = str(gemma3_270m_gguf)
    c.task.gen.n_dev = 2
    c.task.gen.n_test = 2
    c.task.max_new_tokens = 2
    c.task.answer_prefix = "Answer:"
    c.experts.n = 2
    c.experts.random_scale = 0.002
    c.search.max_iterations = 1
    c.outputs.export_experts = False
    c.engine.compilation_cache = ""
    # One device: on the suite's 8 virtual CPU devices the data axis would replicate the float32
    # weights 8 times (~10 GB more memory); sharded generation is tested on tiny models.
    c.mesh.data = 1
    results = hs_jax.run(c, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["best_system"] == results["best_system"]
    assert saved["iterations"] == 1 and saved["cost"]["generated_tokens"] > 0
    utilities = [*saved["single_experts"]["dev"], saved["best_system"]["dev_utility"]]
    assert all(0.0 <= u <= 1.0 for u in utilities)
    # A real base model answers a yes/no or number question with real words, not noise.
    end = str(saved["best_system"]["dag"]["end"])
    assert any(text.strip() for text in saved["best_system_test_outputs"][end])
