"""Importing every module of a package: how registries fill themselves.

Why: methods, model-family adapters and sparse-coder architectures each register with a
decorator in their own file, and nothing else lists them. A registry calls
:func:`import_modules` on its package once, before it is first read, so adding one of them is
adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil


def import_modules(package: str) -> None:
    """Import every module directly inside ``package`` (each registers what it defines)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
