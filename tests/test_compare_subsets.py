"""A comparison rerun with other --methods keeps the cells an earlier run recorded."""

import json
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_rerun_with_another_method_keeps_the_earlier_cells(tmp_path):
    from hs_jax.comparison import compare

    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.outputs.plots = False
    c.outputs.export_experts = False
    kw = dict(task_list=["nlgraph_gen"], seeds=[0], progress=False)
    compare.compare(c, tmp_path, method_list=["best_single"], **kw)
    compare.compare(c, tmp_path, method_list=["prediction_merge"], **kw)
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert sorted(e["method"] for e in cells) == ["best_single", "prediction_merge"]
    assert all(e["status"] == "done" for e in cells)
    table = (tmp_path / "table.md").read_text()
    assert "best_single" in table and "prediction_merge" in table
