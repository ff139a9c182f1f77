"""A sweep: an Optuna study whose trials are ordinary runs, shared by any number of workers.

  python -m launch.sweep --config=configs/paper.py:gsm8k --space=paper --trials=50 \
    --workdir=runs/sweep_gsm8k

Each trial is one run (`hs_jax.pipeline.runner.run`, what `hs_jax.run` does for one seed) of
the config with the trial's values set (`hs_jax.sweep.space`), in its own workdir
`<workdir>/trials/<slot>` (locked, resumed, every file of a run), and its objective is the
run's dev utility (results.json `best_system.dev_utility`), maximised. Every trial shares the
single experts' scores (`<workdir>/singles`) and, when the config trains its pool and the
space varies no pool field, one pool trained once (`<workdir>/pool`).

Slots. The study holds `trials` slots: a slot is a trial and, when its worker died or it
failed, the retries of it, each a new optuna trial with the same parameters
(`RetryHeartbeatStaleTrialCallback`'s record: `failed_trial`, `retry_history`) that runs in the
slot's workdir, so it resumes the run's checkpoint, or returns its finished results.json when
the worker died after writing it. A worker takes the next trial under the study's claim lock
(`hs_jax.sweep.storage`): first it marks the trials of dead workers failed, queues the failed
slots that have retries left (`max_retries`), then takes a queued retry, or a new trial while
the study has fewer than `trials` slots; else it stops. So a rerun of the command, or another
worker, on any host, continues the study up to `trials` slots, each with one result: never a
duplicate, never a lost one. A trial that fails with an error marks it failed (retried by the
next claim) and stops its worker with that error; a trial whose config the run's door refuses,
or whose run ends without a finite dev utility, fails for good.

Pruning (`prune`): each iteration's best dev utility so far is reported (the method's
per-iteration callback), and optuna's MedianPruner stops a trial whose best is below the
median of the earlier trials' at the same iteration (after `prune_startup` finished trials and
`prune_warmup` iterations). A pruned trial's workdir is kept, with `pruned.json` saying where
it stopped; its slot is done.

The best trial is chosen on dev alone (ties: the lowest slot); its test utility, interval and
paired test against the best single expert come from its results.json, written once in the
summary (`hs_jax.sweep.summary`: summary.md, summary.csv, best.json, history.png,
importance.png), which each worker rewrites after every trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from tqdm.auto import tqdm

from hs_jax.config.pool_source import PoolSource
from hs_jax.pipeline import door, runner
from hs_jax.runtime.errors import ConfigError, UserError
from hs_jax.setup import identity
from hs_jax.store import workdir as workdir_lib
from hs_jax.sweep import slots as slots_lib
from hs_jax.sweep import space as space_lib
from hs_jax.sweep import storage as storage_lib
from hs_jax.sweep import summary as summary_lib

TRIALS = "trials"
SINGLES = "singles"
POOL = "pool"
PRUNED_JSON = "pruned.json"
SAMPLERS = ("random", "tpe")
_POLL_S = 10.0


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (launch.sweep's flags)."""

    trials: int
    sampler: str = "random"
    prune: bool = False
    prune_startup: int = 4
    prune_warmup: int = 1
    storage: str = ""  # '' = the journal file in the workdir
    study_name: str = ""  # '' = the workdir's name
    max_retries: int = 2
    heartbeat_s: int = storage_lib.DEFAULT_HEARTBEAT_S
    seed: int | None = None  # the sampler's; None = config.seed

    def problems(self) -> list[str]:
        out = []
        if self.trials < 1:
            out.append(f"--trials={self.trials}: must be >= 1")
        if self.sampler not in SAMPLERS:
            out.append(f"--sampler={self.sampler}: expected one of {', '.join(SAMPLERS)}")
        if self.prune_startup < 0 or self.prune_warmup < 0:
            out.append("--prune_startup and --prune_warmup must be >= 0")
        if self.max_retries < 0:
            out.append(f"--max_retries={self.max_retries}: must be >= 0")
        if self.heartbeat_s < 1:
            out.append(f"--heartbeat_s={self.heartbeat_s}: must be >= 1")
        return out


