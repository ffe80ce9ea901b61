"""Every notebook runs top to bottom in a real Jupyter kernel (fast mode: fewer prompts, steps)."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from circuitlab.zoo import list_models

    if "gpt2-zoo" not in list_models():
        pytest.fail("the bundled gpt2-zoo model is missing; the notebooks need it")
    monkeypatch.setenv("CIRCUITLAB_FAST", "1")
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
