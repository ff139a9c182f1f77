"""Device mesh and name-based sharding rules.

Axes: 'data' (generation rows, PSO particles), 'expert' (the leading axis of the weight swarm;
generation rows too, `ROW_AXES`) and 'model' (the big kernels' feature axes). Parameters are
placed by a small rule table keyed on their path names, so the same code runs replicated
(model=1) or tensor-split (model>1); a dimension that does not divide by its axis size stays
replicated rather than failing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "expert", "model")
# The axes generation rows are split over: every device that does not split the weights
# generates its share ('expert' splits the weight swarm for the PSO step only; generation
# reads a replicated LoRA stack, so devices along it take rows too instead of repeating them).
ROW_AXES = ("data", "expert")

# (regex on the '/'-joined parameter path, PartitionSpec over that parameter's dims). First match
# wins; unmatched parameters are replicated. Kernels are [d_in, d_out]: column-parallel for the
# projections that fan out, row-parallel for the ones that fan back in.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    # [V, D]: vocab split (the tied output head, or an untied one stored as HF's [V, D])
    (r"(embedder|lm_head)/embedding$", P("model", None)),
    (r"attn/(q_proj|k_proj|v_proj)/kernel$", P(None, "model")),
    (r"attn/o_proj/kernel$", P("model", None)),
    (r"mlp/(gate_proj|up_proj)/kernel$", P(None, "model")),
    (r"mlp/down_proj/kernel$", P("model", None)),
)


def make_mesh(data: int = -1, model: int = 1, expert: int = 1, devices=None) -> Mesh:
    """Mesh with axes ('data', 'expert', 'model'); -1 for `data` takes the remaining devices.

    Built with `jax.sharding.Mesh(devices, names)` (automatic axis types, so jit propagates
    shardings), not `jax.make_mesh`, which defaults to explicit axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == -1:
        if len(devices) % (model * expert):
            raise ValueError(f"{len(devices)} devices do not divide by model*expert")
        data = len(devices) // (model * expert)
    n = data * expert * model
    if n > len(devices) or min(data, expert, model) < 1:
        raise ValueError(f"mesh data={data} expert={expert} model={model} needs {n} devices")
    return Mesh(np.asarray(devices[:n]).reshape(data, expert, model), AXES)


def axis_size(mesh: Mesh | None, name: str) -> int:
    """Size of a mesh axis (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[name])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def row_shards(mesh: Mesh | None) -> int:
    """How many parts generation rows are split into: 'data' x 'expert' (1 without a mesh)."""
    return axis_size(mesh, "data") * axis_size(mesh, "expert")


def rows(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis split over 'data' x 'expert' (`ROW_AXES`), the rest replicated (token
    batches, per-row arrays)."""
    return NamedSharding(mesh, P(ROW_AXES, *([None] * (ndim - 1))))


def _path_str(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        if getattr(k, "name", None) == "value":  # an nnx Variable's payload, not a name
            continue
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules=PARAM_RULES) -> P:
    """The PartitionSpec of one parameter: first matching rule, replicated where it cannot split."""
    for pattern, spec in rules:
        if re.search(pattern, path) and len(spec) == len(shape):
            fixed = tuple(
                ax if ax is None or dim % axis_size(mesh, ax) == 0 else None
                for ax, dim in zip(spec, shape, strict=True)
            )
            return P(*fixed)
    return P()


def param_shardings(params: Any, mesh: Mesh, rules=PARAM_RULES) -> Any:
    """Pytree of NamedShardings matching `params` (an nnx.State or any pytree of arrays)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(_path_str(path), np.shape(x), mesh, rules)),
        params,
    )


def shard_params(params: Any, mesh: Mesh, rules=PARAM_RULES) -> Any:
    """Places parameters on the mesh by the rule table."""
    return jax.device_put(params, param_shardings(params, mesh, rules))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf replicated on the mesh (expert stacks for generation are small)."""
    return jax.device_put(tree, replicated(mesh))
