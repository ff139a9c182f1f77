"""The mesh layout of a config (`config.mesh`) on the devices a run has."""

from __future__ import annotations

import ml_collections

from hs_jax.runtime.errors import ConfigError


def mesh_shape(c: ml_collections.ConfigDict, n_devices: int, n_processes: int = 1) -> dict:
    """{'data', 'expert', 'model'} sizes of the run's mesh on `n_devices` devices, data=-1
    resolved; a layout the devices cannot hold is a ConfigError naming both numbers.

    A multi-process run must use every device: a process without a device in the mesh could
    take no part in its programs.
    """
    data, expert, model = c.mesh.data, c.mesh.expert, c.mesh.model
    if data == -1:
        if n_devices % (expert * model):
            raise ConfigError(
                f"config.mesh: {n_devices} devices do not divide by expert={expert} x model={model}"
            )
        data = n_devices // (expert * model)
    used = data * expert * model
    if used > n_devices:
        raise ConfigError(
            f"config.mesh: data={data} x expert={expert} x model={model} needs {used} devices, "
            f"there are {n_devices}"
        )
    if n_processes > 1 and used != n_devices:
        raise ConfigError(
            f"config.mesh: data={data} x expert={expert} x model={model} uses {used} of the "
            f"{n_devices} devices of {n_processes} processes; a multi-process run must use all "
            "(leave mesh.data=-1)"
        )
    return {"data": data, "expert": expert, "model": model}


def answer_axes(c: ml_collections.ConfigDict) -> dict[str, int]:
    """The mesh a found system answers on (`sharding.make_mesh` arguments): config.mesh's
    'data' and 'model' axes. No 'expert' axis: answering holds one copy of the chosen experts."""
    return {"data": c.mesh.data, "model": c.mesh.model}
