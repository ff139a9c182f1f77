"""The paper's analyses over finished runs: collaborative gain, topology and sparsity, utility
against budget, scaling with the pool, judge-labelled roles (hs_jax.analysis).

  python -m launch.analyze --workdirs=runs/hs,runs/random_search --out=runs/analysis
  python -m launch.analyze --workdirs=runs --analyses=cgain,curves --out=runs/analysis

--workdirs: workdirs, or folders holding them at any depth (a workdir is finished when it holds
results.json; previous/ folders are skipped). The output folder gets analysis.md, analysis.json
and the pictures. 'roles' needs a judge model (--judge_model) and runs that saved their test
prompts (--config.outputs.save_prompts=True). A missing, unfinished or damaged workdir is
reported in one line (exit status 1); --verbose adds the traceback.
"""

from absl import flags

from hs_jax.runtime.errors import UserError, run_main

_WORKDIRS = flags.DEFINE_string(
    "workdirs", None, "Comma list of finished workdirs, or folders holding them.", required=True
)
_OUT = flags.DEFINE_string(
    "out", None, "Folder for analysis.md, analysis.json and pictures.", required=True
)
_ANALYSES = flags.DEFINE_string(
    "analyses", "all", "'all' or a comma list of cgain, topology, curves, scaling, roles."
)
_SOLVED_ABOVE = flags.DEFINE_float(
    "solved_above",
    0.0,
    "C-Gain: a per-item score above this counts as solved (judged tasks: e.g. 0.5).",
)
_JUDGE_MODEL = flags.DEFINE_string(
    "judge_model", "", "roles: the judge's model spec (GGUF path, HF dir, PyPI model name)."
)
_JUDGE_TOKENS = flags.DEFINE_integer("judge_max_new_tokens", 16, "roles: judge reply length.", 1)
_JUDGE_PREFIX = flags.DEFINE_string(
    "judge_answer_prefix", "Scenario:", "roles: a last prompt line the judge continues."
)
_JUDGE_CHAT = flags.DEFINE_boolean("judge_chat", False, "roles: wrap prompts in the chat format.")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    from hs_jax import analysis
    from hs_jax.analysis import roles

    chosen = analysis.parse_analyses(_ANALYSES.value)
    generate = None
    if "roles" in chosen and _JUDGE_MODEL.value:
        generate = roles.engine_judge(_JUDGE_MODEL.value, max_new_tokens=_JUDGE_TOKENS.value)
    analysis.analyze(
        _WORKDIRS.value,
        _OUT.value,
        analyses=chosen,
        solved_above=_SOLVED_ABOVE.value,
        generate=generate,
        judge_options={"answer_prefix": _JUDGE_PREFIX.value, "chat": _JUDGE_CHAT.value},
    )
    print(f"analysis written to {_OUT.value}/analysis.md")


if __name__ == "__main__":
    run_main(main)