# ----------------------------------------------------------------------------- the door


def check(
    config: ml_collections.ConfigDict, space: space_lib.Space, options: SweepOptions
) -> ml_collections.ConfigDict:
    """The sweep's door: the options, the config (as the run's door sees it, with what a
    sweep cannot vary refused) and every value of the space through the run's door; one error
    naming every problem, before anything loads. Returns the opened config."""
    problems = options.problems()
    if config.seeds:
        problems.append(
            f"config.seeds={config.seeds!r}: a trial is one run; sweep one seed at a time"
        )
    if config.distributed:
        problems.append(
            "config.distributed=True: each trial runs in one process; start launch.sweep on "
            "every host instead (they share the study through --storage)"
        )
    if config.restart:
        problems.append("config.restart=True: a sweep resumes its trials; use a new --workdir")
    if problems:
        raise ConfigError("\n".join(problems))
    storage_lib.check_storage(options.storage)
    opened = door.open_config(config)
    space_lib.check_space(config, space, door.open_config)
    return opened


def _definition(config, space: space_lib.Space, options: SweepOptions) -> dict[str, Any]:
    """What defines the study: the resolved config (without the fields that do not change a
    run's results), the space, the sampler and its seed. A worker refuses a study that
    recorded another."""
    return {
        "config": workdir_lib.flat_config(door.resolve(config), identity.FREE_FIELDS),
        "space": space_lib.to_json(space),
        "sampler": options.sampler,
        "seed": _seed(config, options),
    }


def _seed(config, options: SweepOptions) -> int:
    return int(config.seed if options.seed is None else options.seed)


# ----------------------------------------------------------------------------- samplers


def _sampler(kind: str, seed: int):
    """A sampler whose draws for trial k depend on (seed, k) only, never on which worker asks:
    each trial gets its own inner sampler seeded from both (optuna's RandomSampler, or a
    TPESampler that reads the whole study's history and treats running trials as liars)."""
    import optuna

    def make(number: int):
        trial_seed = (seed * 1_000_003 + number) % (2**31)
        if kind == "tpe":
            return optuna.samplers.TPESampler(seed=trial_seed, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=trial_seed)

    class PerTrialSeeded(optuna.samplers.BaseSampler):
        def __init__(self):
            self._inner: dict[int, optuna.samplers.BaseSampler] = {}

        def _for(self, trial):
            if trial.number not in self._inner:
                self._inner = {trial.number: make(trial.number)}  # one trial at a time
            return self._inner[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            inner = self._for(trial)
            return inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._for(trial).after_trial(study, trial, state, values)

    return PerTrialSeeded()


def _pruner(options: SweepOptions):
    import optuna

    if not options.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=options.prune_startup, n_warmup_steps=options.prune_warmup
    )


# ----------------------------------------------------------------------------- slots


