"""Exported graph JSON opens with circuit-tracer 0.5.0's own graph-file models (separate venv; slow).

The venv gets torch 2.13.0 first (the local CPU wheel when PIP_FIND_LINKS has one, so pip does
not pull a multi-GB CUDA build for circuit-tracer's ``torch`` requirement), then
``circuit-tracer==0.5.0`` with its dependencies from PyPI. The check runs circuit-tracer's
pydantic ``frontend.graph_models.Model`` on the file, the model its ``create_graph_files``
writes and its local server serves, and feeds the metadata to its ``add_graph_metadata``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import venv
from pathlib import Path

import pytest

from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.export import CIRCUIT_TRACER_VERSION, write_neuronpedia
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.prune import prune

CHECK = r"""
import json, sys
from circuit_tracer.frontend.graph_models import Model
from circuit_tracer.frontend.utils import add_graph_metadata
import circuit_tracer
text = open(sys.argv[1]).read()
m = Model.model_validate_json(text)
assert m.metadata.schema_version == 1
kinds = {n.feature_type for n in m.nodes}
assert {"embedding", "logit"} <= kinds, kinds
add_graph_metadata(m.metadata.model_dump(), sys.argv[2])
print("ok", circuit_tracer.__version__, len(m.nodes), len(m.links), len(m.qParams.supernodes))
"""


def _venv(root: Path) -> Path:
    py = root / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import circuit_tracer.frontend.graph_models"],
                                      capture_output=True).returncode == 0:
        return py
    venv.create(root, with_pip=True, clear=True)
    env = dict(os.environ)
    env.setdefault("PIP_FIND_LINKS", "/opt/wheels")
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run(pip + ["torch==2.13.0"], env=env, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        pytest.fail(f"could not install torch 2.13.0 in the circuit-tracer venv:\n{r.stderr[-2000:]}")
    r = subprocess.run(pip + [f"circuit-tracer=={CIRCUIT_TRACER_VERSION}"], env=env, capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        pytest.fail(f"could not install circuit-tracer {CIRCUIT_TRACER_VERSION} (needs PyPI):\n{r.stderr[-2000:]}")
    return py


@pytest.mark.slow
def test_json_loads_with_circuit_tracer(gpt2, tmp_path):
    root = Path(os.environ.get("CIRCUITLAB_CT_VENV", Path(tempfile.gettempdir()) / "circuitlab-circuit-tracer-venv"))
    py = _venv(root)
    tcs = fit_transcoders(gpt2, ["when Mary and John went to the store , John gave a drink to"],
                          FitConfig(n_features=32, steps=60))
    g = attribute(gpt2, tcs, "when Mary and John went to the store , John gave", cfg=GraphConfig(max_feature_nodes=40))
    pr = prune(g)
    feats = pr.kept_features(g)[:2]
    path = write_neuronpedia(g, tmp_path, "ct-check", pruned=pr,
                             supernodes=[["pair"] + [g.node_id(i) for i in feats]])
    r = subprocess.run([str(py), "-c", CHECK, str(path), str(tmp_path / "index.json")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"ok {CIRCUIT_TRACER_VERSION}"), r.stdout
    assert (tmp_path / "index.json").exists()
