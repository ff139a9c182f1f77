"""The ensemble baseline (the paper's Table 1, dynamic weight): a Pack-of-LLMs-style ensemble.

`pack_llm` answers every item with all n experts at once. Each item's prompt is the prompt of
a one-node system (`protocol.node_prompt` with no parents, the end node at position 0: what
every single expert is asked). Each expert's perplexity of that prompt gives its weight for the
item, as in PackLLM-sim (Mavromatis et al. 2024, cited by the paper's section 4):

    w_i = softmax_i(-log ppl_i / tau),   log ppl_i = mean NLL of the prompt's tokens under i,

with tau = config.baselines.packllm_tau (default 1: w_i proportional to 1 / ppl_i; PackLLM-opt
tunes the weights per prompt by a greedy search, not done here). The experts then generate
together (`Engine.generate_ensemble`): n rows per item in one batch, and at each step the greedy
token of the weighted mixture of their next-token distributions goes to all n rows
(config.baselines.packllm_fusion: 'probs' mixes probabilities; 'logits' mixes logits, the fusion
of the PackLLM paper). Answers are scored as every method's are: the protocol's parsers for
multiple choice and exact match, the judge for judged tasks and, for AbstainQA, a check pass
answered by the same ensemble (hs_jax: the self-check question; authors: the one-node system's
true/false question about the proposed letter).

Nothing is searched: one utility evaluation on dev (archived like any method's,
`hs_jax.methods.archive`) and one on test. The perplexity passes and the ensemble's k rows per item
are counted by the engine like every generation, so the method's cost compares with the others'.

The result's `best` is a placeholder for what results.json and the export need of a DAG system:
the one-node system of the best single expert with the pool as its weights (its adapter is what
best_experts/ exports); `kind='ensemble'` and `details` (mean weights, tau, fusion) say what was
run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hs_jax import stats, tasks
from hs_jax.config.pool_source import PoolSource
from hs_jax.engine import token_choice
from hs_jax.methods import archive as archive_lib
from hs_jax.methods.api import (
    SINGLE,
    MethodResult,
    NotApplicable,
    cost_snapshot,
    save_audit,
    score_singles,
)
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.runtime import distributed
from hs_jax.swarm.search import BestSystem

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

METHOD = "pack_llm"


def packllm_weights(mean_nll: np.ndarray, tau: float) -> np.ndarray:
    """Each prompt's expert weights [n, k] from the experts' mean NLLs of it [n, k] (the log of
    their perplexities): softmax over experts of -mean_nll / tau. A prompt whose NLL is not
    finite for some expert (nothing to score) gets uniform weights."""
    if not tau > 0:
        raise ValueError(f"packllm_tau must be > 0, got {tau}")
    x = -np.asarray(mean_nll, np.float64) / tau
    finite = np.isfinite(x).all(axis=1, keepdims=True)
    x = np.where(finite, x, 0.0)
    x = x - x.max(axis=1, keepdims=True)
    w = np.exp(x)
    return w / w.sum(axis=1, keepdims=True)


def pack_llm_applies(c) -> str | None:
    if PoolSource.of(c).full:  # Engine.generate_ensemble refuses them
        return (
            "an ensemble runs its experts' rows in one program (a LoRA stack); "
            "experts.source='full' runs one full-weight expert per device call"
        )
    fusion = c.baselines.packllm_fusion
    if fusion not in token_choice.FUSIONS:
        return f"baselines.packllm_fusion={fusion!r}: expected one of {token_choice.FUSIONS}"
    if not c.baselines.packllm_tau > 0:
        return f"baselines.packllm_tau={c.baselines.packllm_tau!r}: expected > 0"
    return None


class _Ensemble:
    """The pool as one Pack-of-LLMs ensemble: weights from perplexity, then joint generation."""

    def __init__(self, setup: Setup):
        self.engine = setup.engine
        self.k = setup.experts.n_experts
        self.tau = float(setup.config.baselines.packllm_tau)
        self.fusion = str(setup.config.baselines.packllm_fusion)

    def weights(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(weights [n, k], mean NLL [n, k]) of every expert on every prompt."""
        n, k = len(prompts), self.k
        rows = [p for p in prompts for _ in range(k)]
        scores = self.engine.prompt_nll(rows, np.tile(np.arange(k, dtype=np.int32), n))
        nll = scores.mean_nll.reshape(n, k)
        return packllm_weights(nll, self.tau), nll

    def answer(self, prompts: Sequence[str], max_new_tokens: int) -> dict[str, Any]:
        """The ensemble's outputs on `prompts`, with the weights and NLLs behind them."""
        w, nll = self.weights(prompts)
        out = self.engine.generate_ensemble(
            prompts, np.arange(self.k), w, max_new_tokens=max_new_tokens, fusion=self.fusion
        )
        return {"prompts": list(prompts), "outputs": list(out.texts), "weights": w, "nll": nll}


