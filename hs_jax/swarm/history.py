"""The search's history: one typed record per iteration, and its written schema.

`hs_jax.swarm.search` builds one `IterationRecord` per iteration (under schedule='authors' one per
round, round 0 included) and writes it as JSON with `to_json`; everything that reads a history
(the search itself on resume and for its stopping rule, `report.curves` through `step_stats`,
`checkpoint_summary.summarize_checkpoint`) reads it back with `from_json`. The same JSON object is
an element of results.json's ``history``, of a checkpoint's ``meta['history']``, and the argument
of `run_search`'s callbacks. Keys appear in the order below; NaN is written as JSON's ``NaN``.

Schema of one record (``IterationRecord``):

- ``iteration`` (int): the iteration (round) index t, from 0.
- ``role`` (object): the role step, a ``RoleStep`` when it ran, else a ``Skipped``.
- ``weight`` (object): the weight step, a ``WeightStep`` when it ran, else a ``Skipped``.
- ``improved`` (bool): whether the all-time best system strictly improved in this iteration.
- ``best_utility`` (float or null): the all-time best system's raw utility after the
  iteration; null while no finite utility has been seen.
- ``stall`` (int): consecutive scored iterations without improvement, after this one (the
  hs_jax stopping rule; under 'authors' only recorded).
- ``role_global_best`` / ``weight_global_best`` (float or null): each swarm's all-time global
  best after the iteration (the role swarm's on its objective, utility - L1 term); null while
  it has none (not finite). Schedule 'authors' stops on these.

``Skipped`` (a step that did not run):

- ``ran`` (false).
- ``reason`` (str): ``'off'`` (the step is switched off, ``role_step`` / ``weight_step``) or
  ``'dropout'`` (dropped this iteration, ``dropout_role`` / ``dropout_weight``).

``RoleStep`` (the role swarm's N graphs, each scored with the identity assignment):

- ``ran`` (true).
- ``moved`` (bool): whether the role swarm made a PSO move in this step (hs_jax: after
  scoring; authors: before it, never in round 0; false for the one scoring of a run without
  role step).
- ``utilities`` (list of N floats, NaN allowed): raw utility of each decoded graph.
- ``objective`` (list of N floats): utility - L1 term, what the swarm is told.
- ``dags`` (list of N graphs): the decoded DAGs, each ``{"n", "edges", "end"}``
  (`graph.Dag.to_dict`).
- ``best_index`` (int or null): the graph with the highest finite objective, the one the
  weight step fills; null when no objective is finite.
- ``weight_moves`` (int): PSO moves the weight swarm had made when these graphs were scored
  (which ``W_k`` of `hs_jax.swarm.search`'s docstring they were scored with).
- ``best`` / ``mean`` / ``worst`` (float): max, mean, min of the finite utilities (NaN when
  none is finite).

``WeightStep`` (M JFK assignments of experts to this iteration's best graph):

- ``ran`` (true).
- ``moved`` (bool): whether the weight swarm moves in this step (hs_jax: after scoring;
  authors: before it, never in round 0).
- ``dag`` (graph): the graph the assignments fill, ``{"n", "edges", "end"}``.
- ``assignments`` (list of M lists of ints): ``assignments[j][k]`` = the expert at node k.
- ``utilities`` (list of M floats, NaN allowed): raw utility of each assignment.
- ``jfk`` (list of n floats): each expert's JFK-score, what the weight swarm is told
  (`hs_jax.swarm.jfk`).
- ``weight_moves`` (int), ``best`` / ``mean`` / ``worst`` (float): as in ``RoleStep``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hs_jax import stats
from hs_jax.swarm.graph import Dag

_STEP_KEYS = ("role", "weight")


def _optional_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _floats(xs: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A step that did not run this iteration: reason 'off' or 'dropout'."""

    reason: str
    ran = False

    def to_json(self) -> dict[str, Any]:
        return {"ran": False, "reason": self.reason}


# How each field type of a step is written to JSON and read back (the annotations are strings:
# `from __future__ import annotations`). One table serves both steps.
_CODECS: dict[str, tuple[Any, Any]] = {
    "bool": (bool, bool),
    "int": (int, int),
    "float": (float, float),
    "int | None": (lambda v: v, lambda v: None if v is None else int(v)),
    "Dag": (Dag.to_dict, Dag.from_dict),
    "tuple[float, ...]": (list, lambda v: _floats(v)),
    "tuple[Dag, ...]": (
        lambda dags: [d.to_dict() for d in dags],
        lambda v: tuple(Dag.from_dict(g) for g in v),
    ),
    "tuple[tuple[int, ...], ...]": (
        lambda rows: [list(r) for r in rows],
        lambda v: tuple(tuple(int(e) for e in r) for r in v),
    ),
}


