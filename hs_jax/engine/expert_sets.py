"""Expert sets: what the engine needs from a set of experts, for LoRA and full-weight experts.

An `Engine` (hs_jax.engine.engine) generates rows that each name an expert (-1 = the base model).
From the expert set it needs three things, the methods of `ExpertSet`:

- placement on the mesh (`placed`): a LoRA stack is replicated on every device; full-weight
  experts are checked against the base model's structure once and placed expert by expert when
  their rows run, so only one expert's weights are on the devices at a time;
- per-row selection (`row_groups`): a LoRA batch is one program whose forward pass gathers each
  row's factors (`lora_for_rows`, inside jit); full-weight rows are grouped per expert and
  every group runs the same compiled program with that expert's parameters;
- swapping in new weights without recompiling (`replaced_by`): the new weights must have the
  tree structure, shapes and dtypes of the ones they replace (a PSO step moves them, never
  reshapes them).

`LoraExperts` implements it for `hs_jax.experts.lora.LoraStack`, `FullWeightExperts` for
`hs_jax.experts.full_models.FullExperts`; `as_expert_set` picks the implementation.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hs_jax.engine.placement import Placement
from hs_jax.experts.full_models import FullExperts
from hs_jax.experts.lora import LoraStack


def check_same_structure(old: Any, new: Any, what: str = "experts") -> None:
    """Raises unless `new` has the tree structure, shapes and dtypes of `old` (no recompile)."""
    old_def, new_def = jax.tree.structure(old), jax.tree.structure(new)
    if old_def != new_def:
        raise ValueError(f"new {what} have another tree structure: {new_def} != {old_def}")
    for path_and_a, b in zip(
        jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new), strict=True
    ):
        path, a = path_and_a
        if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"new {what} leaf {jax.tree_util.keystr(path)}: shape/dtype "
                f"{np.shape(b)} {jnp.result_type(b)} != {np.shape(a)} {jnp.result_type(a)}"
            )


@dataclasses.dataclass(frozen=True)
class RowGroup:
    """Rows of one generate call that run with the same weights.

    params: placed model params (the base model's, or a full-weight expert's).
    lora: the placed LoRA stack the forward pass selects rows' factors from, or None.
    rows: indices into the call's prompts, ascending.
    """

    params: nnx.State
    lora: Any
    rows: list[int]


class ExpertSet(abc.ABC):
    """A set of experts as the engine uses it (module docstring)."""

    @property
    @abc.abstractmethod
    def weights(self) -> Any:
        """The expert weights as given (the pytree a PSO step moves), placed once `placed`."""

    @property
    @abc.abstractmethod
    def n_experts(self) -> int:
        """Number of experts; valid expert ids are 0 .. n_experts - 1."""

    @abc.abstractmethod
    def placed(self, placement: Placement, base_params: nnx.State) -> ExpertSet:
        """This set ready for generation next to `base_params` (raises if they do not fit)."""

    @abc.abstractmethod
    def row_groups(
        self, expert_ids: np.ndarray, base_params: nnx.State, placement: Placement
    ) -> Iterator[RowGroup]:
        """The groups of rows that run together; expert_ids [n] int32, -1 = base model, and
        not all -1 (the engine runs an all-base call without its expert set)."""

    def replaced_by(self, new: Any, placement: Placement, base_params: nnx.State) -> ExpertSet:
        """The set of `new` weights, placed, to generate with instead of this one."""
        return as_expert_set(new).placed(placement, base_params)


class LoraExperts(ExpertSet):
    """A `LoraStack` (leaves [E, ...]): every row gathers its own factors in one program."""

    def __init__(self, stack: LoraStack):
        self._stack = stack

    @property
    def weights(self) -> LoraStack:
        return self._stack

    @property
    def n_experts(self) -> int:
        leaves = jax.tree.leaves(self._stack)
        return int(leaves[0].shape[0]) if leaves else 0

    def placed(self, placement: Placement, base_params: nnx.State) -> LoraExperts:
        return LoraExperts(placement.replicated(self._stack))

    def row_groups(self, expert_ids, base_params, placement) -> Iterator[RowGroup]:
        yield RowGroup(base_params, self._stack, list(range(len(expert_ids))))

    def replaced_by(self, new, placement, base_params) -> ExpertSet:
        # The compiled program takes the stack's shapes: other shapes would compile another.
        check_same_structure(self._stack, new.weights if isinstance(new, ExpertSet) else new)
        return super().replaced_by(new, placement, base_params)


class FullWeightExperts(ExpertSet):
    """`FullExperts` (E parameter states of the base architecture), run one expert at a time."""

    def __init__(self, experts: FullExperts):
        self._experts = experts

    @property
    def weights(self) -> FullExperts:
        return self._experts

    @property
    def n_experts(self) -> int:
        return int(self._experts.n_experts)

    def placed(self, placement: Placement, base_params: nnx.State) -> FullWeightExperts:
        # Every expert runs the base model's compiled program: same tree, shapes and dtypes.
        if self.n_experts:
            check_same_structure(base_params, self._experts.params_for(0), what="expert params")
        return self

    def row_groups(self, expert_ids, base_params, placement) -> Iterator[RowGroup]:
        for e in sorted(set(expert_ids.tolist())):
            rows = [i for i, x in enumerate(expert_ids.tolist()) if x == e]
            # Placed when its rows run, so one expert's weights are on the devices at a time.
            params = base_params if e < 0 else placement.params(self._experts.params_for(e))
            yield RowGroup(params, None, rows)


def as_expert_set(weights: Any) -> ExpertSet | None:
    """The expert set of `weights`: a LoraStack, FullExperts, an ExpertSet, or None (no
    experts)."""
    if weights is None or isinstance(weights, ExpertSet):
        return weights
    if isinstance(weights, LoraStack):
        return LoraExperts(weights)
    if isinstance(weights, FullExperts):
        return FullWeightExperts(weights)
    raise TypeError(
        "experts must be a hs_jax.experts.lora.LoraStack, a "
        f"hs_jax.experts.full_models.FullExperts or an "
        f"hs_jax.engine.expert_sets.ExpertSet, got {type(weights).__name__}"
    )


def row_expert_ids(expert_ids: Any, n: int, n_experts: int) -> np.ndarray:
    """[n] int32 expert id per row, -1 = base model, from None (all base), one id for every row,
    or one per row (any negative id means the base model); raises on ids >= n_experts."""
    if expert_ids is None:
        ids = np.full((n,), -1, np.int32)
    else:
        ids = np.asarray(expert_ids, np.int32)
        if ids.ndim == 0:
            ids = np.full((n,), int(ids), np.int32)
    if ids.shape != (n,):
        raise ValueError(f"expert_ids has shape {ids.shape}, expected ({n},)")
    ids = np.where(ids < 0, -1, ids).astype(np.int32)
    if (ids >= n_experts).any():
        raise ValueError(
            f"expert id {int(ids.max())} out of range: the engine holds {n_experts} experts"
        )
    return ids


def lora_for_rows(stack: LoraStack, expert_ids: jax.Array) -> tuple[LoraStack, jax.Array]:
    """The stack and row ids as the forward pass takes them (traced, inside jit).

    Appends an all-zero expert to the stack and maps expert id -1 (base model) onto it: a zero
    LoRA factor adds exactly 0, so base rows can share the batch with adapted rows.
    expert_ids: [B] int32 -> [B] int32 in 0 .. E (E = the zero expert).
    """
    n_experts = jax.tree.leaves(stack)[0].shape[0]
    stack = jax.tree.map(lambda x: jnp.concatenate([x, jnp.zeros_like(x[:1])], axis=0), stack)
    return stack, jnp.where(expert_ids < 0, n_experts, expert_ids).astype(jnp.int32)
