"""Static-weight baselines (the paper's Table 1): the experts merged into one, without the utility.

Each merges the pool once, independently of the task's utility f, and runs the merged expert
alone: it replaces expert 0 in a copy of the pool (`lora.replace_expert`, the stack's names and
ranks kept so the engine swaps it in without recompiling) and the system is `SINGLE` on that
slot, scored once on dev (one utility evaluation) and once on test.

- `uniform_soup`: the mean of the experts' a factors and of their b factors (`merging`).
- `dare_ties`: DARE-TIES on the experts' weight deltas, re-factored to the pool's rank by a
  truncated SVD (an approximation: `merging.to_lora`; its error is in results.json's
  details). Settings: config.baselines.dare_drop, ties_density, merge_scale.
- `data_merge`: one adapter fine-tuned on the union of the experts' training slices with the
  pool's training settings (`assembly.data_merge_adapter`); needs experts.source='train'.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hs_jax.config.pool_source import PoolSource
from hs_jax.experts import lora
from hs_jax.methods import merging
from hs_jax.methods.api import SINGLE, Evaluator, MethodResult, budget_of, score_singles
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.runtime import distributed
from hs_jax.setup import assembly
from hs_jax.store import workdir as workdir_lib

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

SLOT = 0  # the pool slot the merged expert takes
DATA_MERGE_DIR = "data_merge"  # workdir/data_merge/<key>/data_merge: the adapter (PEFT)
# The config fields the data-merged adapter depends on (those of a trained pool).
_TRAINING_FIELDS = ("seed", "protocol", "model.", "task.", "experts.")


def in_slot(stack: lora.LoraStack, merged: lora.LoraStack, slot: int = SLOT) -> lora.LoraStack:
    """`stack` with expert `slot` replaced by the one-expert `merged`, the stack's names and
    ranks kept: they are static fields of the pytree, so new ones would be a new structure
    (and a recompile) for the engine."""
    merged = merged.replace(names=(stack.names[slot],), ranks=(stack.ranks[slot],))
    return lora.replace_expert(stack, slot, merged)


def run_merged(
    setup: Setup, workdir: Path, build: Callable[[], tuple[lora.LoraStack, dict[str, Any]]]
) -> MethodResult:
    """The merged expert `build()` returns (with its details) in slot `SLOT`, scored alone on
    dev, then on test."""
    c = setup.config
    singles = score_singles(setup)
    merged, details = build()
    weights = in_slot(setup.experts, merged)
    evaluator = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    utility = evaluator.score([(SINGLE, (SLOT,))], weights, step=c.method)[0]
    record = {
        "iteration": 0,
        "step": c.method,
        "dev_utility": float(utility) if np.isfinite(utility) else None,
    }
    return evaluator.finish(
        singles, history=[record], iterations=1, stop_reason="done",
        details={"merge": c.method, "slot": SLOT, "experts": list(setup.names), **details},
    )  # fmt: skip


def lora_pool_applies(c) -> str | None:
    """The merges work on LoRA factors: a pool of full models has none."""
    if PoolSource.of(c).full:
        return (
            f"{c.method} merges LoRA factors; experts.source='full' holds full-weight experts "
            "(greedy_soup and lorahub merge any weights)"
        )
    return None


def uniform_soup(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """The experts' LoRA factors averaged into one expert."""

    def build():
        return merging.uniform_soup(distributed.host_tree(setup.experts)), {}

    return run_merged(setup, workdir, build)


def dare_ties_applies(c) -> str | None:
    if why := lora_pool_applies(c):
        return why
    b = c.baselines
    if not 0.0 <= b.dare_drop < 1.0:
        return f"config.baselines.dare_drop={b.dare_drop!r} must be in [0, 1)"
    if not 0.0 < b.ties_density <= 1.0:
        return f"config.baselines.ties_density={b.ties_density!r} must be in (0, 1]"
    if not np.isfinite(b.merge_scale):
        return f"config.baselines.merge_scale={b.merge_scale!r} must be finite"
    return None


def dare_ties(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """DARE-TIES of the experts' deltas, as one rank-r LoRA expert (r: the pool's largest)."""
    c = setup.config
    b = c.baselines

    def build():
        rng = np.random.default_rng(c.seed)  # drawn projection by projection, in layer order
        merged = merging.merge_stack(
            distributed.host_tree(setup.experts),
            lambda d: merging.dare_ties(
                d, drop=b.dare_drop, density=b.ties_density, scale=b.merge_scale, rng=rng
            ),
            name="dare_ties",
        )
        settings = {"dare_drop": b.dare_drop, "ties_density": b.ties_density,
                    "merge_scale": b.merge_scale, "rank": merged.expert.rank}  # fmt: skip
        return merged.expert, {**settings, **merged.error_summary()}

    return run_merged(setup, workdir, build)


def data_merge_applies(c) -> str | None:
    if not PoolSource.of(c).trained:
        return (
            "data merge needs the experts' training data: experts.source='train' "
            f"(got {PoolSource.of(c).kind!r})"
        )
    return None


def training_key(c) -> str:
    """A short hash of the config fields the data-merged adapter depends on: the adapter is
    kept under it, so a workdir reused with other settings (config.restart leaves
    workdir/data_merge in place) never loads an adapter trained for another config."""
    flat = workdir_lib.flatten(c.to_dict())
    kept = {k: v for k, v in flat.items() if any(
        k == f or (f.endswith(".") and k.startswith(f)) for f in _TRAINING_FIELDS)}  # fmt: skip
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def data_merge(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """One adapter fine-tuned on the union of the experts' training data (saved under
    workdir/data_merge and loaded from there on resume)."""

    def build():
        directory = workdir / DATA_MERGE_DIR / training_key(setup.config)
        adapter = assembly.data_merge_adapter(setup, directory)
        c = setup.config
        rows = c.experts.batch_per_expert * setup.experts.n_experts
        return adapter, {"train_steps": PoolSource.of(c).train_steps, "rows_per_step": rows}

    return run_merged(setup, workdir, build)


register(
    "uniform_soup",
    MethodSpec(uniform_soup, "static weight", "uniform soup of the experts",
               applies=lora_pool_applies),
)  # fmt: skip
register(
    "dare_ties",
    MethodSpec(dare_ties, "static weight", "DARE-TIES merge of the experts",
               applies=dare_ties_applies),
)  # fmt: skip
register(
    "data_merge",
    MethodSpec(
        data_merge, "static weight", "one adapter trained on the union of the experts' data",
        applies=data_merge_applies,
    ),
)  # fmt: skip
