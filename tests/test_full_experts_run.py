"""A run whose pool is full models (experts.source='full', experts.model_dirs): tiny HF model
folders written by the repo's writer, the search's weight step moving their whole weights, the
checkpoint, the export as HF folders, load_system, a rerun, and the refusals (another
architecture, a missing folder, methods that need LoRA factors)."""

import json
import os
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hs_jax
from hs_jax.experts.full_models import FullExperts
from hs_jax.models.hf_writer import save_hf_dir
from hs_jax.models.safetensors_io import load_hf_dir
from hs_jax.pipeline import door, memory_plan
from hs_jax.runtime.errors import ConfigError
from hs_jax.setup import assembly, identity

ROOT = Path(__file__).resolve().parents[1]
N = 3


def _tiny():
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.engine.compilation_cache = ""
    return c


def _full(dirs):
    c = _tiny()
    c.experts.source = "full"
    c.experts.model_dirs = ",".join(str(d) for d in dirs)
    return c


@pytest.fixture(scope="module")
def base():
    """(GemmaConfig, params) of the tiny config's base model, as a run builds it."""
    cfg, params, _ = assembly.load_base(door.resolve(_tiny()))
    return cfg, params


@pytest.fixture(scope="module")
def model_dirs(base, tmp_path_factory):
    """N HF model folders: the base model's weights, each perturbed by its own noise."""
    cfg, params = base
    root = tmp_path_factory.mktemp("full_models")
    dirs = []
    for i in range(N):
        rng = np.random.default_rng(i)
        noisy = jax.tree.map(
            lambda x, rng=rng: x + jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype),
            params,
        )
        carried = {"max_position_embeddings": 32768 + i, "eos_token_id": [1, 106]}
        dirs.append(Path(save_hf_dir(cfg, noisy, root / f"model_{i}", source_config_json=carried)))
    return dirs


@pytest.fixture(scope="module")
def run(model_dirs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full_run") / "run"
    return workdir, hs_jax.run(_full(model_dirs), workdir)


def _initial_pool(base, model_dirs) -> FullExperts:
    return assembly.load_model_folders(model_dirs, base[0], "tiny")


def test_run_finishes_with_valid_results(run, model_dirs):
    workdir, results = run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(results, sort_keys=True)
    assert results["experts"] == [d.name for d in model_dirs]
    assert results["iterations"] == len(results["history"]) >= 1
    best = results["best_system"]
    assert best["kind"] == "dag" and all(0 <= e < N for e in best["assignment"])
    assert len(results["single_experts"]["dev"]) == N
    run_json = json.loads((workdir / "run.json").read_text())
    files = run_json["identity"]["expert_model_files"]
    assert [Path(f[0]) for f in files] == [d.resolve() for d in model_dirs]
    assert {name for name, _, _ in files[0][1]} == {"config.json", "model.safetensors"}


def test_weight_step_moves_the_full_weights(run, base, model_dirs):
    """The weight swarm's positions in the last checkpoint are no longer the loaded models
    (every iteration's weight step ran and moved); the best system's weights are those of the
    iteration it was found in (the loaded models when that is 0)."""
    workdir, results = run
    assert any(h["weight"]["ran"] and h["weight"]["moved"] for h in results["history"])
    initial = jax.tree.leaves(_initial_pool(base, model_dirs))
    ckpt = hs_jax.read_checkpoint(workdir)
    positions = list(ckpt.part("weights_x").values())
    assert len(positions) == len(initial)
    assert any(not np.array_equal(p, np.asarray(x)) for p, x in zip(positions, initial))
    best = list(ckpt.part("best_weights").values())
    same = all(np.array_equal(b, np.asarray(x)) for b, x in zip(best, initial))
    assert same == (results["best_system"]["iteration"] == 0)


def test_export_is_hf_folders_of_the_best_weights(run, base):
    workdir, results = run
    ckpt = hs_jax.read_checkpoint(workdir)
    saved = list(ckpt.part("best_weights").values())
    used = sorted(set(results["best_system"]["assignment"]))
    exported = sorted(p.name for p in (workdir / "best_experts").iterdir())
    assert exported == sorted(results["experts"][e] for e in used)
    for e in used:
        cfg, params = load_hf_dir(workdir / "best_experts" / results["experts"][e])
        assert cfg == base[0]
        # The fields the architecture does not hold come from the expert's own source folder.
        written = json.loads(
            (workdir / "best_experts" / results["experts"][e] / "config.json").read_text()
        )
        assert written["max_position_embeddings"] == 32768 + e
        assert written["eos_token_id"] == [1, 106]
        for got, stored in zip(jax.tree.leaves(params), saved, strict=True):
            np.testing.assert_array_equal(np.asarray(got), stored[e])


def test_load_system_answers_as_the_run_did(run):
    workdir, results = run
    want = results["best_system_test_outputs"]
    for step in (None, results["iterations"]):  # best_experts/, then the checkpoint
        system = hs_jax.load_system(workdir, step=step)
        answers, nodes = system.answer(system.test_items, return_node_outputs=True)
        assert {str(u): o for u, o in nodes.items()} == want
        assert answers == want[str(system.dag.end)]


def test_rerun_returns_the_finished_results(run, model_dirs):
    workdir, results = run
    again = hs_jax.run(_full(model_dirs), workdir)
    assert json.dumps(again, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_changed_model_file_changes_the_identity(model_dirs):
    c = door.resolve(_full(model_dirs))
    before = identity.static_identity(c)
    weights = model_dirs[0] / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert identity.static_identity(c) != before
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_other_architecture_is_refused_before_the_search(base, model_dirs, tmp_path):
    cfg, _ = base
    other = cfg.replace(ffn_dim=cfg.ffn_dim * 2)
    rng = np.random.default_rng(0)
    from hs_jax.models.gemma import abstract_model

    params = jax.tree.map(
        lambda x: jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype),
        abstract_model(other)[1],
    )
    odd = Path(save_hf_dir(other, params, tmp_path / "odd"))
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        hs_jax.run(_full([model_dirs[0], odd]), workdir)
    message = str(e.value)
    assert "\n" not in message and str(odd) in message
    assert message.startswith("config.experts.model_dirs:") and "ffn_dim" in message
    assert not (workdir / "search").exists()


def test_missing_or_empty_model_dirs_are_named(model_dirs, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as e:
        hs_jax.run(_full([model_dirs[0], missing]), tmp_path / "run")
    assert "\n" not in str(e.value) and str(missing) in str(e.value)
    assert str(e.value).startswith("config.experts.model_dirs=")
    with pytest.raises(ConfigError, match="experts.source='full' needs folders"):
        hs_jax.run(_full([]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    c = _full(model_dirs)
    c.mesh.expert = 2  # 3 experts do not divide by it: padded with an inert one (swarm.pso)
    door.check(door.resolve(c))


@pytest.mark.parametrize("method", ["uniform_soup", "dare_ties", "data_merge", "pack_llm"])
def test_methods_that_need_lora_factors_refuse(model_dirs, method):
    c = _full(model_dirs)
    c.method = method
    with pytest.raises(ConfigError, match="does not apply here"):
        door.check(door.resolve(c))


def test_dry_run_counts_full_experts(model_dirs):
    c = _full(model_dirs)
    c.model.param_dtype = "float32"
    plan = memory_plan.plan(door.resolve(c), 1)
    one = memory_plan.model_shapes("tiny", "float32").num_params() * 4
    assert plan.parts["expert pool (as loaded)"] == N * one
    assert plan.parts["weight swarm (x, v, p, g, worst)"] == (3 * N + 2) * one
    assert "expert stack (generation)" not in plan.parts
