"""The study of bench/RESULTS.md ("The study: ..."): the real Gemma 3 270M, a pool of 4 LoRA
experts with distinct skills (one per question type of the generated graph task:
connectivity, cycle, shortest_path, degree), 16 dev and 240 test items that are the same for
every seed (task.gen.seed = 0: seeds vary only the methods' randomness), and the demo's search
budget (N = M = 5, 3 iterations: 30 dev evaluations).

The pool is trained once (`python -m bench.study` does it, or
`python -m launch.make_experts --config=configs/study.py --workdir=<pool>`) on questions of the
generator's 'train' split, which no dev or test question can belong to; the comparison then
loads it as PEFT folders:

  python -m launch.compare --config=configs/study.py:<pool>/experts --tasks=nlgraph_gen \
    --methods=hs,random_search,random_roles,self_consistency,best_single,constant_answer \
    --seeds=0,1,2,3,4 --workdir=<study>

`python -m bench.study --workdir=<study>` runs the whole study in stages (bench/study.py).
"""

import runpy
from pathlib import Path

_DEMO = runpy.run_path(str(Path(__file__).with_name("demo.py")))


def get_config(arg=None):
    c = _DEMO["get_config"]()
    c.task.gen.types = ("connectivity", "cycle", "shortest_path", "degree")
    c.task.gen.n_dev = 16
    c.task.gen.n_test = 240
    c.task.gen.seed = 0  # the same dev and test items for every seed
    c.experts.n = 4  # one expert per question type
    if arg:  # the trained pool's PEFT folders
        c.experts.source = "peft"
        c.experts.peft_dirs = str(arg)
    c.outputs.export_experts = False
    return c
