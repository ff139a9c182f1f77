"""The registry of methods a run can use to find a system, selected by `config.method`.

A method takes the run's `Setup` (hs_jax.setup.assembly: config, dev/test items, protocol,
expert pool, engine, scorer, mesh) and its workdir, and returns a `MethodResult`
(hs_jax.methods.api): what `hs_jax.pipeline.report` needs for results.json (the best system, its
test utility, outputs and per-item scores, the history, the costs, the single experts).

Every method, 'hs' (Heterogeneous Swarms, `hs_jax.methods.hs`) included, registers itself here
when its module is imported; `hs_jax.methods` imports them all, 'hs' and its ablations first,
so `METHODS` lists them in that order. A new method plugs in by
- a function `def my_method(setup, workdir, *, callbacks=(), progress=True) -> MethodResult`:
  it scores its candidates through a `methods.api.Evaluator` (dev utility with every
  generation counted by the engine, the budget `methods.api.budget_of(config)`, the archive,
  replay on resume) and ends with `Evaluator.finish`, which scores the best system on test;
- `register("my_method", MethodSpec(...))`: the run's door (`hs_jax.pipeline.door`) accepts only
  registered names, `MethodSpec.applies` says when the method cannot run in a setting, and
  `config.method` is part of the run identity (run.json), so a workdir holds one method's run.
The single experts (`methods.api.score_singles`) are every method's baseline and are in every
result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from hs_jax.methods.api import MethodResult


def _always(c: ml_collections.ConfigDict) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    run: `(setup, workdir, *, callbacks=(), progress=True) -> MethodResult`.
    family: the paper's grouping (Table 1): trivial, static weight, dynamic weight, static
      role, dynamic role, control, ablation.
    summary: one line for tables and --help.
    overrides: config fields (dotted names) the method sets, applied by the door
    (`pipeline.door.resolve`)
      over whatever the config says (an ablation is 'hs' with one switch changed), in order;
      a callable value is computed from the config as the earlier overrides left it (the
      ablations' budget and iterations). Computed overrides must be idempotent: a resolved
      config can be resolved again (`found_system.run_config`).
    applies: None when the method can run in this (resolved) config, else why not (the
      comparison reports it in the method's cell; a run refuses it in one line).
    """

    run: Callable[..., MethodResult]
    family: str
    summary: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    applies: Callable[[ml_collections.ConfigDict], str | None] = _always


METHODS: dict[str, MethodSpec] = {}
"""Every method by name, in registration order (`hs_jax.methods` imports every method module)."""


def register(name: str, spec: MethodSpec) -> None:
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = spec


def apply_overrides(c: ml_collections.ConfigDict) -> None:
    """Sets the fields config.method's spec overrides (in place; `pipeline.door.resolve` calls it
    before it fills the protocol's fields, so an override of config.protocol takes effect)."""
    spec = METHODS.get(c.method)
    for dotted, value in (spec.overrides if spec else {}).items():
        *path, leaf = dotted.split(".")
        node = c
        for part in path:
            node = node[part]
        node[leaf] = value(c) if callable(value) else value
