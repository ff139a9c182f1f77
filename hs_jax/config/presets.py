"""Protocol presets: what `config.protocol` fills in where the config leaves a field open,
and the paper's setting as a config.

'hs_jax' (the default) fills in the dataclasses' own defaults; 'authors' the authors' released
code as it runs (docs/FIDELITY.md). A value set on the command line always wins. The run's door
(`hs_jax.pipeline.door.resolve`) applies the method's overrides first, then `resolve_protocol`.
"""

from __future__ import annotations

import ml_collections

from hs_jax.config.schema import base_config, defaults
from hs_jax.swarm import pso, search
from hs_jax.tasks.protocol import PROTOCOLS

# What each protocol fills in where the config leaves a field open: hs_jax's are the
# dataclasses' defaults.
_PROTOCOL_SEARCH = {
    "hs_jax": {k: defaults(search.SearchConfig)[k] for k in ("top_p", "schedule", "decode")},
    "authors": {"top_p": 0.0, "schedule": "authors", "decode": "authors"},
}
_PROTOCOL_PSO = {
    "hs_jax": {
        k: defaults(pso.PSOConfig)[k] for k in ("init_velocity", "restart_rule", "restart_patience")
    },
    "authors": {"init_velocity": "random", "restart_rule": "authors", "restart_patience": 0.67},
}


def resolve_protocol(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with every protocol-dependent field made concrete (see the module
    docstring); fails naming config.protocol when it is unknown."""
    c = ml_collections.ConfigDict(config.to_dict())
    if c.protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol={c.protocol!r}: expected one of {PROTOCOLS}")
    for field, value in _PROTOCOL_SEARCH[c.protocol].items():
        if c.search[field] in (None, ""):
            c.search[field] = value
    for name in ("roles_pso", "weights_pso"):
        pso = c.search[name]
        for field, value in _PROTOCOL_PSO[c.protocol].items():
            if pso[field] in (None, ""):
                pso[field] = value
        if pso.restart_patience == 0:
            pso.restart_patience = None
        if pso.patience is None:
            pso.patience = c.search.patience if c.protocol == "authors" else 1
    if not c.task.scoring:
        c.task.scoring = c.protocol
    return c


def paper_config(task: str, data_dir: str | None) -> ml_collections.ConfigDict:
    """The paper's search (N=10, M=10, patience 6, 20 iterations, top-p 0.8) on one of the
    authors' task files, with a pool of PEFT experts given by `experts.peft_dirs`."""
    from hs_jax.tasks import get_spec  # the task registry names the file

    c = base_config()
    c.task.name = task
    c.task.path = f"{data_dir or 'data/eval'}/{get_spec(task).filename}"
    c.experts.source = "peft"
    c.experts.peft_dirs = ml_collections.config_dict.placeholder(str)
    return c
