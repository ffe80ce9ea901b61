"""Model-family adapters: one module per family answers what methods need to know about a
model (attention scale and windows, MLP activation and gating, positional embedding, norms,
weights, dense MLPs). ``load`` attaches one to every Model as ``model.adapter``."""

from circuitlab.models.adapters.base import WEIGHTS, Adapter, NormParams
from circuitlab.models.adapters.registry import ADAPTERS, adapter_class, adapter_for, families, register

__all__ = ["ADAPTERS", "WEIGHTS", "Adapter", "NormParams", "adapter_class", "adapter_for", "families", "register"]
