"""circuitlab: a mechanistic-interpretability workbench built on one cache-and-patch engine."""

from circuitlab.models import Model, load

__all__ = ["Model", "load"]
__version__ = "0.1.0"
