"""The top-level verbs: ``patch`` (any method), ``dla``, ``logit_lens``, ``compare``."""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional, Sequence

from circuitlab.methods.registry import NODE_METHODS
from circuitlab.result import DirectEffects, NodeValues, Result

METHODS = NODE_METHODS
"""Every node method by name (``cl.patch(..., method=name)``), read from the registry."""


@contextlib.contextmanager
def exclusive(model) -> Iterator[None]:
    """Hold ``model``'s lock and put it in eval mode for the block (each module's train/eval
    flag is restored afterwards).

    Why: every verb runs several hooked forward and backward passes whose results combine;
    another thread's hooks on the same model in between would corrupt them, and dropout left
    on by ``model.train()`` makes patched and clean runs disagree at random."""
    import torch

    from circuitlab.engine.hooks import model_lock

    bridge = getattr(model, "bridge", model)
    with model_lock(bridge):
        roots = [bridge, getattr(bridge, "original_model", None), getattr(model, "layers", None)]
        modules = {id(m): m for r in roots if isinstance(r, torch.nn.Module) for m in r.modules()}
        training = [m for m in modules.values() if m.training]
        for m in training:
            m.training = False
        try:
            yield
        finally:
            for m in training:
                m.training = True


def _exclusive_call(fn):
    """Run an API verb under ``exclusive(model)`` (its first argument)."""
    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        with exclusive(model):
            return fn(model, *args, **kwargs)
    return wrapper


@_exclusive_call
def patch(model, task, sites: str | Sequence[str] = "resid_pre", method: str = "exact",
          direction: str = "denoising", positions: Optional[Sequence[int | str]] = None,
          **kwargs) -> Result | dict[str, Result]:
    """Node effects of ``sites`` on ``task.metric`` by ``method``.

    exact: batched activation patching (ground truth); atp: attribution patching; atp*: AtP
    with the QK fix and GradDrop ranking; relp: AtP with LRP rules; ig: integrated gradients
    (``variant='inputs'|'activations'``, ``steps=m``, ``rule='right'|'left'|'midpoint'|
    'trapezoid'|'gauss-legendre'``; see circuitlab.methods.ig). Each method's options are the
    fields of its options dataclass (``METHODS[name].options``). See circuitlab.methods.grid for
    sites. A list of site families returns ``{family: Result}``; a method that can score several
    families in one pass (atp*) does so. Options a method does not declare are refused
    (ValueError naming the closest valid one), and every family is checked before the first one
    runs.
    """
    from circuitlab.validate import check_choice, check_context

    entry = METHODS[method]
    check_choice("direction", direction, ("denoising", "noising"))
    check_context(model, task)
    task.check_positions(positions)
    if not isinstance(sites, str):
        sites = list(sites)
        if not sites:
            raise ValueError("sites is an empty list; name at least one site family (e.g. ['heads'])")
        for s in sites:  # every family and option is checked before the first one runs
            check_sites(s, method, kwargs)
        if entry.several is not None:
            return entry.several(model, task, sites, direction, positions, **entry.declared(kwargs))
        return {s: patch(model, task, s, method, direction, positions, **kwargs) for s in sites}
    check_sites(sites, method, kwargs)
    if sites == "latents":  # sparse-coder latents spliced into the model (circuitlab.sparse)
        from circuitlab.sparse.attribution import patch_latents

        kwargs = dict(kwargs)
        return patch_latents(model, task, kwargs.pop("coders"), method, direction, positions, **kwargs)
    return entry.fn(model, task, sites, direction, positions, **entry.declared(kwargs))


def check_sites(sites, method: str, options: dict) -> None:
    """``sites`` names a site family and ``options`` are all declared by ``method``."""
    from circuitlab.methods.grid import SITE_SPECS
    from circuitlab.validate import check_choice, check_options

    entry = METHODS[method]
    if not isinstance(sites, str):
        raise ValueError(f"a site family is a string like 'heads', not {sites!r}")
    if sites == "latents":
        from circuitlab.sparse.attribution import patch_latents

        if "coders" not in options:
            raise ValueError("sites='latents' needs coders=[...] (sparse coders to splice in, e.g. from "
                             "circuitlab.sparse.load_coder)")
        check_options(patch_latents, options, method, exclude=("model", "task", "method", "direction", "positions"))
        return
    check_choice("sites", sites, [*SITE_SPECS, "latents"])
    entry.check(options)


@_exclusive_call
def dla(model, task, by: str = "head", tokens: str = "clean") -> DirectEffects:
    """Direct logit attribution by 'layer', 'head', 'neuron' or 'source' (see methods.dla)."""
    from circuitlab.methods.dla import dla as _dla
    from circuitlab.validate import check_choice, check_context

    check_choice("tokens", tokens, ("clean", "corrupt"))
    check_context(model, task)
    return _dla(model, task, by, tokens)


@_exclusive_call
def logit_lens(model, task, tokens: str = "clean") -> DirectEffects:
    """The logit difference each layer's residual stream would give (see methods.logit_lens)."""
    from circuitlab.methods.logit_lens import logit_lens as _ll
    from circuitlab.validate import check_choice, check_context

    check_choice("tokens", tokens, ("clean", "corrupt"))
    check_context(model, task)
    return _ll(model, task, tokens)


def compare(estimate: NodeValues, reference: NodeValues, k: int = 10) -> dict:
    """Agreement of an estimate with a reference (usually exact patching) over the same nodes;
    results of different kinds (patching effects, DLA, logit lens, head scores) are refused."""
    from circuitlab.agreement import compare as _compare

    return _compare(estimate, reference, k)
