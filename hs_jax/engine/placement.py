"""Where the engine's arrays live: on the default device, or on a mesh (hs_jax.runtime.sharding).

One `Placement` per engine puts each kind of array where the generation program expects it:
model parameters by the rule table (`sharding.PARAM_RULES`, split along 'model'), LoRA stacks
replicated, per-row inputs split over 'data' x 'expert' (`sharding.ROW_AXES`). Without a mesh,
weights go to the default device and per-row inputs stay host arrays (jit moves them with the
call).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from hs_jax.runtime import sharding


@dataclasses.dataclass(frozen=True)
class Placement:
    """Placement of weights and per-row inputs on `mesh` (None: the default device)."""

    mesh: Mesh | None = None

    @property
    def n_row_shards(self) -> int:
        """The parts rows are split into ('data' x 'expert'), the divisor of every call's row
        count (1 without a mesh)."""
        return sharding.row_shards(self.mesh)

    def params(self, params: Any) -> Any:
        """A model params state, split by the rule table on a mesh."""
        if self.mesh is None:
            return jax.device_put(params)
        return sharding.shard_params(params, self.mesh)

    def replicated(self, tree: Any) -> Any:
        """Small weights every device needs whole (a LoRA stack)."""
        if self.mesh is None:
            return jax.device_put(tree)
        return sharding.replicate(tree, self.mesh)

    def rows(self, x: np.ndarray) -> Any:
        """A per-row array [B, ...], split over 'data' x 'expert' on a mesh."""
        if self.mesh is None:
            return x
        return jax.device_put(x, sharding.rows(self.mesh, x.ndim))