def _retry(study, trial) -> None:
    """Queues `trial` again, same parameters and reports (optuna's retry callback)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(
            inherit_intermediate_values=True
        )
    callback(study, trial)


@dataclasses.dataclass
class _Context:
    config: ml_collections.ConfigDict
    space: space_lib.Space
    options: SweepOptions
    workdir: Path
    storage: storage_lib.Storage
    worker: storage_lib.Worker
    study: Any
    study_name: str
    pool_dir: str = ""

    def trial_id(self, number: int) -> int:
        s = self.storage.optuna_storage
        return s.get_trial_id_from_study_id_trial_number(
            s.get_study_id_from_name(self.study_name), number
        )

    def slot_dir(self, slot: int) -> Path:
        return self.workdir / TRIALS / f"{slot:04d}"


def _fail_dead(ctx: _Context) -> None:
    """Marks failed the running trials whose worker is gone (storage module docstring)."""
    import optuna
    from optuna.trial import TrialState

    if not ctx.storage.journal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(ctx.study)
        return
    for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if not ctx.worker.alive(worker):
            logging.warning("trial %d: its worker %s is gone; marked failed", t.number, worker)
            trial_id = ctx.trial_id(t.number)
            storage = ctx.storage.optuna_storage
            storage.set_trial_user_attr(trial_id, "error", f"its worker {worker} died")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def _requeue_failed(ctx: _Context) -> None:
    from optuna.trial import TrialState

    for slot, chain in slots_lib.slots(ctx.study.get_trials(deepcopy=False)).items():
        last = chain[-1]
        if last.state != TrialState.FAIL or last.user_attrs.get("final"):
            continue
        if slots_lib.retries_of(last) < ctx.options.max_retries:
            logging.info(
                "slot %d: trial %d failed; queued again (same parameters)", slot, last.number
            )
            _retry(ctx.study, last)


def claim(ctx: _Context):
    """The next trial for this worker (module docstring), or None when the study has all its
    slots and none is queued. Under the claim lock."""
    from optuna.trial import TrialState

    with ctx.storage.claim_lock(ctx.study_name):
        _fail_dead(ctx)
        _requeue_failed(ctx)
        trials = ctx.study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if len(slots_lib.slots(trials)) >= ctx.options.trials and not waiting:
            return None
        trial = ctx.study.ask()
        frozen = next(t for t in ctx.study.get_trials(deepcopy=False) if t.number == trial.number)
        slot = slots_lib.slot_of(frozen)
        trial.set_user_attr("slot", slot)
        trial.set_user_attr("worker", ctx.worker.id)
        trial.set_user_attr("workdir", str(ctx.slot_dir(slot).relative_to(ctx.workdir)))
        if ctx.storage.heartbeat_s:
            ctx.storage.optuna_storage.record_heartbeat(ctx.trial_id(trial.number))
        return trial


# ----------------------------------------------------------------------------- one trial


def trial_config(
    config: ml_collections.ConfigDict, fields: Mapping[str, Any], workdir: Path, pool_dir: str
) -> ml_collections.ConfigDict:
    """The config of one trial: `fields` set, the sweep's singles cache and shared pool."""
    c = space_lib.with_values(config, fields)
    if not c.singles_cache:
        c.singles_cache = str(workdir / SINGLES)
    if pool_dir:
        c.experts.pool_dir = pool_dir
    return c


def intermediate(record: Mapping[str, Any]) -> float | None:
    """The best dev utility so far in a method's iteration record (the search's
    `best_utility`; a baseline's `best_utility`, else `best`), or None."""
    value = record.get("best_utility", record.get("best"))
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def pruning_callback(trial) -> Callable[[Mapping[str, Any]], None]:
    """Reports each iteration's best dev utility so far to `trial` and raises
    optuna.TrialPruned when its pruner says so."""
    import optuna

    def callback(record):
        value = intermediate(record)
        if value is None:
            return
        step = int(record["iteration"])
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after iteration {step}: best dev utility so far {value:.4g}"
            )

    return callback


def _archived(trial_dir: Path) -> int:
    """Evaluations a run has archived so far (archive.jsonl's rows)."""
    path = trial_dir / "archive.jsonl"
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _run(ctx: _Context, trial, opened, trial_dir: Path, retried: bool) -> dict[str, Any]:
    """The trial's run; a retry waits while the slot's workdir is still held (a worker
    declared stale that is still finishing)."""
    callbacks = [pruning_callback(trial)] if ctx.options.prune else []
    while True:
        try:
            return runner.run_opened(opened, trial_dir, callbacks=callbacks)
        except workdir_lib.WorkdirBusyError as e:
            if not retried:
                raise
            logging.info("trial %d: %s; waiting", trial.number, e)
            time.sleep(_POLL_S)


