"""What a sweep searches over: a space of config fields, the paper's preset, a space file.

A space maps parameters to what each may take. A parameter is one config field (its dotted
path, `search.roles_pso.phi_v`) or a name tying several fields to one draw (`phi_v`: both
swarms' `phi_v`). What it takes is a list of choices (each drawn uniformly by the random
sampler), or a range `{low, high}` (floats; ints when low and high are ints), with `log: true`
for a log scale and `step` for a grid.

The `paper` preset is the paper's grid (Appendix, Implementation Details) as the authors'
starter script samples it: phi_v in {0.1, 0.2, 0.3}, phi_p in {0.1, ..., 0.5}, phi_g in
{0.2, ..., 0.6}, phi_w in {0.01, 0.05, 0.1}, step length in {0.5, ..., 1.0}, each drawn
uniformly from its list, one draw serving both swarms (their search script takes one set of
PSO coefficients for the graph swarm and the expert swarm). The rest of the authors' setting
(random starting velocity, restarts at 0.67, patience 6) is the config's:
`--config.protocol=authors`.

A space file (JSON, or YAML by its suffix) is one mapping in that form::

    {
      "search.roles_pso.phi_v": [0.1, 0.2, 0.3],
      "search.weights_pso.step": {"low": 0.5, "high": 1.0},
      "baselines.lorahub_l1": {"low": 0.001, "high": 0.1, "log": true},
      "search.n_graphs": {"low": 4, "high": 10, "step": 2},
      "phi_g": {"fields": ["search.roles_pso.phi_g", "search.weights_pso.phi_g"],
                "choices": [0.2, 0.4, 0.6]}
    }

`read_space` refuses a malformed entry in one line naming the parameter; `check_space` (the
sweep's door) refuses a field the config does not have, one a sweep cannot vary, or a value
the run's door (`hs_jax.pipeline.door`) refuses, every problem in one error, before anything
loads. Imports nothing heavy: optuna only inside `suggest`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from hs_jax.runtime.errors import ConfigError, UserError

PAPER = "paper"

# Fields a trial may not set: a trial is one run of one process, resumed in its own workdir.
FIXED_FIELDS = (
    "seeds",
    "restart",
    "distributed",
    "coordinator_address",
    "num_processes",
    "process_id",
    "singles_cache",
    "experts.pool_dir",
)

Choice = bool | int | float | str


@dataclasses.dataclass(frozen=True)
class Param:
    """One dimension: the config fields one draw sets, and the choices or range it draws from."""

    name: str
    fields: tuple[str, ...]
    choices: tuple[Choice, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_int(self) -> bool:
        ends = (self.low, self.high, self.step)
        return not self.choices and all(isinstance(x, int) for x in ends if x is not None)

    def values_to_check(self) -> tuple[Choice, ...]:
        """Every choice, or a range's ends: what the door sees before any trial runs."""
        return self.choices or (self.low, self.high)

    def describe(self) -> str:
        if self.choices:
            return "{" + ", ".join(str(c) for c in self.choices) + "}"
        scale = ", log" if self.log else ""
        step = f", step {self.step}" if self.step is not None else ""
        return f"[{self.low}, {self.high}{step}{scale}]"


Space = tuple[Param, ...]


def _tied(name: str, choices: Sequence[float]) -> Param:
    fields = tuple(f"search.{swarm}.{name}" for swarm in ("roles_pso", "weights_pso"))
    return Param(name, fields, tuple(choices))


