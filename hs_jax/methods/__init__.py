"""Methods: how a system is found. `METHODS` is the registry (`registry.py`), complete once
this package is imported: 'hs' and its ablations (`hs.py`) first, then the paper's Table 1
baselines and the controls, one module per family, each registering itself:

- `trivial`: best single expert, prediction merge (plurality vote);
- `static_weight`: uniform soup, DARE-TIES, data merge (with `merging`);
- `dynamic_weight`: greedy soup, LoRAHub-style, Model Swarms;
- `ensemble`: Pack-of-LLMs-style logit ensemble;
- `static_role`: chain and star (with `topologies`);
- `dynamic_role`: GPT-Swarm-style, GNN edge predictor (`gnn`), Meta-Agent-style;
- `random_search`: the random-search controls at the Heterogeneous Swarms budget;
- `prune`: Agent-Prune-style (dynamic role);
- `controls`: the constant answer and the best single expert's self-consistency.

What every method shares (the `Setup` it gets, `MethodResult`, the `Evaluator`, the singles)
is `api.py`; `archive.py` writes every system a method scored (archive.jsonl).
"""

import importlib

from hs_jax.methods.registry import METHODS, MethodSpec, register

_MODULES = (
    "hs",
    "trivial",
    "static_weight",
    "dynamic_weight",
    "ensemble",
    "static_role",
    "dynamic_role",
    "random_search",
    "prune",
    "controls",
)

for _name in _MODULES:
    importlib.import_module(f"hs_jax.methods.{_name}")

__all__ = ["METHODS", "MethodSpec", "register"]