def _score(setup: Setup, ensemble: _Ensemble, items) -> dict[str, Any]:
    """The ensemble's per-item scores on `items` under the run's protocol, with its answer
    pass (and AbstainQA's check pass) for the audit trail."""
    spec, protocol = setup.spec, setup.protocol
    prompts = [protocol.node_prompt(item, [], is_end=True, position=0) for item in items]
    answer = ensemble.answer(prompts, spec.max_new_tokens)
    outputs, check = answer["outputs"], None
    if spec.type == "judged":
        scores = np.asarray(setup.scorer.judge.score_items(items, outputs).scores, np.float32)
    elif spec.type == "abstain":
        if protocol.abstain_reruns_graph:  # the one-node system on the check question
            proposed = [
                tasks.CheckItem(item, protocol.choice(item, a) or "Z")
                for item, a in zip(items, outputs, strict=True)
            ]
            check_prompts = [protocol.node_prompt(c, [], is_end=True, position=0) for c in proposed]
        else:
            check_prompts = [
                protocol.check_prompt(item, a) for item, a in zip(items, outputs, strict=True)
            ]
        check = ensemble.answer(check_prompts, spec.check_max_new_tokens)
        correct = protocol.score_outputs(spec, items, outputs) == 1.0
        abstained = [not protocol.keeps_answer(c) for c in check["outputs"]]
        scores = tasks.reliability_scores(correct, abstained)
    else:
        scores = protocol.score_outputs(spec, items, outputs)
    return {"scores": np.asarray(scores, np.float64), "answer": answer, "check": check}


