"""A frozen forward pass: norm scales and attention patterns taken from a cached clean run.

Why: attribution graphs live in the "local replacement model", where every norm divides by the
scale it had on the clean prompt and every attention pattern is the clean one. With those frozen
(and MLP outputs held constant) the model is affine in its inputs, so the effect of adding a
vector anywhere is exactly linear. These hooks change forward values (unlike
``backward_rule``-based rules) and are used to *verify* attributions by intervention and to
compute bias contributions. The engine attaches them (callers pass them to ``run_to_final``).
"""

from __future__ import annotations

import torch

from circuitlab.engine.norms import apply_norm, norm_params, norm_scale


def record_scale_hooks(bridge, paths: list[str], store: dict) -> list:
    """Hooks that store each norm's scale on the current run (``store[path]`` [B, T, 1])."""
    hooks = []
    for path in paths:
        p = norm_params(bridge, path)

        def fn(x, path=path, p=p):
            store[path] = norm_scale(p, x).detach()

        hooks.append((f"{path}.hook_in", fn))
    return hooks


def frozen_norm_hooks(bridge, scales: dict[str, torch.Tensor]) -> list:
    """Hooks making each norm in ``scales`` divide by its cached scale ([1 or B, T, 1])."""
    hooks = []
    for path, scale in scales.items():
        p = norm_params(bridge, path)
        box: dict = {}

        def take(x, box=box):
            box["x"] = x

        def out(y, box=box, p=p, scale=scale):
            return apply_norm(p, box.pop("x"), scale.to(y.device)).to(y.dtype)

        hooks += [(f"{path}.hook_in", take), (f"{path}.hook_out", out)]
    return hooks


def frozen_pattern_hooks(patterns: dict[int, torch.Tensor]) -> list:
    """Hooks replacing ``blocks.{l}.attn.hook_pattern`` by the cached pattern ([1, H, T, T])."""
    def make(pat):
        def fn(y):
            return pat.to(device=y.device, dtype=y.dtype).expand_as(y)

        return fn

    return [(f"blocks.{l}.attn.hook_pattern", make(p)) for l, p in patterns.items()]