def _results_attrs(results: Mapping[str, Any]) -> dict[str, Any]:
    """What the study keeps of a finished trial's results.json (the summary reads it even
    where the trial's workdir is on another host)."""
    best, cost = results["best_system"], results.get("cost") or {}
    return {
        "dev_utility": best.get("dev_utility"),
        "evaluations": results.get("evaluations"),
        "iterations": results.get("iterations"),
        "stop_reason": results.get("stop_reason"),
        "seconds": results.get("seconds"),
        "cost": dict(cost),
        # The test numbers, shown for the chosen trial only (chosen on dev).
        "test": {
            "utility": best.get("test_utility"),
            "interval": best.get("test_interval"),
            "vs_best_single": results.get("vs_best_single"),
            "best_single": results.get("best_single"),
            "n_test": results.get("n_test"),
        },
    }


def run_trial(ctx: _Context, trial) -> str:
    """Runs one claimed trial to its end and tells the study; returns its state's name.
    Raises (after marking the trial failed, to be retried) what the run raised."""
    import optuna
    from optuna.trial import TrialState

    frozen = next(t for t in ctx.study.get_trials(deepcopy=False) if t.number == trial.number)
    slot, retried = slots_lib.slot_of(frozen), frozen.system_attrs.get("failed_trial") is not None
    params = space_lib.suggest(trial, ctx.space)
    fields = space_lib.field_values(ctx.space, params)
    trial_dir = ctx.slot_dir(slot)
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    logging.info(
        "trial %d (slot %d%s): %s", trial.number, slot, ", a retry" if retried else "", shown
    )
    try:
        opened = door.open_config(trial_config(ctx.config, fields, ctx.workdir, ctx.pool_dir))
    except (UserError, ValueError) as e:
        logging.error("trial %d: the run's door refuses it: %s", trial.number, _first_line(e))
        trial.set_user_attr("error", _first_line(e))
        trial.set_user_attr("final", True)
        ctx.study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    start = time.perf_counter()
    try:
        with storage_lib.Heartbeat(ctx.storage, ctx.trial_id(trial.number)):
            results = _run(ctx, trial, opened, trial_dir, retried)
    except optuna.TrialPruned as e:
        reported = ctx.study.get_trials(deepcopy=False)
        steps = next(t for t in reported if t.number == trial.number).intermediate_values
        step = max(steps, default=None)
        note = {
            "trial": trial.number,
            "slot": slot,
            "reason": str(e),
            "iterations_run": None if step is None else step + 1,
            "evaluations": _archived(trial_dir),
            "seconds_here": time.perf_counter() - start,
        }
        workdir_lib.write_json(trial_dir / PRUNED_JSON, note)
        trial.set_user_attr("pruned", note)
        trial.set_user_attr("evaluations", note["evaluations"])
        trial.set_user_attr("iterations", note["iterations_run"])
        ctx.study.tell(trial, state=TrialState.PRUNED)
        logging.info("trial %d: %s", trial.number, e)
        return "PRUNED"
    except BaseException as e:
        with contextlib.suppress(Exception):  # the study may be gone too; the run's files stay
            trial.set_user_attr("error", _first_line(e))
            trial.set_user_attr("evaluations", _archived(trial_dir))
            ctx.study.tell(trial, state=TrialState.FAIL)
        logging.error(
            "trial %d: %s; marked failed (run again by the next claim, %d retries at most)",
            trial.number, _first_line(e), ctx.options.max_retries,
        )  # fmt: skip
        raise
    for key, value in _results_attrs(results).items():
        trial.set_user_attr(key, value)
    dev = results["best_system"].get("dev_utility")
    if dev is None or not math.isfinite(float(dev)):
        trial.set_user_attr("error", "the run found no system with a finite dev utility")
        trial.set_user_attr("final", True)
        ctx.study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    try:
        ctx.study.tell(trial, float(dev))
    except ValueError as e:  # declared stale meanwhile: its retry returns these results
        logging.warning("trial %d: %s; its retry reports the same results", trial.number, e)
        return "FAIL"
    logging.info("trial %d: dev utility %.4g (%s)", trial.number, float(dev), trial_dir)
    return "COMPLETE"


# ----------------------------------------------------------------------------- the sweep


