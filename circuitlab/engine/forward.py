"""Forward passes that do only the work a patch can change.

``run_to_final`` runs the model with hooks and returns the residual stream entering the final
norm; the caller unembeds only the positions its metric reads (for a 50k vocabulary that is a
third of a small model's forward pass). A :class:`Restart` skips what a patch cannot change:
blocks before the patched layer (their output is taken from the cached residual stream) and,
under causal attention, positions before the patched one (their keys and values come from the
cached base run).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from circuitlab.engine.hooks import scoped_hooks
from circuitlab.engine.sites import hook_name


class _FinalResidual(Exception):
    def __init__(self, resid: torch.Tensor):
        self.resid = resid


@dataclass
class Restart:
    """Where a forward pass starts instead of the embeddings."""

    layer: int
    """First block to run; ``resid`` is the residual stream entering it."""
    resid: torch.Tensor
    """[batch, positions from ``start_pos``, d_model]."""
    start_pos: int = 0
    """First position recomputed; earlier positions' keys/values come from ``past``."""
    past: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
    """Per-layer (key, value) of positions < start_pos, batch-aligned with ``resid``."""


def run_to_final(
    model,
    tokens: torch.Tensor,
    hooks: Iterable[tuple[str, Callable]] = (),
    restart: Optional[Restart] = None,
    kv_cache=None,
    read_positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Run ``tokens`` [batch, pos] with ``hooks``; return the residual entering the final norm
    ([batch, pos - start_pos, d_model]). ``kv_cache``: a HF DynamicCache to fill with the
    run's keys/values (for later restarts); one already holding earlier positions makes
    ``tokens`` the positions that follow them (cached generation). ``read_positions`` [batch, k] (relative to
    ``start_pos``): the only positions the caller will read; the last block's MLP then runs on
    those alone (the rest of the returned residual is not the model's). Hooks inside that MLP
    still see every position (zeros where it did not run), so hooks that pair them with
    tensors from outside it (a spliced transcoder's input) line up."""
    bridge = model.bridge
    hooks = list(hooks) + [(hook_name("ln_final.in"), _stop)]
    kwargs: dict = {}
    pre = []
    start = 0
    if restart is not None and (restart.layer > 0 or restart.start_pos > 0):
        start = restart.start_pos
        tokens = tokens[:, start:]
        pre.append((model.layers[restart.layer], _inject(restart.resid)))
        if start > 0:
            kwargs["past_key_values"] = _cache_from(model, restart.past)
            kwargs["use_cache"] = True
    elif restart is not None:
        pre.append((model.layers[0], _inject(restart.resid)))
    if kv_cache is not None:
        kwargs["past_key_values"] = kv_cache
        kwargs["use_cache"] = True
        if restart is None:  # a cache filled by earlier calls: continue after its positions
            start = kv_cache.get_seq_length()
    # no throwaway cache: a model would build one from its config, sized for all its layers
    kwargs.setdefault("use_cache", False)
    T = tokens.shape[1]
    kwargs["position_ids"] = torch.arange(start, start + T, device=tokens.device).expand(
        tokens.shape[0], T
    )
    skip = restart.layer if restart is not None else 0
    with scoped_hooks(bridge, hooks, pre), _skip_blocks(model, skip), _last_mlp_at(model, read_positions):
        try:
            bridge(tokens, return_type=None, **kwargs)
        except _FinalResidual as done:
            return done.resid
    raise RuntimeError(f"the model finished without reaching its final norm ({hook_name('ln_final.in')})")


def final_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Apply the final norm and unembedding to residual vectors [..., d_model], then the
    model's logit soft-capping (Gemma-2: cap * tanh(logits / cap)) where it has one, so these
    are the logits the model outputs."""
    logits = model.bridge.unembed(model.bridge.ln_final(resid))
    cap = logit_softcap(model)
    return cap * torch.tanh(logits / cap) if cap else logits


def logit_softcap(model) -> float | None:
    """The final-logit soft-capping constant, or None where the model has none (the model
    family's adapter says)."""
    return model.adapter.logit_softcap


def new_kv_cache(model):
    """An empty cache that keeps every position of every layer.

    A cache built from the model config gives sliding-window layers a cache that drops keys
    older than the window, so their ``kv_tensors`` would not line up with positions; restarts
    slice positions, so every layer keeps them all (masks still come from the config)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache()


def kv_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(key, value) per layer from a filled DynamicCache, [batch, kv_heads, pos, d_head]."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache_from(model, past):
    """A DynamicCache holding ``past``. Plain layers take the tensors as they are (``update``
    would copy them once more); other layer kinds go through ``update``. Restarts built this
    way are checked against full runs at load (models/checks.py)."""
    from transformers.cache_utils import DynamicLayer

    cache = new_kv_cache(model)
    for i, (k, v) in enumerate(past):
        layers = getattr(cache, "layers", None)
        if isinstance(layers, list) and i == len(layers):
            layers.append(DynamicLayer())  # what the cache would create on its first update
        if i >= len(getattr(cache, "layers", ())):
            cache.update(k, v, i)
            continue
        layer = cache.layers[i]
        if type(layer) is DynamicLayer and hasattr(layer, "is_initialized"):
            layer.dtype, layer.device = k.dtype, k.device
            layer.keys, layer.values, layer.is_initialized = k, v, True
        else:
            cache.update(k, v, i)
    return cache


def _stop(resid: torch.Tensor):
    raise _FinalResidual(resid)


def _inject(resid: torch.Tensor):
    def pre_hook(module, args, kwargs):
        if args:
            return (resid,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = resid
        return args, kwargs

    return pre_hook


class _skip_blocks:
    """Temporarily hand the HF model only blocks ``first..`` so earlier blocks never run.

    Models that pick each block's mask and rotary table by its index in the list (Gemma-3:
    ``config.layer_types[i]`` for sliding vs global layers) get the per-layer list shifted the
    same way, so block ``first`` still reads its own entry."""

    def __init__(self, model, first: int):
        self.model, self.first = model, first
        self.config, self.types = None, None

    def __enter__(self):
        if self.first > 0:
            m = self.model
            setattr(m.layers_owner, m.layers_attr, torch.nn.ModuleList(list(m.layers)[self.first :]))
            config = getattr(m.layers_owner, "config", None)
            types = getattr(config, "layer_types", None)
            if isinstance(types, (list, tuple)) and len(types) == len(m.layers):
                self.config, self.types = config, types
                object.__setattr__(config, "layer_types", list(types)[self.first :])

    def __exit__(self, *exc):
        if self.first > 0:
            m = self.model
            setattr(m.layers_owner, m.layers_attr, m.layers)
            if self.config is not None:
                object.__setattr__(self.config, "layer_types", self.types)
                self.config = self.types = None
        return False


class _RowsOnly(torch.nn.Module):
    """An MLP applied at chosen (row, position) pairs only; zeros elsewhere.

    Hook points inside the MLP that carry hooks are widened for their hooks: ``widen`` scatters
    the gathered activation into a [batch, all positions, ...] tensor (zeros where the MLP does
    not run) before the hooks, ``narrow`` gathers it back after them. Why: a hook there may pair
    the activation with one captured outside the MLP at every position (a transcoder reads the
    residual stream before the MLP and writes its output) or patch by position masks built for
    the whole sequence; each position's result is the same as in the full pass."""

    def __init__(self, mlp: torch.nn.Module, positions: torch.Tensor):
        super().__init__()
        self.mlp, self.positions = mlp, positions
        self._where: Optional[tuple[torch.Tensor, torch.Tensor, int]] = None
        self._widened: set[int] = set()

    def forward(self, x: torch.Tensor, *args, **kwargs):
        pos = self.positions.to(x.device)
        rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(pos)
        self._where = (rows, pos, x.shape[1])
        try:
            y = self.mlp(x[rows, pos], *args, **kwargs)
        finally:
            self._where = None
            self._widened.clear()
        out = x.new_zeros(x.shape[:-1] + y.shape[-1:])
        out[rows, pos] = y
        return out

    def widen(self, module, args, kwargs):
        """Forward pre-hook of a hook point: [batch, k, ...] -> [batch, all positions, ...]."""
        if self._where is None or not args or not torch.is_tensor(args[0]):
            return None
        rows, pos, T = self._where
        a = args[0]
        if a.dim() < 2 or tuple(a.shape[:2]) != tuple(pos.shape):
            return None  # not laid out [batch, read positions, ...]: its hooks see it as it is
        full = a.new_zeros((a.shape[0], T) + tuple(a.shape[2:]))
        full[rows, pos] = a
        self._widened.add(id(module))
        return (full,) + tuple(args[1:]), kwargs

    def narrow(self, module, args, output):
        """Forward hook of a hook point, after its own hooks: back to the read positions."""
        if self._where is None or id(module) not in self._widened:
            return None
        self._widened.discard(id(module))
        rows, pos, _ = self._where
        return output[rows, pos]


class _last_mlp_at:
    """Temporarily run the last block's MLP only where the caller reads: in the last block a
    position's MLP output reaches no other position, and the MLP is most of the block's work.
    Only where the model's adapter calls that MLP dense and position-wise (a mixture of experts
    returns router outputs too and is left alone). Hook points inside the MLP that carry hooks
    when the block is entered are widened to every position (``_RowsOnly``)."""

    def __init__(self, model, positions: Optional[torch.Tensor]):
        self.model, self.positions, self.owner = model, positions, None
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        if self.positions is None:
            return
        slot = self.model.adapter.dense_mlp_slot(self.model.n_layers - 1)
        if slot is not None:
            from transformer_lens.hook_points import HookPoint

            self.owner, self.attr = slot
            self.mlp = getattr(self.owner, self.attr)
            rows_only = _RowsOnly(self.mlp, self.positions)
            hooked = [m for m in self.mlp.modules() if isinstance(m, HookPoint) and m._forward_hooks]
            self.stack.enter_context(scoped_hooks(self.model.bridge, (),
                                                  [(hp, rows_only.widen) for hp in hooked],
                                                  [(hp, rows_only.narrow) for hp in hooked]))
            setattr(self.owner, self.attr, rows_only)

    def __exit__(self, *exc):
        if self.owner is not None:
            setattr(self.owner, self.attr, self.mlp)
            self.owner = None
        self.stack.close()
        return False


def gather_positions(resid: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """resid [rows, pos, d] -> [rows, k, d] at positions[rows] ([prompts, k])."""
    pos = positions.to(resid.device)[rows]
    return resid.gather(1, pos[..., None].expand(-1, -1, resid.shape[-1]))


def metric_per_prompt(model, tokens: torch.Tensor, metric, hooks=()) -> torch.Tensor:
    """One forward pass; the metric's per-prompt values [prompts] (logits only where read)."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    with torch.no_grad():
        resid = run_to_final(model, tokens, hooks)
        logits = final_logits(model, gather_positions(resid, metric.positions, rows))
        return metric.per_prompt(logits, rows)
