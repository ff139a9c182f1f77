"""The dynamic-weight baselines of the paper's Table 1: greedy soup, LoRAHub, Model Swarms.

Each one moves expert weights against the dev utility f, within `method_api.budget_of(config)`
utility evaluations scored through a `method_api.Evaluator` (archive, replay on resume), and
ends with `Evaluator.finish` (test scoring). Each is a deterministic function of config.seed
and the utilities it is given, which is what the Evaluator's replay needs.

- `greedy_soup` (Wortsman et al., 2022): experts sorted by their single dev utility; the soup
  starts as the best single expert and each next expert joins it only if the soup's dev
  utility does not drop. A soup is the uniform average of its experts' LoRA factors (the A's
  and the B's averaged separately, as the authors merge).
- `lorahub` (Huang et al., 2023): mixing weights w in R^n, the merged adapter
  (sum_i w_i A_i, sum_i w_i B_i) (LoRAHub's composition), maximising dev utility -
  lorahub_l1 * |w|_1 with a seeded (1 + lambda) evolution strategy from w = 1/n.
- `model_swarms` (Feng et al., 2024): PSO over the experts themselves (`hs_jax.swarm.pso` on the
  stack, as the search's weight swarm), each expert scored alone on dev, the step length
  decayed by 0.95 per iteration down to 0.1.

Merged adapters are scored as `method_api.SINGLE` systems in slots of a copy of the pool
(`remix`): the engine keeps seeing the pool's tree structure and shapes (no recompilation), and
several candidates share one scoring call. Leaves are mixed along the leading expert axis, so
full-weight experts (`hs_jax.experts.full_models`) are merged the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from hs_jax.config.schema import search_config
from hs_jax.methods.api import (
    SINGLE,
    Evaluator,
    MethodResult,
    NotApplicable,
    budget_of,
    score_singles,
)
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.swarm import pso
from hs_jax.swarm.search import BestSystem

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

FAMILY = "dynamic weight"


# ----------------------------------------------------------------------------- merging


@jax.jit
def _remix(stack: Any, m: jax.Array) -> Any:
    # HIGHEST: an identity row must give the expert back bitwise (no TF32 / bf16 passes).
    def mix(leaf):
        out = jnp.einsum(
            "kn,n...->k...", m, leaf.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
        )
        return out.astype(leaf.dtype)

    return jax.tree.map(mix, stack)


def remix(stack: Any, mixtures: np.ndarray) -> Any:
    """A copy of `stack` (leaves [n, ...]) whose slots 0..k-1 hold the k merged experts
    `mixtures` [k, n] (row j: expert j's factors = sum_i mixtures[j, i] * expert i's factors,
    leaf by leaf); the other slots keep their experts. Static metadata (names, ranks) is kept,
    so the engine swaps the weights in without recompiling."""
    n = jax.tree.leaves(stack)[0].shape[0]
    mixtures = np.asarray(mixtures, np.float32).reshape(-1, n)
    k = mixtures.shape[0]
    if k > n:
        raise ValueError(f"{k} merged experts do not fit in a pool of {n}")
    m = np.eye(n, dtype=np.float32)
    m[:k] = mixtures
    return _remix(stack, jnp.asarray(m))


def uniform_weights(members: Sequence[int], n: int) -> np.ndarray:
    """[n] mixing weights of the uniform average of `members`."""
    w = np.zeros(n, np.float32)
    w[list(members)] = 1.0 / len(members)
    return w


def _finite(u: float) -> float:
    return float(u) if np.isfinite(u) else -np.inf


def _json(u: float) -> float | None:
    return float(u) if np.isfinite(u) else None


def _choose(ev: Evaluator, slot: int, weights: Any, utility: float, iteration: int) -> None:
    # The method's own choice is its result (the final soup; LoRAHub's best objective), which
    # may tie with or trail (L1 term) the Evaluator's highest dev utility.
    ev.best = BestSystem(SINGLE, (int(slot),), weights, float(utility), int(iteration))


# ----------------------------------------------------------------------------- greedy soup


def greedy_soup(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """Greedy soup (module docstring): n - 1 evaluations (the one-expert soup is the best
    single, already scored by `score_singles`), fewer when the budget is smaller. History: one
    record per candidate expert, 'best' the soup's dev utility after it (non-decreasing)."""
    c = setup.config
    singles = score_singles(setup)
    ev = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    n = setup.experts.n_experts
    # Stable sort: ties keep the pool's order.
    order = sorted(range(n), key=lambda i: -_finite(singles.dev[i]))
    soup = [order[0]]
    soup_utility = _finite(singles.dev[order[0]])
    ev.consider(SINGLE, (order[0],), setup.experts, singles.dev[order[0]])
    chosen = (order[0], setup.experts, soup_utility, 0)  # slot, weights, utility, iteration
    history: list[dict[str, Any]] = []
    stop_reason = "all_experts"
    for t, e in enumerate(order[1:], start=1):
        if ev.remaining is not None and ev.remaining < 1:
            stop_reason = "budget"
            break
        weights = remix(setup.experts, uniform_weights([*soup, e], n)[None])
        u = float(ev.score([(SINGLE, (0,))], weights, step="greedy_soup", iteration=t)[0])
        kept = bool(np.isfinite(u) and u >= soup_utility)
        if kept:
            soup.append(e)
            soup_utility = u
            chosen = (0, weights, u, t)
        record = {
            "iteration": t,
            "expert": int(e),
            "utilities": [_json(u)],
            "kept": kept,
            "soup": [int(i) for i in soup],
            "best": _json(soup_utility),
        }
        history.append(record)
        for callback in callbacks:
            callback(record)
    slot, weights, utility, t_found = chosen
    if np.isfinite(utility):
        _choose(ev, slot, weights, utility, t_found)
    return ev.finish(
        singles,
        history=history,
        iterations=len(history),
        stop_reason=stop_reason,
        details={
            "order": [int(i) for i in order],
            "soup": [int(i) for i in soup],
            "soup_names": [setup.names[i] for i in soup],
            "mixing_weights": uniform_weights(soup, n).tolist(),
        },
    )


