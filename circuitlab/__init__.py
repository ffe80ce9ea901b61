"""circuitlab: a mechanistic-interpretability workbench built on one cache-and-patch engine."""

from circuitlab import tasks
from circuitlab.api import compare, dla, logit_lens, patch
from circuitlab.models import Model, load
from circuitlab.result import Cost, DirectEffects, HeadScores, Result
from circuitlab.engine.sites import Node
from circuitlab.methods.logit_lens import logit_lens_topk
from circuitlab.methods.patchscope import attribute_extraction, patchscope, patchscope_grid, token_identity
from circuitlab.methods.steering import steer, steering_vector, strength_sweep
from circuitlab.methods.probes import probe_layers, train_probe
from circuitlab.methods.input_relevance import InputRelevance, input_relevance
from circuitlab.methods.tuned_lens import TunedLens, TunedLensConfig, lens_depth, train_tuned_lens, tuned_lens_topk

__all__ = ["Model", "load", "tasks", "patch", "dla", "logit_lens", "compare", "Result", "DirectEffects", "HeadScores",
           "Cost", "Node"]
__all__ += ["logit_lens_topk", "patchscope", "patchscope_grid", "token_identity", "attribute_extraction"]
__all__ += ["steering_vector", "steer", "strength_sweep"]
__all__ += ["probe_layers", "train_probe"]
__all__ += ["input_relevance", "InputRelevance"]
__all__ += ["TunedLens", "TunedLensConfig", "train_tuned_lens", "tuned_lens_topk", "lens_depth"]
__version__ = "0.1.0"
