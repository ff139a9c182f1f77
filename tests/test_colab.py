"""The Colab notebook runs top to bottom through the library, on the tiny config.

Its code cells are executed in order in one namespace, as a kernel would; shell lines (`!pip`)
are left out (the suite runs on the installed package). As papermill does, new values of the
"parameters"-tagged cell's CONFIG_FILE and WORKDIR (configs/tiny.py, a temporary folder) are set
right after that cell runs.
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "colab" / "demo.ipynb"


def _code_cells() -> list[tuple[str, bool]]:
    """(source without shell lines, whether it is the parameters cell) per code cell."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return [
        (
            "\n".join(
                line for line in "".join(c["source"]).splitlines()
                if not line.lstrip().startswith(("!", "%"))
            ),
            "parameters" in c["metadata"].get("tags", []),
        )
        for c in cells
        if c["cell_type"] == "code"
    ]  # fmt: skip


def test_notebook_runs_on_the_tiny_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the notebook names config files relative to the repository
    workdir = tmp_path / "colab_run"
    namespace: dict = {}
    cells = _code_cells()
    assert sum(is_parameters for _, is_parameters in cells) == 1
    for source, is_parameters in cells:
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
        if is_parameters:
            assert {"CONFIG_FILE", "WORKDIR"} <= namespace.keys()
            namespace.update(CONFIG_FILE="configs/tiny.py", WORKDIR=str(workdir))
    results = json.loads((workdir / "results.json").read_text())
    assert namespace["results"]["best_system"] == results["best_system"]
    assert namespace["summary"]["workdir"] == str(workdir / "search")
    assert namespace["summary"]["best_utility"] == results["best_system"]["dev_utility"]
    assert namespace["summary"]["iteration"] == results["iterations"] == 2
    assert len(namespace["dag"].edges) == 3  # the last cell decodes a 4-node DAG
    assert (workdir / "best_dag.png").read_bytes()[:4] == b"\x89PNG"
