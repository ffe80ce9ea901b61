"""Batched patching: many (node, value) patches packed into few, short forward passes.

Each patch is one copy of the base batch in which one node takes its value from a source run.
K patches share a forward pass (K copies of the batch). Sorted by (layer, position), a pass
restarts at its earliest patched layer from the cached residual stream and, when the model
allows it (verified at load), recomputes only positions from its earliest patched position,
reading earlier keys/values from the base run's cache. Only the logits the metric reads are
computed, and per-prompt metric values stay on the device until the sweep ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from circuitlab.engine.forward import (
    Restart, final_logits, gather_positions, kv_tensors, new_kv_cache, run_to_final,
)
from circuitlab.engine.sites import HEAD_FAMILIES, UNIT_FAMILIES, Node, hook_name


@dataclass
class PatchRun:
    """Per-prompt metric values of each patch, and what it cost."""

    per_prompt: torch.Tensor
    """[patches, prompts] metric value of each prompt under each patch."""
    baseline: torch.Tensor
    """[prompts] the unpatched base run."""
    forward_passes: int
    chunk_size: int
    skipped: int = 0
    """Patches that write exactly the value already there (e.g. positions before the first
    token where clean and corrupt prompts differ): their result is the base run's, no pass."""


def node_positions(node: Node, roles: dict[str, torch.Tensor], n_prompts: int, device) -> Optional[torch.Tensor]:
    """[prompts] position of ``node`` in each prompt (None: all positions)."""
    if node.pos is None:
        return None
    if isinstance(node.pos, str):
        if node.pos not in roles:
            raise ValueError(f"node {node}: unknown role {node.pos!r}; roles: {list(roles)}")
        return roles[node.pos].to(device)
    return torch.full((n_prompts,), int(node.pos), device=device, dtype=torch.long)


def validate_nodes(model, nodes: Sequence[Node], n_pos: int) -> None:
    for n in nodes:
        if not 0 <= n.layer < model.n_layers:
            raise ValueError(f"node {n}: layer {n.layer} out of range "
                             f"(model has {model.n_layers} layers: 0..{model.n_layers - 1})")
        if n.family in HEAD_FAMILIES:
            limit = model.heads_in(n.family)
            if not 0 <= n.head < limit:
                raise ValueError(f"node {n}: head {n.head} out of range (0..{limit - 1})")
        if n.family == "neurons" and not 0 <= n.unit < model.d_mlp:
            raise ValueError(f"node {n}: neuron {n.unit} out of range (0..{model.d_mlp - 1})")
        if isinstance(n.pos, int) and not 0 <= n.pos < n_pos:
            raise ValueError(f"node {n}: position {n.pos} out of range (prompts have {n_pos} positions)")
        if n.family == "pattern":
            raise ValueError("patching attention patterns is not supported yet; patch q, k or heads instead")


