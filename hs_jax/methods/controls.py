"""Controls every multi-LLM result must beat besides random search: a constant answer, and
the best single expert's self-consistency at the system's generated tokens.

- `constant_answer`: the most frequent gold answer on dev, answered for every item, with no
  generation at all. A system that collapsed to one answer ("No" to every yes/no question)
  scores exactly this; a table without it cannot tell such a system from one that reasons.
  Answers are counted as the protocol reads them (`gold_key`: the gold text read as an output
  would be, `trivial.vote_key`: numbers by value, text without case); ties go to the answer
  met first in dev order. The output text is that first dev item's gold answer itself (for
  multiple choice its letter), which the protocol's parser reads back as that answer
  (`details.reads_back`), and it is scored by the task's own scoring
  (`Protocol.score_outputs`) on dev and test: 1 evaluation on dev, 0 generated tokens.
- `self_consistency` (Wang et al., 2023): the best single expert on dev (`score_singles`),
  sampled k times per item on the one-node prompt it answers alone (temperature
  config.baselines.sc_temperature, top-p sc_top_p), the plurality of the parsed answers
  per item (`trivial.plurality_vote` over `trivial.vote_key`; ties go to the earlier
  sample), the winning sample's output scored by `Protocol.score_outputs`. k is
  config.baselines.sc_samples when > 0; else, when sc_tokens > 0 (the generated tokens per
  test item of the system it controls for: `launch.compare` sets it from the 'hs' cell's
  `best_system.test_cost`), samples are drawn on dev one at a time until the dev generated
  tokens per item reach it (at most sc_max_samples) and that k is used on test; with both 0,
  k = the pool size (as many generations as a system using every expert). Sample s of a split
  uses the key `sample_key(config.seed, split, s)`, one `Engine.generate` call over the
  split's items (the engine counts every token, as for every method).

Multiple choice and exact match only (a gold answer to repeat, answers to count): judged and
abstain tasks are refused (`MethodSpec.applies`, `NotApplicable`). Each method archives one
evaluation (its dev utility, the pool's weights fingerprint) and reports the same results.json
as every method (`MethodResult`: kind 'constant' / 'self_consistency', the best single
expert's slot as the placeholder system, `details`, `test_cost`).

Resume: neither keeps state between processes. Both are deterministic functions of the task,
the pool and config.seed (greedy singles, seeded samples on the same machine), so a rerun after
a kill does everything again and ends with the run an uninterrupted process writes: the same
outputs, the same costs (counted by the rerun alone) and the archive rewritten from scratch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from hs_jax.methods import archive as archive_lib
from hs_jax.methods import trivial
from hs_jax.methods.api import (
    SINGLE,
    TEST_COST_FIELDS,
    MethodResult,
    NotApplicable,
    Singles,
    cost_snapshot,
    generation_cost,
    score_singles,
)
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.runtime import distributed
from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm.search import BestSystem

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

FAMILY = "control"
SELF_CONSISTENCY = "self_consistency"
SPLIT_STREAMS = {"dev": 0, "test": 1}  # sample keys: one stream per split


def _refusal(method: str, task_type: str) -> str:
    why = "a gold answer to repeat" if method == "constant_answer" else "answers to count"
    return f"{method} needs {why} ({', '.join(trivial.VOTE_TYPES)}), not {task_type}"


def _applies_for(method: str):
    def applies(c) -> str | None:
        task_type = trivial.vote_type_of(c)
        return None if task_type in (None, *trivial.VOTE_TYPES) else _refusal(method, task_type)

    return applies


def _check_type(setup: Setup, method: str) -> None:
    # A task type the config alone could not tell (a task file with a 'dataset' field).
    if setup.spec.type not in trivial.VOTE_TYPES:
        raise NotApplicable(_refusal(method, setup.spec.type))


def _archive_one(setup: Setup, workdir: Path, step: str, system: dict, dev_utility: float):
    """The method's one evaluation on dev, written from scratch (a rerun does it again)."""
    archive = archive_lib.Archive(workdir / archive_lib.ARCHIVE)
    row = {
        "method": setup.config.method, "evaluation": 0, "step": step, "iteration": 0,
        "system": system,
        "weights": archive_lib.weights_fingerprint(distributed.host_tree(setup.experts)),
        "dev_utility": dev_utility if np.isfinite(dev_utility) else None, "cost": None,
    }  # fmt: skip

    def write():
        archive.truncate(0)
        archive.append([row])

    distributed.on_primary(write)
    workdir_lib.kill_point("evaluation")  # test hook: after the archived evaluation


