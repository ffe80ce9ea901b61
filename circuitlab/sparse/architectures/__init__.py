"""Sparse-coder architectures, one module each.

Every module here is imported when the registry is first read (``base.load_architectures``),
and each registers its coder class with ``@register("name")``: adding an architecture is adding
a file to this folder (see docs/extending.md).
"""
