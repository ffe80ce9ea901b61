"""circuitlab: a mechanistic-interpretability workbench built on one cache-and-patch engine."""

from circuitlab import tasks
from circuitlab.api import compare, dla, logit_lens, patch
from circuitlab.models import Model, load
from circuitlab.result import Cost, Result
from circuitlab.engine.sites import Node

__all__ = ["Model", "load", "tasks", "patch", "dla", "logit_lens", "compare", "Result", "Cost", "Node"]
__version__ = "0.1.0"
