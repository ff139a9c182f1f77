"""Dynamic-role baselines: structures over the experts optimised against the dev utility f.

Three methods of the paper's Table 1 (Appendix B), each scoring its candidates through a
`method_api.Evaluator` within `method_api.budget_of(config)` utility evaluations, one history
record per iteration, deterministic given config.seed:

- `gpt_swarm` (GPT-Swarm, edge optimisation only, no prompt optimisation as in the paper):
  the experts in a fixed order (`expert_order`: single dev utility ascending, the best last and
  the end node), an independent Bernoulli edge i -> j for every i < j (acyclic by
  construction) with logit theta_ij; each iteration samples search.n_graphs DAGs, scores them
  in one call and moves theta by REINFORCE with a mean baseline (`reinforce_update`).
- `gnn` (a GAT link predictor, `hs_jax.methods.gnn`): the first half of the budget scores
  random DAGs over the same order (every edge with probability 1/2); the GAT learns, per edge,
  how often the samples holding it beat the median (`gnn.edge_targets`); the second half
  scores DAGs of the edges predicted above several thresholds, then DAGs sampled from the
  predicted probabilities, each structure once.
- `meta_agent` (Meta-Agent-style design by a language model): a designer model reads the task,
  the experts (id, name, single dev utility) and the structures tried so far with their
  utilities (`designer_prompt`, the literal `DESIGNER_PROMPT`) and answers with a structure
  in a strict two-line format (`parse_structure`). Greedy decoding; the proposals of one
  iteration differ by their closing instruction (`INSTRUCTIONS`). A proposal that cannot be
  parsed, is not a valid DAG or repeats a structure already scored is replaced by a seeded
  random DAG; those fallbacks are counted in the history and the details.

The designer (config.baselines.designer): '' = the base model itself (scoring.BASE_MODEL, the
model the judge uses), or an expert index 'k' = the base model with expert k's LoRA. Its
generations go through `setup.engine`, which counts them in the run's costs. A resumed run
generates the designer's proposals again (greedy, same prompts: the same proposals) and counts
them again, as it scores the singles again; the scoring calls themselves are replayed.

Every sampled or proposed DAG is cut to the nodes that reach its end node
(`topologies.keep_reaching`): those are the only ones the executor runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np
from absl import logging

from hs_jax import stats
from hs_jax.config import schema
from hs_jax.engine.scoring import BASE_MODEL
from hs_jax.methods import gnn as gnn_lib
from hs_jax.methods.api import Evaluator, MethodResult, budget_of, score_singles
from hs_jax.methods.registry import MethodSpec, register
from hs_jax.methods.topologies import keep_reaching
from hs_jax.store import workdir as workdir_lib
from hs_jax.swarm.graph import Dag

if TYPE_CHECKING:
    from hs_jax.setup.assembly import Setup

System = tuple[Dag, tuple[int, ...]]

# Shared pieces: the expert order, edge samples, systems, history records. --------------------


def expert_order(single_dev: Sequence[float]) -> np.ndarray:
    """Experts by single dev utility ascending, the best last (ties: the lower id later, so the
    last one is `Singles.best`, the first maximum)."""
    u = np.asarray(single_dev, float)
    u = np.where(np.isfinite(u), u, -np.inf)
    ids = np.arange(len(u))
    return np.lexsort((-ids, u))


def pairs_of(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n(n-1)/2 node pairs (i, j), i < j, of an order: the edges a DAG over it may hold."""
    return np.triu_indices(n, 1)


def sample_edges(rng: np.random.Generator, probs: np.ndarray, k: int) -> np.ndarray:
    """[k, P] bool: k samples of independent edges, pair p present with probability probs[p]."""
    return rng.random((k, len(probs))) < np.asarray(probs)[None, :]


def system_of(edge_mask: np.ndarray, order: np.ndarray) -> System:
    """The system of one edge sample over `order` (node k runs expert order[k], node n-1 is the
    end), cut to the nodes that reach the end."""
    n = len(order)
    rows, cols = pairs_of(n)
    held = np.asarray(edge_mask, bool)
    dag = Dag(n, tuple(zip(rows[held].tolist(), cols[held].tolist(), strict=True)), n - 1)
    return keep_reaching(dag, [int(e) for e in order])