def chunk_size_for(model, n_prompts: int, n_pos: int, k_logits: int,
                   max_patches_per_pass: Optional[int], memory_bytes: Optional[int]) -> int:
    """How many patches fit in one pass: from free memory (or ``memory_bytes``), capped."""
    elem = torch.finfo(model.dtype).bits // 8
    per_row = n_pos * (8 * model.d_model + 2 * max(model.d_mlp, 1) + 3 * model.n_heads * n_pos) * elem
    per_row += model.n_layers * 2 * n_pos * model.n_kv_heads * model.d_head * elem
    per_row += k_logits * model.d_vocab * 4
    budget = memory_bytes if memory_bytes is not None else int(0.25 * _free_memory(model.device))
    k = max(1, budget // max(1, per_row * n_prompts))
    cap = max_patches_per_pass or (64 if model.device.type == "cuda" else 16)
    return int(max(1, min(k, cap)))


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def patch_nodes(
    model,
    base_tokens: torch.Tensor,
    source: dict[str, torch.Tensor],
    nodes: Sequence[Node | Sequence[Node]],
    metric,
    roles: Optional[dict[str, torch.Tensor]] = None,
    max_patches_per_pass: Optional[int] = None,
    memory_bytes: Optional[int] = None,
    progress: bool = False,
    max_waste: Optional[float] = None,
    skip_noops: bool = True,
) -> PatchRun:
    """Apply each patch (a node, or a set of nodes patched together) to all prompts, taking
    values from ``source`` ({hook name: [prompts, pos, ...]}); return per-prompt metric values.
    ``skip_noops``: a patch whose source values equal the base run's bit for bit at every node
    it patches changes nothing, so it gets the base run's metric without a pass."""
    roles = roles or {}
    B, T = base_tokens.shape
    dev = base_tokens.device
    patches = [list(p) if isinstance(p, (list, tuple)) else [p] for p in nodes]
    flat = [n for p in patches for n in p]
    validate_nodes(model, flat, T)
    rows_b = torch.arange(B, device=dev)
    positions = metric.positions.to(dev)
    layers_needed = sorted({n.layer for n in flat})
    # Base run: residual entering every needed layer, keys/values, final residual.
    resid_pre: dict[int, torch.Tensor] = {}

    def keep(layer):
        def fn(x):
            resid_pre[layer] = x.detach()

        return fn

    same: dict[str, torch.Tensor] = {}  # hook -> where the source value equals the base value

    def compare(name, family):
        def fn(x):
            same[name] = _equal_mask(source[name], x, family)

        return fn

    families = {n.hook: n.family for n in flat}
    with torch.no_grad():
        kv = new_kv_cache(model) if model.fast_positions else None
        hooks = [(hook_name("resid_pre", l), keep(l)) for l in layers_needed]
        if skip_noops:
            hooks += [(name, compare(name, fam)) for name, fam in families.items() if name in source]
        base_final = run_to_final(model, base_tokens, hooks, kv_cache=kv)
        base_kv = kv_tensors(kv) if kv is not None else None
        base_at_metric = gather_positions(base_final, positions, rows_b)
        baseline = metric.per_prompt(final_logits(model, base_at_metric), rows_b)

    pos_of = [[node_positions(n, roles, B, dev) for n in p] for p in patches]
    acc = torch.promote_types(torch.float32, model.dtype)  # float64 models keep float64 metrics
    out = torch.empty(len(patches), B, device=dev, dtype=acc)
    noop = [bool(p) and all(_unchanged(same.get(n.hook), n, q) for n, q in zip(p, qs))
            for p, qs in zip(patches, pos_of)]
    for i in (i for i, z in enumerate(noop) if z):
        out[i] = baseline.to(acc)  # writes the value already there: the base run, exactly
    start_of = [min(0 if q is None else int(q.min()) for q in ps) if ps else T for ps in pos_of]
    layer_of = [min((n.layer for n in p), default=model.n_layers - 1) for p in patches]
    order = sorted((i for i in range(len(patches)) if not noop[i]), key=lambda i: (layer_of[i], start_of[i], i))
    K = chunk_size_for(model, B, T, positions.shape[1], max_patches_per_pass, memory_bytes)
    passes = 0
    waste = max_waste if max_waste is not None else (0.5 if dev.type == "cuda" else 0.15)
    chunks = plan_chunks(order, layer_of, start_of, model.n_layers, T, K, waste,
                         model.fast_restart, model.fast_positions)
    for chunk in tqdm(chunks, desc="patching", disable=not progress, leave=False):
        k = len(chunk)
        layer0 = min(layer_of[i] for i in chunk) if model.fast_restart else 0
        start = min(start_of[i] for i in chunk) if model.fast_positions else 0
        if not model.fast_restart:
            start = 0
        start = min(start, T - 1)
        hooks = _patch_hooks([patches[i] for i in chunk], [pos_of[i] for i in chunk], source, B, T, start)
        tokens = base_tokens.repeat(k, 1)
        restart = None
        if layer0 > 0 or start > 0:
            past = None
            if start > 0:
                past = [_past_rows(a, b, start, k, active=l >= layer0) for l, (a, b) in enumerate(base_kv)]
            restart = Restart(layer0, resid_pre[layer0][:, start:].repeat(k, 1, 1), start, past)
        rows = rows_b.repeat(k)
        rel = positions[rows] - start  # metric positions in this pass's recomputed span
        at = rel.clamp(min=0)
        with torch.no_grad():
            new = run_to_final(model, tokens, hooks, restart, read_positions=at)
            final = new.gather(1, at[..., None].expand(-1, -1, new.shape[-1]))
            if start > 0:  # metric positions before the restart keep their base values
                final = torch.where((rel >= 0)[..., None], final, base_at_metric.repeat(k, 1, 1))
            vals = metric.per_prompt(final_logits(model, final), rows)
        out[torch.tensor(chunk, device=dev)] = vals.view(k, B).to(acc)
        passes += 1
    return PatchRun(out, baseline.to(acc), passes, K, sum(noop))


def _equal_mask(src: torch.Tensor, base: torch.Tensor, family: str) -> torch.Tensor:
    """[prompts, pos(, head or unit)]: True where the source value equals the base value."""
    eq = src.to(base.device, base.dtype) == base
    if family not in UNIT_FAMILIES:
        eq = eq.all(-1)  # whole vectors (per head for head families)
    return eq


def _unchanged(same: Optional[torch.Tensor], node: Node, pos: Optional[torch.Tensor]) -> bool:
    """Whether patching ``node`` writes, in every prompt, exactly the value already there."""
    if same is None or node.family == "pattern":
        return False
    if node.family in HEAD_FAMILIES:
        same = same[..., node.head]
    elif node.family in UNIT_FAMILIES:
        same = same[..., node.unit]
    if pos is None:
        return bool(same.all())
    return bool(same[torch.arange(same.shape[0], device=same.device), pos.to(same.device)].all())


def _past_rows(keys: torch.Tensor, values: torch.Tensor, start: int, k: int, active: bool):
    """Cached keys/values of positions < start for k copies of the batch. Layers before the
    restart never run, so theirs are zero-copy views of the right shape (the cache reads only
    their length)."""
    if active:
        return keys[:, :, :start].repeat(k, 1, 1, 1), values[:, :, :start].repeat(k, 1, 1, 1)
    shape = (k * keys.shape[0],) + tuple(keys.shape[1:2]) + (start,) + tuple(keys.shape[3:])
    return keys[:1, :, :start].expand(shape), values[:1, :, :start].expand(shape)


def plan_chunks(order, layer_of, start_of, n_layers, T, cap, max_waste, restart=True, positions=True):
    """Group patches (already sorted by layer, position) into passes of at most ``cap``.

    A pass restarts at its earliest layer and position, so a patch later in the pass pays for
    work it does not need. A patch joins the current pass only while that extra work stays
    below ``max_waste`` of the pass's useful work (a bigger batch is worth more on a GPU)."""
    def work(l, p):
        return (n_layers - (l if restart else 0)) * (T - (p if positions else 0))

    chunks, cur, useful = [], [], 0
    for i in order:
        if cur:
            l0 = min(layer_of[j] for j in cur + [i])
            p0 = min(start_of[j] for j in cur + [i])
            need = useful + work(layer_of[i], start_of[i])
            spent = (len(cur) + 1) * work(l0, p0)
            if len(cur) >= cap or spent > (1 + max_waste) * need:
                chunks.append(cur)
                cur, useful = [], 0
        cur.append(i)
        useful += work(layer_of[i], start_of[i])
    if cur:
        chunks.append(cur)
    return chunks


def _patch_hooks(patches, pos_list, source, B, T, start):
    """One hook per hook name: rows of patch j take the source value where patch j's mask is set."""
    by_hook: dict[str, list[tuple[int, Node, Optional[torch.Tensor]]]] = {}
    for j, (ps, qs) in enumerate(zip(patches, pos_list)):
        for n, q in zip(ps, qs):
            by_hook.setdefault(n.hook, []).append((j, n, q))
    K = len(patches)
    hooks = []
    for name, entries in by_hook.items():
        src = source[name][:, start:]
        Tn = T - start
        fam = entries[0][1].family
        indexed = fam in HEAD_FAMILIES + UNIT_FAMILIES  # a head or unit axis after position
        mask = torch.zeros(K, B, Tn, *([src.shape[2]] if indexed else []), dtype=torch.bool, device=src.device)
        for j, n, p in entries:
            idx = n.head if fam in HEAD_FAMILIES else n.unit
            if p is None:
                if idx is None:
                    mask[j] = True
                else:
                    mask[j, :, :, idx] = True
            else:
                b = torch.arange(B, device=src.device)
                if idx is None:
                    mask[j, b, p - start] = True
                else:
                    mask[j, b, p - start, idx] = True
        hooks.append((name, _where_hook(mask, src, K, B)))
    return hooks


def _where_hook(mask: torch.Tensor, src: torch.Tensor, K: int, B: int):
    extra = src.dim() - mask.dim() + 1  # trailing dims the mask broadcasts over

    def fn(act: torch.Tensor):
        a = act.view(K, B, *act.shape[1:])
        m = mask.view(*mask.shape, *([1] * extra))
        return torch.where(m, src.unsqueeze(0).to(a.dtype), a).view(act.shape)

    return fn
