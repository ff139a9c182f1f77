"""Collaborative gain (C-Gain, the paper's section 6 and Figure 3).

The principle: if a fraction p of the N component LLMs solve a problem on their own, the
multi-LLM system should solve it with likelihood above p. The test items are put in buckets
B_0..B_N by how many of the N single experts of the pool solve them (results.json
`single_experts.test_item_scores`: the initial experts, each run alone); then

    C-Gain = sum_{k=1..N} |B_k| / |D| * (Acc(B_k) - EA(B_k)),    EA(B_k) = k / N,

with Acc(B_k) the system's accuracy on the items of B_k and |D| the number of test items. The
sum starts at k = 1, as in the paper: B_0 (no expert solves the item) has EA = 0, and the
system's accuracy there is reported on its own (`b0_accuracy`; the paper's "new compositional
skills"). An empty bucket adds nothing.

"Solved" for any score: an item is solved when its score is above `solved_above` (default 0).
That is exact for 0/1 correctness and for AbstainQA's effective reliability (+1 right, 0
abstained, -1 wrong: only a right answer solves it). Judge ratings (rating / 10, so every parsed
rating is > 0) need a threshold of their own, e.g. 0.5 (`--solved_above`). The system's Acc(B_k)
uses the same rule, so Acc and EA are both fractions of solved items; the mean score per bucket
is reported too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hs_jax.pipeline.plots import save_figure  # noqa: E402

SOLVED_ABOVE = 0.0
PER_ROW = 6  # runs side by side in cgain.png


@dataclasses.dataclass(frozen=True)
class Bucket:
    """B_k: the items k of the N experts solve; how many the system solves there."""

    k: int
    count: int
    solved: int
    accuracy: float | None  # None for an empty bucket
    mean_score: float | None
    expected: float  # EA(B_k) = k / N


@dataclasses.dataclass(frozen=True)
class CollaborativeGain:
    n_experts: int
    n_items: int
    solved_above: float
    buckets: tuple[Bucket, ...]
    c_gain: float
    b0_accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def collaborative_gain(
    system_scores: Sequence[float],
    expert_scores: Sequence[Sequence[float]],
    *,
    solved_above: float = SOLVED_ABOVE,
) -> CollaborativeGain:
    """C-Gain of a system's per-item test scores ([items]) against the single experts'
    ([N, items], the same items in the same order)."""
    system = np.asarray(system_scores, float)  # [items]
    experts = np.asarray(expert_scores, float)  # [N, items]
    if experts.ndim != 2 or experts.shape[0] < 1:
        raise ValueError(f"expert scores must be [N >= 1, items], got shape {experts.shape}")
    if system.ndim != 1 or system.size == 0 or system.shape[0] != experts.shape[1]:
        raise ValueError(
            f"the system has {system.size} per-item scores, the experts {experts.shape[1]}: "
            "they must be the same non-empty test items"
        )
    n, items = experts.shape
    solved_by = (experts > solved_above).sum(axis=0)  # [items]: how many experts solve each
    system_solved = system > solved_above  # [items]
    buckets, gain = [], 0.0
    for k in range(n + 1):
        mask = solved_by == k
        count = int(mask.sum())
        solved = int(system_solved[mask].sum())
        accuracy = solved / count if count else None
        expected = k / n
        if k >= 1 and count:
            gain += count / items * (accuracy - expected)
        mean = float(system[mask].mean()) if count else None
        buckets.append(Bucket(k, count, solved, accuracy, mean, expected))
    return CollaborativeGain(n, items, solved_above, tuple(buckets), gain, buckets[0].accuracy)


def of_results(results: dict[str, Any], *, solved_above: float = SOLVED_ABOVE):
    """C-Gain of a results.json's best system, or a string saying why it cannot be computed."""
    experts = results.get("single_experts", {}).get("test_item_scores") or []
    system = results["best_system"].get("test_item_scores") or []
    if not experts or not all(experts):
        return "no per-item test scores of the single experts"
    if not system:
        return "no per-item test scores of the best system"
    if len({len(e) for e in experts} | {len(system)}) != 1:
        return "the system and the experts were scored on different numbers of test items"
    return collaborative_gain(system, experts, solved_above=solved_above)


def plot(gains: Sequence[tuple[str, CollaborativeGain]], path: str | os.PathLike) -> str:
    """Figure 3: one column per run (at most PER_ROW runs side by side, then the next pair of
    rows); top, each bucket's item count split by whether the system solves them; bottom, the
    system's accuracy per bucket and the expected accuracy k/N (dotted)."""
    cols = max(1, min(PER_ROW, len(gains)))
    groups = max(1, -(-len(gains) // PER_ROW))
    fig, axes = plt.subplots(2 * groups, cols, figsize=(4.2 * cols, 3.2 * 2 * groups),
                             squeeze=False)  # fmt: skip
    for i, (label, g) in enumerate(gains):
        row, c = 2 * (i // PER_ROW), i % PER_ROW
        ks = np.array([b.k for b in g.buckets])
        solved = np.array([b.solved for b in g.buckets])
        unsolved = np.array([b.count - b.solved for b in g.buckets])
        top, bottom = axes[row][c], axes[row + 1][c]
        top.bar(ks, solved, color="#2a9d8f", label="system correct")
        top.bar(ks, unsolved, bottom=solved, color="#d9d9d9", label="system wrong")
        top.set_title(f"{label}\nC-Gain {g.c_gain:+.3f}", fontsize=9)
        top.set_ylabel("problems")
        top.legend(fontsize=7)
        filled = [b for b in g.buckets if b.count]  # an empty bucket has no accuracy
        bottom.bar([b.k for b in filled], [b.accuracy for b in filled], color="#8ecae6",
                   label="system accuracy")  # fmt: skip
        bottom.plot(
            ks, ks / g.n_experts, linestyle=":", color="black", marker=".", label="expected k/N"
        )
        bottom.set_ylim(0, 1.05)
        bottom.set_xlabel(f"experts (of {g.n_experts}) that solve the problem")
        bottom.set_ylabel("accuracy")
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks(ks)
            ax.grid(axis="y", alpha=0.3)
    for i in range(len(gains), groups * cols):  # the last pair of rows' unused panels
        row, c = 2 * (i // PER_ROW), i % PER_ROW
        axes[row][c].axis("off")
        axes[row + 1][c].axis("off")
    return save_figure(fig, path)