def reinforce_update(
    theta: np.ndarray, edges: np.ndarray, utilities: np.ndarray, lr: float
) -> np.ndarray:
    """One REINFORCE step with a mean baseline on independent Bernoulli edge logits.

    theta: [P] logits, edges: [S, P] samples drawn at p = sigmoid(theta), utilities: [S].
    d log P(edges) / d theta = edges - p, so theta + lr * mean_s((u_s - mean u) (edges_s - p)).
    Samples with a non-finite utility are left out.
    """
    theta = np.asarray(theta, float)
    u = np.asarray(utilities, float)
    keep = np.isfinite(u)
    if not keep.any():
        return theta.copy()
    u, e = u[keep], np.asarray(edges, float)[keep]
    p = 1.0 / (1.0 + np.exp(-theta))
    return theta + lr * np.mean((u - u.mean())[:, None] * (e - p[None, :]), axis=0)


def _record(
    t: int, systems: Sequence[System], u: np.ndarray, ev: Evaluator, **extra: Any
) -> dict[str, Any]:
    """One iteration's history record; 'role' has the fields curves.png reads."""
    role = {
        "ran": True,
        "utilities": [stats.finite_or_none(x) for x in u],
        "dags": [dag.to_dict() for dag, _ in systems],
        "assignments": [list(a) for _, a in systems],
        **stats.best_mean_worst(u, missing=None),
    }
    best = ev.best.utility if ev.best is not None else None
    record = {"iteration": t, "role": role, "best_utility": best, "evaluations": ev.evaluations}
    return workdir_lib.jsonable({**record, **extra})


def _end_iteration(record: dict, history: list, callbacks: Sequence[Callable], method: str):
    history.append(record)
    for callback in callbacks:
        callback(record)
    logging.info(
        "%s iteration %d: best %s this iteration, best so far %s (%d evaluations)",
        method, record["iteration"], record["role"]["best"], record["best_utility"],
        record["evaluations"],
    )  # fmt: skip


