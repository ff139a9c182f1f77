"""hs_jax: Heterogeneous Swarms (Feng et al., 2025) in JAX/Flax.

The main entry points are `hs_jax.run(config, workdir)` (one method, `config.method`) and
`hs_jax.compare.compare(...)` (every method x task x seed, the comparison table). The pieces
they join are importable on their own: `graph` (DAGs, G-decode), `pso` (particle swarms over
pytrees), `jfk` (JFK-score), `search` (the alternating loop, checkpointed), `engine` (batched
multi-expert generation on Flax Gemma models), `executor` (multi-LLM systems, level by level),
`tasks` (data, prompts, parsers, metrics), `lora` / `experts` (expert pools), `models` (Gemma
and its loaders), `baselines` (the other methods), `analysis` (C-Gain, curves, topology).

Names are imported on first use, so `import hs_jax.graph` does not load the model stack.
"""

import importlib

_EXPORTS = {
    "run": "hs_jax.runner",
    "METHODS": "hs_jax.methods",
    "make_pool": "hs_jax.run_setup",
    "load_system": "hs_jax.found_system",
    "FoundSystem": "hs_jax.found_system",
    "read_checkpoint": "hs_jax.found_system",
    "base_config": "hs_jax.config",
    "Dag": "hs_jax.graph",
    "g_decode": "hs_jax.graph",
    "PSOConfig": "hs_jax.pso",
    "SearchConfig": "hs_jax.search",
    "SearchResult": "hs_jax.search",
    "run_search": "hs_jax.search",
    "summarize_checkpoint": "hs_jax.search",
    "ConfigMismatchError": "hs_jax.checkpointing",
    "Engine": "hs_jax.engine",
    "GenerationResult": "hs_jax.engine",
    "load_engine": "hs_jax.engine",
    "make_mesh": "hs_jax.sharding",
    "Executor": "hs_jax.executor",
    "System": "hs_jax.executor",
    "SystemScorer": "hs_jax.scoring",
    "LoraStack": "hs_jax.lora",
    "load_peft_pool": "hs_jax.lora",
    "export_peft_adapter": "hs_jax.lora",
    "FullExperts": "hs_jax.full_experts",
    "load_model": "hs_jax.models.loading",
    "load_tokenizer": "hs_jax.models.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hs_jax' has no attribute {name!r}")
