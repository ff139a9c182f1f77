"""Static-role baselines (the paper's Table 1): the experts in a fixed structure, chain or star.

The structure is fixed; what is chosen is which expert sits at which node: the best of
`config.baselines.permutations` random expert orders on dev (all n! orders when there are no
more than that). Every order is one system using each expert once, and all of them are scored
in one `method_api.Evaluator` call, so the method costs exactly that many utility evaluations.

- `chain`: 1 -> 2 -> ... -> n, the last expert is the end node (`topologies.chain`).
- `star`: 1 -> (n-2) -> 1, the first expert feeds the n-2 middle ones, which all feed the last
  (`topologies.star`); needs n >= 4 experts: at n = 3 the star is the chain 1 -> 1 -> 1 and
  would be `chain` again under another name.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hs_jax.config import pool_source
from hs_jax.methods import topologies
from hs_jax.methods.api import Evaluator, MethodResult, NotApplicable, score_singles
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.swarm.graph import Dag

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

System = tuple[Dag, tuple[int, ...]]


def expert_orders(n: int, count: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """`min(count, n!)` distinct orders of experts 0..n-1: every permutation (lexicographic)
    when `n! <= count`, else `count` distinct random ones in the order first drawn."""
    if n < 1 or count < 1:
        raise ValueError(f"need n >= 1 experts and count >= 1 orders, got {n}, {count}")
    if math.factorial(n) <= count:
        return list(itertools.permutations(range(n)))
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < count:  # count < n!: a new order turns up with probability >= 1/n!
        seen.setdefault(tuple(int(e) for e in rng.permutation(n)), None)
    return list(seen)


def best_of_orders(
    setup: Setup, workdir: Path, method: str, build: Callable[[Sequence[int]], System]
) -> MethodResult:
    """The structure `build(order)` for each of the expert orders (`expert_orders`, seeded by
    config.seed), scored on dev in one call; the best one scored on test."""
    c = setup.config
    singles = score_singles(setup)
    orders = expert_orders(
        setup.experts.n_experts, int(c.baselines.permutations), np.random.default_rng(c.seed)
    )
    systems = [build(order) for order in orders]
    evaluator = Evaluator(setup, workdir, method, budget=len(systems))
    utilities = evaluator.score(systems, setup.experts, step="orders")
    record = {
        "iteration": 0,
        "orders": [list(o) for o in orders],
        "utilities": [float(u) if np.isfinite(u) else None for u in utilities],
        "best_utility": evaluator.best.utility if evaluator.best is not None else None,
    }
    return evaluator.finish(
        singles, history=[record], iterations=1, stop_reason="done",
        details={"structure": method, "orders_tried": len(orders)},
    )  # fmt: skip


def chain(setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True) -> MethodResult:
    """The experts in a chain, the best of random expert orders on dev."""
    return best_of_orders(setup, workdir, "chain", topologies.chain)


STAR_MIN_EXPERTS = 4


def _star_refusal(n: int) -> str:
    return (
        f"a 1 -> (n-2) -> 1 star needs at least {STAR_MIN_EXPERTS} experts (at 3 it is the "
        f"chain), the pool has {n}"
    )


def star_applies(c) -> str | None:
    n = pool_source.pool_size(c)
    if n is not None and n < STAR_MIN_EXPERTS:
        return _star_refusal(n)
    return None


def star(setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True) -> MethodResult:
    """The experts in a 1 -> (n-2) -> 1 star, the best of random expert orders on dev."""
    n = setup.experts.n_experts
    if n < STAR_MIN_EXPERTS:  # a pool whose size pool_source.pool_size could not tell in advance
        raise NotApplicable(_star_refusal(n))
    return best_of_orders(setup, workdir, "star", topologies.star)


register("chain", MethodSpec(chain, "static role", "chain of all experts, best of random orders"))
register(
    "star",
    MethodSpec(
        star, "static role", "1 -> (n-2) -> 1 star, best of random orders", applies=star_applies
    ),
)