def _order_details(order: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    return {"order": [int(e) for e in order], "order_names": [names[int(e)] for e in order]}


# GPT-Swarm. ------------------------------------------------------------------------------------


def gpt_swarm(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """GPT-Swarm's edge optimisation (module docstring), the best sampled DAG on dev."""
    c = setup.config
    singles = score_singles(setup)
    ev = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    rng = np.random.default_rng(c.seed)
    order = expert_order(singles.dev)
    n_pairs = len(pairs_of(len(order))[0])
    p0 = float(np.clip(c.baselines.swarm_init, 1e-6, 1 - 1e-6))
    theta = np.full(n_pairs, np.log(p0 / (1 - p0)))
    probs = np.full(n_pairs, p0)
    history: list[dict[str, Any]] = []
    t = 0
    while ev.remaining > 0:
        k = min(schema.search_config(c).n_graphs, ev.remaining)
        edges = sample_edges(rng, 1.0 / (1.0 + np.exp(-theta)), k)
        systems = [system_of(e, order) for e in edges]
        u = ev.score(systems, setup.experts, step="role", iteration=t)
        theta = reinforce_update(theta, edges, u, c.baselines.swarm_lr)
        probs = 1.0 / (1.0 + np.exp(-theta))
        _end_iteration(_record(t, systems, u, ev, edge_probs=probs), history, callbacks, c.method)
        t += 1
    return ev.finish(
        singles, history=history, iterations=t, stop_reason="budget",
        details={**_order_details(order, setup.names), "edge_probs": _edge_dict(order, probs)},
    )  # fmt: skip


def _edge_dict(order: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """{'a->b': value} per pair of the order, in expert ids."""
    rows, cols = pairs_of(len(order))
    return {
        f"{int(order[i])}->{int(order[j])}": float(v)
        for i, j, v in zip(rows, cols, values, strict=True)
    }


# GNN edge predictor. ----------------------------------------------------------------------------

THRESHOLDS = (0.5, 0.7, 0.3, 0.9, 0.1)  # predicted-probability cuts tried first, in this order


def _predicted_candidates(probs: np.ndarray, order: np.ndarray, rng: np.random.Generator):
    """Systems from predicted edge probabilities [P]: the edges at or above each threshold of
    `THRESHOLDS`, then forever samples of independent edges at those probabilities."""
    for cut in THRESHOLDS:
        yield system_of(probs >= cut, order)
    while True:
        yield system_of(sample_edges(rng, probs, 1)[0], order)


def gnn(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """The GAT edge predictor (module docstring), the best DAG on dev of either half."""
    c, b = setup.config, setup.config.baselines
    singles = score_singles(setup)
    budget = budget_of(c)
    ev = Evaluator(setup, workdir, c.method, budget=budget)
    rng = np.random.default_rng(c.seed)
    order = expert_order(singles.dev)
    n = len(order)
    pairs = pairs_of(n)
    history: list[dict[str, Any]] = []
    seen: set[System] = set()
    samples, utilities = [], []
    t = 0
    data_budget = (budget + 1) // 2
    while ev.evaluations < data_budget:
        k = min(schema.search_config(c).n_graphs, data_budget - ev.evaluations)
        edges = sample_edges(rng, np.full(len(pairs[0]), 0.5), k)
        systems = [system_of(e, order) for e in edges]
        u = ev.score(systems, setup.experts, step="role", iteration=t)
        samples.append(edges)
        utilities.append(u)
        seen.update(systems)
        _end_iteration(_record(t, systems, u, ev, phase="data"), history, callbacks, c.method)
        t += 1

    x = gnn_lib.node_features(np.asarray(singles.dev), order)
    mask = np.ones((n, n), bool)  # attention over every expert, itself included
    labels, weights = gnn_lib.edge_targets(
        np.concatenate(samples), np.concatenate(utilities), pairs, n
    )
    trained = gnn_lib.train(
        x, mask, labels, weights, seed=c.seed, steps=b.gnn_steps, learning_rate=b.gnn_lr,
        hidden=b.gnn_hidden,
    )  # fmt: skip
    probs = trained.probs(x, mask)[pairs]  # [P]
    logging.info("gnn: loss %.4f -> %.4f", trained.losses[0], trained.losses[-1])

    candidates = _predicted_candidates(probs, order, rng)
    stop_reason = "budget"
    while ev.remaining > 0:
        k = min(schema.search_config(c).n_graphs, ev.remaining)
        systems: list[System] = []
        for _ in range(100 * k):  # a small pool may hold fewer new structures than the budget
            system = next(candidates)
            if system not in seen:
                seen.add(system)
                systems.append(system)
                if len(systems) == k:
                    break
        if not systems:
            stop_reason = "no new structures"
            break
        u = ev.score(systems, setup.experts, step="role", iteration=t)
        _end_iteration(_record(t, systems, u, ev, phase="predicted"), history, callbacks, c.method)
        t += 1
    details = {
        **_order_details(order, setup.names),
        "edge_probs": _edge_dict(order, probs),
        "edge_labels": _edge_dict(order, labels[pairs]),
        "loss_first": float(trained.losses[0]),
        "loss_last": float(trained.losses[-1]),
        "training_samples": int(sum(len(s) for s in samples)),
    }
    return ev.finish(singles, history=history, iterations=t, stop_reason=stop_reason,
                     details=details)  # fmt: skip


# Meta-Agent. -----------------------------------------------------------------------------------

DESIGNER_PROMPT = """\
You are designing a team of language models that answer questions together. The team is a
directed acyclic graph whose nodes are models, each named by its id. An edge a->b means that
model b reads the answer of model a before it answers. The end model's answer is the team's
answer. Each model is used at most once; a model with no path to the end model is left out.

Task: {task}

Models (id: name, score on the dev set when answering alone, higher is better):
{models}

{feedback}

Reply with exactly two lines in this format and nothing else:
edges: <a>-><b>, <a>-><b>, ...   (or edges: none)
end: <id>

{instruction}
edges:"""
"""The designer's prompt; the designer continues after the final 'edges:'."""

INSTRUCTIONS = (
    "Propose the team you expect to score highest.",
    "Propose a team that differs from every team listed above.",
    "Propose a team that uses more models than the best team above.",
    "Propose a team with fewer edges than the best team above.",
    "Propose a chain in which each model improves the answer of the model before it.",
    "Propose a team in which several models answer on their own and one model combines them.",
)
"""Closing instructions: proposal j of an iteration ends with INSTRUCTIONS[j % 6], so greedy
decoding still proposes different teams within an iteration."""

_TASK_KINDS = {
    "multiple_choice": "multiple-choice questions answered with a letter",
    "exact_match": "questions with one short exact answer",
    "abstain": "multiple-choice questions where a model may abstain when unsure",
    "judged": "open questions whose answers are rated by a judge",
}


class ProposalError(ValueError):
    """A designer's reply that is not a usable structure (the message says why)."""


_EDGES = re.compile(r"\bedges[ \t]*[:=][ \t]*([^;\n]*)", re.IGNORECASE)
_END = re.compile(r"\bend[ \t]*[:=][ \t]*(-?\d+)\b", re.IGNORECASE)
_EDGE = re.compile(r"(-?\d+)\s*-+>\s*(-?\d+)")


def parse_structure(text: str, n_experts: int) -> System:
    """The system a designer's reply describes, over expert ids 0..n_experts-1.

    Reads the first 'edges: a->b, c->d' (or 'edges: none'; the list ends at a ';' or the end of
    the line) and the first 'end: k', case-insensitive, anywhere in the text, so the two-line
    reply and the one-line 'edges: 0->2, 1->2; end: 2' both parse. Repeated edges count once.
    The nodes are the experts named (each once, ascending); the result is cut to the nodes
    that reach the end. Raises ProposalError for a missing part, an edge that is not 'a->b',
    an id out of range, a self-loop, an edge out of the end model, or a cycle.
    """
    m_edges, m_end = _EDGES.search(text), _END.search(text)
    if m_edges is None:
        raise ProposalError("no 'edges:' line")
    if m_end is None:
        raise ProposalError("no 'end: <id>' line")
    end = int(m_end.group(1))
    edges: list[tuple[int, int]] = []
    for token in m_edges.group(1).split(","):
        token = token.strip().rstrip(".")
        if not token or token.lower() == "none":
            continue
        m = _EDGE.fullmatch(token)
        if m is None:
            raise ProposalError(f"edge {token!r} is not '<a>-><b>'")
        edge = (int(m.group(1)), int(m.group(2)))
        if edge not in edges:
            edges.append(edge)
    for node in (end, *(v for e in edges for v in e)):
        if not 0 <= node < n_experts:
            raise ProposalError(f"model id {node} is not one of 0..{n_experts - 1}")
    nodes = sorted({end, *(v for e in edges for v in e)})
    index = {e: k for k, e in enumerate(nodes)}
    try:
        dag = Dag(len(nodes), tuple((index[u], index[v]) for u, v in edges), index[end])
    except ValueError as e:  # self-loop, an edge out of the end, a cycle
        raise ProposalError(str(e)) from e
    return keep_reaching(dag, nodes)


def format_structure(system: System) -> str:
    """A system in the designer's format, in expert ids ('edges: 0->2, 1->2; end: 2')."""
    dag, assignment = system
    edges = ", ".join(f"{assignment[u]}->{assignment[v]}" for u, v in dag.edges) or "none"
    return f"edges: {edges}; end: {assignment[dag.end]}"


def designer_prompt(
    task: str,
    names: Sequence[str],
    single_dev: Sequence[float],
    tried: Sequence[tuple[System, float]],
    instruction: str,
) -> str:
    """The designer's prompt: `tried` are (system, dev utility), listed best first."""
    models = "\n".join(f"{i}: {name} ({u:.3f})" for i, (name, u) in enumerate(
        zip(names, single_dev, strict=True)))  # fmt: skip
    if tried:
        ranked = sorted(tried, key=lambda su: -su[1] if np.isfinite(su[1]) else np.inf)
        lines = "\n".join(f"{format_structure(s)} -> score {u:.3f}" for s, u in ranked)
        feedback = f"Teams tried so far, best first, with their dev score:\n{lines}"
    else:
        feedback = "No team has been tried yet."
    return DESIGNER_PROMPT.format(task=task, models=models, feedback=feedback,
                                  instruction=instruction)  # fmt: skip


def designer_id(c: ml_collections.ConfigDict, n_experts: int | None) -> int:
    """config.baselines.designer as an engine expert id (BASE_MODEL for ''); ValueError names
    the field when it is neither '' nor an expert index."""
    d = str(c.baselines.designer).strip()
    if d in ("", "base"):
        return BASE_MODEL
    if d.isdigit() and (n_experts is None or int(d) < n_experts):
        return int(d)
    limit = f" (0..{n_experts - 1})" if n_experts else ""
    raise ValueError(
        f"config.baselines.designer={c.baselines.designer!r}: expected '' (the base model) or "
        f"an expert index{limit}"
    )


def _designer_applies(c: ml_collections.ConfigDict) -> str | None:
    from hs_jax.config.pool_source import pool_size

    try:
        designer_id(c, pool_size(c))
    except ValueError as e:
        return str(e)
    return None


def meta_agent(
    setup: Setup, workdir: Path, *, callbacks: Sequence[Callable] = (), progress: bool = True
) -> MethodResult:
    """Meta-Agent-style design by a language model (module docstring), the best on dev."""
    c, b = setup.config, setup.config.baselines
    n_experts = setup.experts.n_experts
    designer = designer_id(c, n_experts)
    singles = score_singles(setup)
    ev = Evaluator(setup, workdir, c.method, budget=budget_of(c))
    rng = np.random.default_rng(c.seed)
    order = expert_order(singles.dev)
    task = f"{setup.spec.name}: {_TASK_KINDS.get(setup.spec.type, setup.spec.type)}"
    tried: list[tuple[System, float]] = []
    counts = {"proposals": 0, "valid": 0, "unparseable": 0, "repeated": 0}
    history: list[dict[str, Any]] = []
    t = 0
    while ev.remaining > 0:
        k = min(schema.search_config(c).n_graphs, ev.remaining)
        shown = _feedback(tried, b.designer_feedback)
        instructions = [INSTRUCTIONS[j % len(INSTRUCTIONS)] for j in range(k)]
        prompts = [designer_prompt(task, setup.names, singles.dev, shown, i) for i in instructions]
        replies = setup.engine.generate(
            prompts, [designer] * k, max_new_tokens=b.designer_tokens
        ).texts
        systems, proposals = _proposals(replies, n_experts, order, rng, tried, counts)
        u = ev.score(systems, setup.experts, step="role", iteration=t)
        tried.extend(zip(systems, (float(x) for x in u), strict=True))
        fallbacks = sum(p["status"] != "ok" for p in proposals)
        record = _record(t, systems, u, ev, proposals=proposals, fallbacks=fallbacks)
        _end_iteration(record, history, callbacks, c.method)
        t += 1
    details = {
        **counts,
        "fallbacks": counts["unparseable"] + counts["repeated"],
        "designer": "base model" if designer == BASE_MODEL else setup.names[designer],
        "prompt": DESIGNER_PROMPT,
        "instructions": list(INSTRUCTIONS),
    }
    return ev.finish(singles, history=history, iterations=t, stop_reason="budget",
                     details=details)  # fmt: skip


def _feedback(tried: Sequence[tuple[System, float]], limit: int) -> list[tuple[System, float]]:
    """The best `limit` scored structures (ties: the earlier), each once."""
    best: dict[System, float] = {}
    for system, u in tried:
        if system not in best:
            best[system] = u
    ranked = sorted(best.items(), key=lambda su: -su[1] if np.isfinite(su[1]) else np.inf)
    return ranked[: max(int(limit), 0)]


def _proposals(replies, n_experts, order, rng, tried, counts):
    """The systems to score for one iteration's replies and a record per reply; an unusable or
    repeated proposal becomes a random DAG (p = 1/2 per edge over `order`)."""
    seen = {s for s, _ in tried}
    half = np.full(len(pairs_of(len(order))[0]), 0.5)
    systems, records = [], []
    for reply in replies:
        counts["proposals"] += 1
        try:
            system = parse_structure("edges:" + reply, n_experts)
            status = "repeated" if system in seen else "ok"
        except ProposalError as e:
            system, status = None, f"unparseable: {e}"
        if status == "ok":
            counts["valid"] += 1
        else:
            counts["repeated" if status == "repeated" else "unparseable"] += 1
            system = system_of(sample_edges(rng, half, 1)[0], order)
        seen.add(system)
        systems.append(system)
        records.append({"reply": reply, "status": status, "system": format_structure(system)})
    return systems, records


register("gpt_swarm", MethodSpec(gpt_swarm, "dynamic role", "GPT-Swarm-style edge optimisation"))
register("gnn", MethodSpec(gnn, "dynamic role", "GNN (GAT) edge predictor"))
register(
    "meta_agent",
    MethodSpec(meta_agent, "dynamic role", "Meta-Agent-style designer", applies=_designer_applies),
)
