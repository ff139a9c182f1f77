"""The paper's analyses of finished runs (its section 6 and appendix figures), over workdirs.

- `cgain`: collaborative gain, test items bucketed by how many single experts solve them
  (Figure 3);
- `topology`: the found systems' shapes, where each expert sits, the sparsity table (Table 3);
- `curves`: best-so-far dev utility against utility evaluations, and the search's per-iteration
  curves (Figure 12);
- `scaling`: test utility against pool size (Figure 6) and diversity (Figure 5);
- `roles`: judge-labelled roles of intermediate outputs (Figure 4, the prompt of Table 8);
- `runs` reads the workdirs, `markdown` formats tables, `compose.analyze` runs the chosen
  analyses into one folder (`python -m launch.analyze`).

Everything here reads workdirs and writes only into the output folder; no model is loaded
except the judge of `roles.engine_judge`.
"""

from hs_jax.analysis.compose import ANALYSES, analyze, parse_analyses
from hs_jax.analysis.runs import AnalysisInputError, Run, find_workdirs, load_run, load_runs

__all__ = [
    "ANALYSES",
    "AnalysisInputError",
    "Run",
    "analyze",
    "find_workdirs",
    "load_run",
    "load_runs",
    "parse_analyses",
]
