"""Live TensorBoard curves: a running method's utilities, costs and wall time, as event files.

A method writes its points into `<workdir>/tensorboard/` while it runs, so a run can be watched
with ``tensorboard --logdir <workdir>``. A comparison's cells are ordinary runs in their own
workdirs (`<comparison>/<task>/<method>/seed_<s>/`, hs_jax.comparison.compare), so
``tensorboard --logdir <comparison>`` shows every cell, each under its path.

Two TensorBoard runs per workdir, one per x axis (a run's step means one thing):

- ``tensorboard/iterations``, step = the search's iteration t (Heterogeneous Swarms and its
  ablations, `hs_jax.methods.hs`; from an iteration's history record, hs_jax.swarm.history):
  ``iteration/best_utility`` (the all-time best dev utility), ``iteration/role_best``,
  ``iteration/role_mean``, ``iteration/weight_best``, ``iteration/weight_mean`` (each step's
  best and mean utility, when it ran), ``iteration/stall``; with the method's costs,
  ``iteration/evaluations`` (dev evaluations so far) and ``iteration/generate_calls``,
  ``iteration/prompt_tokens``, ``iteration/generated_tokens`` (what the iteration generated);
  ``iteration/seconds`` (wall seconds since the previous iteration's point; the first: since
  the curves were opened, in this process).
- ``tensorboard/evaluations``, step = the evaluation index (archive.jsonl's ``evaluation``,
  the budget's unit), for every method that scores candidates (the search, and every
  baseline through `hs_jax.methods.api.Evaluator`): ``evaluation/utility`` (that system's dev
  utility), ``evaluation/best_so_far`` (the best dev utility of the evaluations up to it, as
  `hs_jax.analysis.curves.best_so_far` draws it from the archive), ``evaluation/generate_calls``,
  ``evaluation/prompt_tokens``, ``evaluation/generated_tokens`` (the run's counters after the
  call that scored it, the singles included, as results.json's ``cost``).

A value that is not finite (a failed system, a step that did not run, no best yet) is left out.

Only process 0 writes. Every point is flushed at once, so TensorBoard shows it at its next
reload. A writer error (a full disk, a folder that cannot be written, a missing tensorboard)
is logged once, and the curves stop there; the run goes on.

Resume. Each process writes new event files (one per folder). A resumed run's first event in a
folder is a restart at the step it starts from (TensorBoard's `SessionLog.START`, what
a summary writer's ``purge_step`` writes), and TensorBoard (both its loaders, checked with 2.21)
drops the killed process's points from that step on: every step shows once, with the resumed
run's values. These are the killed process's values again (the search redoes the iterations
after its checkpoint, a baseline replays its archive from evaluation 0, with the same
utilities and restored cost counters), except ``iteration/seconds``; a reader that ignores
restarts shows the redone steps twice, at the same step and value. A run started over
(config.restart) restarts at 0, which hides the old run's points.

TensorBoard's own record writer (`tensorboard.summary.writer.record_writer`, with its event
protos) writes the events, synchronously into a file this module opens: the summary writers
built on it (TensorBoard's `EventFileWriter`, tensorboardX's `SummaryWriter`) write from a
thread through a bounded queue whose flush does not wait for it, and after a write error in
that thread the queue fills up and blocks the run; tensorboardX also imports torch wherever
torch is installed (3.5 s and 180 MB per process, measured here).
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from hs_jax.methods import archive as archive_lib
from hs_jax.runtime import distributed
from hs_jax.swarm import history as history_lib

TENSORBOARD = "tensorboard"  # <workdir>/tensorboard: the event files
ITERATIONS = "iterations"  # its run with step = iteration
EVALUATIONS = "evaluations"  # its run with step = evaluation index
# The engine's counters drawn (hs_jax.methods.api.cost_snapshot's keys).
COST_FIELDS = ("generate_calls", "prompt_tokens", "generated_tokens")

_serial = itertools.count()  # event file names of one process stay apart


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def iteration_scalars(
    record: Mapping[str, Any],
    cost: Mapping[str, Any] | None = None,
    evaluations: int | None = None,
    seconds: float | None = None,
) -> dict[str, float]:
    """The ``iteration/*`` points of one history record (module docstring); ``cost``: what the
    iteration generated (the engine's counters' change), ``evaluations``: dev evaluations so
    far. A record of another shape than the search's gives what `history.step_stats` reads."""
    out = {"iteration/best_utility": record.get("best_utility")}
    for step in ("role", "weight"):
        stats = history_lib.step_stats(record, step)
        if stats is not None:
            out[f"iteration/{step}_best"], out[f"iteration/{step}_mean"] = stats[:2]
    out["iteration/stall"] = record.get("stall")
    out["iteration/evaluations"] = evaluations
    for field in COST_FIELDS:
        out[f"iteration/{field}"] = (cost or {}).get(field)
    out["iteration/seconds"] = seconds
    return {tag: float(v) for tag, v in out.items() if _finite(v)}


def evaluation_scalars(
    utility: float, best_so_far: float, cost: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """The ``evaluation/*`` points of one evaluation (module docstring)."""
    out = {"evaluation/utility": utility, "evaluation/best_so_far": best_so_far}
    for field in COST_FIELDS:
        out[f"evaluation/{field}"] = (cost or {}).get(field)
    return {tag: float(v) for tag, v in out.items() if _finite(v)}


class LiveCurves:
    """The event files of one workdir (module docstring); on processes other than 0 every call
    does nothing. Also a `hs_jax.swarm.search.run_search` callback: called with a history
    record, it writes that iteration's points."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.folder = self.workdir / TENSORBOARD
        self._on = distributed.is_primary()
        self._writers: dict[str, Any] = {}
        self._clock = time.perf_counter()
        self._evaluations = 0  # the next evaluation index this process expects
        self._best = -math.inf

    def __call__(self, record: Mapping[str, Any]) -> None:
        self.iteration(record)

    def iteration(
        self,
        record: Mapping[str, Any],
        cost: Mapping[str, Any] | None = None,
        evaluations: int | None = None,
    ) -> None:
        """Writes an iteration's points at step ``record['iteration']``."""
        now = time.perf_counter()
        seconds, self._clock = now - self._clock, now

        def points():
            return [
                (int(record["iteration"]), iteration_scalars(record, cost, evaluations, seconds))
            ]

        self._write(ITERATIONS, points)

    def evaluations(
        self, start: int, utilities: Sequence[float], cost: Mapping[str, Any] | None = None
    ) -> None:
        """Writes the points of evaluations ``start``, ``start + 1``, ... (one scoring call's
        systems, with the run's counters after the call)."""

        def points():
            if start != self._evaluations:
                self._best = self._best_before(start)
            out = []
            for k, u in enumerate(utilities):
                if _finite(u):
                    self._best = max(self._best, float(u))
                out.append((start + k, evaluation_scalars(u, self._best, cost)))
            self._evaluations = start + len(out)
            return out

        self._write(EVALUATIONS, points)

    def _best_before(self, start: int) -> float:
        """The best finite dev utility of the archived evaluations before ``start``: where a
        run that resumes mid-way (the search, from its checkpoint) goes on from."""
        rows = archive_lib.Archive(self.workdir / archive_lib.ARCHIVE).read()
        kept = [r.get("dev_utility") for r in rows if int(r.get("evaluation", start)) < start]
        return max((float(u) for u in kept if _finite(u)), default=-math.inf)

    def _write(self, run: str, points: Callable[[], list[tuple[int, dict[str, float]]]]) -> None:
        """Writes ``points()`` (step, {tag: value}) into ``run`` and flushes; on process 0 only,
        and never raising (module docstring)."""
        if not self._on:
            return
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            made = points()
            if not made:
                return
            writer = self._writers.get(run) or self._open(run, made[0][0])
            for step, scalars in made:
                values = [Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]
                event = Event(wall_time=time.time(), step=step, summary=Summary(value=values))
                writer.write(event.SerializeToString())
            writer.flush()
        except Exception as e:  # the curves never stop a run
            self._on = False
            logging.warning(
                "live TensorBoard curves in %s stopped (%s: %s); the run goes on without them",
                self.folder, type(e).__name__, e,
            )  # fmt: skip
            self.close()

    def _open(self, run: str, step: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder = self.folder / run
        folder.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
            f".{next(_serial)}"
        )
        writer = RecordWriter(open(folder / name, "wb"))  # noqa: SIM115 (closed in close())
        self._writers[run] = writer
        writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        # A restart at this process's first step: TensorBoard drops a killed run's points from
        # there on (module docstring).
        start = SessionLog(status=SessionLog.START)
        writer.write(Event(wall_time=time.time(), step=step, session_log=start).SerializeToString())
        return writer

    def close(self) -> None:
        """Closes the event files (a later point opens new ones, restarting at its step)."""
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            try:
                writer.close()
            except Exception as e:  # reported already, or nothing left to lose
                logging.info("closing a TensorBoard event file in %s: %s", self.folder, e)
