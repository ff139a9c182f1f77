"""The run configuration: one ml_collections.ConfigDict, described, preset and checked here.

- `schema.py`: `base_config()`, every field with its default (config files start from it), and
  the typed sections built from it (`search_config`, `sft_config`);
- `presets.py`: what `config.protocol` fills in (`resolve_protocol`), `paper_config`;
- `checks.py`: every bad field named in one error, before anything is loaded;
- `model_source.py`, `pool_source.py`, `task_choice.py`: the base model, the expert pool and
  the task a config names, the one reader of those sections after the door;
- `mesh_layout.py`: `config.mesh` on the devices a run has.

A run resolves and checks its config once, at the door (`hs_jax.pipeline.door`), which adds the
method's overrides and checks from the method registry; everything after it reads the result.
"""

from hs_jax.config.presets import paper_config
from hs_jax.config.schema import base_config

__all__ = ["base_config", "paper_config"]