# ----------------------------------------------------------------------------- LoRAHub


@dataclasses.dataclass(frozen=True)
class EsConfig:
    """The (1 + lambda) evolution strategy of `lorahub`: objective = utility - l1 * |w|_1;
    offspring w + step * N(0, I) clipped to [-bound, bound]; step *= step_decay per
    generation."""

    l1: float = 0.05
    step: float = 0.5
    step_decay: float = 0.9
    bound: float = 1.5

    def __post_init__(self):
        if self.l1 < 0 or self.step <= 0 or self.bound <= 0:
            raise ValueError("need lorahub_l1 >= 0, lorahub_step > 0 and lorahub_bound > 0")
        if not 0 < self.step_decay <= 1:
            raise ValueError(f"lorahub_step_decay must be in (0, 1], got {self.step_decay}")


def es_config(c) -> EsConfig:
    b = c.baselines
    try:
        return EsConfig(b.lorahub_l1, b.lorahub_step, b.lorahub_step_decay, b.lorahub_bound)
    except ValueError as e:
        raise ValueError(f"config.baselines: {e}") from e


def objective(utilities: np.ndarray, w: np.ndarray, l1: float) -> np.ndarray:
    """LoRAHub's objective per candidate: utilities [k] - l1 * |w|_1 for w [k, n]; a
    non-finite utility is -inf."""
    u = np.where(np.isfinite(utilities), utilities, -np.inf)
    return u - l1 * np.abs(w).sum(axis=1)


