"""config.seeds: one method over several seeds, each a run of its own, and a table of mean and
spread over the seeds."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tiny():
    c = runpy.run_path(str(ROOT / "configs" / "tiny.py"))["get_config"]()
    c.outputs.plots = False
    c.outputs.export_experts = False
    c.method = "random_search"
    c.budget = 4
    return c


def test_seeds_run_the_method_once_per_seed_and_write_the_table(tmp_path):
    import hs_jax

    c = _tiny()
    c.seeds = "0,1"
    out = hs_jax.run(c, tmp_path / "seeds")
    cells = out["cells"]
    assert [cell["seed"] for cell in cells] == [0, 1]
    assert all(cell["status"] == "done" for cell in cells)
    for seed in (0, 1):
        results = json.loads(
            (
                tmp_path
                / "seeds"
                / "nlgraph_gen"
                / "random_search"
                / f"seed_{seed}"
                / "results.json"
            ).read_text()
        )
        assert results["seed"] == seed and results["method"] == "random_search"
    table = (tmp_path / "seeds" / "table.md").read_text()
    assert "random_search" in table and "±" in table
    # The run of seed 0 is the run a single-seed launch makes.
    single = _tiny()
    alone = hs_jax.run(single, tmp_path / "alone")
    seeded = json.loads(
        (
            tmp_path / "seeds" / "nlgraph_gen" / "random_search" / "seed_0" / "results.json"
        ).read_text()
    )
    for key in ("best_system", "single_experts", "evaluations", "cost"):
        assert seeded[key] == alone[key]


def test_bad_seeds_are_named_before_any_work(tmp_path):
    import hs_jax

    c = _tiny()
    c.seeds = "0,x"
    with pytest.raises(ValueError, match=r"config\.seeds='0,x'"):
        hs_jax.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_launch_main_with_seeds_exits_1_naming_a_failed_cell(tmp_path):
    """A seed whose cell fails (here a damaged run.json) makes `launch.main --config.seeds` exit
    1 with one line naming the cell; the other seed's cell still finishes."""
    import subprocess
    import sys

    cell = tmp_path / "nlgraph_gen" / "random_search" / "seed_1"
    cell.mkdir(parents=True)
    (cell / "run.json").write_text("{")
    proc = subprocess.run(
        [sys.executable, "-m", "launch.main", "--config=configs/tiny.py", f"--workdir={tmp_path}",
         "--config.method=random_search", "--config.budget=4", "--config.seeds=0,1",
         "--config.outputs.plots=False", "--config.outputs.export_experts=False"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("launch.main:")]
    assert len(lines) == 1 and lines[0].startswith(
        "launch.main: 1 of 2 cells failed: nlgraph_gen/random_search/seed_1 (WorkdirError: "
    ), proc.stderr[-4000:]
    assert (tmp_path / "nlgraph_gen" / "random_search" / "seed_0" / "results.json").is_file()
