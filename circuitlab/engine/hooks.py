"""Scoped hooks: the one place in circuitlab that attaches hooks to a model.

Every hook lives for one ``with`` block and is removed on exit, also when the block raises, so a
failed sweep never leaves a model that silently patches the next run.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Callable, Iterable, Iterator

import torch

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The re-entrant lock of one model (a circuitlab Model or its bridge: the same lock).

    Why: hooks are attached to the model object itself, so two threads running hooked passes
    on one model would each fire the other's hooks (wrong values, or hooks that never fire).
    Every hooked pass holds this lock (``scoped_hooks`` takes it), and the public API calls hold
    it for their whole run, forward and backward passes included. Re-entrant, so nested engine
    calls in the same thread do not deadlock; different models run in parallel."""
    bridge = getattr(model, "bridge", model)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(bridge)
        if lock is None:
            lock = _LOCKS[bridge] = threading.RLock()
        return lock


def resolve(bridge, name: str):
    """The HookPoint behind a (legacy or native) hook name, or a clear error."""
    hook_dict = bridge.hook_dict
    if name not in hook_dict:
        close = [n for n in hook_dict if name.split(".")[-1] in n][:5]
        raise KeyError(
            f"unknown hook name {name!r} for this model"
            + (f"; similar names: {', '.join(close)}" if close else "")
        )
    return hook_dict[name]


@contextlib.contextmanager
def scoped_hooks(
    bridge,
    forward: Iterable[tuple[str, HookFn]] = (),
    pre_modules: Iterable[tuple[torch.nn.Module, Callable]] = (),
    post_modules: Iterable[tuple[torch.nn.Module, Callable]] = (),
) -> Iterator[None]:
    """Attach forward hooks ``fn(activation) -> replacement | None`` by hook name, forward
    pre-hooks ``fn(module, args, kwargs)`` on plain modules, and forward hooks
    ``fn(module, args, output)`` on plain modules (run after the module's existing hooks),
    for the duration of the block."""
    added: list[tuple[object, object]] = []
    handles: list[torch.utils.hooks.RemovableHandle] = []
    lock = model_lock(bridge)
    lock.acquire()
    try:
        for name, fn in forward:
            hp = resolve(bridge, name)
            lens_handle = hp.add_hook(_adapt(fn), dir="fwd")
            added.append((hp, lens_handle))
        for module, fn in pre_modules:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in post_modules:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for hp, lens_handle in added:
            lens_handle.hook.remove()
            if lens_handle in hp.fwd_hooks:
                hp.fwd_hooks.remove(lens_handle)
        for h in handles:
            h.remove()
        lock.release()


def _adapt(fn: HookFn):
    def hook(activation, hook):  # TransformerLens calls hooks with a ``hook=`` keyword
        return fn(activation)

    hook.__name__ = getattr(fn, "__name__", "circuitlab_hook")
    return hook


def count_hooks(bridge) -> int:
    """How many hooks are attached to the model's hook points (0 after any circuitlab call)."""
    n = 0
    for module in bridge.modules():
        n += len(getattr(module, "_forward_hooks", {})) + len(getattr(module, "_backward_hooks", {}))
        n += len(getattr(module, "_forward_pre_hooks", {}))
    return n


@contextlib.contextmanager
def temporary_hook_points(bridge, names: Iterable[str]) -> Iterator[dict[str, torch.nn.Module]]:
    """New hook points registered on the model under ``names`` for the block, removed on exit
    (also when the block raises); yields them by name.

    Why: a value computed inside another hook (a spliced sparse coder's latents) needs a named
    point so capture, patching and gradients address it like any other site. Calling the point on
    the value runs its hooks. The engine alone touches the model's hook registry."""
    from transformer_lens.hook_points import HookPoint

    names = list(names)
    if not getattr(bridge, "_hook_registry_initialized", True):
        bridge._initialize_hook_registry()
    registry = bridge._hook_registry
    clash = sorted({n for n in names if n in registry or names.count(n) > 1})
    if clash:
        raise ValueError(f"hook point(s) {', '.join(clash)} already exist or are asked for twice: "
                         "give each temporary hook point a new, distinct name")
    points: dict[str, torch.nn.Module] = {}
    for name in names:
        points[name] = HookPoint()
        points[name].name = name
    registry.update(points)
    try:
        yield points
    finally:
        for name in points:
            registry.pop(name, None)
