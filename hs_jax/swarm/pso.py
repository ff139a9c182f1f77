"""Particle swarm optimisation over pytrees, as Heterogeneous Swarms runs it (maximises).

The same jitted code moves the role swarm (N adjacency matrices, one leaf ``[N, n, n]``) and
the weight swarm (the n experts' LoRA stack, leaves ``[n, ...]``): every leaf of a position
pytree has a leading particle axis, and each particle draws four scalars per step that are
broadcast over all of its leaves.

Update rule (paper Algorithm 1, authors' code), per particle i with r ~ U(0, 1)::

    c = (r_v phi_v, r_p phi_p, r_g phi_g, r_w phi_w) / sum(...)       # sums to 1
    v_i <- c_v v_i + c_p (p_i - x_i) + c_g (g - x_i) + c_w (x_i - g_worst)
    x_i <- x_i + lambda v_i

``p_i``, ``g`` and ``g_worst`` are all-time: a personal/global best is replaced only by a strictly
higher utility, the global worst only by a strictly lower one. A NaN or +-inf utility counts as
the worst possible (-inf): it can become the global worst but never a best.

Use: ``state = init(x, key, cfg)``; then repeatedly evaluate ``state.x``, ``state = tell(state,
utils)``, ``state = step(state, key, cfg)`` (or ``update`` = tell + step in one jitted call: one
dispatch instead of two; on XLA CPU each tensor still takes four passes, see bench/RESULTS.md).
All three are jitted with the state
donated, so the caller's previous state is invalid after the call and a stack of weights is
updated in place; a config is a static argument, so each (config, tree shape) compiles once.

Sharding: ``shard_state`` lays the particle axis of every particle-axis leaf along a mesh axis
(``'expert'`` by default) and replicates the single-particle leaves; ``tell``/``step`` run under
plain ``jax.jit`` on those shardings (XLA partitions the elementwise update per shard; the argmax
and the gather of the new global best cross shards). The random scalars are drawn as one
``[N, 4]`` array from the key, so they (and the results, bitwise) do not depend on the sharding.

A swarm whose N does not divide the axis (10 experts on 4 or 8 devices) is padded by
``shard_state`` with inert particles up to the next multiple: zeros that are never moved (their
random factors are zero, which leaves a zero velocity), never a personal, global best or worst
(masked in ``tell``), and never seen by a caller (``positions`` is the N real ones; the
utilities passed to ``tell``/``update`` are the N real ones). The real particles' values are
bitwise those of the unpadded swarm.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PSOConfig:
    """Hyperparameters of one swarm (hashable: a static jit argument).

    phi_*: weights of inertia, personal best, global best and global-worst repulsion (defaults of
    the authors' code). step: lambda at the start; step_decay: lambda multiplier per ``step``
    call (1.0 = constant, as in Heterogeneous Swarms; Model Swarms uses 0.95 with floor 0.1);
    step_floor: lower bound of lambda, applied only when step_decay < 1.
    init_velocity: 'zero', or 'random' = (another uniformly drawn particle) - (self).
    restart_patience: None disables restarts; otherwise a stalled particle (see restart_rule)
    whose cooldown counter is 0 is reset to its personal best with zero velocity before the
    update (authors' convention: a fraction of the search ``patience``; with patience=1 it is a
    plain iteration count). A particle's ``stall`` counts the tells since its personal best last
    strictly improved (the first tell counts: a finite utility improves on -inf).
    restart_rule: which stall threshold and cooldown:

    - ``'hs_jax'``: restart when ``stall >= ceil(restart_patience * patience)``; a restart sets
      the counter to ``cooldown``;
    - ``'authors'`` (the authors' released code): restart when ``stall + 1 >= restart_patience
      * patience`` (i.e. ``stall >= ceil(restart_patience * patience) - 1``, one tell earlier);
      a restart sets the counter to ``int(restart_patience * patience)``, so ``cooldown`` must
      stay 0 (it would be ignored). The authors' weight-swarm restart reads the wrong
      particle's counter, a bug that is not reproduced: here every particle of either swarm
      reads its own stall and cooldown.

    In both rules a step that does not restart a particle decrements its counter (floored at
    0), so after a restart with counter K the particle cannot restart in the next K steps.
    cooldown: the 'hs_jax' rule's counter after a restart.
    """

    phi_v: float = 0.4
    phi_p: float = 0.3
    phi_g: float = 0.3
    phi_w: float = 0.3
    step: float = 1.0
    step_decay: float = 1.0
    step_floor: float = 0.1
    init_velocity: Literal["zero", "random"] = "zero"
    restart_patience: float | None = None
    patience: int = 1
    cooldown: int = 0
    restart_rule: Literal["hs_jax", "authors"] = "hs_jax"

    def __post_init__(self):
        phis = (self.phi_v, self.phi_p, self.phi_g, self.phi_w)
        if any(p < 0 for p in phis) or sum(phis) <= 0:
            raise ValueError(f"phi_* must be >= 0 with a positive sum, got {phis}")
        if self.init_velocity not in ("zero", "random"):
            raise ValueError(
                f"init_velocity must be 'zero' or 'random', got {self.init_velocity!r}"
            )
        if not 0 < self.step_decay <= 1:
            raise ValueError(f"step_decay must be in (0, 1], got {self.step_decay}")
        if self.restart_patience is not None and self.restart_patience <= 0:
            raise ValueError(f"restart_patience must be > 0 or None, got {self.restart_patience}")
        if self.patience < 1 or self.cooldown < 0:
            raise ValueError("patience must be >= 1 and cooldown >= 0")
        if self.restart_rule not in ("hs_jax", "authors"):
            raise ValueError(
                f"restart_rule must be 'hs_jax' or 'authors', got {self.restart_rule!r}"
            )
        if self.restart_rule == "authors" and self.cooldown != 0:
            raise ValueError(
                "restart_rule='authors' sets the cooldown to int(restart_patience * patience); "
                f"leave cooldown at 0 (got {self.cooldown})"
            )

    @property
    def restart_after(self) -> int | None:
        """Stall length (in tells) that triggers a restart, or None when restarts are off."""
        if self.restart_patience is None:
            return None
        if self.restart_rule == "authors":
            # stall + 1 >= r * patience  <=>  stall >= ceil(r * patience) - 1 for integer stall
            # (exact: the integer stall + 1 is represented exactly); r * patience > 0, so >= 0.
            return math.ceil(self.restart_patience * self.patience) - 1
        return max(1, math.ceil(self.restart_patience * self.patience))

    @property
    def restart_cooldown(self) -> int:
        """The cooldown counter a restart sets (steps during which the particle cannot restart)."""
        if self.restart_rule == "authors" and self.restart_patience is not None:
            return int(self.restart_patience * self.patience)
        return self.cooldown


@struct.dataclass
class PSOState:
    """A swarm of N particles. Particle-axis leaves: x, v, p ([N, ...] pytrees), p_util, stall,
    cooldown ([N]). Single-particle leaves: g, gw (pytrees like one particle), g_util, gw_util,
    step (current lambda), iteration (number of ``step`` calls)."""

    x: PyTree  # positions, leaves [N, ...]
    v: PyTree  # velocities, leaves [N, ...]
    p: PyTree  # personal bests, leaves [N, ...]
    p_util: jax.Array  # [N] float32, -inf until a finite utility is told
    g: PyTree  # all-time global best, leaves [...]
    g_util: jax.Array  # [] float32
    gw: PyTree  # all-time global worst, leaves [...]
    gw_util: jax.Array  # [] float32, +inf until the first tell
    stall: jax.Array  # [N] int32, tells since the personal best last improved
    cooldown: jax.Array  # [N] int32, steps left before a restarted particle may restart again
    step: jax.Array  # [] float32, current lambda
    iteration: jax.Array  # [] int32
    # The real particles when the particle axis is padded (``shard_state``); None: all are.
    n_real: int | None = struct.field(pytree_node=False, default=None)

    @property
    def num_particles(self) -> int:
        """The real particles (the padding of a sharded swarm aside)."""
        return int(self.p_util.shape[0]) if self.n_real is None else self.n_real

    @functools.cached_property
    def positions(self) -> PyTree:
        """The real particles' positions (``x`` without the padding of ``shard_state``); the same
        object on every access (callers such as the scorer tell weights apart by identity)."""
        if self.n_real is None or self.n_real == self.p_util.shape[0]:
            return self.x
        return jax.tree.map(lambda a: a[: self.n_real], self.x)


# Fields whose leaves carry the particle axis (sharded along the mesh axis).
_PARTICLE_FIELDS = ("x", "v", "p", "p_util", "stall", "cooldown")


def _check_positions(x: PyTree) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("positions pytree has no leaves")
    n = None
    for path, leaf in jax.tree_util.tree_leaves_with_path(x):
        name = jax.tree_util.keystr(path)
        if leaf.ndim < 1:
            raise ValueError(f"leaf {name} has no leading particle axis (shape {leaf.shape})")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"leaf {name} must be floating point, got {leaf.dtype}")
        if n is None:
            n = leaf.shape[0]
        elif leaf.shape[0] != n:
            raise ValueError(f"leaf {name} has {leaf.shape[0]} particles, others have {n}")
    return n


@functools.partial(jax.jit, static_argnames=("cfg",))
def _init(x: PyTree, key: jax.Array, cfg: PSOConfig) -> PSOState:
    n = jax.tree.leaves(x)[0].shape[0]
    # jnp.copy everywhere: every state leaf must own its buffer, because later calls donate the
    # whole state (the caller's x and aliased fields would otherwise be donated twice).
    xc = jax.tree.map(jnp.copy, x)
    if cfg.init_velocity == "random" and n > 1:
        # other[i] != i, uniform over the remaining particles.
        other = (jnp.arange(n) + jax.random.randint(key, (n,), 1, n)) % n
        v = jax.tree.map(lambda a: a[other] - a, x)
    else:
        v = jax.tree.map(jnp.zeros_like, x)
    return PSOState(
        x=xc,
        v=v,
        p=jax.tree.map(jnp.copy, x),
        p_util=jnp.full((n,), -jnp.inf, jnp.float32),
        g=jax.tree.map(lambda a: jnp.copy(a[0]), x),
        g_util=jnp.array(-jnp.inf, jnp.float32),
        gw=jax.tree.map(lambda a: jnp.copy(a[0]), x),
        gw_util=jnp.array(jnp.inf, jnp.float32),
        stall=jnp.zeros((n,), jnp.int32),
        cooldown=jnp.zeros((n,), jnp.int32),
        step=jnp.array(cfg.step, jnp.float32),
        iteration=jnp.array(0, jnp.int32),
    )


def init(x: PyTree, key: jax.Array, cfg: PSOConfig) -> PSOState:
    """A swarm at positions ``x`` (leaves ``[N, ...]``, floating point); no utilities known yet.

    Bests start at -inf (p = x, g = x[0] as placeholders until the first ``tell``), the worst at
    +inf. ``key`` is only used for ``init_velocity='random'``. ``x`` is copied, not donated.
    """
    _check_positions(x)
    return _init(x, key, cfg)


def _bcast(s: jax.Array, leaf: jax.Array) -> jax.Array:
    """Per-particle values [N] shaped to broadcast against a leaf [N, ...]."""
    return s.reshape(s.shape + (1,) * (leaf.ndim - 1))


def _real(state: PSOState) -> jax.Array | None:
    """[N] True for the real particles of a padded swarm (None: no padding)."""
    n = state.p_util.shape[0]
    if state.n_real is None or state.n_real == n:
        return None
    return jnp.arange(n) < state.n_real


def _tell(state: PSOState, utils: jax.Array) -> PSOState:
    real = _real(state)
    if real is not None:  # utilities of the real particles; the padding is never told one
        utils = jnp.pad(utils, (0, state.p_util.shape[0] - utils.shape[0]))
    # Non-finite utilities are the worst possible value: never a best, possibly the worst.
    u = jnp.where(jnp.isfinite(utils), utils.astype(jnp.float32), -jnp.inf)  # [N]
    improved = u > state.p_util  # [N]
    u_best, u_worst = u, u
    if real is not None:
        improved = improved & real
        u_best, u_worst = jnp.where(real, u, -jnp.inf), jnp.where(real, u, jnp.inf)
    p = jax.tree.map(lambda pl, xl: jnp.where(_bcast(improved, xl), xl, pl), state.p, state.x)
    p_util = jnp.where(improved, u, state.p_util)
    stall = jnp.where(improved, 0, state.stall + 1)

    i_best = jnp.argmax(u_best)
    new_g = u[i_best] > state.g_util
    g = jax.tree.map(lambda gl, xl: jnp.where(new_g, xl[i_best], gl), state.g, state.x)
    i_worst = jnp.argmin(u_worst)
    new_w = u[i_worst] < state.gw_util
    gw = jax.tree.map(lambda wl, xl: jnp.where(new_w, xl[i_worst], wl), state.gw, state.x)
    return state.replace(
        p=p,
        p_util=p_util,
        stall=stall,
        g=g,
        g_util=jnp.where(new_g, u[i_best], state.g_util),
        gw=gw,
        gw_util=jnp.where(new_w, u[i_worst], state.gw_util),
    )


def draw_r(key: jax.Array, n: int) -> jax.Array:
    """The step's random factors: [n, 4] = (r_v, r_p, r_g, r_w) per particle, U(0, 1).

    One array drawn from ``key`` (never per shard), so the draw is independent of the sharding.
    """
    return jax.random.uniform(key, (n, 4), jnp.float32)


def coefficients(r: jax.Array, cfg: PSOConfig) -> jax.Array:
    """[N, 4] -> (c_v, c_p, c_g, c_w) per particle, normalised to sum to 1."""
    c = r * jnp.array([cfg.phi_v, cfg.phi_p, cfg.phi_g, cfg.phi_w], jnp.float32)
    total = jnp.sum(c, axis=1, keepdims=True)
    # r == 0 for all four has probability ~0; fall back to pure inertia instead of 0/0.
    safe = total > 0
    return jnp.where(safe, c / jnp.where(safe, total, 1.0), jnp.array([1.0, 0.0, 0.0, 0.0]))


def _step(state: PSOState, key: jax.Array, cfg: PSOConfig) -> tuple[PSOState, jax.Array]:
    n = state.p_util.shape[0]
    r = draw_r(key, state.num_particles)  # the real particles' draw, as without padding
    # The padding's factors are zero: coefficients (1, 0, 0, 0) keep its zero velocity.
    c = coefficients(jnp.pad(r, ((0, n - r.shape[0]), (0, 0))), cfg)  # [N, 4]

    after = cfg.restart_after
    if after is None:
        restart = jnp.zeros((n,), bool)
        cooldown = state.cooldown
    else:
        restart = (state.stall >= after) & (state.cooldown == 0)  # [N]
        cooldown = jnp.where(restart, cfg.restart_cooldown, jnp.maximum(state.cooldown - 1, 0))

    lam = state.step

    def move(x, v, p, g, gw):
        dt = jnp.promote_types(x.dtype, jnp.float32)
        rs = _bcast(restart, x)
        xf = jnp.where(rs, p, x).astype(dt)
        vf = jnp.where(rs, 0, v).astype(dt)
        pf, gf, wf = p.astype(dt), g.astype(dt)[None], gw.astype(dt)[None]
        cv, cp, cg, cw = (_bcast(c[:, k].astype(dt), x) for k in range(4))
        v_new = cv * vf + cp * (pf - xf) + cg * (gf - xf) + cw * (xf - wf)
        x_new = xf + lam.astype(dt) * v_new
        return x_new.astype(x.dtype), v_new.astype(v.dtype)

    moved = jax.tree.map(move, state.x, state.v, state.p, state.g, state.gw)
    treedef = jax.tree.structure(state.x)
    x_new = jax.tree.unflatten(treedef, [xv[0] for xv in treedef.flatten_up_to(moved)])
    v_new = jax.tree.unflatten(treedef, [xv[1] for xv in treedef.flatten_up_to(moved)])

    # One [N] flag per particle (any NaN/inf entry in any leaf), reduced on the device so the
    # host check costs a transfer of N booleans, not a scan of the weights in Python. max|x| < inf
    # is False exactly for NaN (max propagates it) or inf; on XLA CPU this reduction was cheaper
    # than all(isfinite(x)), which materialised a boolean copy of every leaf.
    bad = jnp.zeros((n,), bool)
    for leaf in jax.tree.leaves(x_new):
        peak = jnp.max(jnp.abs(leaf.reshape(n, -1)).astype(jnp.float32), axis=1, initial=0.0)
        bad = bad | ~(peak < jnp.inf)

    if cfg.step_decay < 1.0:
        new_lam = jnp.maximum(lam * cfg.step_decay, jnp.float32(cfg.step_floor))
    else:
        new_lam = lam
    new = state.replace(
        x=x_new,
        v=v_new,
        cooldown=cooldown,
        step=new_lam,
        iteration=state.iteration + 1,
    )
    return new, bad


def _update(state, utils, key, cfg):
    return _step(_tell(state, utils), key, cfg)


_tell_jit = jax.jit(_tell, donate_argnums=0)
_step_jit = jax.jit(_step, static_argnames=("cfg",), donate_argnums=0)
_update_jit = jax.jit(_update, static_argnames=("cfg",), donate_argnums=0)


def _check_utils(state: PSOState, utils) -> jax.Array:
    utils = jnp.asarray(utils, jnp.float32)
    if utils.shape != (state.num_particles,):
        raise ValueError(f"utils must have shape {(state.num_particles,)}, got {utils.shape}")
    return utils


def _raise_if_bad(bad: jax.Array) -> None:
    bad = np.asarray(bad)  # the padding never moves, so never flags
    if bad.any():
        ids = np.flatnonzero(bad).tolist()
        raise FloatingPointError(
            f"PSO step produced NaN/inf positions for particle(s) {ids}; check the utilities, "
            "the positions and phi/step (the state passed in was donated and is invalid)"
        )


def tell(state: PSOState, utils) -> PSOState:
    """Record the utilities ``utils [N]`` of ``state.x``: personal bests, all-time global best and
    worst, stall counters. The first tell sets all bests. ``state`` is donated."""
    return _tell_jit(state, _check_utils(state, utils))


def step(state: PSOState, key: jax.Array, cfg: PSOConfig) -> PSOState:
    """Restart stalled particles, move every particle once, decay lambda. ``state`` is donated.

    Raises FloatingPointError naming the particles whose new position has a NaN/inf entry (one
    jitted per-particle flag, checked on the host; this synchronises with the device).
    """
    new, bad = _step_jit(state, key, cfg)
    _raise_if_bad(bad)
    return new


def update(state: PSOState, utils, key: jax.Array, cfg: PSOConfig) -> PSOState:
    """``step(tell(state, utils), key, cfg)`` as one jitted call (bitwise the same result)."""
    new, bad = _update_jit(state, _check_utils(state, utils), key, cfg)
    _raise_if_bad(bad)
    return new


def best(state: PSOState) -> tuple[PyTree, float]:
    """The all-time global best position (single-particle pytree) and its utility."""
    return state.g, float(state.g_util)


def shard_state(state: PSOState, mesh: Mesh, axis: str = "expert") -> PSOState:
    """Place the particle axis of x, v, p, p_util, stall, cooldown along mesh axis ``axis``
    (NamedSharding P(axis)) and replicate g, gw and the scalars. An N that does not divide by
    the axis size is padded with inert particles (module docstring; ``n_real`` = N). Later
    tell/step calls keep these shardings.

    The shardings are built on an Auto-axis copy of ``mesh`` (same devices and names): with
    Explicit axes (``jax.make_mesh``'s default) sharding-in-types rejects indexing one particle
    out of the sharded axis, which ``tell`` needs for the global best/worst, while Auto lets XLA
    insert the cross-shard transfer of that one row.
    """
    mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    n, held = state.num_particles, int(state.p_util.shape[0])
    size = mesh.shape[axis]
    pad = -(-n // size) * size - held  # 0 for a swarm padded already
    split = NamedSharding(mesh, P(axis))
    repl = NamedSharding(mesh, P())
    fields = {}
    for f in dataclasses.fields(state):
        if f.name == "n_real":
            continue
        value = getattr(state, f.name)
        if f.name in _PARTICLE_FIELDS:
            fill = -jnp.inf if f.name == "p_util" else 0  # never a personal best
            value = jax.tree.map(lambda a, c=fill: _padded(a, pad, c), value)
        sharding = split if f.name in _PARTICLE_FIELDS else repl
        fields[f.name] = jax.tree.map(lambda a, s=sharding: jax.device_put(a, s), value)
    return PSOState(**fields, n_real=n if pad else None)


def _padded(a: jax.Array, pad: int, fill) -> jax.Array:
    """``a`` with ``pad`` more entries of ``fill`` along its leading axis (on the host side of
    the placement: the padded array is what goes to the devices)."""
    if not pad:
        return a
    a = np.asarray(jax.device_get(a))
    return np.concatenate([a, np.full((pad, *a.shape[1:]), fill, a.dtype)])
