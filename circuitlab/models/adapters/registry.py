"""The registry of model-family adapters, keyed by Hugging Face ``config.model_type``.

Registration is the :func:`register` decorator alone: every module of this package is imported
the first time an adapter is looked up, so a new family is one new module (and its case in
``tests/test_adapters.py``)."""

from __future__ import annotations

from circuitlab.discovery import import_modules
from circuitlab.models.adapters.base import Adapter

ADAPTERS: dict[str, type[Adapter]] = {}
"""model_type -> adapter class."""
_loaded = False


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: answer for every ``cls.model_types``."""
    if not cls.family or not cls.model_types:
        raise ValueError(f"{cls.__name__} needs a family name and at least one model_type to register")
    for model_type in cls.model_types:
        other = ADAPTERS.get(model_type)
        if other is not None and other is not cls:
            raise ValueError(f"model_type {model_type!r} is claimed by both {other.__name__} and {cls.__name__}")
        ADAPTERS[model_type] = cls
    return cls


def families() -> dict[str, type[Adapter]]:
    """Every registered family by its short name."""
    _load_families()
    return {cls.family: cls for cls in ADAPTERS.values()}


def adapter_class(model_type: str | None) -> type[Adapter]:
    """The adapter class for a model type; :class:`Generic` for an unregistered one."""
    _load_families()
    from circuitlab.models.adapters.generic import Generic

    return ADAPTERS.get(model_type or "", Generic)


def adapter_for(bridge) -> Adapter:
    """The adapter of a loaded TransformerBridge, chosen by its Hugging Face model type."""
    model_type = getattr(bridge.original_model.config, "model_type", None)
    return adapter_class(model_type)(bridge)


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    import_modules("circuitlab.models.adapters")
    _loaded = True
