"""Selective activation caching: only the named sites, positions, dtype and device asked for.

The forward pass stops as soon as the last requested activation is captured, and a tensor is
stored once even when two alias names (legacy ``hook_resid_pre`` / native ``hook_in``) are asked
for — so summing a cache never double-counts.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from circuitlab.engine.hooks import resolve, scoped_hooks
from circuitlab.engine.sites import position_axis


class _Captured(Exception):
    pass


def capture(
    model,
    tokens: torch.Tensor,
    names: Iterable[str],
    positions: Optional[Sequence[int] | torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    device: Optional[str | torch.device] = None,
    hooks: Iterable = (),
    grad: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``tokens`` and return {name: activation} for each hook name.

    ``positions`` keeps only those positions (axis 1, or the query axis of patterns);
    ``dtype``/``device`` convert at capture time (``device='cpu'`` offloads GPU activations).
    Extra ``hooks`` (name, fn) run too, e.g. patches. With ``grad=False`` no graph is kept.
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    bridge = model.bridge
    by_point: dict[int, list[str]] = {}
    for n in names:
        by_point.setdefault(id(resolve(bridge, n)), []).append(n)
    store: dict[str, torch.Tensor] = {}
    remaining = {"n": len(by_point)}
    pos_idx = None
    if positions is not None:
        pos_idx = torch.as_tensor(positions, dtype=torch.long)

    def make(name: str):
        axis = position_axis(name)

        def fn(act: torch.Tensor):
            x = act
            if pos_idx is not None:
                x = x.index_select(axis, pos_idx.to(x.device))
            if dtype is not None or device is not None:
                x = x.to(device=device or x.device, dtype=dtype or x.dtype)
            store[name] = x if grad else x.detach()
            remaining["n"] -= 1
            if remaining["n"] == 0:
                raise _Captured()
            return None

        return fn

    capture_hooks = [(group[0], make(group[0])) for group in by_point.values()]
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, scoped_hooks(bridge, list(hooks) + capture_hooks):
        try:
            bridge(tokens, return_type=None)
        except _Captured:
            pass
    for group in by_point.values():
        for alias in group[1:]:
            store[alias] = store[group[0]]  # same tensor object, not a copy
    missing = [n for n in names if n not in store]
    if missing:
        raise RuntimeError(f"hooks never fired during the forward pass: {missing}")
    return store
