"""A frozen forward pass: norm scales and attention patterns taken from a cached clean run.

Why: attribution graphs live in the "local replacement model", where every norm divides by the
scale it had on the clean prompt and every attention pattern is the clean one. With those frozen
(and MLP outputs held constant) the model is affine in its inputs, so the effect of adding a
vector anywhere is exactly linear. These hooks change forward values (unlike
``backward_rule``-based rules) and are used to *verify* attributions by intervention and to
compute bias contributions. The engine attaches them (callers pass them to ``run_to_final``).
"""

from __future__ import annotations

from typing import Optional

import torch

from circuitlab.engine.norms import apply_norm, norm_scale
from circuitlab.engine.sites import hook_name

Norm = tuple[str, Optional[int]]
"""A norm as (name, layer): ``('ln1', 3)``, ``('ln_final', None)`` (see ``Adapter.norms``)."""


def record_scale_hooks(model, norms: list[Norm], store: dict) -> list:
    """Hooks that store each norm's scale on the current run (``store[(name, layer)]`` [B, T, 1])."""
    hooks = []
    for name, layer in norms:
        p = model.adapter.norm(name, layer)

        def fn(x, key=(name, layer), p=p):
            store[key] = norm_scale(p, x).detach()

        hooks.append((hook_name(f"{name}.in", layer), fn))
    return hooks


def frozen_norm_hooks(model, scales: dict[Norm, torch.Tensor]) -> list:
    """Hooks making each norm in ``scales`` (by (name, layer)) divide by its cached scale ([1 or B, T, 1])."""
    hooks = []
    for (name, layer), scale in scales.items():
        p = model.adapter.norm(name, layer)
        box: dict = {}

        def take(x, box=box):
            box["x"] = x

        def out(y, box=box, p=p, scale=scale):
            return apply_norm(p, box.pop("x"), scale.to(y.device)).to(y.dtype)

        hooks += [(hook_name(f"{name}.in", layer), take), (hook_name(f"{name}.out", layer), out)]
    return hooks


def frozen_pattern_hooks(patterns: dict[int, torch.Tensor]) -> list:
    """Hooks replacing each layer's attention pattern by the cached one ([1, H, T, T])."""
    def make(pat):
        def fn(y):
            return pat.to(device=y.device, dtype=y.dtype).expand_as(y)

        return fn

    return [(hook_name("pattern", l), make(p)) for l, p in patterns.items()]
