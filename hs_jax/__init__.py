"""hs_jax: Heterogeneous Swarms (Feng et al., 2025) in JAX/Flax.

The main entry point is `hs_jax.run(config, workdir)`; the pieces it joins are importable on
their own: `graph` (DAGs, G-decode), `pso` (particle swarms over pytrees), `jfk` (JFK-score),
`search` (the alternating loop, checkpointed), `engine` (batched multi-expert generation on
Flax Gemma models), `executor` (multi-LLM systems, level by level), `tasks` (data, prompts,
parsers, metrics), `lora` / `experts` (expert pools).
"""

__all__ = ["run"]


def run(config, workdir):
    """Runs (or resumes) a whole search; see `hs_jax.pipeline.run`."""
    # Imported on call: `import hs_jax.graph` stays light (no model or tokenizer stack).
    from hs_jax.pipeline import run as _run

    return _run(config, workdir)
