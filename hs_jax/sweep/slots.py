"""A sweep's slots: a trial and its retries, read from the study's trials.

A slot is the trial a worker first took and every retry of it (optuna's retry record:
`failed_trial`, the first trial's number, and `retry_history`); the last trial of a slot says
what the slot is. `hs_jax.sweep.study` counts slots against the study's size and queues
failed ones again; `hs_jax.sweep.summary` reports them.
"""

from __future__ import annotations

from collections.abc import Iterable

# A slot's status, from its last trial.
COMPLETE, PRUNED, FAILED, RETRY, RUNNING, QUEUED = (
    "complete", "pruned", "failed", "failed, to retry", "running", "queued",
)  # fmt: skip
STATUSES = (COMPLETE, PRUNED, FAILED, RETRY, RUNNING, QUEUED)


def slot_of(trial) -> int:
    """The slot of a (frozen) trial: the trial it retries, else its own number."""
    slot = trial.user_attrs.get("slot", trial.system_attrs.get("failed_trial"))
    return int(trial.number if slot is None else slot)


def slots(trials: Iterable) -> dict[int, list]:
    """Slot -> its trials in order, in slot order."""
    out: dict[int, list] = {}
    for t in sorted(trials, key=lambda t: t.number):
        out.setdefault(slot_of(t), []).append(t)
    return dict(sorted(out.items()))


def retries_of(trial) -> int:
    """How many times the slot of `trial` had been tried before it."""
    return len(trial.system_attrs.get("retry_history", []))


def status(last, max_retries: int) -> str:
    """What a slot's last trial says of it: a failure is final when the trial says so (its
    config refused, no finite dev utility) or its retries are spent."""
    state = last.state.name
    if state in ("COMPLETE", "PRUNED", "RUNNING"):
        return {"COMPLETE": COMPLETE, "PRUNED": PRUNED, "RUNNING": RUNNING}[state]
    if state == "WAITING":
        return QUEUED
    final = last.user_attrs.get("final") or retries_of(last) >= max_retries
    return FAILED if final else RETRY


def done(slot_status: str) -> bool:
    """Whether a slot with this status is finished (nothing more will run for it)."""
    return slot_status in (COMPLETE, PRUNED, FAILED)
