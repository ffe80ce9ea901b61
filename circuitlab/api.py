"""The top-level verbs: ``patch`` (any method), later ``compare`` and ``dla``."""

from __future__ import annotations

from typing import Optional, Sequence

from circuitlab.result import Result

METHODS = ("exact",)


def patch(model, task, sites: str = "resid_pre", method: str = "exact", direction: str = "denoising",
          positions: Optional[Sequence[int | str]] = None, **kwargs) -> Result:
    """Node effects of ``sites`` on ``task.metric`` by ``method`` (see circuitlab.methods)."""
    if method == "exact":
        from circuitlab.methods.exact import exact

        return exact(model, task, sites, direction, positions, **kwargs)
    raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")


def compare(estimate: Result, reference: Result, k: int = 10) -> dict:
    """Agreement of an estimate with a reference (usually exact patching) over the same nodes."""
    from circuitlab.compare import compare as _compare

    return _compare(estimate, reference, k)
