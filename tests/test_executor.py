"""The wave executor against the node-by-node reference, and its call and row counts."""

import hashlib
import math

import numpy as np
import pytest

from hs_jax.engine.executor import Executor, Generation, System, run_node_by_node
from hs_jax.swarm import graph


class FakeEngine:
    """Deterministic stand-in for a greedy model: the output is a function of (expert, prompt)."""

    def __init__(self):
        self.calls: list[tuple[list[str], list[int]]] = []

    def __call__(self, prompts, expert_ids):
        self.calls.append((list(prompts), list(expert_ids)))
        texts = [
            f"e{e}-" + hashlib.sha256(f"{e}|{p}".encode()).hexdigest()[:6]
            for p, e in zip(prompts, expert_ids, strict=True)
        ]
        return Generation(texts=texts, prompt_tokens=sum(len(p) for p in prompts))


def prompt_fn(item, parent_outputs, *, is_end, position):
    # Like the real templates: an entry node sees only the question.
    if not parent_outputs:
        return f"Q{item}"
    lines = [f"Previous response {k + 1}: {o}" for k, o in enumerate(parent_outputs)]
    return "\n".join([*lines, f"Q{item} end={is_end} pos={position}"])


def random_systems(n, count, seed):
    rng = np.random.default_rng(seed)
    return [
        System(graph.g_decode(rng.uniform(size=(n, n)), rng, top_p=1.0), tuple(range(n)))
        for _ in range(count)
    ]


@pytest.mark.parametrize("max_batch", [4, 64])
def test_wave_executor_equals_node_by_node(max_batch):
    systems = random_systems(n=5, count=6, seed=0)
    items = list(range(3))
    ours = Executor(FakeEngine(), prompt_fn, max_batch=max_batch).run(systems, items)
    reference = run_node_by_node(FakeEngine(), prompt_fn, systems, items)
    assert ours.answers == reference.answers
    assert ours.node_outputs == reference.node_outputs


def test_role_step_call_and_row_counts():
    n, count, items = 5, 8, list(range(4))
    systems = random_systems(n, count, seed=1)
    engine = FakeEngine()
    executor = Executor(engine, prompt_fn, max_batch=64)
    executor.run(systems, items)
    depth = max(len(s.dag.levels) for s in systems)
    rows_per_wave = count * n * len(items)
    assert executor.stats.generate_calls <= depth * math.ceil(rows_per_wave / 64)
    # With the identity assignment every entry node i sees the same prompt in every graph, so
    # leaf generations are bounded by n x |items| however many graphs there are.
    leaf_rows = sum("Previous" not in p for prompts, _ in engine.calls for p in prompts)
    assert leaf_rows <= n * len(items)
    assert executor.stats.rows_generated < executor.stats.rows_requested
    naive = FakeEngine()
    run_node_by_node(naive, prompt_fn, systems, items)
    assert len(naive.calls) >= 5 * executor.stats.generate_calls


def test_cache_across_calls_and_clear():
    systems = random_systems(n=4, count=3, seed=2)
    items = [0, 1]
    engine = FakeEngine()
    executor = Executor(engine, prompt_fn)
    first = executor.run(systems, items)
    calls = len(engine.calls)
    again = executor.run(systems[:1] * 2, items)  # a repeated system (a repeated JFK draw)
    assert len(engine.calls) == calls
    assert again.answers == [first.answers[0]] * 2
    executor.clear_cache()
    executor.run(systems[:1], items)
    assert len(engine.calls) > calls


def test_without_cache_every_row_is_generated():
    systems = random_systems(n=3, count=2, seed=3) * 2
    executor = Executor(FakeEngine(), prompt_fn, cache=False)
    executor.run(systems, [0])
    assert executor.stats.rows_generated == executor.stats.rows_requested == 4 * 3


def test_nodes_without_path_to_end_are_not_run():
    dag = graph.from_edges(4, [(0, 3), (1, 2)], end=3)  # 1 -> 2 never reaches the end
    engine = FakeEngine()
    result = Executor(engine, prompt_fn).run([System(dag, (0, 1, 2, 3))], [0])
    ran = {e for _, experts in engine.calls for e in experts}
    assert ran == {0, 3}
    assert set(result.node_outputs[0]) == {0, 3}


def test_assignment_length_checked():
    with pytest.raises(ValueError, match="one expert per node"):
        System(graph.chain(3), (0, 1))
