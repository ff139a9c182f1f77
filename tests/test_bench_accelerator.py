"""bench.accelerator --dry_run: the command stays alive on a CPU, writes its own section, and its
roofline bytes per step match a count from the published Gemma shapes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPT, NEW = 16, 128


@pytest.fixture(scope="module")
def section(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("accelerator") / "RESULTS.md"
    out.write_text("# Benchmarks\n\nkept as it is\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as CI
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    argv = [
        sys.executable, "-m", "bench.accelerator", "--dry_run", f"--out={out}",
        f"--prompt_tokens={PROMPT}", f"--new_tokens={NEW}",
    ]  # fmt: skip
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nkept as it is\n")
    start, end = "<!-- accelerator:start -->", "<!-- accelerator:end -->"
    assert start in text and end in text
    return text.split(start, 1)[1].split(end, 1)[0]


def _rows(section: str) -> dict[tuple[str, int], list[str]]:
    """(model label, batch) -> the row's cells, for the plan table's rows."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0].startswith("Gemma") and cells[2].isdigit():
            rows[(cells[0], int(cells[2]))] = cells
    return rows


def test_rows_for_every_model_and_batch(section):
    rows = _rows(section)
    for label in ("Gemma 3 270M", "Gemma 2B", "Gemma 7B"):
        for batch in (1, 8, 64):
            cells = rows[(label, batch)]
            assert int(cells[5]) > 0  # bytes / step
            assert float(cells[8].replace(",", "")) > 0  # roofline tok/s
    # More rows read more keys and values; the weights are read once per step.
    assert int(rows[("Gemma 7B", 64)][5]) > int(rows[("Gemma 7B", 1)][5])


def test_bytes_per_step_match_the_published_2b_shapes(section):
    """Gemma 1 2B, bfloat16: every parameter once (tied head once) plus, averaged over the
    decode steps t = 1 .. NEW - 1, the keys and values of PROMPT + t positions."""
    vocab, d, layers, heads, kv_heads, head_dim, ffn = 256_000, 2048, 18, 8, 1, 256, 16_384
    per_layer = (
        d * heads * head_dim  # q
        + 2 * d * kv_heads * head_dim  # k, v
        + heads * head_dim * d  # o
        + 3 * d * ffn  # gate, up, down
        + 2 * d  # two norms
    )
    params = vocab * d + layers * per_layer + d
    mean_keys = sum(PROMPT + t for t in range(1, NEW)) / (NEW - 1)
    kv = layers * 2 * kv_heads * head_dim * 2 * mean_keys
    assert int(_rows(section)[("Gemma 2B", 1)][5]) == round(2 * params + kv)


def test_toy_pieces_ran(section):
    ratio = re.search(r"mixed / single = \*\*([0-9.]+)x\*\*", section)
    assert ratio and float(ratio.group(1)) > 0
    wall = re.search(r"Tiny search end to end .*?\*\*([0-9.]+) s\*\* wall", section)
    assert wall and float(wall.group(1)) > 0
    assert "Toy decode on this machine" in section
    assert "nothing skipped" in section