def paper_space() -> Space:
    """The paper's grid, one draw for both swarms (module docstring)."""
    return (
        _tied("phi_v", (0.1, 0.2, 0.3)),
        _tied("phi_p", (0.1, 0.2, 0.3, 0.4, 0.5)),
        _tied("phi_g", (0.2, 0.3, 0.4, 0.5, 0.6)),
        _tied("phi_w", (0.01, 0.05, 0.1)),
        _tied("step", (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
    )


# ----------------------------------------------------------------------------- reading


def _scalar(x: Any) -> bool:
    return isinstance(x, bool | int | float | str) and not (
        isinstance(x, float) and not math.isfinite(x)
    )


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _choices(name: str, values: Any) -> tuple[Choice, ...]:
    if not isinstance(values, list) or not values:
        raise UserError(f"{name}: choices must be a non-empty list")
    bad = [v for v in values if not _scalar(v)]
    if bad:
        raise UserError(f"{name}: choice {bad[0]!r} is not a number, string or boolean")
    if len({json.dumps(v) for v in values}) < len(values):
        raise UserError(f"{name}: choices repeat a value ({values})")
    return tuple(values)


_RANGE_KEYS = {"low", "high", "log", "step"}


def _param(name: str, spec: Any) -> Param:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{name!r}: a parameter's name must be a non-empty string")
    if isinstance(spec, list):
        return Param(name, (name,), _choices(name, spec))
    if not isinstance(spec, dict):
        raise UserError(
            f"{name}: expected a list of choices or a range {{low, high}}, got {spec!r}"
        )
    fields: Any = spec.get("fields", [name])
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise UserError(f"{name}: 'fields' must be a non-empty list of config field paths")
    rest = {k: v for k, v in spec.items() if k != "fields"}
    if "choices" in rest:
        if set(rest) != {"choices"}:
            raise UserError(f"{name}: 'choices' takes no {sorted(set(rest) - {'choices'})}")
        return Param(name, tuple(fields), _choices(name, rest["choices"]))
    unknown = sorted(set(rest) - _RANGE_KEYS)
    if unknown:
        raise UserError(
            f"{name}: unknown key(s) {unknown}; expected choices or low, high, log, step"
        )
    if "low" not in rest or "high" not in rest:
        raise UserError(f"{name}: a range needs both 'low' and 'high'")
    low, high, log, step = rest["low"], rest["high"], rest.get("log", False), rest.get("step")
    if not _number(low) or not _number(high) or low >= high:
        raise UserError(f"{name}: a range needs numbers low < high, got low={low!r} high={high!r}")
    if not isinstance(log, bool):
        raise UserError(f"{name}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise UserError(f"{name}: a log range needs low > 0, got {low}")
    if step is not None and (not _number(step) or step <= 0 or log):
        raise UserError(f"{name}: 'step' must be a number > 0, on a range without log")
    return Param(name, tuple(fields), (), low, high, log, step)


def parse_space(mapping: Any, where: str = "space") -> Space:
    """A space from its mapping form (module docstring); a UserError naming `where` and the
    parameter for the first malformed entry."""
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{where}: expected a non-empty mapping of parameters")
    try:
        space = tuple(_param(name, spec) for name, spec in mapping.items())
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    seen: dict[str, str] = {}
    for p in space:
        for f in p.fields:
            if f in seen:
                raise UserError(f"{where}: {f} is set by both {seen[f]} and {p.name}")
            seen[f] = p.name
    return space


def read_space(arg: str) -> Space:
    """`--space`: 'paper', or a JSON / YAML file (by suffix: .yaml, .yml) in the module
    docstring's form."""
    if arg == PAPER:
        return paper_space()
    path = Path(arg).expanduser()
    if not path.is_file():
        raise UserError(f"--space={arg}: neither '{PAPER}' nor a file")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            mapping = yaml.safe_load(text)
        else:
            mapping = json.loads(text)
    except Exception as e:  # a parser's message, on one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--space={arg}: not valid {path.suffix[1:] or 'JSON'}: {first}") from None
    return parse_space(mapping, f"--space={arg}")


def to_json(space: Space) -> dict[str, Any]:
    """The space in its file form (a study records it; `parse_space` reads it back)."""
    out: dict[str, Any] = {}
    for p in space:
        spec: dict[str, Any] = {"choices": list(p.choices)} if p.choices else {}
        if not p.choices:
            spec.update(low=p.low, high=p.high, log=p.log)
            if p.step is not None:
                spec["step"] = p.step
        if p.fields != (p.name,):
            spec["fields"] = list(p.fields)
        out[p.name] = spec
    return out


# ----------------------------------------------------------------------------- configs


def _has_field(c: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = c
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, ml_collections.ConfigDict)


def with_values(
    config: ml_collections.ConfigDict, values: Mapping[str, Choice]
) -> ml_collections.ConfigDict:
    """A copy of `config` with each field of `values` (dotted path -> value) set; a value
    the field's type refuses is a ConfigError naming it."""
    c = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in values.items():
        *path, leaf = dotted.split(".")
        node = c
        for part in path:
            node = node[part]
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.{dotted}={value!r}: {e}") from None
    return c


def field_values(space: Space, params: Mapping[str, Choice]) -> dict[str, Choice]:
    """Config field -> value for one trial's drawn parameters (by parameter name)."""
    return {f: params[p.name] for p in space for f in p.fields}


def check_space(config: ml_collections.ConfigDict, space: Space, check) -> None:
    """Refuses, in one ConfigError, every field of `space` the config lacks or a sweep may not
    vary, and every choice (or range end) that `check(config)` (the run's door) refuses with
    the rest of the config as it is."""
    problems = []
    for p in space:
        for f in p.fields:
            if not _has_field(config, f):
                problems.append(f"--space {p.name}: config.{f}: no such config field")
            elif f in FIXED_FIELDS:
                problems.append(f"--space {p.name}: config.{f}: a sweep sets it, a trial cannot")
    if problems:
        raise ConfigError("\n".join(problems))
    for p in space:
        for value in p.values_to_check():
            value = int(value) if p.is_int else value
            try:
                check(with_values(config, dict.fromkeys(p.fields, value)))
            except (UserError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                problems.append(f"--space {p.name}={value!r}: {first}")
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


def suggest(trial, space: Space) -> dict[str, Choice]:
    """Draws (or, for a retried trial, reads back) one value per parameter through the optuna
    `trial`; parameter name -> value."""
    out: dict[str, Choice] = {}
    for p in space:
        if p.choices:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.is_int:
            out[p.name] = trial.suggest_int(
                p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return out