def lorahub(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """LoRAHub-style composition (module docstring): generation 0 scores w = 1/n, each next
    generation up to n offspring of the best w so far (one scoring call, offspring in slots
    0..k-1), until the budget is spent. The result is the best objective's w."""
    c = setup.config
    cfg = es_config(c)
    singles = score_singles(setup)
    ev = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    n = setup.experts.n_experts
    rng = np.random.default_rng(c.seed)
    w = np.full((1, n), 1.0 / n, np.float32)
    best: _Candidate | None = None
    history: list[dict[str, Any]] = []
    step, t = cfg.step, 0
    while ev.remaining is None or ev.remaining >= 1:
        used = None  # the step length of this generation's offspring
        if t > 0:
            k = n if ev.remaining is None else min(n, ev.remaining)
            w = best.w[None] + step * rng.standard_normal((k, n)).astype(np.float32)
            w = np.clip(w, -cfg.bound, cfg.bound).astype(np.float32)
            used, step = step, step * cfg.step_decay
        weights = remix(setup.experts, w)
        u = ev.score([(SINGLE, (j,)) for j in range(len(w))], weights, step="lorahub", iteration=t)
        obj = objective(u, w, cfg.l1)
        j = int(np.argmax(obj))
        # Ties move the search (a plateau of the utility is crossed instead of stalled on).
        if best is None or obj[j] >= best.objective:
            best = _Candidate(w[j].copy(), float(obj[j]), float(u[j]), weights, j, t)
        record = {
            "iteration": t,
            "utilities": [_json(x) for x in u],
            "objectives": [_json(x) for x in obj],
            "best": _json(best.objective),
            "best_utility": _json(best.utility),
            "step": used,
        }
        history.append(record)
        for callback in callbacks:
            callback(record)
        t += 1
    if np.isfinite(best.utility):
        _choose(ev, best.slot, best.weights, best.utility, best.iteration)
    return ev.finish(
        singles,
        history=history,
        iterations=len(history),
        stop_reason="budget",
        details={
            "mixing_weights": [float(x) for x in best.w],
            "objective": _json(best.objective),
            "l1": cfg.l1,
        },
    )


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """LoRAHub's best so far: mixing weights [n], objective, dev utility, the stack it was
    scored in, its slot there and its generation."""

    w: np.ndarray
    objective: float
    utility: float
    weights: Any
    slot: int
    iteration: int


# ----------------------------------------------------------------------------- Model Swarms


def swarm_pso_config(c) -> pso.PSOConfig:
    """search.weights_pso with Model Swarms' step schedule (config.baselines)."""
    b = c.baselines
    try:
        return dataclasses.replace(
            search_config(c).weights_pso,
            step_decay=float(b.model_swarms_step_decay),
            step_floor=float(b.model_swarms_step_floor),
        )
    except ValueError as e:
        raise ValueError(f"config.baselines: model_swarms_step_*: {e}") from e


def model_swarms(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """Model Swarms (module docstring): each iteration scores the n experts alone (one call of
    n systems) and moves them by one PSO update; it stops when the budget cannot pay for
    another iteration or after config.search.patience iterations without a strictly better
    expert. The result is the best expert alone at the weights it was scored with."""
    c = setup.config
    cfg = swarm_pso_config(c)
    singles = score_singles(setup)
    ev = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    n = setup.experts.n_experts
    if ev.remaining is not None and ev.remaining < n:
        raise NotApplicable(f"model_swarms needs a budget of at least {n} (one iteration)")
    key, k_init = jax.random.split(jax.random.key(c.seed))
    state = pso.init(setup.experts, k_init, cfg)
    if setup.mesh is not None and n % setup.mesh.shape["expert"] == 0:
        state = pso.shard_state(state, setup.mesh, "expert")
    history: list[dict[str, Any]] = []
    best, stall, t = -np.inf, 0, 0
    stop_reason = "budget"
    systems = [(SINGLE, (i,)) for i in range(n)]
    while True:
        # A fresh buffer: the Evaluator keeps the weights of its best, and the update below
        # donates the swarm's positions.
        weights = jax.tree.map(jnp.copy, state.x)
        u = ev.score(systems, weights, step="model_swarms", iteration=t)
        finite = np.where(np.isfinite(u), u, -np.inf)
        improved = bool(finite.max() > best)
        best = max(best, float(finite.max()))
        stall = 0 if improved else stall + 1
        record = {
            "iteration": t,
            "utilities": [_json(x) for x in u],
            "best": _json(best),
            "improved": improved,
            "stall": stall,
            "step": float(state.step),
        }
        history.append(record)
        for callback in callbacks:
            callback(record)
        t += 1
        if stall >= search_config(c).patience:
            stop_reason = "patience"
            break
        if ev.remaining is not None and ev.remaining < n:
            break
        key, k_step = jax.random.split(key)
        state = pso.update(state, u, k_step, cfg)
    return ev.finish(
        singles,
        history=history,
        iterations=len(history),
        stop_reason=stop_reason,
        details={"step_decay": cfg.step_decay, "step_floor": cfg.step_floor},
    )


register("greedy_soup", MethodSpec(greedy_soup, FAMILY, "greedy soup"))
register("lorahub", MethodSpec(lorahub, FAMILY, "LoRAHub-style composition"))
register("model_swarms", MethodSpec(model_swarms, FAMILY, "Model Swarms"))
