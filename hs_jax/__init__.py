"""hs_jax: Heterogeneous Swarms (Feng et al., 2025) in JAX/Flax.

The entry points are `hs_jax.run(config, workdir)` (one run of `config.method`; with
`config.seeds`, one run per seed as a row of a comparison) and
`hs_jax.comparison.compare.compare(...)` (every method x task x seed, the comparison table).
The package is in wings, each importing only the wings below it (docs/ARCHITECTURE.md):

    runtime, stats, models, store, swarm, tasks, experts, engine, config, setup, methods,
    pipeline, comparison, analysis

Names are imported on first use, so `import hs_jax.swarm.graph` does not load the model stack.
"""

import importlib

_EXPORTS = {
    "METHODS": "hs_jax.methods",
    "make_pool": "hs_jax.pipeline.runner",
    "load_system": "hs_jax.pipeline.found_system",
    "FoundSystem": "hs_jax.pipeline.found_system",
    "read_checkpoint": "hs_jax.pipeline.found_system",
    "base_config": "hs_jax.config",
    "Dag": "hs_jax.swarm.graph",
    "g_decode": "hs_jax.swarm.graph",
    "PSOConfig": "hs_jax.swarm.pso",
    "SearchConfig": "hs_jax.swarm.search",
    "SearchResult": "hs_jax.swarm.search",
    "run_search": "hs_jax.swarm.search",
    "summarize_checkpoint": "hs_jax.swarm.checkpoint_summary",
    "ConfigMismatchError": "hs_jax.store.checkpointing",
    "Engine": "hs_jax.engine.engine",
    "GenerationResult": "hs_jax.engine.engine",
    "load_engine": "hs_jax.engine.engine",
    "make_mesh": "hs_jax.runtime.sharding",
    "Executor": "hs_jax.engine.executor",
    "System": "hs_jax.engine.executor",
    "SystemScorer": "hs_jax.engine.scoring",
    "LoraStack": "hs_jax.experts.lora",
    "load_peft_pool": "hs_jax.experts.lora",
    "export_peft_adapter": "hs_jax.experts.lora",
    "FullExperts": "hs_jax.experts.full_models",
    "load_model": "hs_jax.models.loading",
    "load_tokenizer": "hs_jax.models.tokenizer",
}

__all__ = sorted([*_EXPORTS, "run"])


def run(config, workdir, *, callbacks=()):
    """Runs (or resumes) `config.method` in `workdir` and returns its results.json
    (`hs_jax.pipeline.runner.run`); with config.seeds ('0,1,2'), once per seed, each run a cell
    of a comparison in `workdir` (`hs_jax.comparison.compare.run_seeds`), returning the cells
    and the table's path. `callbacks` are called with each iteration's record of one run (a
    sweep's pruner raises from one to stop it); they do not apply to several seeds."""
    from hs_jax.pipeline import door

    opened = door.open_config(config)  # every bad field named before anything else
    if opened.seeds:
        if callbacks:
            raise ValueError("hs_jax.run: callbacks follow one run; config.seeds runs several")
        from hs_jax.comparison.compare import run_seeds

        return run_seeds(config, workdir)
    from hs_jax.pipeline.runner import run_opened

    return run_opened(opened, workdir, callbacks=callbacks)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hs_jax' has no attribute {name!r}")
