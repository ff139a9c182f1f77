"""The Heterogeneous Swarms search loop (paper Algorithm 4), against an injected utility.

Two swarms are optimised in alternation, both with :mod:`hs_jax.swarm.pso`:

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

Two schedules (``SearchConfig.schedule``) put the same steps in a different order. Below,
``W_k`` are the weight swarm's positions after its k-th PSO move (``W_0`` = the experts). A
PSO "move" is :func:`hs_jax.swarm.pso.step`, a "tell" is :func:`hs_jax.swarm.pso.tell`. Each step's
history record says in ``weight_moves`` which ``W_k`` it was scored with.

``schedule='hs_jax'`` (default). Iteration t = 0, 1, ...:

1. role-step: decode the role swarm's positions, score them with the weight swarm's current
   positions, tell and move the role swarm;
2. weight-step: JFK on this iteration's best graph, scored with the same weights;
3. all-time best over both steps (the weights it keeps are those current positions); then tell
   and move the weight swarm.

So both steps of iteration t score with the same weights (``W_t`` without dropout). The search
stops after an iteration when ``stall >= patience`` (below), else after ``max_iterations``
iterations: with the last improvement of the all-time best in iteration k (k >= 0), it runs
``k + patience + 1`` iterations (``patience + 1`` when only iteration 0 improves). The PSO
states returned are told and moved (ready for another iteration).

``schedule='authors'`` (the order of the authors' released code). The history's iteration 0 is
an initialisation round; rounds 1..max_iterations follow:

- round 0 (no moves, never dropped): decode and score the N initial graphs with ``W_0``, tell
  the role swarm; JFK-score ``W_0`` on round 0's best graph, tell the weight swarm. The
  all-time best after round 0 is the best graph's system: round 0's assignments do not compete
  (the authors take the initial best from the graphs only), unless no graph was scored;
- round t >= 1: (a) stop check (below); (b) move the role swarm, decode and score the moved
  graphs with the weight swarm's current positions (the ones the weight-step of round t - 1
  scored, ``W_{t-1}`` without dropout: this round's weight move has not happened yet), tell;
  (c) move the weight swarm (``W_t``), JFK-score the moved experts on this round's best graph,
  tell. Each move uses the bests of the tells before it.
- The all-time best is updated after the role-step (its weights: the role-step's ``W_{t-1}``)
  and then after the weight-step (weights ``W_t``), each only by a strictly higher utility.
- Stopping: the *stop history* holds, for every round in which the stopping swarm's step ran
  (round 0 included), that swarm's all-time global best after the round (the history records'
  ``role_global_best`` / ``weight_global_best``). The stopping swarm is the role swarm, or the
  weight swarm when ``role_step=False`` (the role swarm then never moves). Before round t the
  search stops ("patience") when the stop history has more than ``patience`` entries and its
  last ``patience`` entries are equal; it stops ("max_iterations") after round
  ``max_iterations``. So at most ``max_iterations + 1`` rounds are scored; with the last
  improvement of the stopping swarm's global best in round k >= 1 and no dropout, ``k +
  patience`` rounds run (patience - 1 rounds without improvement), and ``patience + 1`` when
  only round 0 sets it (``patience=1`` thus always stops after round 1: one entry is always
  "all equal"). Neither the other swarm nor the all-time best system takes part. The role
  swarm's global best is on its objective (utility - L1 term).
- A dropped step (rounds >= 1) neither moves, scores nor tells, and adds no entry to the stop
  history (it says nothing new about the swarm, as an hs_jax iteration that scores nothing
  leaves ``stall`` alone); a later role-step then scores with whatever the weight swarm last
  moved to, and a weight-step with a dropped role-step in its round fills the most recent
  best graph. ``role_step=False`` without ``fixed_dag``: round 0 scores the N initial graphs
  (the swarm is neither told nor moved); later rounds have no role-step.
- The PSO states returned are told but not moved after the last round. ``SearchResult.
  iterations`` counts rounds, round 0 included.
- The schedule does not change the PSO configs: the authors' restart threshold and cooldown
  are ``PSOConfig.restart_rule='authors'`` (with ``patience`` = the search patience), set on
  ``roles_pso`` / ``weights_pso`` separately.

Definitions the paper leaves open (fixed here, so runs are comparable and resumable):

- **Best system.** The all-time best is the system (DAG, assignment, expert weights = the
  positions it was scored with, copied) with the highest *raw* utility among all systems
  scored so far (role- and weight-step alike; the L1 term is not part of it; ties keep the
  earlier one, the role-step before the weight-step). NaN/inf utilities never count.
- **Utility improved / stall.** An iteration improves when its best raw utility is strictly
  higher than the all-time best before it. ``stall`` counts consecutive scored iterations
  without improvement (an iteration whose both steps were dropped scores nothing and leaves
  ``stall`` unchanged). It is the hs_jax stopping rule; under 'authors' it is only recorded.
- **This iteration's best graph** (the one the weight-step fills) is the role-step DAG with
  the highest role-step objective (utility - L1 term). If the role-step did not run this
  iteration (dropout) the most recent one is reused. Without a role-step (``role_step=False``)
  it is ``fixed_dag`` if given, else the best of the N DAGs decoded from the initial swarm,
  scored once in the first iteration (the role swarm then never moves). The first iteration's
  role-step is never dropped, because the weight-step needs a graph.
- **Sparsity.** ``prune_tau`` thresholds each matrix before decoding (the swarm's positions
  stay unpruned); ``l1_lambda`` subtracts ``lambda * |A|_1`` of the (unpruned) positions from
  the role swarm's objective.
- **JFK of never-drawn experts**: they keep their previous JFK-score (see :mod:`hs_jax.swarm.jfk`).

Randomness: one ``seed`` gives a jax key (split once per iteration into a role and a weight
key for the PSO moves; under 'authors' once per round from round 1 on, round 0 not moving)
and a numpy ``Generator`` (PCG64) that draws, in this order each iteration, the two dropout
uniforms (also in round 0 under 'authors', where they are unused), the G-decode choices and
the JFK assignments. Both are checkpointed, so a resumed run continues the same streams.

Multi-process runs: every process runs the loop; the numpy Generator and the jax key advance
identically on all of them, and each step asserts it (``hs_jax.runtime.distributed.assert_same`` on
the decoded DAGs and the JFK assignments before they are scored, and on the utilities after), so a
process that drifted stops the run naming the step instead of desynchronising the swarms.

Checkpoints (``workdir``): see :mod:`hs_jax.store.checkpointing`; a run with a workdir resumes from
the latest readable step and ends bitwise identical to an uninterrupted run (under 'authors'
the stop history is read back from the checkpointed history). The caller may keep its own
JSON state in every checkpoint (``run_search``'s ``extra_meta``) and gets it back on resume
(``on_resume``): the loop knows nothing of what it holds (the runner keeps its cost counters
there).
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

from hs_jax import stats
from hs_jax.runtime import distributed
from hs_jax.store import checkpointing
from hs_jax.store import workdir as workdir_lib
from hs_jax.store.workdir import kill_point
from hs_jax.swarm import graph, jfk, pso
from hs_jax.swarm.graph import Dag
from hs_jax.swarm.history import IterationRecord, RoleStep, Skipped, WeightStep

PyTree = Any
# A candidate the loop scores: a DAG and its assignment (assignment[k] = the expert at node k);
# hs_jax.engine.executor.System is the checked dataclass the executor makes of it.
Candidate = tuple[Dag, tuple[int, ...]]
ScoreSystems = Callable[[list[Candidate], PyTree], Any]
TestScorer = Callable[[Dag, tuple[int, ...], PyTree], float]
ExtraMeta = Callable[[dict[str, Any]], Mapping[str, Any]]

# Config fields that do not change the search's results; a workdir may be resumed with other
# values for them.
_RESUME_FREE_FIELDS = ("checkpoint_every", "max_to_keep")
# Fields added after checkpoints were written, with the value those checkpoints ran with: left
# out of the identity at that value, so an older checkpoint resumes where nothing changed.
_ADDED_FIELDS = {"decode": "hs_jax"}

SCHEDULES = ("hs_jax", "authors")


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
    schedule: loop order and stopping rule, 'hs_jax' or 'authors' (module docstring). It leaves
    roles_pso / weights_pso as given: the authors' restarts are their ``restart_rule``.
    decode: G-decode's rule, 'hs_jax' (well defined for any matrix) or 'authors' (their code's
    decode, by argmax: needs top_p 0; ``graph.g_decode``).
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
    schedule: str = "hs_jax"
    decode: str = "hs_jax"
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
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.decode not in graph.DECODE_RULES:
            raise ValueError(f"decode must be one of {graph.DECODE_RULES}, got {self.decode!r}")
        if self.decode == "authors" and self.top_p != 0.0:
            raise ValueError(
                f"decode='authors' decodes by argmax as the authors' evaluation does: top_p "
                f"must be 0 (decode='hs_jax' samples with a top-p), got {self.top_p}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested PSO configs as dicts)."""
        return workdir_lib.jsonable(dataclasses.asdict(self))

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
    the weight swarm's positions it was scored with), its utility and the iteration found."""

    dag: Dag
    assignment: tuple[int, ...]
    weights: PyTree
    utility: float
    iteration: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What every search for a system ends with, the part `SearchResult` and a method's
    `methods.api.MethodResult` share: the best system (a `BestSystem` here; a method may report
    its own kind), one history record per iteration, the iterations run, why it stopped and the
    best system's test utility (None without one)."""

    best: Any
    history: list[dict[str, Any]]
    iterations: int
    stop_reason: str
    test_utility: float | None

    def outcome(self) -> dict[str, Any]:
        """These fields by name (the values themselves, not copies): one result built from
        another passes them on whole."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(Outcome)}


@dataclasses.dataclass(frozen=True)
class SearchResult(Outcome):
    """Outcome of :func:`run_search`.

    history: one JSON object per iteration (``hs_jax.swarm.history.IterationRecord.to_json``,
    whose module docstring is the schema). iterations: number run (under schedule='authors':
    rounds, round 0 included). stop_reason: 'patience' or 'max_iterations'. test_utility:
    ``test_scorer`` on the best system (None without one). roles / weights: final PSO states.
    resumed_from: checkpoint step the call resumed from (None for a fresh run).
    """

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


def _argmax_finite(u: np.ndarray) -> int | None:
    finite = np.isfinite(u)
    if not finite.any():
        return None
    return int(np.argmax(np.where(finite, u, -np.inf)))


def _copy_tree(tree: PyTree) -> PyTree:
    # A fresh buffer: the swarm's positions are donated to the next PSO update.
    return jax.tree.map(jnp.copy, tree)


def _same(value: Any, *_) -> Any:
    return value


def _held(item: str, encode=_same, decode=_same, key: str | None = None, **field_kw):
    """A `_Loop` field kept in a checkpoint's `item` ('state': arrays, 'meta': JSON) under
    `key` (default: its name), written with `encode(value)` and read with `decode(saved,
    state)`, `state` being the restored arrays."""
    metadata = {"item": item, "encode": encode, "decode": decode, "key": key}
    return dataclasses.field(metadata=metadata, **field_kw)


def _generator(state: Mapping[str, Any], *_) -> np.random.Generator:
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


def _optional(fn):
    return lambda value, *_: None if value is None else fn(value)


def _int(value, *_) -> int:
    return int(value)


def _best_json(best: BestSystem | None) -> dict[str, Any] | None:
    # The best system's weights are arrays: they are the state item's 'best_weights'.
    if best is None:
        return None
    return {
        "dag": best.dag.to_dict(),
        "assignment": list(best.assignment),
        "utility": best.utility,
        "iteration": best.iteration,
    }


def _best_from_json(b: Mapping[str, Any] | None, state: Mapping[str, Any]) -> BestSystem | None:
    if b is None:
        return None
    return BestSystem(
        dag=Dag.from_dict(b["dag"]),
        assignment=tuple(int(i) for i in b["assignment"]),
        weights=state["best_weights"],
        utility=float(b["utility"]),
        iteration=int(b["iteration"]),
    )


@dataclasses.dataclass
class _Loop:
    """Mutable search state between iterations: every field is held by a checkpoint (its
    metadata says where and how, so `state_tree`, `meta` and `load` list no field by hand)."""

    roles: pso.PSOState = _held("state")
    weights: pso.PSOState = _held("state")
    key: jax.Array = _held("state", jax.random.key_data, _optional(jax.random.wrap_key_data))
    rng: np.random.Generator = _held(
        "meta", lambda g: g.bit_generator.state, _generator, key="rng_state"
    )
    iteration: int = _held("meta", decode=_int, default=0)  # iterations completed
    stall: int = _held("meta", decode=_int, default=0)
    history: list[IterationRecord] = _held(
        "meta",
        lambda records: [r.to_json() for r in records],
        lambda saved, *_: [IterationRecord.from_json(r) for r in saved],
        default_factory=list,
    )
    best: BestSystem | None = _held("meta", _best_json, _best_from_json, default=None)
    # The most recent role-step best graph (or the fixed one).
    graph: Dag | None = _held(
        "meta", _optional(Dag.to_dict), _optional(Dag.from_dict), default=None
    )
    prev_jfk: list | None = _held("meta", default=None)
    stop_reason: str | None = _held("meta", default=None)
    test_utility: float | None = _held("meta", default=None)

    def _held_in(self, item: str):
        return [f for f in dataclasses.fields(self) if f.metadata["item"] == item]

    def state_tree(self) -> dict[str, Any]:
        tree = {f.name: f.metadata["encode"](getattr(self, f.name)) for f in self._held_in("state")}
        # The best system's weights; until a best exists, a placeholder of the same structure
        # and sharding.
        best = self.best
        tree["best_weights"] = best.weights if best is not None else self.weights.positions
        return tree

    def meta(
        self, identity: Mapping[str, Any], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"identity": identity}
        for f in self._held_in("meta"):
            out[f.metadata["key"] or f.name] = f.metadata["encode"](getattr(self, f.name))
        # The caller's own state at this step (run_search's extra_meta), handed back on resume.
        out["extra"] = dict(extra) if extra is not None else None
        return out

    def load(self, state: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        for f in self._held_in("state"):
            setattr(self, f.name, f.metadata["decode"](state[f.name]))
        for f in self._held_in("meta"):
            saved = meta[f.metadata["key"] or f.name]
            setattr(self, f.name, f.metadata["decode"](saved, state))


# ----------------------------------------------------------------------------- steps


def _role_score(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems
) -> tuple[dict[str, Any], list[tuple[float, Candidate]], np.ndarray]:
    """Decode the role swarm's positions, score them (identity assignment) with the weight
    swarm's current positions and set this iteration's best graph; returns the `RoleStep`'s
    fields but ``moved``, the scored systems and the objective ``[N]`` (utility - L1 term)."""
    adjacency = np.asarray(loop.roles.x, dtype=np.float64)  # [N, n, n]
    n = adjacency.shape[-1]
    penalty = np.asarray(graph.l1_penalty(adjacency, cfg.l1_lambda), np.float64)  # [N]
    decoded = adjacency if cfg.prune_tau is None else graph.prune(adjacency, cfg.prune_tau)
    dags = [graph.g_decode(a, loop.rng, top_p=cfg.top_p, rule=cfg.decode) for a in decoded]
    t = loop.iteration
    distributed.assert_same(f"iteration {t}'s G-decoded DAGs", [d.to_dict() for d in dags])
    identity = tuple(range(n))
    systems = [(d, identity) for d in dags]
    weight_moves = int(loop.weights.iteration)
    u = _utilities(score_systems(systems, loop.weights.positions), len(systems))  # [N]
    distributed.assert_same(f"iteration {t}'s role-step utilities", u)
    kill_point("role_step")  # test hook: a kill inside a role-step
    objective = u - penalty  # [N]
    i_best = _argmax_finite(objective)
    if i_best is not None:
        loop.graph = dags[i_best]
    elif loop.graph is None:
        loop.graph = dags[0]  # nothing finite yet: any graph lets the weight-step proceed
    fields = {
        "utilities": tuple(u.tolist()),
        "objective": tuple(objective.tolist()),
        "dags": tuple(dags),
        "best_index": i_best,
        "weight_moves": weight_moves,
        **stats.best_mean_worst(u),
    }
    return fields, list(zip(u.tolist(), systems, strict=True)), objective


def _role_step(
    loop: _Loop,
    cfg: SearchConfig,
    score_systems: ScoreSystems,
    key: jax.Array,
    *,
    move: bool,
) -> tuple[RoleStep, list[tuple[float, Candidate]]]:
    """hs_jax role-step: decode, score (identity assignment), optionally tell + PSO-move."""
    fields, candidates, objective = _role_score(loop, cfg, score_systems)
    if move:
        loop.roles = pso.update(loop.roles, objective, key, cfg.roles_pso)
    return RoleStep(moved=move, **fields), candidates


def _weight_step_score(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems, n_experts: int
) -> tuple[WeightStep, list[tuple[float, Candidate]], np.ndarray]:
    """JFK: M assignments on this iteration's best graph, scored with the weight swarm's
    current positions; returns the record (``moved``: whether the swarm moves in this step,
    after the scoring under 'hs_jax', before it under 'authors'), the systems, JFK-scores."""
    dag = loop.graph
    assignments = jfk.sample_assignments(dag.n, n_experts, cfg.n_assignments, loop.rng)
    t = loop.iteration
    distributed.assert_same(f"iteration {t}'s JFK assignments", [dag.to_dict(), assignments])
    systems = [(dag, tuple(int(e) for e in a)) for a in assignments]
    weight_moves = int(loop.weights.iteration)
    u = _utilities(score_systems(systems, loop.weights.positions), len(systems))  # [M]
    distributed.assert_same(f"iteration {t}'s weight-step utilities", u)
    kill_point("weight_step")  # test hook: a kill inside a weight-step
    previous = None if loop.prev_jfk is None else np.asarray(loop.prev_jfk, np.float64)
    scores = jfk.jfk_scores(assignments, u, n_experts, previous)  # [n]
    record = WeightStep(
        moved=cfg.schedule == "hs_jax" or loop.iteration > 0,
        dag=dag,
        assignments=tuple(tuple(a) for a in assignments.tolist()),
        utilities=tuple(u.tolist()),
        jfk=tuple(scores.tolist()),
        weight_moves=weight_moves,
        **stats.best_mean_worst(u),
    )
    return record, list(zip(u.tolist(), systems, strict=True)), scores


def _record(
    loop: _Loop, t: int, role: RoleStep | Skipped, weight: WeightStep | Skipped, improved: bool
) -> IterationRecord:
    """The history record of iteration (round) ``t``: both steps' records, whether the
    all-time best improved, its utility, ``stall``, and each swarm's all-time global best
    after the iteration (None while it has none; the role swarm's is on its objective)."""
    return IterationRecord(
        iteration=t,
        role=role,
        weight=weight,
        improved=improved,
        best_utility=loop.best.utility if loop.best is not None else None,
        stall=int(loop.stall),
        role_global_best=stats.finite_or_none(loop.roles.g_util),
        weight_global_best=stats.finite_or_none(loop.weights.g_util),
    )


def _iteration(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems, n_experts: int, fixed: bool
) -> IterationRecord:
    """One iteration of Algorithm 4 (schedule 'hs_jax'); mutates ``loop``, returns its record."""
    t = loop.iteration
    loop.key, k_role, k_weight = jax.random.split(loop.key, 3)
    drop_r, drop_w = loop.rng.random(2)  # always drawn: the stream does not depend on flags
    candidates: list[tuple[float, Candidate]] = []

    # Role-step.
    if cfg.role_step and (loop.graph is None or drop_r >= cfg.dropout_role):
        role, cands = _role_step(loop, cfg, score_systems, k_role, move=True)
        candidates += cands
    elif not cfg.role_step and loop.graph is None and not fixed:
        role, cands = _role_step(loop, cfg, score_systems, k_role, move=False)
        candidates += cands
    else:
        role = Skipped("off" if not cfg.role_step else "dropout")

    # Weight-step: score now, move after the best system has been copied.
    jfk_scores = None
    if cfg.weight_step and drop_w >= cfg.dropout_weight:
        weight, cands, jfk_scores = _weight_step_score(loop, cfg, score_systems, n_experts)
        candidates += cands
    else:
        weight = Skipped("off" if not cfg.weight_step else "dropout")

    improved = False
    if candidates:
        utils = np.array([c[0] for c in candidates], np.float64)
        i = _argmax_finite(utils)
        if i is not None and (loop.best is None or utils[i] > loop.best.utility):
            dag, assignment = candidates[i][1]
            weights = _copy_tree(loop.weights.positions)
            loop.best = BestSystem(dag, assignment, weights, float(utils[i]), t)
            improved = True
        loop.stall = 0 if improved else loop.stall + 1

    if jfk_scores is not None:
        loop.prev_jfk = jfk_scores.tolist()
        loop.weights = pso.update(loop.weights, jfk_scores, k_weight, cfg.weights_pso)

    loop.iteration = t + 1
    return _record(loop, t, role, weight, improved)


def _consider(loop: _Loop, candidates: list[tuple[float, Candidate]], t: int) -> bool:
    """Make the first finite maximum of ``candidates`` (scored with the weight swarm's current
    positions) the all-time best if it is strictly better; returns whether it was."""
    utils = np.array([c[0] for c in candidates], np.float64)
    i = _argmax_finite(utils)
    if i is None or (loop.best is not None and not utils[i] > loop.best.utility):
        return False
    dag, assignment = candidates[i][1]
    loop.best = BestSystem(dag, assignment, _copy_tree(loop.weights.positions), float(utils[i]), t)
    return True


def _authors_round(
    loop: _Loop, cfg: SearchConfig, score_systems: ScoreSystems, n_experts: int, fixed: bool
) -> IterationRecord:
    """One round of schedule 'authors' (round 0: score the initial swarms, no moves; later
    rounds: move-score-tell the role swarm, then the weight swarm); mutates ``loop``."""
    t = loop.iteration
    if t > 0:
        loop.key, k_role, k_weight = jax.random.split(loop.key, 3)
    drop_r, drop_w = loop.rng.random(2)  # drawn in round 0 too: one stream for both schedules
    improved = scored = False

    # Role-step, scored with the weights the previous round's weight-step left.
    if cfg.role_step and (t == 0 or drop_r >= cfg.dropout_role):
        if t > 0:
            loop.roles = pso.step(loop.roles, k_role, cfg.roles_pso)
        fields, candidates, objective = _role_score(loop, cfg, score_systems)
        loop.roles = pso.tell(loop.roles, objective)
        role = RoleStep(moved=t > 0, **fields)
        improved = _consider(loop, candidates, t)
        scored = True
    elif not cfg.role_step and t == 0 and not fixed:
        fields, candidates, _ = _role_score(loop, cfg, score_systems)
        role = RoleStep(moved=False, **fields)
        improved = _consider(loop, candidates, t)
        scored = True
    else:
        role = Skipped("off" if not cfg.role_step else "dropout")

    # Weight-step: move first, then score the moved experts on this round's best graph. Round
    # 0's best system comes from the graphs alone, as in the authors' code (its assignments
    # only tell the weight swarm), unless no graph was scored.
    if cfg.weight_step and (t == 0 or drop_w >= cfg.dropout_weight):
        if t > 0:
            loop.weights = pso.step(loop.weights, k_weight, cfg.weights_pso)
        weight, candidates, jfk_scores = _weight_step_score(loop, cfg, score_systems, n_experts)
        if t > 0 or not scored:
            improved = _consider(loop, candidates, t) or improved
        loop.prev_jfk = jfk_scores.tolist()
        loop.weights = pso.tell(loop.weights, jfk_scores)
        scored = True
    else:
        weight = Skipped("off" if not cfg.weight_step else "dropout")

    if scored:
        loop.stall = 0 if improved else loop.stall + 1
    loop.iteration = t + 1
    return _record(loop, t, role, weight, improved)


def _stop_history(history: Sequence[IterationRecord], cfg: SearchConfig) -> list:
    """Schedule 'authors': the stopping swarm's global best after each round its step ran."""
    if cfg.role_step:
        return [rec.role_global_best for rec in history if rec.role.ran]
    return [rec.weight_global_best for rec in history if rec.weight.ran]


def _stop_reason(loop: _Loop, cfg: SearchConfig) -> str | None:
    """Why the search stops after the iteration just recorded (None: it goes on)."""
    if cfg.schedule == "hs_jax":
        if loop.stall >= cfg.patience:
            return "patience"
        if loop.iteration >= cfg.max_iterations:
            return "max_iterations"
        return None
    if loop.iteration > cfg.max_iterations:  # rounds 0..max_iterations are done
        return "max_iterations"
    h = _stop_history(loop.history, cfg)
    if len(h) > cfg.patience and all(v == h[-1] for v in h[-cfg.patience :]):
        return "patience"
    return None


# ----------------------------------------------------------------------------- driver


def _identity(cfg: SearchConfig, experts: PyTree, fixed_dag: Dag | None) -> dict[str, Any]:
    config = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in _RESUME_FREE_FIELDS and _ADDED_FIELDS.get(k, object()) != v
    }
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
        leaf = jax.tree.leaves(weights.x)[0]
        logging.info(
            "weight swarm: %d experts along mesh axis 'expert' of %d (%s; %d per device%s)",
            n, mesh.shape["expert"], leaf.sharding.spec,
            leaf.addressable_shards[0].data.shape[0],
            f", {leaf.shape[0] - n} inert to fill the axis" if leaf.shape[0] > n else "",
        )  # fmt: skip
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    return _Loop(roles=roles, weights=weights, key=key, rng=rng, graph=fixed_dag)


