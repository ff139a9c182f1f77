"""The baselines of the paper's Table 1 and the controls, as registered methods.

One module per family; each registers its methods with `hs_jax.methods.register` when
imported (this package imports them all):

- `trivial`: best single expert, prediction merge (plurality vote);
- `static_weight`: uniform soup, DARE-TIES, data merge;
- `dynamic_weight`: greedy soup, LoRAHub-style, Model Swarms;
- `ensemble`: Pack-of-LLMs-style logit ensemble;
- `static_role`: chain and star;
- `dynamic_role`: GPT-Swarm-style, GNN edge predictor, Meta-Agent-style;
- `prune`: Agent-Prune-style (dynamic role);
- `random_search`: the random-search controls at the Heterogeneous Swarms budget (random
  systems and weights; random systems over the pool's own weights);
- `controls`: the constant answer and the best single expert's self-consistency.
"""

import importlib

_FAMILIES = (
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

for _name in _FAMILIES:
    importlib.import_module(f"hs_jax.baselines.{_name}")
