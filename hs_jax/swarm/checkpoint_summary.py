"""What a search checkpoint holds, for a person: `launch.inspect_checkpoint` and the Colab
notebooks print it. Read from the checkpoint's JSON item only (no model, no arrays)."""

from __future__ import annotations

import os
from typing import Any

from hs_jax.store import checkpointing
from hs_jax.swarm.history import IterationRecord


def summarize_checkpoint(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """Summary of a search checkpoint, read from its JSON item only (no model, no arrays).

    ``path``: as for ``checkpointing.read_meta`` (a search workdir, one step directory in it,
    or a run's workdir). Returns iteration, whether the search finished and why, the best
    system (utility, iteration, DAG as JSON, assignment), a per-iteration table of utilities
    (None for a step that did not run), and the saved identity (config). Damaged array files
    go unnoticed here: see ``checkpointing.verify_checkpoint``.
    """
    path, step, meta = checkpointing.read_meta(path, step)
    rows = []
    for record in (IterationRecord.from_json(r) for r in meta.get("history", [])):
        row = {"iteration": record.iteration, "best_so_far": record.best_utility}
        for phase in ("role", "weight"):
            part = record.step(phase)
            for stat in ("best", "mean", "worst"):
                row[f"{phase}_{stat}"] = getattr(part, stat) if part.ran else None
        rows.append(row)
    best = meta.get("best") or {}
    return {
        "workdir": path,
        "step": step,
        "iteration": meta.get("iteration"),
        "finished": meta.get("stop_reason") is not None,
        "stop_reason": meta.get("stop_reason"),
        "best_utility": best.get("utility"),
        "best_iteration": best.get("iteration"),
        "best_dag": best.get("dag"),
        "best_assignment": best.get("assignment"),
        "test_utility": meta.get("test_utility"),
        "utilities": rows,
        "config": (meta.get("identity") or {}).get("config"),
    }