class _RanStep:
    """JSON for a step that ran: {'ran': True, <field>: <value>, ...} in field order."""

    ran = True

    def to_json(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)
        return {"ran": True, **{f.name: _CODECS[f.type][0](getattr(self, f.name)) for f in fields}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]):
        return cls(**{f.name: _CODECS[f.type][1](d[f.name]) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class RoleStep(_RanStep):
    """The role step of one iteration (module docstring)."""

    moved: bool
    utilities: tuple[float, ...]  # [N]
    objective: tuple[float, ...]  # [N]
    dags: tuple[Dag, ...]  # [N]
    best_index: int | None
    weight_moves: int
    best: float
    mean: float
    worst: float


@dataclasses.dataclass(frozen=True)
class WeightStep(_RanStep):
    """The weight step of one iteration (module docstring)."""

    moved: bool
    dag: Dag
    assignments: tuple[tuple[int, ...], ...]  # [M, n_nodes]
    utilities: tuple[float, ...]  # [M]
    jfk: tuple[float, ...]  # [n_experts]
    weight_moves: int
    best: float
    mean: float
    worst: float


def _step_from_json(d: Mapping[str, Any], ran: type[RoleStep] | type[WeightStep]):
    return ran.from_json(d) if d["ran"] else Skipped(reason=str(d["reason"]))


@dataclasses.dataclass(frozen=True)
class IterationRecord:
    """One iteration (round) of the search (module docstring)."""

    iteration: int
    role: RoleStep | Skipped
    weight: WeightStep | Skipped
    improved: bool
    best_utility: float | None
    stall: int
    role_global_best: float | None
    weight_global_best: float | None

    def step(self, name: str) -> RoleStep | WeightStep | Skipped:
        """The 'role' or 'weight' step."""
        if name not in _STEP_KEYS:
            raise ValueError(f"step must be one of {_STEP_KEYS}, got {name!r}")
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "role": self.role.to_json(),
            "weight": self.weight.to_json(),
            "improved": self.improved,
            "best_utility": self.best_utility,
            "stall": self.stall,
            "role_global_best": self.role_global_best,
            "weight_global_best": self.weight_global_best,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> IterationRecord:
        return cls(
            iteration=int(d["iteration"]),
            role=_step_from_json(d["role"], RoleStep),
            weight=_step_from_json(d["weight"], WeightStep),
            improved=bool(d["improved"]),
            best_utility=_optional_float(d["best_utility"]),
            stall=int(d["stall"]),
            role_global_best=_optional_float(d["role_global_best"]),
            weight_global_best=_optional_float(d["weight_global_best"]),
        )


def is_search_record(d: Any) -> bool:
    """Whether a history entry has the search's shape (an `IterationRecord`'s JSON: all its
    fields, both steps saying whether they ran); a method's history may hold records of its
    own."""
    return (
        isinstance(d, Mapping)
        and all(f.name in d for f in dataclasses.fields(IterationRecord))
        and all(isinstance(d[k], Mapping) and "ran" in d[k] for k in _STEP_KEYS)
    )


def step_stats(d: Mapping[str, Any], step: str) -> tuple[float, float, float] | None:
    """(best, mean, worst) utility of one step of a history entry, for curves.png; NaN for a
    step that did not run, None when the entry has no such step.

    A search record is read as an `IterationRecord`. Another method's record is drawn too when
    it has a ``role`` or ``weight`` object with ``utilities`` (null for a failed system) and
    ``ran`` (true when absent), as the baselines' role searches write
    (hs_jax.methods.dynamic_role); its statistics are taken over the finite utilities, as the
    search's are.
    """
    if is_search_record(d):
        part = IterationRecord.from_json(d).step(step)
        return (part.best, part.mean, part.worst) if part.ran else (math.nan,) * 3
    part = d.get(step)
    if not isinstance(part, Mapping):
        return None
    s = stats.best_mean_worst(part.get("utilities", []) if part.get("ran", True) else [])
    return s["best"], s["mean"], s["worst"]
