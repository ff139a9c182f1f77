"""The Heterogeneous Swarms search loop (paper Algorithm 4), against an injected utility.

Two swarms are optimised in alternation, both with :mod:`hs_jax.pso`:

- the **role swarm**: N continuous adjacency matrices ``[N, n, n]``, initialised U(0, 1) with a
  zero diagonal. Role-step: G-decode each matrix into a DAG, score each DAG with the identity
  assignment (expert i at node i), PSO update on the scores (minus the optional L1 term);
- the **weight swarm**: the n experts themselves (any pytree whose leaves have a leading
  expert axis ``[n, ...]``, e.g. a LoraStack). Weight-step: draw M assignments of experts to
  the nodes of this iteration's best DAG, score them, turn the scores into one JFK-score per
  expert, PSO update of the experts on those scores.

The loop only sees systems through ``score_systems(systems, expert_weights) -> utilities``
where ``systems`` is a list of ``(Dag, assignment)`` (``assignment[k]`` = the expert at node k)
and ``expert_weights`` the current expert pytree; the multi-LLM executor plugs real task
accuracy in, tests plug synthetic functions in.

Definitions the paper leaves open (fixed here, so runs are comparable and resumable):

- **Which weights are scored.** Every system of an iteration (role-step and weight-step) is
  scored with the weight swarm's *current positions* ``x`` at the start of that iteration; the
  weight-step PSO move happens after all scoring of the iteration.
- **Best system.** The all-time best is the system (DAG, assignment, expert weights = those
  current positions, copied) with the highest *raw* utility among all systems scored so far
  (role- and weight-step alike; the L1 term is not part of it). NaN/inf utilities never count.
- **Utility improved / patience.** An iteration improves when its best raw utility is strictly
  higher than the all-time best before it. ``stall`` counts consecutive scored iterations
  without improvement (an iteration whose both steps were dropped scores nothing and leaves
  ``stall`` unchanged); the search stops when ``stall >= patience`` or after
  ``max_iterations`` iterations.
- **This iteration's best graph** (the one the weight-step fills) is the role-step DAG with
  the highest role-step objective (utility - L1 term). If the role-step did not run this
  iteration (dropout) the most recent one is reused. Without a role-step (``role_step=False``)
  it is ``fixed_dag`` if given, else the best of the N DAGs decoded from the initial swarm,
  scored once in the first iteration (the role swarm then never moves). The first iteration's
  role-step is never dropped, because the weight-step needs a graph.
- **Sparsity.** ``prune_tau`` thresholds each matrix before decoding (the swarm's positions
  stay unpruned); ``l1_lambda`` subtracts ``lambda * |A|_1`` of the (unpruned) positions from
  the role swarm's objective.
- **JFK of never-drawn experts**: they keep their previous JFK-score (see :mod:`hs_jax.jfk`).

Randomness: one ``seed`` gives a jax key (split once per iteration into a role and a weight
key for the PSO moves) and a numpy ``Generator`` (PCG64) that draws, in this order each
iteration, the two dropout uniforms, the G-decode choices and the JFK assignments. Both are
checkpointed, so a resumed run continues the same streams.

Checkpoints (``workdir``): see :mod:`hs_jax.checkpointing`; a run with a workdir resumes from
the latest readable step and ends bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from hs_jax import checkpointing, graph, jfk, pso
from hs_jax.graph import Dag

PyTree = Any
System = tuple[Dag, tuple[int, ...]]
ScoreSystems = Callable[[list[System], PyTree], Any]
TestScorer = Callable[[Dag, tuple[int, ...], PyTree], float]

# Config fields that do not change the search's results; a workdir may be resumed with other
# values for them.
_RESUME_FREE_FIELDS = ("checkpoint_every", "max_to_keep")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of one search (paper defaults where it gives them).

    n_graphs: N, particles of the role swarm. n_assignments: M, JFK assignments per weight-step.
    max_iterations / patience: stopping rule (see module docstring). top_p: G-decode top-p.
    roles_pso / weights_pso: PSO hyperparameters of the two swarms.
    role_step / weight_step: False gives the paper's "w/o role" / "w/o weight" ablations.
    dropout_role / dropout_weight: d_r / d_w, probability of skipping that step in an iteration.
    prune_tau: threshold pruning of A before decoding (None = off); l1_lambda: L1 weight.
    adjacency_scale: the role swarm starts U(0, adjacency_scale) (paper: 1). G-decode's softmax
    over entries in [0, 1] is nearly uniform, so a larger scale makes the order and parent
    choices follow the matrices more closely; not the end node, whose softmax over 1/out-degree
    gets flatter as the scale grows (near uniform for U(0, s) rows at any s). With top_p=0 the
    scale changes nothing (argmax decoding and the PSO moves are invariant to a common positive
    scale, up to rounding).
    seed: drives everything. checkpoint_every / max_to_keep: checkpoint cadence (results do not
    depend on them).
    """

    n_graphs: int = 10
    n_assignments: int = 10
    max_iterations: int = 20
    patience: int = 6
    top_p: float = 0.8
    roles_pso: pso.PSOConfig = pso.PSOConfig()
    weights_pso: pso.PSOConfig = pso.PSOConfig()
    role_step: bool = True
    weight_step: bool = True
    dropout_role: float = 0.0
    dropout_weight: float = 0.0
    prune_tau: float | None = None
    l1_lambda: float = 0.0
    adjacency_scale: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1
    max_to_keep: int = 3

    def __post_init__(self):
        if self.n_graphs < 1 or self.n_assignments < 1:
            raise ValueError("n_graphs and n_assignments must be >= 1")
        if self.max_iterations < 1 or self.patience < 1:
            raise ValueError("max_iterations and patience must be >= 1")
        for name in ("dropout_role", "dropout_weight"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not (self.role_step or self.weight_step):
            raise ValueError("at least one of role_step / weight_step must be on")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested PSO configs as dicts)."""
        return checkpointing.jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchConfig:
        """From a (nested) mapping or an ``ml_collections.ConfigDict`` (missing keys: defaults;
        unknown keys: error)."""
        if hasattr(d, "to_dict"):
            d = d.to_dict()
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown SearchConfig fields: {sorted(unknown)}")
        for name in ("roles_pso", "weights_pso"):
            if isinstance(d.get(name), Mapping) or hasattr(d.get(name), "to_dict"):
                sub = d[name].to_dict() if hasattr(d[name], "to_dict") else dict(d[name])
                d[name] = pso.PSOConfig(**sub)
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class BestSystem:
    """The all-time best system: graph, assignment (expert per node), expert weights (pytree,
    the weight swarm's positions when it was scored), its utility and the iteration found."""

    dag: Dag
    assignment: tuple[int, ...]
    weights: PyTree
    utility: float
    iteration: int


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """Outcome of :func:`run_search`.

    history: one JSON-able dict per iteration (see ``_iteration_record``). iterations: number
    run. stop_reason: 'patience' or 'max_iterations'. test_utility: ``test_scorer`` on the best
    system (None without one). roles / weights: final PSO states. resumed_from: checkpoint step
    the call resumed from (None for a fresh run).
    """

    best: BestSystem | None
    history: list[dict[str, Any]]
    iterations: int
    stop_reason: str
    test_utility: float | None
    roles: pso.PSOState
    weights: pso.PSOState
    resumed_from: int | None = None


# ----------------------------------------------------------------------------- helpers


def _n_experts(experts: PyTree) -> int:
    leaves = jax.tree.leaves(experts)
    if not leaves:
        raise ValueError("experts pytree has no leaves")
    n = {int(np.shape(leaf)[0]) for leaf in leaves}
    if len(n) != 1:
        raise ValueError(f"expert leaves disagree on the leading (expert) axis: {sorted(n)}")
    return n.pop()


def init_adjacency(key: jax.Array, n_graphs: int, n: int, scale: float = 1.0) -> jax.Array:
    """N matrices U(0, scale) with a zero diagonal (paper: scale 1).  # [N, n, n] float32"""
    a = scale * jax.random.uniform(key, (n_graphs, n, n), jnp.float32)
    return a * (1.0 - jnp.eye(n, dtype=jnp.float32))


def _utilities(raw: Any, count: int) -> np.ndarray:
    u = np.asarray(raw, dtype=np.float64).reshape(-1)
    if u.shape != (count,):
        raise ValueError(f"score_systems returned {u.shape[0]} utilities for {count} systems")
    return u


def _stats(u: np.ndarray) -> dict[str, float]:
    finite = u[np.isfinite(u)]
    if finite.size == 0:
        return {"best": float("nan"), "mean": float("nan"), "worst": float("nan")}
    return {"best": float(finite.max()), "mean": float(finite.mean()), "worst": float(finite.min())}


def _argmax_finite(u: np.ndarray) -> int | None:
    finite = np.isfinite(u)
    if not finite.any():
        return None
    return int(np.argmax(np.where(finite, u, -np.inf)))


def _copy_tree(tree: PyTree) -> PyTree:
    # A fresh buffer: the swarm's positions are donated to the next PSO update.
    return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class _Loop:
    """Mutable search state between iterations (everything a checkpoint holds)."""

    roles: pso.PSOState
    weights: pso.PSOState
    key: jax.Array
    rng: np.random.Generator
    iteration: int = 0  # iterations completed
    stall: int = 0
    history: list = dataclasses.field(default_factory=list)
    best: BestSystem | None = None
    graph: Dag | None = None  # most recent role-step best graph (or the fixed one)
    prev_jfk: list | None = None
    stop_reason: str | None = None
    test_utility: float | None = None

    def state_tree(self) -> dict[str, Any]:
        return {
            "roles": self.roles,
            "weights": self.weights,
            # Placeholder of the right structure and sharding until a best exists.
            "best_weights": self.best.weights if self.best is not None else self.weights.x,
            "key": jax.random.key_data(self.key),
        }

    def meta(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        best = None
        if self.best is not None:
            best = {
                "dag": self.best.dag.to_dict(),
                "assignment": list(self.best.assignment),
                "utility": self.best.utility,
                "iteration": self.best.iteration,
            }
        return {
            "identity": identity,
            "iteration": self.iteration,
            "stall": self.stall,
            "rng_state": self.rng.bit_generator.state,
            "history": self.history,
            "best": best,
            "graph": self.graph.to_dict() if self.graph is not None else None,
            "prev_jfk": self.prev_jfk,
            "stop_reason": self.stop_reason,
            "test_utility": self.test_utility,
        }

    def load(self, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        self.roles = state["roles"]
        self.weights = state["weights"]
        self.key = jax.random.wrap_key_data(state["key"])
        self.rng.bit_generator.state = meta["rng_state"]
        self.iteration = int(meta["iteration"])
        self.stall = int(meta["stall"])
        self.history = list(meta["history"])
        b = meta["best"]
        self.best = None
        if b is not None:
            self.best = BestSystem(
                dag=Dag.from_dict(b["dag"]),
                assignment=tuple(int(i) for i in b["assignment"]),
                weights=state["best_weights"],
                utility=float(b["utility"]),
                iteration=int(b["iteration"]),
            )
        self.graph = Dag.from_dict(meta["graph"]) if meta["graph"] is not None else None
        self.prev_jfk = meta["prev_jfk"]
        self.stop_reason = meta["stop_reason"]
        self.test_utility = meta["test_utility"]


# ----------------------------------------------------------------------------- steps


def _role_step(
    loop: _Loop,
    cfg: SearchConfig,
    score_systems: ScoreSystems,
    key: jax.Array,
    *,
    move: bool,
) -> tuple[dict[str, Any], list[tuple[float, System]]]:
    """Decode, score (identity assignment), optionally PSO-move the role swarm."""
    adjacency = np.asarray(loop.roles.x, dtype=np.float64)  # [N, n, n]
    n = adjacency.shape[-1]
    penalty = np.asarray(graph.l1_penalty(adjacency, cfg.l1_lambda), np.float64)  # [N]
    decoded = adjacency if cfg.prune_tau is None else graph.prune(adjacency, cfg.prune_tau)
    dags = [graph.g_decode(a, loop.rng, top_p=cfg.top_p) for a in decoded]
    identity = tuple(range(n))
    systems = [(d, identity) for d in dags]
    u = _utilities(score_systems(systems, loop.weights.x), len(systems))  # [N]
    objective = u - penalty  # [N]
    i_best = _argmax_finite(objective)
    if i_best is not None:
        loop.graph = dags[i_best]
    elif loop.graph is None:
        loop.graph = dags[0]  # nothing finite yet: any graph lets the weight-step proceed
    if move:
        loop.roles = pso.update(loop.roles, objective, key, cfg.roles_pso)
    record = {
        "ran": True,
        "moved": move,
        "utilities": u.tolist(),
        "objective": objective.tolist(),
        "dags": [d.to_dict() for d in dags],
        "best_index": i_best,
        **_stats(u),
    }
    return record, list(zip(u.tolist(), systems, strict=True))


def _weight_step_score(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems, n_experts: int
) -> tuple[dict[str, Any], list[tuple[float, System]], np.ndarray]:
    """JFK: M assignments on this iteration's best graph, scored; returns JFK-scores too."""
    dag = loop.graph
    assignments = jfk.sample_assignments(dag.n, n_experts, cfg.n_assignments, loop.rng)
    systems = [(dag, tuple(int(e) for e in a)) for a in assignments]
    u = _utilities(score_systems(systems, loop.weights.x), len(systems))  # [M]
    previous = None if loop.prev_jfk is None else np.asarray(loop.prev_jfk, np.float64)
    scores = jfk.jfk_scores(assignments, u, n_experts, previous)  # [n]
    record = {
        "ran": True,
        "dag": dag.to_dict(),
        "assignments": assignments.tolist(),
        "utilities": u.tolist(),
        "jfk": scores.tolist(),
        **_stats(u),
    }
    return record, list(zip(u.tolist(), systems, strict=True)), scores


def _skipped(reason: str) -> dict[str, Any]:
    return {"ran": False, "reason": reason}


def _iteration(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems, n_experts: int, fixed: bool
) -> dict[str, Any]:
    """One iteration of Algorithm 4; mutates ``loop`` and returns the history record."""
    t = loop.iteration
    loop.key, k_role, k_weight = jax.random.split(loop.key, 3)
    drop_r, drop_w = loop.rng.random(2)  # always drawn: the stream does not depend on flags
    candidates: list[tuple[float, System]] = []

    # Role-step.
    if cfg.role_step and (loop.graph is None or drop_r >= cfg.dropout_role):
        role, cands = _role_step(loop, cfg, score_systems, k_role, move=True)
        candidates += cands
    elif not cfg.role_step and loop.graph is None and not fixed:
        role, cands = _role_step(loop, cfg, score_systems, k_role, move=False)
        candidates += cands
    else:
        role = _skipped("off" if not cfg.role_step else "dropout")

    # Weight-step: score now, move after the best system has been copied.
    jfk_scores = None
    if cfg.weight_step and drop_w >= cfg.dropout_weight:
        weight, cands, jfk_scores = _weight_step_score(loop, cfg, score_systems, n_experts)
        candidates += cands
    else:
        weight = _skipped("off" if not cfg.weight_step else "dropout")

    improved = False
    if candidates:
        utils = np.array([c[0] for c in candidates], np.float64)
        i = _argmax_finite(utils)
        if i is not None and (loop.best is None or utils[i] > loop.best.utility):
            dag, assignment = candidates[i][1]
            loop.best = BestSystem(dag, assignment, _copy_tree(loop.weights.x), float(utils[i]), t)
            improved = True
        loop.stall = 0 if improved else loop.stall + 1

    if jfk_scores is not None:
        loop.prev_jfk = jfk_scores.tolist()
        loop.weights = pso.update(loop.weights, jfk_scores, k_weight, cfg.weights_pso)

    loop.iteration = t + 1
    record = {
        "iteration": t,
        "role": role,
        "weight": weight,
        "improved": improved,
        "best_utility": loop.best.utility if loop.best is not None else None,
        "stall": loop.stall,
    }
    return checkpointing.jsonable(record)


# ----------------------------------------------------------------------------- driver


def _identity(cfg: SearchConfig, experts: PyTree, fixed_dag: Dag | None) -> dict[str, Any]:
    config = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE_FIELDS}
    return {
        "config": config,
        "experts": checkpointing.fingerprint(experts),
        "fixed_dag": fixed_dag.to_dict() if fixed_dag is not None else None,
    }


def _fresh(experts: PyTree, cfg: SearchConfig, n: int, fixed_dag: Dag | None, mesh) -> _Loop:
    key = jax.random.key(cfg.seed)
    key, k_adj, k_roles, k_weights = jax.random.split(key, 4)
    adjacency = init_adjacency(k_adj, cfg.n_graphs, n, cfg.adjacency_scale)
    roles = pso.init(adjacency, k_roles, cfg.roles_pso)
    weights = pso.init(experts, k_weights, cfg.weights_pso)
    if mesh is not None:
        weights = pso.shard_state(weights, mesh, "expert")
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    return _Loop(roles=roles, weights=weights, key=key, rng=rng, graph=fixed_dag)


def _log(loop: _Loop, record: Mapping[str, Any], seconds: float) -> None:
    def part(name: str) -> str:
        r = record[name]
        if not r["ran"]:
            return f"{name} -"
        return f"{name} best {r['best']:.4g} mean {r['mean']:.4g}"

    best = record["best_utility"]
    logging.info(
        "iteration %d: %s | %s | all-time best %s%s | stall %d | %.1fs",
        record["iteration"],
        part("role"),
        part("weight"),
        "-" if best is None else f"{best:.4g}",
        " (improved)" if record["improved"] else "",
        record["stall"],
        seconds,
    )


def run_search(
    experts: PyTree,
    score_systems: ScoreSystems,
    cfg: SearchConfig,
    *,
    workdir: str | None = None,
    test_scorer: TestScorer | None = None,
    fixed_dag: Dag | None = None,
    mesh=None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    progress: bool = True,
) -> SearchResult:
    """Run Heterogeneous Swarms (module docstring) and return the all-time best system.

    Args:
      experts: pytree with leading expert axis n on every (floating) leaf; n = graph nodes.
      score_systems: ``(list of (Dag, assignment), expert_weights) -> [len(list)]`` utilities
        (higher is better; NaN/inf = failed system, never best).
      cfg: the search's hyperparameters.
      workdir: checkpoint directory; resumes from its latest readable step (a workdir written
        with a different config, experts or fixed_dag is refused). A finished run is returned
        without scoring anything.
      test_scorer: ``(dag, assignment, expert_weights) -> float``, called once on the final
        best system (e.g. test-split accuracy); stored in the result and the last checkpoint.
      fixed_dag: the graph of a run without role-step (``cfg.role_step`` must be False).
      mesh: optional mesh with an ``'expert'`` axis to shard the weight swarm along.
      callbacks: each called with an iteration's history record after its checkpoint is saved.
      progress: show a tqdm bar over iterations.
    """
    n = _n_experts(experts)
    if fixed_dag is not None:
        if cfg.role_step:
            raise ValueError("fixed_dag is only used without role-step (cfg.role_step=False)")
        if fixed_dag.n != n:
            raise ValueError(f"fixed_dag has {fixed_dag.n} nodes for {n} experts")
    loop = _fresh(experts, cfg, n, fixed_dag, mesh)
    fixed = fixed_dag is not None

    ckpt = identity = None
    resumed_from = None
    if workdir is not None:
        identity = _identity(cfg, experts, fixed_dag)
        ckpt = checkpointing.Checkpointer(
            workdir, save_every=cfg.checkpoint_every, max_to_keep=cfg.max_to_keep
        )
    try:
        if ckpt is not None:
            restored = ckpt.restore_latest(loop.state_tree(), identity)
            if restored is not None:
                resumed_from, state, meta = restored
                loop.load(state, meta)
                logging.info("resumed %s from step %d", workdir, resumed_from)

        bar = tqdm(
            total=cfg.max_iterations, initial=loop.iteration, disable=not progress, desc="search"
        )
        with bar:
            while loop.stop_reason is None:
                start = time.perf_counter()
                record = _iteration(loop, cfg, score_systems, n, fixed)
                loop.history.append(record)
                if loop.stall >= cfg.patience:
                    loop.stop_reason = "patience"
                elif loop.iteration >= cfg.max_iterations:
                    loop.stop_reason = "max_iterations"
                if loop.stop_reason is not None and test_scorer is not None and loop.best:
                    b = loop.best
                    loop.test_utility = float(test_scorer(b.dag, b.assignment, b.weights))
                if ckpt is not None:
                    ckpt.save(
                        loop.iteration,
                        loop.state_tree(),
                        loop.meta(identity),
                        force=loop.stop_reason is not None,
                    )
                _log(loop, record, time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix(best=record["best_utility"], stall=loop.stall)
                for callback in callbacks:
                    callback(record)
    finally:
        if ckpt is not None:
            ckpt.close()

    return SearchResult(
        best=loop.best,
        history=loop.history,
        iterations=loop.iteration,
        stop_reason=loop.stop_reason,
        test_utility=loop.test_utility,
        roles=loop.roles,
        weights=loop.weights,
        resumed_from=resumed_from,
    )
