"""Full-weight experts: n parameter sets of one architecture held as one stacked pytree.

For small models the swarm can search over whole weight sets instead of LoRA adapters. Like
`LoraStack`, every leaf carries a leading expert axis ([E, ...]), so PSO's leaf-wise linear
combinations work the same way for both kinds. The architecture (GemmaConfig) and the expert
names are static metadata, not leaves. The engine runs them through
`expert_sets.FullWeightExperts`: rows grouped per expert, each group with `params_for(i)`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from hs_jax.models.gemma_config import GemmaConfig, first_difference


@struct.dataclass
class FullExperts:
    """E full parameter states of one Gemma architecture.

    params: the model's nnx params state with every leaf stacked to [E, ...].
    config: the shared architecture (static).
    names: one label per expert (static), e.g. the file it came from.
    """

    params: nnx.State
    config: GemmaConfig = struct.field(pytree_node=False)
    names: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def n_experts(self) -> int:
        """Size of the leading expert axis."""
        return int(jax.tree.leaves(self.params)[0].shape[0])

    def params_for(self, i: int) -> nnx.State:
        """Expert i's params state (leaves without the expert axis), ready for nnx.merge."""
        i = _check_index(self, i)
        return jax.tree.map(lambda x: x[i], self.params)


def _check_index(experts: FullExperts, i: int) -> int:
    if not -experts.n_experts <= i < experts.n_experts:
        raise IndexError(f"expert {i} out of range for {experts.n_experts} full experts")
    return i % experts.n_experts


def _label(names: Sequence[str], i: int) -> str:
    return f"expert {i} ({names[i]!r})"


def check_same_architecture(configs: Sequence[GemmaConfig], names: Sequence[str]) -> GemmaConfig:
    """The shared config, or a ValueError naming the first expert and field that differ."""
    ref = configs[0]
    for i, config in enumerate(configs[1:], start=1):
        if differs := first_difference(config, ref):
            name, mine, theirs = differs
            raise ValueError(
                f"{_label(names, i)} has config field {name} = {mine!r}, but "
                f"{_label(names, 0)} has {theirs!r}: full experts must share one architecture"
            )
    return ref


def _check_same_tree(params_list: Sequence[nnx.State], names: Sequence[str]) -> None:
    """Same tree paths, shapes and dtypes for every expert (error names expert and tensor)."""
    ref_leaves = jax.tree_util.tree_flatten_with_path(params_list[0])[0]
    ref = dict(ref_leaves)
    for i, params in enumerate(params_list[1:], start=1):
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        paths = {path for path, _ in leaves}
        for path, _ in ref_leaves:
            if path not in paths:
                raise ValueError(
                    f"{_label(names, i)} lacks tensor {jax.tree_util.keystr(path)} "
                    f"that {_label(names, 0)} has"
                )
        for path, leaf in leaves:  # tree order, so the first mismatch is reported
            if path not in ref:
                raise ValueError(
                    f"{_label(names, i)} has tensor {jax.tree_util.keystr(path)} "
                    f"that {_label(names, 0)} lacks"
                )
            r = ref[path]
            if leaf.shape != r.shape or leaf.dtype != r.dtype:
                raise ValueError(
                    f"{_label(names, i)} tensor {jax.tree_util.keystr(path)} is "
                    f"{leaf.dtype}{list(leaf.shape)}, {_label(names, 0)} has "
                    f"{r.dtype}{list(r.shape)}"
                )


def stack_params(
    params_list: Sequence[nnx.State],
    config: GemmaConfig | Sequence[GemmaConfig],
    names: Sequence[str] | None = None,
) -> FullExperts:
    """Stack n params states (one architecture) into FullExperts.

    `config` is the shared GemmaConfig or one per expert (then checked to agree). Raises a
    ValueError naming the mismatching expert and field or tensor.
    """
    if not params_list:
        raise ValueError("stack_params needs at least one params state")
    n = len(params_list)
    names = tuple(names) if names is not None else tuple(f"expert_{i}" for i in range(n))
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} experts")
    configs = [config] * n if isinstance(config, GemmaConfig) else list(config)
    if len(configs) != n:
        raise ValueError(f"{len(configs)} configs for {n} experts")
    shared = check_same_architecture(configs, names)
    _check_same_tree(params_list, names)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params_list)  # every leaf [E, ...]
    return FullExperts(params=stacked, config=shared, names=names)


def unstack_params(experts: FullExperts) -> list[nnx.State]:
    """The inverse of `stack_params`: one params state per expert."""
    return [experts.params_for(i) for i in range(experts.n_experts)]


def replace_expert(experts: FullExperts, i: int, params: nnx.State) -> FullExperts:
    """`experts` with expert i's weights replaced by `params` (same tree, shapes, dtypes)."""
    i = _check_index(experts, i)
    _check_same_tree([experts.params_for(0), params], [experts.names[0], "replacement"])
    new = jax.tree.map(lambda s, x: s.at[i].set(x), experts.params, params)
    return experts.replace(params=new)


def num_params(experts: FullExperts) -> int:
    """Number of stored weights in the whole stack (all experts)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(experts.params)))


def load_full_experts(
    specs: Sequence[str | os.PathLike],
    *,
    param_dtype: str | None = None,
    names: Sequence[str] | None = None,
) -> FullExperts:
    """Load n checkpoints (HF dirs or GGUF files, anything `hs_jax.models.load_model` takes)
    of one architecture and stack them; a mismatching architecture is a ValueError naming the
    checkpoint and the config field."""
    from hs_jax.models.loading import load_model

    if not specs:
        raise ValueError("load_full_experts needs at least one checkpoint")
    specs = [os.fspath(s) for s in specs]
    names = tuple(names) if names is not None else tuple(specs)
    configs, params_list = [], []
    for spec in specs:
        config, params = load_model(spec, param_dtype=param_dtype)
        configs.append(config)
        params_list.append(params)
        # Fail before loading the rest when the architecture already disagrees.
        check_same_architecture(configs, names)
    return stack_params(params_list, configs, names)
