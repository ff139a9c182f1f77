"""SystemScorer's cost counters: the engine counts every generation, the node executor's own
account stays its own."""

import dataclasses

import pytest
from test_engine import CharTokenizer, lora_stack
from test_sampling import CFG, random_params

from hs_jax import tasks
from hs_jax.engine.engine import Engine
from hs_jax.engine.scoring import SystemScorer
from hs_jax.swarm.graph import Dag


class AnyCharTokenizer(CharTokenizer):
    """CharTokenizer for any text (prompt templates hold newlines): char -> one printable id."""

    def encode(self, text, add_special_tokens=False):
        return [(ord(c) - 32) % 95 + 3 for c in text]


ITEMS = [
    tasks.Item(index=i, id=i, question=q, answer="A", choices={"A": "yes", "B": "no"})
    for i, q in enumerate(["Is it?", "Why not?"])
]
SINGLE = Dag(1, (), 0)


@pytest.fixture(scope="module")
def engine():
    return Engine(
        CFG, random_params(CFG), AnyCharTokenizer(), experts=lora_stack(n_experts=2),
        length_buckets=(1024,), new_token_buckets=(8,), batch_buckets=(8,), max_batch=8,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["abstain", "judged"])
def test_costs_count_checks_and_judge(engine, kind):
    spec = dataclasses.replace(
        tasks.make_spec(kind, kind), max_new_tokens=3, check_max_new_tokens=2
    )
    scorer = SystemScorer(engine, spec, tasks.Protocol(task_type=kind), max_batch=8)
    before = scorer.costs
    systems = [(SINGLE, (0,)), (SINGLE, (1,))]
    scorer.score(systems, engine.experts.weights, ITEMS)
    spent = scorer.costs - before
    node_rows = scorer.stats.rows_generated
    assert node_rows == 4 and scorer.stats.generate_calls == 1
    # Node rows plus one more row per (system, item): the self-check or the judge's rating.
    assert spent.rows == node_rows + 4 and spent.generate_calls > scorer.stats.generate_calls
    assert spent.prompt_tokens > scorer.stats.prompt_tokens
    assert spent.generated_tokens > scorer.stats.generated_tokens
    scorer.costs = before  # what a resumed run does with its checkpointed counters
    assert engine.costs == before