def _mean(scores) -> float:
    # In float64: the mean of 0/1 scores is then exactly (count / n).
    return float(np.mean(np.asarray(scores, np.float64)))


def _result(
    setup: Setup, singles: Singles, expert: int, dev_utility: float, test_outputs: list[str],
    test_items: np.ndarray, *, kind: str, history: dict, details: dict, test_cost: dict,
) -> MethodResult:  # fmt: skip
    return MethodResult(
        # A placeholder for export: the expert's slot of the pool (a control has no system).
        best=BestSystem(SINGLE, (int(expert),), setup.experts, float(dev_utility), 0),
        history=[{"iteration": 0, **history}],
        iterations=1,
        stop_reason="done",
        test_utility=_mean(test_items),
        test_outputs={"0": list(test_outputs)},
        cost=cost_snapshot(setup),
        cost_per_iteration=[],
        singles=singles,
        test_items=[float(x) for x in test_items],
        evaluations=1,
        kind=kind,
        details=details,
        test_cost=test_cost,
    )


# ----------------------------------------------------------------------------- constant


def gold_key(setup: Setup, item) -> Hashable:
    """The answer an item's gold stands for, as the protocol reads it (`trivial.vote_key` of
    the gold text read as an output); a gold the parsers cannot read counts by its text."""
    key = trivial.vote_key(setup.protocol, setup.spec, item, str(item.answer))
    return key if key is not None else ("gold", str(item.answer).strip().casefold())


def most_frequent_gold(setup: Setup, items: Sequence[Any]) -> tuple[Hashable, str, int]:
    """(its key, the gold text of the first item giving it, how many items give it) of the
    most frequent gold answer among `items`; ties: the answer met first."""
    counts: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for j, item in enumerate(items):
        key = gold_key(setup, item)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, j)
    top = max(counts, key=lambda k: (counts[k], -first[k]))
    return top, str(items[first[top]].answer).strip(), counts[top]


def _key_json(key: Hashable | None) -> Any:
    return None if key is None else [str(part) for part in key]


