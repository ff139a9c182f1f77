"""The door of a run: the config resolved and checked once, before anything is loaded.

`resolve` applies the method's overrides (an ablation is 'hs' with one switch changed,
`methods.registry.MethodSpec.overrides`), then the protocol's presets
(`config.presets.resolve_protocol`); it is idempotent, so a resolved config (a run.json's)
can be resolved again. `check` names every bad field in one ConfigError: the config's own
checks (`config.checks`) and the method's (registered, applies in this setting, a search
section its dataclass accepts). Everything after the door reads the resolved config.
"""

from __future__ import annotations

import ml_collections

from hs_jax import methods
from hs_jax.config import checks, presets, schema
from hs_jax.methods.registry import apply_overrides


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the method's overrides and the protocol's fields applied;
    fails naming config.protocol when it is unknown."""
    c = ml_collections.ConfigDict(config.to_dict())
    apply_overrides(c)  # before the protocol's fields: an override of config.protocol counts
    return presets.resolve_protocol(c)


def method_problems(c: ml_collections.ConfigDict) -> list[str]:
    """`config.method=...: <why>` when the method is not registered or cannot run here."""
    if c.method not in methods.METHODS:
        return [f"config.method={c.method!r}: expected one of {tuple(methods.METHODS)}"]
    why = methods.METHODS[c.method].applies(c)
    return [f"config.method={c.method!r}: does not apply here: {why}"] if why else []


def check(c: ml_collections.ConfigDict) -> None:
    """Raises one ConfigError naming every bad field of the resolved config `c`."""
    checks.check_config(c, method_problems(c))


def open_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`resolve`, then `check`, then the search section through its dataclass: the config a
    run reads from here on."""
    c = resolve(config)
    check(c)
    schema.search_config(c)  # a bad config.search fails here, before anything is loaded
    return c
