"""Splicing sparse coders into a model: the coder's output replaces the activation at its site,
and its latents become a site (``hook_name("latents", l)``, family ``latents``) that every
engine function — capture, patch_nodes, forward_for_grads — can read, patch and differentiate.

Why here and not in the engine: splicing reads the coder (its sites, encoder and decoder); the
engine only attaches the hooks (``scoped_hooks``). The latents need a real hook point for the
engine to address them by name, so for the duration of the ``with`` block the engine registers
a temporary hook point under that name (``temporary_hook_points``), called on the latents inside
the splice and removed on exit (also on exceptions).

With ``error=True`` the unexplained part ``x - decode(encode(x))`` is added back, so the model's
output is unchanged until a latent is patched, and gradients reaching the site input are
unchanged too (the standard "SAE error node" of sparse feature circuits).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from circuitlab.engine.hooks import scoped_hooks, temporary_hook_points
from circuitlab.engine.sites import HOOKS, hook_name, parse_hook
from circuitlab.sparse.base import SparseCoder

_ANY_BLOCK = re.compile(r"blocks\.(\d+)\.")
"""Fallback for a coder's own hook name that ``hook_name`` does not spell (a native bridge name)."""


def site_layer(hook: str) -> int:
    """The block index of a hook name (``hook_name("mlp_out", 3)`` -> 3)."""
    parsed = parse_hook(hook)
    if parsed is not None and parsed[1] is not None:
        return parsed[1]
    m = _ANY_BLOCK.match(hook)
    if not m:
        raise ValueError(f"{hook!r} is not a per-block site (blocks.L.*): coders are spliced, and graphs "
                         "place transcoders, only at per-block sites")
    return int(m.group(1))


def site_hook(site: str, layer: int) -> str:
    """The hook name of a coder's site at ``layer``: ``site`` is a hook point (``resid_mid``,
    ``ln2.out``, any name of ``engine.sites.HOOKS``) or a hook-name template with ``{layer}``
    (a coder file's or a user's own spelling, taken as given)."""
    if site in HOOKS:
        return hook_name(site, layer if "{layer}" in HOOKS[site] else None)
    return site.format(layer=layer)


@dataclass
class Spliced:
    """What a splice installed: latents hook name per coder."""

    latent_hooks: list[str]
    """``hook_name("latents", l)`` of each coder, in the order given."""


def _sites(coder: SparseCoder) -> tuple[str, str]:
    cfg = coder.cfg
    if cfg.n_sources != 1 or cfg.n_targets_ != 1:
        raise ValueError("only single-source coders (SAEs, transcoders) can be spliced into one model; "
                         "a crosscoder's reconstruction of several layers/models is evaluated offline")
    if not coder.hook_in:
        raise ValueError("the coder has no hooks_in: set cfg.hooks_in to the site it was trained on")
    return coder.hook_in, coder.hook_out


@contextlib.contextmanager
def splice(model, coders: Sequence[SparseCoder], error: bool | Sequence[bool] = False,
           passthrough: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Iterator[Spliced]:
    """Replace each coder's output site by its reconstruction for the ``with`` block.

    Coders read ``cfg.hooks_in[0]`` and write ``cfg.hooks_out[0]`` (the same site for SAEs).
    ``error`` (one flag, or one per coder) adds the reconstruction error back.
    ``passthrough(x) -> [batch, pos] bool`` marks tokens whose original activation is kept
    (those a coder never saw in training: BOS, very high norm), given the coder's input x."""
    coders = list(coders)
    errs = [error] * len(coders) if isinstance(error, bool) else list(error)
    if len(errs) != len(coders):
        raise ValueError("give one error flag per coder")
    bridge = model.bridge
    sites = [_sites(coder) for coder in coders]
    existing = bridge.hook_dict
    names: list[str] = []
    for _, hout in sites:
        layer = site_layer(hout)
        name = hook_name("latents", layer)
        if name in names or name in existing:
            raise ValueError(f"two coders write latents at layer {layer} ({name}); splice one per layer")
        names.append(name)
    with temporary_hook_points(bridge, names) as points:
        forward = []
        for coder, err, (hin, hout), name in zip(coders, errs, sites, names):
            hp = points[name]
            if hin == hout:
                forward.append((hout, _replace(coder, hp, err, None, passthrough)))
            else:
                box: dict[str, torch.Tensor] = {}
                forward.append((hin, _keep(box)))
                forward.append((hout, _replace(coder, hp, err, box, passthrough)))
        with scoped_hooks(bridge, forward):
            yield Spliced(names)


def _keep(box: dict):
    def fn(x: torch.Tensor):
        box["x"] = x
        return None

    return fn


def _replace(coder, hp, error: bool, box, passthrough):
    def fn(act: torch.Tensor):
        x = act if box is None else box.pop("x")
        dt = coder.W_dec.dtype
        xc = x.to(dt)
        f = coder.encode(xc)
        f2 = hp(f)  # patches / captures / gradient handles on the latents act here
        y = coder.decode(f2, xc)
        if error:
            # act + (decode(f2) - decode(f)): exactly ``act`` while no latent is changed
            out = act + (y - coder.decode(f, xc)).to(act.dtype)
        else:
            out = y.to(act.dtype)
        if passthrough is not None:
            out = torch.where(passthrough(x)[..., None], act, out)
        return out

    fn.__name__ = f"splice_{hp.name}"
    return fn