def _shared_pool(ctx: _Context) -> str:
    """`<workdir>/pool/experts` when the config trains its pool and the space varies none of
    the fields that define it: trained once, under the claim lock, for every trial."""
    pool = PoolSource.of(ctx.config)
    varied = [f for p in ctx.space for f in p.fields]
    pool_fields = identity._POOL_FIELDS  # what makes two trained pools the same
    if not pool.trained or pool.pool_dir or any(f.startswith(pool_fields) for f in varied):
        return ""
    folder = ctx.workdir / POOL
    done = folder / ".ready"
    pool_dir = str(folder / "experts")
    with ctx.storage.claim_lock(ctx.study_name):
        if not done.exists():
            c = ml_collections.ConfigDict(ctx.config.to_dict())
            c.experts.pool_dir = pool_dir
            logging.info("training the sweep's expert pool once, in %s", pool_dir)
            runner.make_pool(c, folder)
            workdir_lib.write_bytes(done, b"")
    return pool_dir


def open_study(config, space, options: SweepOptions, workdir: Path, storage, worker):
    """Creates or loads the study (under the claim lock) and checks its definition."""
    import optuna

    name = options.study_name or workdir.resolve().name
    definition = _definition(config, space, options)
    with storage.claim_lock(name):
        study = optuna.create_study(
            storage=storage.optuna_storage,
            study_name=name,
            direction="maximize",
            sampler=_sampler(options.sampler, _seed(config, options)),
            pruner=_pruner(options),
            load_if_exists=True,
        )
        saved = study.user_attrs.get("definition")
        if saved is None:
            study.set_user_attr("definition", json.loads(json.dumps(definition)))
        else:
            diff = workdir_lib.identity_diff(saved, definition, saved_as="the study")
            if diff:
                raise UserError(
                    f"study {name!r} in {storage.describe()} was started with another sweep "
                    "definition:\n" + "\n".join(diff) + "\nuse another --workdir (or "
                    "--study_name) to sweep this one"
                )
    return _Context(config, space, options, workdir, storage, worker, study, name)


def _finished_slots(ctx: _Context) -> int:
    chains = slots_lib.slots(ctx.study.get_trials(deepcopy=False)).values()
    return sum(slots_lib.done(slots_lib.status(c[-1], ctx.options.max_retries)) for c in chains)


def write_summary(ctx: _Context) -> dict[str, Any]:
    with ctx.storage.claim_lock(ctx.study_name):
        return summary_lib.write(
            ctx.study, ctx.workdir, ctx.options, ctx.storage.describe(),
            lambda params: space_lib.field_values(ctx.space, params),
        )  # fmt: skip


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    space: space_lib.Space,
    options: SweepOptions,
    *,
    progress: bool = True,
    pruner=None,
) -> dict[str, Any]:
    """Runs this process as one worker of the sweep (module docstring) until the study has
    all its slots; writes the summary and returns it (`hs_jax.sweep.summary.write`).
    `pruner` replaces the options' (tests)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check(config, space, options)
    workdir = workdir_lib.make_workdir(workdir)
    storage = storage_lib.open_storage(options.storage, workdir, options.heartbeat_s)
    worker = storage_lib.Worker(workdir, storage.journal)
    try:
        ctx = open_study(config, space, options, workdir, storage, worker)
        if pruner is not None:
            ctx.study.pruner = pruner
        ctx.pool_dir = _shared_pool(ctx)
        logging.info(
            "sweep %r (%s): %d trials over %s; worker %s",
            ctx.study_name, storage.describe(), options.trials,
            ", ".join(f"{p.name} {p.describe()}" for p in space), worker.id,
        )  # fmt: skip
        bar = tqdm(
            total=options.trials, initial=_finished_slots(ctx), desc="trials", disable=not progress
        )
        with bar:
            while (trial := claim(ctx)) is not None:
                state = run_trial(ctx, trial)
                gc.collect()
                summary = write_summary(ctx)
                bar.n = _finished_slots(ctx)
                bar.set_postfix(last=state, best=summary.get("best_dev"))
                bar.refresh()
        summary = write_summary(ctx)
    finally:
        worker.close()
    logging.info("sweep in %s: %s", workdir, summary["line"])
    return summary