def constant_answer(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """The most frequent gold answer on dev for every item (module docstring)."""
    _check_type(setup, "constant_answer")
    singles = score_singles(setup)  # every result carries the single experts
    protocol, spec = setup.protocol, setup.spec
    key, answer, count = most_frequent_gold(setup, setup.dev)
    first = next(item for item in setup.dev if gold_key(setup, item) == key)
    parsed = trivial.vote_key(protocol, spec, first, answer)
    dev_items = protocol.score_outputs(spec, setup.dev, [answer] * len(setup.dev))
    test_items = protocol.score_outputs(spec, setup.test, [answer] * len(setup.test))
    dev_utility = _mean(dev_items)
    system = {**archive_lib.system_key(SINGLE, (singles.best,)), "constant": answer}
    _archive_one(setup, workdir, "constant", system, dev_utility)
    details = {
        "answer": answer,
        "answer_read_as": _key_json(key),
        "reads_back": parsed == key,
        "dev_count": count,
        "dev_share": count / len(setup.dev),
    }
    return _result(
        setup, singles, singles.best, dev_utility, [answer] * len(setup.test), test_items,
        kind="constant",
        history={"step": "constant", "dev_utility": dev_utility, "answer": answer},
        details=details, test_cost=dict.fromkeys(TEST_COST_FIELDS, 0),
    )  # fmt: skip


# ----------------------------------------------------------------------------- self-consistency


def sample_key(seed: int, split: str, s: int) -> jax.Array:
    """The key of sample s on a split: fold_in(fold_in(key(seed), SPLIT_STREAMS[split]), s)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), SPLIT_STREAMS[split]), s)


def one_node_prompts(setup: Setup, items: Sequence[Any]) -> list[str]:
    """The prompt an expert answering alone gets (a one-node system's end node)."""
    return [setup.protocol.node_prompt(item, [], is_end=True, position=0) for item in items]


def majority(setup: Setup, items: Sequence[Any], samples: Sequence[Sequence[str]]):
    """(the sample each item takes, the voted outputs, their per-item scores): the plurality
    of the samples' parsed answers per item, ties to the earlier sample."""
    keys = [
        [trivial.vote_key(setup.protocol, setup.spec, item, out) for item, out in zip(items, outs)]
        for outs in samples
    ]
    chosen = trivial.plurality_vote(keys, list(range(len(samples))))
    voted = [samples[s][j] for j, s in enumerate(chosen)]
    return chosen, voted, setup.protocol.score_outputs(setup.spec, items, voted)


class _Sampler:
    """Samples of one expert on one split's one-node prompts, one generate call each."""

    def __init__(self, setup: Setup, expert: int, split: str, items: Sequence[Any]):
        b = setup.config.baselines
        self.setup, self.expert, self.split = setup, int(expert), split
        self.prompts = one_node_prompts(setup, items)
        self.temperature, self.top_p = float(b.sc_temperature), float(b.sc_top_p)
        self.samples: list[list[str]] = []
        self.tokens = 0  # generated over all samples so far

    def draw(self) -> None:
        s = len(self.samples)
        out = self.setup.scorer.engine.generate(
            self.prompts, [self.expert] * len(self.prompts),
            max_new_tokens=self.setup.spec.max_new_tokens, temperature=self.temperature,
            top_p=self.top_p, key=sample_key(int(self.setup.config.seed), self.split, s),
        )  # fmt: skip
        self.samples.append(list(out.texts))
        self.tokens += int(out.costs.generated_tokens)

    @property
    def tokens_per_item(self) -> float:
        return self.tokens / len(self.prompts)


def test_tokens_per_item(results: dict[str, Any] | None) -> float | None:
    """Generated tokens per test item of a results.json's best system (its
    `best_system.test_cost`), the target of a self-consistency run; None when it has none."""
    cost = ((results or {}).get("best_system") or {}).get("test_cost") or {}
    n_test = (results or {}).get("n_test")
    if "generated_tokens" not in cost or not n_test:
        return None
    return float(cost["generated_tokens"]) / int(n_test)


def sample_count(b, n_experts: int) -> tuple[int | None, str]:
    """(k, the rule that set it): sc_samples; sc_tokens (k found on dev: None here); the pool
    size."""
    if int(b.sc_samples) > 0:
        return int(b.sc_samples), "sc_samples"
    if float(b.sc_tokens) > 0:
        return None, "sc_tokens"
    return int(n_experts), "pool_size"


def self_consistency(setup: Setup, workdir: Path, *, callbacks=(), progress=True) -> MethodResult:
    """The best single expert's majority vote over k samples per item (module docstring)."""
    _check_type(setup, "self_consistency")
    b = setup.config.baselines
    singles = score_singles(setup)
    expert = singles.best
    setup.scorer.set_weights(setup.experts)  # the pool as loaded
    k, rule = sample_count(b, setup.experts.n_experts)
    target = float(b.sc_tokens) if rule == "sc_tokens" else None
    dev = _Sampler(setup, expert, "dev", setup.dev)
    dev_tokens: list[float] = []  # generated tokens per dev item after each sample

    def enough() -> bool:
        if k is not None:
            return len(dev.samples) >= k
        reached = bool(dev_tokens) and dev_tokens[-1] >= target
        return reached or len(dev.samples) >= int(b.sc_max_samples)

    while not enough():
        dev.draw()
        dev_tokens.append(dev.tokens_per_item)
    k = len(dev.samples)
    _, _, dev_items = majority(setup, setup.dev, dev.samples)
    dev_utility = _mean(dev_items)
    system = {**archive_lib.system_key(SINGLE, (expert,)), "samples": k}
    _archive_one(setup, workdir, "self_consistency", system, dev_utility)

    before = cost_snapshot(setup)
    test = _Sampler(setup, expert, "test", setup.test)
    for _ in range(k):
        test.draw()
    test_cost = generation_cost(cost_snapshot(setup), before)
    chosen, voted, test_items = majority(setup, setup.test, test.samples)
    details = {
        "expert": expert,
        "name": setup.names[expert],
        "k": k,
        "k_from": rule,
        "target_tokens_per_item": target,
        "max_samples": int(b.sc_max_samples),
        "temperature": float(b.sc_temperature),
        "top_p": float(b.sc_top_p),
        "dev_tokens_per_item": dev_tokens,
        "test_tokens_per_item": test.tokens_per_item,
        "test_chosen_sample": chosen,
    }
    return _result(
        setup, singles, expert, dev_utility, voted, test_items, kind="self_consistency",
        history={"step": "self_consistency", "dev_utility": dev_utility,
                 "dev_tokens_per_item": dev_tokens},
        details=details, test_cost=test_cost,
    )  # fmt: skip


register(
    "constant_answer",
    MethodSpec(
        constant_answer, FAMILY, "the most frequent gold answer on dev, for every item",
        applies=_applies_for("constant_answer"),
    ),
)  # fmt: skip
register(
    SELF_CONSISTENCY,
    MethodSpec(
        self_consistency, FAMILY,
        "the best single expert's majority vote over k samples at the system's tokens",
        applies=_applies_for(SELF_CONSISTENCY),
    ),
)  # fmt: skip