def _audit_rows(setup: Setup, items, scored: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per item and pass: the prompt, the experts' weights, the output, the read answer
    and the score (test_prompts.jsonl, as `scoring.SystemScorer.audit_rows` for DAG systems)."""
    spec, protocol = setup.spec, setup.protocol
    rows = []
    for j, item in enumerate(items):
        for name in ("answer", "check"):
            p = scored[name]
            if p is None:
                continue
            row = {
                "id": item.id,
                "item": item.index,
                "pass": name,
                "node": 0,
                "parents": [],
                "experts": list(range(len(p["weights"][j]))),
                "weights": [float(x) for x in p["weights"][j]],
                "prompt": p["prompts"][j],
                "output": p["outputs"][j],
            }
            if name == "answer":
                row["answer"] = protocol.parsed_answer(spec, item, row["output"])
                if spec.type != "judged":
                    row["correct"] = bool(protocol.correct(spec, item, row["output"]))
                row["score"] = float(scored["scores"][j])
            else:
                row["kept"] = protocol.keeps_answer(row["output"])
            rows.append(row)
    return rows


def _archive_dev(setup: Setup, workdir: Path, utility: float, cost: dict[str, int]) -> None:
    """The dev evaluation as the archive's one row. A rerun after a kill redoes the method
    (it is cheap and deterministic), so an earlier run's row is replaced, not added to."""
    archive = archive_lib.Archive(Path(workdir) / archive_lib.ARCHIVE)
    fingerprint = archive_lib.weights_fingerprint(distributed.host_tree(setup.experts))
    c = setup.config.baselines
    row = {
        "method": METHOD,
        "evaluation": 0,
        "step": "ensemble",
        "iteration": 0,
        "system": {
            "ensemble": list(range(setup.experts.n_experts)),
            "weights": "perplexity",
            "tau": float(c.packllm_tau),
            "fusion": str(c.packllm_fusion),
        },
        "weights": fingerprint,
        "dev_utility": stats.finite_or_none(utility),
        "cost": cost,
    }

    def write():
        archive.truncate(0)
        archive.append([row])

    distributed.on_primary(write)


def _summary(scored: dict[str, Any]) -> dict[str, list[float]]:
    answer = scored["answer"]
    return {
        "mean_weights": [float(x) for x in np.mean(answer["weights"], axis=0)],
        "mean_log_ppl": [float(x) for x in np.nanmean(answer["nll"], axis=0)],
    }


def pack_llm(setup: Setup, workdir: Path, *, callbacks=(), progress: bool = True) -> MethodResult:
    """Every item answered by the perplexity-weighted ensemble of all experts (module
    docstring); scored once on dev and once on test. `callbacks` and `progress` are unused
    (there are no iterations)."""
    reason = pack_llm_applies(setup.config)
    if reason:
        raise NotApplicable(reason)
    k = setup.experts.n_experts
    if k > setup.engine.max_batch:
        raise NotApplicable(f"an ensemble of {k} experts needs engine.max_batch >= {k}")
    singles = score_singles(setup)
    setup.scorer.set_weights(setup.experts)  # the engine holds the pool as loaded
    ensemble = _Ensemble(setup)

    before = cost_snapshot(setup)
    dev = _score(setup, ensemble, setup.dev)
    dev_utility = float(np.mean(dev["scores"])) if len(dev["scores"]) else float("nan")
    dev_cost = {key: int(v) - int(before.get(key, 0)) for key, v in cost_snapshot(setup).items()}
    _archive_dev(setup, workdir, dev_utility, dev_cost)

    test = _score(setup, ensemble, setup.test)
    test_items = [float(x) for x in test["scores"]]
    test_utility = float(np.mean(test_items)) if test_items else None
    save_audit(setup, workdir, lambda: _audit_rows(setup, setup.test, test))
    dev_summary, test_summary = _summary(dev), _summary(test)
    history = [{"iteration": 0, "dev_utility": dev_utility, **dev_summary}]
    details = {
        "experts": list(setup.names),
        "tau": ensemble.tau,
        "fusion": ensemble.fusion,
        "dev_mean_weights": dev_summary["mean_weights"],
        "test_mean_weights": test_summary["mean_weights"],
        "dev_mean_log_ppl": dev_summary["mean_log_ppl"],
        "test_mean_log_ppl": test_summary["mean_log_ppl"],
        "best_is_placeholder": (
            "the system run is the ensemble of all experts; dag and assignment name the best "
            "single expert, whose adapter is exported"
        ),
    }
    best = BestSystem(SINGLE, (singles.best,), setup.experts, dev_utility, 0)
    return MethodResult(
        best=best,
        history=history,
        iterations=1,
        stop_reason="done",
        test_utility=test_utility,
        test_outputs={"0": list(test["answer"]["outputs"])},
        cost=cost_snapshot(setup),
        cost_per_iteration=[],
        singles=singles,
        test_items=test_items,
        evaluations=1,
        kind="ensemble",
        details=details,
    )


register(
    METHOD,
    MethodSpec(
        pack_llm,
        "dynamic weight",
        "Pack of LLMs: all experts' next-token distributions mixed with perplexity weights",
        applies=pack_llm_applies,
    ),
)
