"""Generation cost counters, kept by the engine for every generate call whoever makes it.

`Engine.generate` (hs_jax.engine.engine) adds each call's costs to its `costs`, so one counter
covers every generation of a run: a system's node calls, AbstainQA's checks and the judge's ratings
alike (`scoring.SystemScorer.costs` reads it). The executor's `ExecutionStats`
(hs_jax.engine.executor) stays the executor's own account of its rows and cache hits.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class GenerationCosts:
    """Counters over generate calls; add with `+`, compare runs with `-`.

    generate_calls: `Engine.generate` calls with at least one prompt.
    rows: prompts generated (every row is generated: the engine has no cache).
    prompt_tokens: prompt tokens run (BOS included, after any truncation).
    generated_tokens: tokens generated, each row's up to and including the one that ended it.
    """

    generate_calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0

    def __add__(self, other: GenerationCosts) -> GenerationCosts:
        return GenerationCosts(**{k: v + getattr(other, k) for k, v in self.as_dict().items()})

    def __sub__(self, other: GenerationCosts) -> GenerationCosts:
        return GenerationCosts(**{k: v - getattr(other, k) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)
