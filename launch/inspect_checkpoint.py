"""Print the summary of a swarm-search checkpoint (no model needed), or verify its arrays.

python -m launch.inspect_checkpoint --workdir /path/to/workdir [--step 7] [--json]
python -m launch.inspect_checkpoint --workdir /path/to/workdir --verify [--step 7]

--workdir is a run's workdir (the one given to launch.main), its search/ folder, or one step
directory in it. The summary reads the JSON item only, so it does not notice damaged array
files; --verify reads every array of each step (or of --step) and checks it against the CRC32
recorded at save time, printing one line per step (ok, or damaged and why). Every failure is
one line, ``inspect_checkpoint: <what>``, with exit status 1 (--verify: also when a step is
damaged); --verbose shows the traceback instead.

Safe on a running search: while a run holds the workdir's lock, the output says "run in
progress (pid ...)", only committed steps are read, and a step the run prunes while it is read
is reported as "pruned while reading", not as damaged (exit status 0 when every step read is
healthy; real damage still exits 1).
"""

import json
import sys

from absl import app, flags, logging

from hs_jax.store.checkpointing import NoUsableCheckpointError, live_holder, verify_checkpoint
from hs_jax.swarm.checkpoint_summary import summarize_checkpoint

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "run workdir, its search/ folder, or one step directory in it"
)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest readable)")
_JSON = flags.DEFINE_bool("json", False, "print the summary (or the verification) as JSON")
_VERIFY = flags.DEFINE_bool(
    "verify", False, "read the arrays of every step (or --step) and check their CRC32s"
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "on failure, show the traceback")
flags.mark_flag_as_required("workdir")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_summary(summary: dict) -> str:
    """Human-readable text: header, best system, one line per iteration."""
    lines = [
        f"workdir: {summary['workdir']}  step: {summary['step']}  "
        f"iteration: {summary['iteration']}",
        f"finished: {summary['finished']}  stop reason: {summary['stop_reason']}",
        f"best utility: {_fmt(summary['best_utility'])} (iteration {summary['best_iteration']})",
        f"best dag: {summary['best_dag']}",
        f"best assignment: {summary['best_assignment']}",
    ]
    if summary.get("test_utility") is not None:
        lines.append(f"test utility: {_fmt(summary['test_utility'])}")
    lines.append("iter  role best/mean/worst        weight best/mean/worst      best so far")
    for row in summary["utilities"]:
        role = "/".join(_fmt(row[f"role_{s}"]) for s in ("best", "mean", "worst"))
        weight = "/".join(_fmt(row[f"weight_{s}"]) for s in ("best", "mean", "worst"))
        lines.append(f"{row['iteration']:>4}  {role:<26} {weight:<27} {_fmt(row['best_so_far'])}")
    return "\n".join(lines)


def _live_line(live: str) -> str:
    return f"run in progress ({live}): only its committed steps are read"


def format_verification(report: dict) -> str:
    """One line per step: 'step N: ok', 'step N: damaged (<item>: <reason>)' or, beside a live
    run, 'step N: pruned while reading' (deleted by the run, which keeps its newest steps)."""
    lines = [f"workdir: {report['workdir']}"]
    if report.get("live"):
        lines.append(_live_line(report["live"]))
    rows = {
        row["step"]: "ok" if row["ok"] else f"damaged ({row['reason']})" for row in report["steps"]
    }
    for step in report.get("pruned", []):
        rows[step] = "pruned while reading (deleted by the run, which keeps only its newest steps)"
    for step in sorted(rows):
        lines.append(f"step {step}: {rows[step]}")
    if report["moved_aside"]:
        lines.append(f"moved aside earlier (in corrupt/): {', '.join(report['moved_aside'])}")
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    message = text[0] if text else ""
    # The checkpoint layer's own errors say what is wrong; anything else also needs its type.
    if isinstance(e, FileNotFoundError | NotADirectoryError | NoUsableCheckpointError) and message:
        return message
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def _run() -> int:
    if _VERIFY.value:
        report = verify_checkpoint(_WORKDIR.value, _STEP.value)
        print(json.dumps(report, indent=1) if _JSON.value else format_verification(report))
        damaged = [row["step"] for row in report["steps"] if not row["ok"]]
        if damaged:
            print(f"inspect_checkpoint: damaged steps: {damaged}", file=sys.stderr)
            return 1
        return 0
    summary = summarize_checkpoint(_WORKDIR.value, _STEP.value)
    live = live_holder(summary["workdir"])
    if _JSON.value:
        print(json.dumps(dict(summary, live=live), indent=1))
    else:
        header, rest = format_summary(summary).split("\n", 1)
        print("\n".join([header, *([_live_line(live)] if live else []), rest]))
    return 0


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file access at INFO
    try:
        status = _run()
    except Exception as e:
        if _VERBOSE.value:
            raise
        sys.exit(f"inspect_checkpoint: {_one_line(e)} (--verbose shows the traceback)")
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)
