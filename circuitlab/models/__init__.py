"""Model loading: zoo name, local Hugging Face folder or hub name -> :class:`Model`."""

from circuitlab.models.model import Model
from circuitlab.models.load import load

__all__ = ["Model", "load"]
