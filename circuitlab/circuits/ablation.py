"""Ablation hooks for circuit evaluation: K circuits as K copies of the batch in one pass.

Nodes: a head (its ``attn.hook_z`` slice, hence its output), an MLP (``hook_mlp_out``) or the
embedding (``blocks.0.hook_resid_pre``) outside the circuit takes its reference value (the
corrupted run's, or a mean), per copy, prompt and position.

Edges: every receiver's input is rebuilt from the live run as
``input - sum over ablated edges (u -> v) of (u_live - u_ref)``: an edge kept in the circuit
carries the sender's value in this very run (itself affected by upstream ablations), an ablated
edge carries the reference value. Receiver inputs are applied as in circuitlab.circuits.edges
(norm and per-head projection for q/k/v, ``mlp.hook_in`` for MLPs, ``ln_final.hook_in`` for the
logits). Ablating every edge reproduces the reference run exactly; ablating none, the base run.
"""

from __future__ import annotations

import torch

from circuitlab.circuits.edges import Readers, input_change
from circuitlab.engine.sites import hook_name


def replace_hook(keep: torch.Tensor, ref: torch.Tensor, K: int):
    """Hook for an activation [K*B, T, X, ...] (X heads) or [K*B, T, ...] (X absent: keep has X=1):
    rows of copy k keep their value where ``keep[k, b, t, x]`` and take ``ref`` ([B or 1, T, ...])
    elsewhere."""

    def fn(act: torch.Tensor):
        a = act.view(K, -1, *act.shape[1:])
        r = ref.to(a.dtype).unsqueeze(0)
        if a.dim() == keep.dim() + 1:  # heads axis present: [K, B, T, H, dh]
            m = keep[..., None]
        else:  # vector sites: [K, B, T, d], keep [K, B, T, 1]
            m = keep
        return torch.where(m, a, r).view(act.shape)

    return fn


def edge_ablation_hooks(model, graph, readers: Readers, ablate: torch.Tensor, ref_writes: torch.Tensor):
    """Hooks that evaluate K edge circuits at once.

    ``ablate``: [K, S, R] or [K, T, S, R] (per position) float, 1 where an edge is ablated (only
    graph edges are used). ``ref_writes``: [B or 1, T, S, d] reference sender writes."""
    K = ablate.shape[0]
    per_pos = ablate.dim() == 4
    A = ablate * (graph.mask.to(ablate.device)[None, None] if per_pos else graph.mask.to(ablate.device)[None])
    L = model.n_layers
    s_of_layer = {-1: [0]}
    for i, s in enumerate(graph.senders):
        if s.kind != "embed":
            s_of_layer.setdefault(s.layer, []).append(i)
    state: dict = {"writes": {}, "resid": {}, "attn": {}}

    def live(idx):
        return torch.cat([state["writes"][i] for i in idx], 2)  # [N, T, s, d]

    def delta(receivers: list[int]) -> torch.Tensor:
        """[N, T, len(receivers), d]: sum over ablated edges of (ref - live) for these receivers."""
        avail = sorted(i for i in state["writes"])
        cur = live(avail)
        N, T = cur.shape[:2]
        B = N // K
        ref = ref_writes[:, :, avail].to(cur.dtype)
        diff = (ref.unsqueeze(0) - cur.view(K, B, T, len(avail), -1))  # [K, B, T, s, d]
        sub = A[..., avail, :][..., receivers].to(cur.dtype)
        eq = "kbtsd,ktsr->kbtrd" if per_pos else "kbtsd,ksr->kbtrd"
        return torch.einsum(eq, diff, sub).reshape(N, T, len(receivers), -1)

    def record_embed(x):
        state["writes"][0] = x[:, :, None]

    def record_z(l):
        def fn(z):
            w = torch.einsum("bthe,hed->bthd", z, readers.W_O[l].to(z.dtype))
            for h, i in enumerate(s_of_layer[l][:-1]):
                state["writes"][i] = w[:, :, h : h + 1]
        return fn

    def record_mlp(l):
        def fn(x):
            state["writes"][s_of_layer[l][-1]] = x[:, :, None]
        return fn

    def record_resid(name):
        def fn(x):
            state["resid"][name] = x
        return fn

    def attn_input(l, kind):
        def fn(act):
            if l not in state["attn"]:
                idx = [j for j in graph.receivers_at(l) if graph.receivers[j].kind in "qkv"]
                x = input_change(readers.attn_norm[l], state["resid"][hook_name("resid_pre", l)], delta(idx))
                state["attn"][l] = {graph.receivers[j]: x[:, :, n] for n, j in enumerate(idx)}
            out = act.clone()
            for r, x in state["attn"][l].items():
                if r.kind == kind:
                    out[:, :, r.head] += x @ readers.W[l][kind][r.head].to(x.dtype)
            return out
        return fn

    def mlp_input(l):
        def fn(act):
            j = [j for j in graph.receivers_at(l) if graph.receivers[j].kind == "mlp"]
            x = input_change(readers.mlp_norm[l], state["resid"][readers.mlp_resid(l)], delta(j))
            return act + x[:, :, 0]
        return fn

    def logits_input(x):
        return x + delta([graph.receiver("logits")])[:, :, 0]

    hooks = [(hook_name("resid_pre", 0), record_embed)]
    for l in range(L):
        hooks.append((hook_name("resid_pre", l), record_resid(hook_name("resid_pre", l))))
        if not readers.parallel:
            hooks.append((readers.mlp_resid(l), record_resid(readers.mlp_resid(l))))
        hooks += [(hook_name(k, l), attn_input(l, k)) for k in "qkv"]
        hooks += [(hook_name("heads", l), record_z(l)), (hook_name("mlp_in", l), mlp_input(l)),
                  (hook_name("mlp_out", l), record_mlp(l))]
    hooks.append((hook_name("ln_final.in"), logits_input))
    return hooks
