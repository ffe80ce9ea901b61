"""Every notebook runs top to bottom in a real Jupyter kernel (fast mode: fewer prompts, steps).

A notebook on a fetched real model (metadata ``circuitlab.needs_models``) is skipped where that
model is not fetched; its closing cell asserts the findings its prose states."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _needs_models(path: Path) -> list:
    import json

    return json.loads(path.read_text()).get("metadata", {}).get("circuitlab", {}).get("needs_models", [])


# A real-model notebook runs minutes even in fast mode: slow marker.
CASES = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if _needs_models(p) else []) for p in NOTEBOOKS]


@pytest.mark.parametrize("path", CASES)
def test_notebook_executes(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from circuitlab.zoo import list_models

    if "gpt2-zoo" not in list_models():
        pytest.fail("the bundled gpt2-zoo model is missing; the notebooks need it")
    nb = nbformat.read(str(path), as_version=4)
    from circuitlab.models import fetch

    missing = [m for m in _needs_models(path) if not fetch.is_fetched(m)]
    if missing:
        pytest.skip(f"needs fetched {missing} (circuitlab models fetch NAME)")
    monkeypatch.setenv("CIRCUITLAB_FAST", "1")
    monkeypatch.chdir(tmp_path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
