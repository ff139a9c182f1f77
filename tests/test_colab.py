"""The Colab notebooks run top to bottom in a Jupyter kernel (nbclient), on the tiny config.

As papermill does, a cell setting new values of the "parameters"-tagged cell's variables is
inserted right after that cell; a last cell, added by the test, writes the values the test
checks to a JSON file. quickstart.ipynb's run is the checkpoint that inspect_checkpoint.ipynb
opens.
"""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
PNG = b"\x89PNG"


def _run_notebook(name: str, parameters: dict, export: dict[str, str], out: Path):
    """Executes colab/<name> in a fresh kernel (working directory: the repository); returns
    (the values of the `export` expressions, everything the cells printed)."""
    nb = nbformat.read(COLAB / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigns = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(assigns))
    values = out / f"{name}.values.json"
    dump = ", ".join(f"{k!r}: {expr}" for k, expr in export.items())
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import json as _json\n_json.dump({{{dump}}}, open({str(values)!r}, 'w'), default=str)"
        )
    )
    NotebookClient(nb, timeout=900, resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
        if o.output_type == "stream"
    )  # fmt: skip
    return json.loads(values.read_text()), printed


def test_notebooks_have_cell_ids_and_a_parameters_cell():
    for notebook in sorted(COLAB.glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        ids = [c.get("id") for c in cells]
        assert all(ids) and len(set(ids)) == len(ids), notebook.name
        tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(tagged) == 1 and tagged[0]["cell_type"] == "code", notebook.name


def test_demo_notebook_runs_on_the_tiny_config(tmp_path):
    workdir = tmp_path / "colab_run"
    ns, _ = _run_notebook(
        "demo.ipynb",
        {"CONFIG_FILE": "configs/tiny.py", "WORKDIR": str(workdir)},
        {"best": "results['best_system']", "summary": "summary", "edges": "len(dag.edges)"},
        tmp_path,
    )
    results = json.loads((workdir / "results.json").read_text())
    assert ns["best"] == json.loads(json.dumps(results["best_system"]))
    assert ns["summary"]["workdir"] == str(workdir / "search")
    assert ns["summary"]["best_utility"] == results["best_system"]["dev_utility"]
    assert ns["summary"]["iteration"] == results["iterations"] == 2
    assert ns["edges"] == 3  # the last cell decodes a 4-node DAG
    assert (workdir / "best_dag.png").read_bytes()[:4] == PNG


def test_quickstart_then_inspect_checkpoint(tmp_path):
    workdir = tmp_path / "quickstart"
    ns, printed = _run_notebook(
        "quickstart.ipynb",
        {"TINY": True, "WORKDIR": str(workdir)},
        {
            "best": "results['best_system']",
            "n_items": "len(items)",
            "n_shown": "N_SHOWN",
            "found": "found_answers",
            "alone": "single_answers",
            "single": "list(single.assignment)",
            "answer": "answers[0]",
            "nodes": "sorted(nodes)",
            "live": "sorted(system.dag.reaching_end)",
        },
        tmp_path,
    )
    results = json.loads((workdir / "results.json").read_text())
    assert ns["best"] == json.loads(json.dumps(results["best_system"]))
    for picture in ("best_dag.png", "curves.png"):
        assert (workdir / picture).read_bytes()[:4] == PNG
    # The found system's answers are the run's test outputs; every answer shown is printed.
    end = str(results["best_system"]["dag"]["end"])
    n = ns["n_items"]
    assert n == min(ns["n_shown"], results["n_test"])
    assert ns["found"] == results["best_system_test_outputs"][end][:n]
    assert ns["single"] == [results["best_single"]["expert"]]
    for found, alone in zip(ns["found"], ns["alone"], strict=True):
        assert f"found system {found.strip()!r}, best single {alone.strip()!r}" in printed
    assert f"answer: {ns['answer']}" in printed
    assert ns["nodes"] == ns["live"]

    out = tmp_path / "inspect"
    ns, printed = _run_notebook(
        "inspect_checkpoint.ipynb",
        {"WORKDIR": str(workdir), "OUTPUT_DIR": str(out)},
        {
            "step": "summary['step']",
            "state_step": "state.step",
            "n_graphs": "summary['config']['n_graphs']",
            "particles": "state.part('roles')['x'].shape[0]",
            "dag": "system.dag.to_dict()",
            "answer": "answers[0]",
        },
        tmp_path,
    )
    assert ns["step"] == ns["state_step"] == results["iterations"]
    assert ns["particles"] == ns["n_graphs"]
    for picture in ("adjacency.png", "jfk.png", "best_dag.png"):
        assert (out / picture).read_bytes()[:4] == PNG
    assert ns["dag"] == results["best_system"]["dag"]
    assert f"answer: {ns['answer']}" in printed
