"""Print the summary of a swarm-search checkpoint (no model needed).

python -m launch.inspect_checkpoint --workdir /path/to/workdir [--step 7] [--json]

--workdir is a run's workdir (the one given to launch.main), its search/ folder, or one step
directory in it.
"""

import json
import sys

from absl import app, flags, logging

from hs_jax.checkpointing import NoUsableCheckpointError, summarize_checkpoint

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "run workdir, its search/ folder, or one step directory in it"
)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest readable)")
_JSON = flags.DEFINE_bool("json", False, "print the summary as JSON")
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


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file access at INFO
    try:
        summary = summarize_checkpoint(_WORKDIR.value, _STEP.value)
    except (FileNotFoundError, NoUsableCheckpointError) as e:
        sys.exit(f"inspect_checkpoint: {e}")  # the reason, without a traceback; exit status 1
    print(json.dumps(summary, indent=1) if _JSON.value else format_summary(summary))


if __name__ == "__main__":
    app.run(main)
