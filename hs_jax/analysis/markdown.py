"""Markdown tables and the number formats of analysis.md, and JSON without NaN for
analysis.json."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def cell(value: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` decimals, None and NaN as 'n/a', pairs as [lo, hi]."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    ):
        return f"[{cell(float(value[0]), digits)}, {cell(float(value[1]), digits)}]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells already strings are kept as they are)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else cell(c) for c in row) + " |")
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """`value` with NaN and infinities as None (analysis.json stays strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def records(columns: Sequence[tuple[str, Any]], rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of dicts: `columns` are (header, key) pairs, a key being a dict key or a function
    of the row."""
    return table(
        [h for h, _ in columns],
        [[k(r) if callable(k) else r.get(k) for _, k in columns] for r in rows],
    )
