"""The Colab notebooks run top to bottom through the library, on the tiny config.

Each notebook's code cells are executed in order in one namespace, as a kernel would; shell
lines (`!pip`, `%cd`) become `pass` (the suite runs on the installed package, and an install
guarded by an `if`/`try` keeps a body). As papermill does, new values of the
"parameters"-tagged cell's variables are set right after that cell runs. quickstart.ipynb's
run is the checkpoint that inspect_checkpoint.ipynb opens.
"""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
PNG = b"\x89PNG"


def _code_cells(notebook: Path) -> list[tuple[str, bool]]:
    """(source with shell lines as `pass`, whether it is the parameters cell) per code cell."""
    cells = json.loads(notebook.read_text())["cells"]
    out = []
    for c in cells:
        if c["cell_type"] != "code":
            continue
        lines = "".join(c["source"]).splitlines()
        lines = [
            line[: len(line) - len(line.lstrip())] + "pass"
            if line.lstrip().startswith(("!", "%"))
            else line
            for line in lines
        ]
        out.append(("\n".join(lines), "parameters" in c["metadata"].get("tags", [])))
    return out


def _run_notebook(name: str, parameters: dict) -> dict:
    """Executes every code cell of colab/<name>; returns the namespace."""
    notebook = COLAB / name
    cells = _code_cells(notebook)
    assert sum(is_parameters for _, is_parameters in cells) == 1
    namespace: dict = {}
    for source, is_parameters in cells:
        exec(compile(source, str(notebook), "exec"), namespace)
        if is_parameters:
            assert set(parameters) <= namespace.keys()
            namespace.update(parameters)
    return namespace


def test_notebooks_have_cell_ids_and_a_parameters_cell():
    for notebook in sorted(COLAB.glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        ids = [c.get("id") for c in cells]
        assert all(ids) and len(set(ids)) == len(ids), notebook.name
        tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(tagged) == 1 and tagged[0]["cell_type"] == "code", notebook.name


def test_demo_notebook_runs_on_the_tiny_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the notebook names config files relative to the repository
    workdir = tmp_path / "colab_run"
    namespace = _run_notebook(
        "demo.ipynb", {"CONFIG_FILE": "configs/tiny.py", "WORKDIR": str(workdir)}
    )
    results = json.loads((workdir / "results.json").read_text())
    assert namespace["results"]["best_system"] == results["best_system"]
    assert namespace["summary"]["workdir"] == str(workdir / "search")
    assert namespace["summary"]["best_utility"] == results["best_system"]["dev_utility"]
    assert namespace["summary"]["iteration"] == results["iterations"] == 2
    assert len(namespace["dag"].edges) == 3  # the last cell decodes a 4-node DAG
    assert (workdir / "best_dag.png").read_bytes()[:4] == PNG


def test_quickstart_then_inspect_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "quickstart"
    ns = _run_notebook("quickstart.ipynb", {"TINY": True, "WORKDIR": str(workdir)})
    printed = capsys.readouterr().out
    results = json.loads((workdir / "results.json").read_text())
    assert ns["results"]["best_system"] == results["best_system"]
    for picture in ("best_dag.png", "curves.png"):
        assert (workdir / picture).read_bytes()[:4] == PNG
    # The found system's answers are the run's test outputs; every answer shown is printed.
    end = str(results["best_system"]["dag"]["end"])
    n = len(ns["items"])
    assert n == min(ns["N_SHOWN"], results["n_test"])
    assert ns["found_answers"] == results["best_system_test_outputs"][end][:n]
    assert ns["single"].assignment == (results["best_single"]["expert"],)
    for found, alone in zip(ns["found_answers"], ns["single_answers"], strict=True):
        assert f"found system {found.strip()!r}, best single {alone.strip()!r}" in printed
    assert f"answer: {ns['answers'][0]}" in printed
    assert set(ns["nodes"]) == set(ns["system"].dag.reaching_end)

    out = tmp_path / "inspect"
    ns = _run_notebook(
        "inspect_checkpoint.ipynb", {"WORKDIR": str(workdir), "OUTPUT_DIR": str(out)}
    )
    printed = capsys.readouterr().out
    assert ns["summary"]["step"] == ns["state"].step == results["iterations"]
    assert ns["state"].part("roles")["x"].shape[0] == ns["summary"]["config"]["n_graphs"]
    for picture in ("adjacency.png", "jfk.png", "best_dag.png"):
        assert (out / picture).read_bytes()[:4] == PNG
    assert ns["system"].dag.to_dict() == results["best_system"]["dag"]
    assert f"answer: {ns['answers'][0]}" in printed
