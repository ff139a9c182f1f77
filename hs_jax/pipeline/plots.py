"""Pictures of a search: the best multi-LLM system as a graph, and utility curves per step."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; launchers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from hs_jax.store import workdir as workdir_lib  # noqa: E402
from hs_jax.swarm.graph import Dag  # noqa: E402


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110, rect=None) -> str:
    """Lays `fig` out, writes it to `path` atomically (a temporary file renamed into place:
    a kill never leaves half a picture) and closes it; returns the path. Every picture hs_jax
    writes goes through here."""
    fig.tight_layout(**({"rect": rect} if rect is not None else {}))
    with workdir_lib.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return os.fspath(path)


def _layered_positions(dag: Dag, nodes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """Left-to-right by topological level, entry nodes on the left, the end node last."""
    pos = {}
    levels = [[u for u in level if u in nodes] for level in dag.levels]
    levels = [lv for lv in levels if lv]
    for x, level in enumerate(levels):
        for k, node in enumerate(level):
            pos[node] = (float(x), (len(level) - 1) / 2.0 - k)
    return pos


def plot_dag(
    dag: Dag,
    path: str | os.PathLike,
    *,
    assignment: Sequence[int] | None = None,
    expert_names: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Draws the nodes that run (those reaching the end node), each labelled with its expert."""
    nodes = list(dag.reaching_end)
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((s, d) for s, d in dag.edges if s in nodes)
    labels = {}
    for node in nodes:
        expert = node if assignment is None else assignment[node]
        name = expert_names[expert] if expert_names else f"expert {expert}"
        labels[node] = f"node {node}\n{name}" + ("\n(end)" if node == dag.end else "")
    pos = _layered_positions(dag, nodes)
    width = 2.6 * max(1, len({x for x, _ in pos.values()})) + 1
    height = 1.4 * max(1, max(sum(1 for p in pos.values() if p[0] == x) for x, _ in pos.values()))
    fig, ax = plt.subplots(figsize=(width, max(2.5, height)))
    colors = ["#f4a261" if n == dag.end else "#8ecae6" for n in g.nodes]
    nx.draw_networkx(
        g, pos, ax=ax, labels=labels, node_color=colors, node_size=3200, font_size=8,
        arrows=True, arrowsize=18, edge_color="#555555",
    )  # fmt: skip
    ax.margins(x=0.12, y=0.25)
    ax.set_title(title or "best multi-LLM system")
    ax.axis("off")
    return save_figure(fig, path, dpi=120)


def plot_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    *,
    reference: Mapping[str, float] | None = None,
) -> str:
    """One panel per step ('role step', 'weight step'), one line per statistic (best, mean, ...)
    against the iteration, as the paper's Figure 12; `reference` adds horizontal lines (e.g. the
    best single expert's utility)."""
    panels = [(name, c) for name, c in curves.items() if any(len(v) for v in c.values())]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 3.8))
    axes = [axes] if not hasattr(axes, "__len__") else list(axes)
    for ax, (name, stats) in zip(axes, panels, strict=False):
        for label, values in stats.items():
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        for label, value in (reference or {}).items():
            ax.axhline(value, linestyle="--", color="gray", label=label)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("utility")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)
