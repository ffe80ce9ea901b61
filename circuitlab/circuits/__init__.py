"""Circuits: edge attribution (EAP, EAP-IG), exact edge / path patching, circuit selection and
evaluation (faithfulness, curves, bootstrap intervals), interventions, planted ground truth.

    from circuitlab import circuits as cc
    scores = cc.eap(model, task)                 # every edge, one backward pass
    truth = cc.edge_patching(model, task)        # exact edge patching (ground truth)
    curve = cc.faithfulness_curve(model, task, scores)
    curve.smallest, curve.smallest_circuit       # smallest top-n circuit with F >= 0.8
"""

from circuitlab.circuits.circuit import Circuit, greedy, threshold, top_n
from circuitlab.circuits.eap import eap, eap_ig
from circuitlab.circuits.evaluate import (
    AblationConfig, Evaluator, FaithfulnessCurve, bootstrap_ci, faithfulness, faithfulness_curve, greedy_nodes,
)
from circuitlab.circuits.graph import ComponentGraph, component_graph
from circuitlab.circuits.path_patching import edge_patching, patch_edges, path_patch
from circuitlab.circuits.scores import EdgeScores
from circuitlab.methods.registry import EDGE_METHODS
from circuitlab.engine.interventions import (
    CoderTarget, DirectionTarget, Intervention, NodeTarget, TranscoderTarget, generate, intervene, score,
)

METHODS = EDGE_METHODS
"""Every edge method by name, read from the registry (circuitlab.methods.registry)."""


def edges(model, task, method: str = "eap", direction: str = "denoising", **kwargs) -> EdgeScores:
    """Edge scores by 'eap', 'eap-ig' (``steps=m``) or 'path' (exact edge patching); options are
    the fields of the method's options dataclass (``METHODS[name].options``), others refused."""
    entry = METHODS[method]
    entry.check(kwargs)
    return entry.fn(model, task, direction, **entry.declared(kwargs))


__all__ = ["Circuit", "ComponentGraph", "component_graph", "EdgeScores", "eap", "eap_ig", "edge_patching",
           "patch_edges", "path_patch", "edges", "top_n", "threshold", "greedy", "greedy_nodes", "AblationConfig",
           "Evaluator", "faithfulness", "faithfulness_curve", "FaithfulnessCurve", "bootstrap_ci", "Intervention",
           "NodeTarget", "DirectionTarget", "CoderTarget", "TranscoderTarget", "intervene", "generate",
           "score"]