def _log(loop: _Loop, record: IterationRecord, seconds: float) -> None:
    def part(name: str) -> str:
        r = record.step(name)
        if not r.ran:
            return f"{name} -"
        return f"{name} best {r.best:.4g} mean {r.mean:.4g}"

    best = record.best_utility
    logging.info(
        "iteration %d: %s | %s | all-time best %s%s | stall %d | %.1fs",
        record.iteration,
        part("role"),
        part("weight"),
        "-" if best is None else f"{best:.4g}",
        " (improved)" if record.improved else "",
        record.stall,
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
    extra_meta: ExtraMeta | None = None,
    on_resume: Callable[[Mapping[str, Any]], None] | None = None,
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
      callbacks: each called with an iteration's history record (its JSON, hs_jax.swarm.history)
        after its checkpoint is saved.
      extra_meta: called once per iteration with its history record (JSON), after the
        iteration (its test scoring included) and before its checkpoint is saved; the JSON-able
        mapping it returns is stored in that checkpoint. It lets the caller keep its own state
        (e.g. cost counters) in step with the search's.
      on_resume: called once, when the search resumes from a checkpoint, with the mapping
        ``extra_meta`` returned for that step ({} if there was none), before any iteration.
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
                if on_resume is not None:
                    on_resume(meta.get("extra") or {})

        one_iteration = _iteration if cfg.schedule == "hs_jax" else _authors_round
        total = cfg.max_iterations + (cfg.schedule == "authors")  # + round 0
        bar = tqdm(total=total, initial=loop.iteration, disable=not progress, desc="search")
        with bar:
            while loop.stop_reason is None:
                start = time.perf_counter()
                typed = one_iteration(loop, cfg, score_systems, n, fixed)
                loop.history.append(typed)
                record = typed.to_json()
                loop.stop_reason = _stop_reason(loop, cfg)
                if loop.stop_reason is not None and test_scorer is not None and loop.best:
                    b = loop.best
                    loop.test_utility = float(test_scorer(b.dag, b.assignment, b.weights))
                extra = extra_meta(record) if extra_meta is not None else None
                if ckpt is not None:
                    kill_point("checkpoint_write", watch=workdir)  # test hook: kill mid-save
                    if ckpt.save(
                        loop.iteration,
                        loop.state_tree(),
                        loop.meta(identity, extra),
                        force=loop.stop_reason is not None,
                    ):
                        kill_point("checkpoint_committed")  # test hook: kill after a save
                _log(loop, typed, time.perf_counter() - start)
                if distributed.multi():
                    logging.info(
                        "iteration %d: all %d processes agree on its DAGs, assignments and "
                        "utilities (%d checks so far)",
                        typed.iteration, jax.process_count(), distributed.checks,
                    )  # fmt: skip
                bar.update(1)
                bar.set_postfix(best=typed.best_utility, stall=loop.stall)
                for callback in callbacks:
                    callback(record)
    finally:
        if ckpt is not None:
            ckpt.close()

    return SearchResult(
        best=loop.best,
        history=[r.to_json() for r in loop.history],
        iterations=loop.iteration,
        stop_reason=loop.stop_reason,
        test_utility=loop.test_utility,
        roles=loop.roles,
        weights=loop.weights,
        resumed_from=resumed_from,
    )
