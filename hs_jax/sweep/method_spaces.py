"""The hyperparameters of every tunable method, declared in one place, and a tuned run.

`launch.compare --tune_trials=K` gives each method listed here K trials over its space (the
same sampler, the same number of runs), chosen on dev, so tuning effort is equal across
methods; a method without an entry (it has no hyperparameter worth tuning: best_single,
uniform_soup, chain, the controls, ...) runs once. Heterogeneous Swarms and its ablations
search the paper's grid (`space.paper_space`); each baseline a small grid around its
defaults (`hs_jax.config.schema.baselines_config`, docs/BASELINES.md), of at most a few dozen
points, so K of 8-20 covers a real share of it.

`tune` runs one method's sweep (`hs_jax.sweep.study`) in a comparison cell's workdir and
returns the results.json a comparison reads for that cell: the chosen trial's (its test
utility, interval and paired test, chosen on dev), with `evaluations`, `cost` and `seconds`
added up over every trial, since they are what the choice cost; the chosen run's own numbers
and the sweep's are under `tuning`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from hs_jax import methods
from hs_jax.methods import hs as hs_method
from hs_jax.store import workdir as workdir_lib
from hs_jax.sweep import space as space_lib
from hs_jax.sweep import study as study_lib

_COEFFICIENTS = {
    "search.weights_pso.phi_v": [0.1, 0.2, 0.3],
    "search.weights_pso.phi_p": [0.1, 0.3, 0.5],
    "search.weights_pso.phi_g": [0.2, 0.4, 0.6],
    "search.weights_pso.phi_w": [0.01, 0.05, 0.1],
    "search.weights_pso.step": [0.5, 0.75, 1.0],
}

# Method -> its space in the file form (`space.parse_space`); 'hs' and its ablations: PAPER.
SPACES: dict[str, Any] = {
    "hs": space_lib.PAPER,
    "dare_ties": {
        "baselines.dare_drop": [0.1, 0.3, 0.5, 0.7],
        "baselines.ties_density": [0.5, 0.75, 1.0],
        "baselines.merge_scale": [0.5, 1.0, 1.5],
    },
    "lorahub": {
        "baselines.lorahub_l1": [0.0, 0.01, 0.05, 0.1],
        "baselines.lorahub_step": [0.25, 0.5, 1.0],
        "baselines.lorahub_step_decay": [0.8, 0.9, 1.0],
    },
    "model_swarms": {
        **_COEFFICIENTS,
        "baselines.model_swarms_step_decay": [0.9, 0.95, 1.0],
    },
    "pack_llm": {
        "baselines.packllm_tau": [0.5, 1.0, 2.0],
        "baselines.packllm_fusion": ["logits", "probs"],
    },
    "gpt_swarm": {
        "baselines.swarm_init": [0.3, 0.5, 0.7],
        "baselines.swarm_lr": [0.25, 0.5, 1.0, 2.0],
    },
    "gnn": {
        "baselines.gnn_lr": [0.003, 0.01, 0.03],
        "baselines.gnn_hidden": [8, 16, 32],
    },
    "meta_agent": {"baselines.designer_feedback": [4, 8, 16]},
}


def space_for(method: str) -> space_lib.Space | None:
    """The declared space of `method` (the ablations of 'hs': the paper's), or None."""
    if method not in SPACES and methods.METHODS[method].run is hs_method.heterogeneous_swarms:
        method = "hs"
    declared = SPACES.get(method)
    if declared is None:
        return None
    if declared == space_lib.PAPER:
        return space_lib.paper_space()
    return space_lib.parse_space(declared, f"the space of {method}")


def tunable(method: str) -> bool:
    return space_for(method) is not None


def _added_costs(rows) -> dict[str, int]:
    """Every cost counter added up over the complete trials."""
    total: dict[str, int] = {}
    for r in rows:
        for key, value in (r["cost"] or {}).items():
            total[key] = total.get(key, 0) + int(value or 0)
    return total


def tune(
    config: ml_collections.ConfigDict, workdir: str | Path, trials: int, *, progress: bool = True
) -> dict[str, Any]:
    """`trials` trials of config.method over its space in `workdir` (resumed like any sweep),
    then the cell's results.json (module docstring), written there and returned. Raises
    ValueError when no trial completed."""
    workdir = Path(workdir)
    space = space_for(config.method)
    if space is None:
        raise ValueError(f"config.method={config.method!r}: no declared space to tune over")
    options = study_lib.SweepOptions(trials=trials, study_name="tuning")
    summary = study_lib.run_sweep(config, workdir, space, options, progress=progress)
    best, table = summary["best"], summary["rows"]
    if best is None:
        raise ValueError(f"no trial of the {trials} completed; see {workdir / 'summary.md'}")
    chosen = workdir_lib.read_json(workdir / best["workdir"] / workdir_lib.RESULTS_JSON)
    run_cost = dict(chosen.get("cost") or {})
    results = {
        **chosen,
        "evaluations": summary["evaluations"],
        "cost": _added_costs(table),
        "seconds": float(sum(r["seconds"] or 0 for r in table)),
        "tuning": {
            "trials": len(table),
            "complete": sum(r["status"] == "complete" for r in table),
            "space": space_lib.to_json(space),
            "chosen": {k: best[k] for k in ("slot", "trial", "params", "dev_utility", "workdir")},
            "fields": space_lib.field_values(space, best["params"]),
            # The chosen run's own numbers (a budgeted method's trials get its evaluations).
            "run": {
                "evaluations": chosen.get("evaluations"),
                "cost": run_cost,
                "seconds": chosen.get("seconds"),
            },
        },
    }
    workdir_lib.write_json(workdir / workdir_lib.RESULTS_JSON, results)
    return results


def run_evaluations(results: dict[str, Any]) -> int | None:
    """The evaluations of one run behind a cell's results.json: a tuned cell's chosen run's,
    else the run's own."""
    tuning = results.get("tuning")
    value = tuning["run"]["evaluations"] if tuning else results.get("evaluations")
    return int(value) if value else None
