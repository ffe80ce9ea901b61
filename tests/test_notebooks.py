"""Every notebook asks a question, shows its figures and ends by stating and checking what it found.

The structure is read without running anything. Execution runs each notebook top to bottom in a
real Jupyter kernel (fast mode: fewer prompts, steps and tokens), where the closing cell asserts,
within tolerances it states, the numbers its findings paragraph gives. A notebook on a fetched real
model (metadata ``circuitlab.needs_models``) is skipped where that model is not fetched (and one
that needs a model's trained transcoders, ``circuitlab.needs_transcoders``, where they are not
found); it runs minutes even in fast mode, so it is also marked slow."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
PLOTLY = "application/vnd.plotly.v1+json"


def _needs_models(path: Path) -> list:
    return json.loads(path.read_text()).get("metadata", {}).get("circuitlab", {}).get("needs_models", [])


def _needs_coders(path: Path) -> list:
    return json.loads(path.read_text()).get("metadata", {}).get("circuitlab", {}).get("needs_transcoders", [])


def _read(path: Path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


CASES = [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if _needs_models(p) else []) for p in NOTEBOOKS]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_asks_and_answers(path):
    cells = _read(path).cells
    title = cells[0].source.splitlines()[0]
    assert cells[0].cell_type == "markdown" and title.startswith("# ") and title.endswith("?"), title
    findings, check = cells[-2], cells[-1]
    assert findings.cell_type == "markdown" and findings.source.startswith("## What we found"), findings.source[:80]
    assert len(re.findall(r"\d+\.\d+", findings.source)) >= 3, "the findings paragraph should state numbers"
    assert check.cell_type == "code" and check.source.count("assert ") >= 3, "the last cell should check the findings"
    assert not any(c.get("outputs") for c in cells if c.cell_type == "code"), "commit notebooks without outputs"


@pytest.mark.parametrize("path", CASES)
def test_notebook_executes(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from circuitlab.models import fetch
    from circuitlab.zoo import list_models

    if "gpt2-zoo" not in list_models():
        pytest.fail("the bundled gpt2-zoo model is missing; the notebooks need it")
    missing = [m for m in _needs_models(path) if not fetch.is_fetched(m)]
    if missing:
        pytest.skip(f"needs fetched {missing} (circuitlab models fetch NAME)")
    from circuitlab.graphs.transcoders import find_transcoders

    untrained = [m for m in _needs_coders(path) if find_transcoders(m) is None]
    if untrained:
        pytest.skip(f"needs transcoders for {untrained} (circuitlab train saes/configs/MODEL.toml)")
    nb = _read(path)
    monkeypatch.setenv("CIRCUITLAB_FAST", "1")
    monkeypatch.chdir(tmp_path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any failing cell, the closing checks included
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(PLOTLY in o.get("data", {}) for o in outputs), "the notebook should show at least one figure"
    last = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    assert "findings hold" in last, last
