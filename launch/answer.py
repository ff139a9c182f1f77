"""Answers questions with the multi-LLM system a search found.

  python -m launch.answer --workdir=runs/demo --question="Is there a path from node 0 to 3 ..."
  python -m launch.answer --config=configs/tiny.py --workdir=/tmp/hs_tiny \
      --question="..." --question="..." [--step=N] [--show_nodes] [--json]

--workdir is the run's workdir (the one given to launch.main): a finished run's best system
(results.json, best_experts/), or with --step (or while no results.json exists) the best
system of a checkpoint step. --config is the config the run used; without it the config is read
from the workdir's run.json. All questions are answered in one batched run; --show_nodes also
prints every node's output in topological order. A missing workdir, a path that is a file, or
another mistake is reported in one line (exit status 1); --verbose adds the traceback. On a
running search (its workdir's lock held) the system of its newest committed checkpoint step is
used, with a warning "run in progress (pid ...)"; a step the run prunes meanwhile is skipped.
With config.task.chat_template (or the authors' protocol on a chat dataset) the questions are put
in the chat turn of the run's base model family (`hs_jax.tasks.chat_format`: Gemma, Llama 2 / 3.x,
Mistral, Qwen ChatML), and a model's answer ends at its family's end-of-turn token.
"""

import json

from absl import flags
from ml_collections import config_flags

import hs_jax
from hs_jax.runtime.errors import UserError, config_value, run_main

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The run's config file (default: the workdir's run.json).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_QUESTION = flags.DEFINE_multi_string("question", [], "A question (repeatable).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the finished run).")
_SHOW_NODES = flags.DEFINE_bool("show_nodes", False, "Print every node's output too.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per question.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    if not _QUESTION.value:
        raise UserError("give at least one --question")
    system = hs_jax.load_system(_WORKDIR.value, config_value(_CONFIG), step=_STEP.value)
    answers, nodes = system.answer(_QUESTION.value, return_node_outputs=True)
    for j, (question, answer) in enumerate(zip(_QUESTION.value, answers, strict=True)):
        per_node = [
            {"node": u, "expert": system.expert_names[system.assignment[u]], "output": out[j]}
            for u, out in nodes.items()
        ]
        if _JSON.value:
            record = {"question": question, "answer": answer}
            if _SHOW_NODES.value:
                record["nodes"] = per_node
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(f"Q: {question}")
        if _SHOW_NODES.value:
            for row in per_node:
                end = ", end" if row["node"] == system.dag.end else ""
                print(f"  node {row['node']} ({row['expert']}{end}): {row['output'].strip()}")
        print(f"A: {answer.strip()}\n")


if __name__ == "__main__":
    run_main(main)
