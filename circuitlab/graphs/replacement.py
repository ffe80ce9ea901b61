"""The local replacement model of one prompt: clean cache, gradient runs, frozen runs.

- ``clean_run``: one forward pass caching what the replacement model freezes (norm scales,
  attention patterns, MLP outputs), the transcoders' inputs, feature activations and error
  vectors (error = true MLP output - transcoder reconstruction, so forward values are exact).
- ``LinearisedForward`` / ``GradientReader``: one backward pass for a batch of targets (one
  target per batch row) in the linearised model: norm scales stop-gradient (RelP's LN rule),
  patterns detached, MLP outputs constant leaves where the gradient is read (plus the skip
  connection's linear path). The forward is kept across batches of the same size, so a graph
  costs one linearised forward per batch size and one backward per batch (``read_gradients``:
  a one-shot forward + backward).
- ``frozen_run``: a forward pass of the same frozen model with changed sources (interventions)
  or with every source removed (bias contributions): the model is affine in its sources.
Hooks are passed to the engine (``run_to_final``), which attaches and removes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from circuitlab.engine.forward import run_to_final
from circuitlab.engine.norms import apply_norm, norm_scale
from circuitlab.engine.sites import hook_name
from circuitlab.graphs.frozen import Norm, frozen_norm_hooks, frozen_pattern_hooks, record_scale_hooks
from circuitlab.graphs.transcoders import TranscoderSet
from circuitlab.methods.relp_rules import norm_rule_hooks
from circuitlab.models.weights import W_U, b_U


@dataclass(frozen=True)
class Target:
    """What a batch row reads: a feature's pre-activation or a demeaned logit."""

    kind: str
    """'feature' or 'logit'."""
    layer: int = -1
    pos: int = -1
    feature: int = -1
    token: int = -1
    """Vocabulary id (logit targets)."""


@dataclass
class CleanRun:
    """Everything the replacement model keeps from the clean forward pass (batch of one)."""

    tokens: torch.Tensor
    """[T]."""
    embed: torch.Tensor
    """[T, d] token embeddings (``hook_embed``): the token nodes' vectors."""
    scales: dict[Norm, torch.Tensor]
    """Block norm (name, layer) -> [1, T, 1] frozen scale."""
    final_scale: torch.Tensor
    """[1, T, 1] scale of the final norm."""
    patterns: dict[int, torch.Tensor]
    """Layer -> [1, H, T, T] attention pattern."""
    reads: list[torch.Tensor]
    """Per layer [T, d_in]: each transcoder's input."""
    mlp_out: list[torch.Tensor]
    """Per layer [T, d]: the true MLP output."""
    pre: list[torch.Tensor]
    """Per layer [T, n]: feature pre-activations."""
    acts: list[torch.Tensor]
    """Per layer [T, n]: feature activations (zero at BOS when excluded)."""
    errors: torch.Tensor
    """[L, T, d]: true MLP output minus reconstruction."""
    resid_final: torch.Tensor
    """[T, d] residual stream entering the final norm."""
    logits: torch.Tensor
    """[V] logits at the last position."""


def _unembed_parts(model):
    Wu = W_U(model).float()
    bu = b_U(model).float()
    return Wu, bu


def demeaned_unembed(model, token_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """([K, d] W_U columns minus their mean over the vocabulary, [K] demeaned b_U)."""
    Wu, bu = _unembed_parts(model)
    ids = torch.as_tensor(list(token_ids), device=Wu.device, dtype=torch.long)
    return (Wu[:, ids] - Wu.mean(1, keepdim=True)).t(), bu[ids] - bu.mean()


def clean_run(model, transcoders: TranscoderSet, tokens: torch.Tensor, exclude_bos: bool = True) -> CleanRun:
    """Run ``tokens`` [T] once and cache the replacement model's constants."""
    L = model.n_layers
    tokens = tokens.reshape(1, -1).to(model.device)
    norms = model.adapter.norms()
    store: dict = {}
    scales: dict = {}

    def keep(name):
        def fn(x):
            store[name] = x.detach()

        return fn

    names = [hook_name("embed")] + [hook_name("pattern", l) for l in range(L)]
    names += [t.hook_in for t in transcoders.layers] + [t.hook_out for t in transcoders.layers]
    hooks = record_scale_hooks(model, norms, scales) + [(n, keep(n)) for n in dict.fromkeys(names)]
    with torch.no_grad():
        resid = run_to_final(model, tokens, hooks)[0].float()
    fin = model.adapter.norm("ln_final")
    final_scale = norm_scale(fin, resid)[None]
    Wu, bu = _unembed_parts(model)
    logits = apply_norm(fin, resid[-1], final_scale[0, -1]) @ Wu + bu
    reads, outs, pres, acts, errs = [], [], [], [], []
    for t in transcoders.layers:
        x = store[t.hook_in][0].float()
        y = store[t.hook_out][0].float()
        h = t.pre(x)
        a = t.activate(h)
        if exclude_bos:
            a[0] = 0
        reads.append(x)
        outs.append(y)
        pres.append(h)
        acts.append(a)
        errs.append(y - t.decode(a, x))
    return CleanRun(tokens=tokens[0], embed=store[hook_name("embed")][0].float(), scales=scales,
                    final_scale=final_scale, patterns={l: store[hook_name("pattern", l)] for l in range(L)},
                    reads=reads, mlp_out=outs, pre=pres, acts=acts, errors=torch.stack(errs), resid_final=resid,
                    logits=logits)


def _recorder(store: dict, key):
    """A read-only hook that keeps its input under ``key`` (the transcoder's input, which the
    skip path of its write hook needs)."""
    def fn(x):
        store[key] = x

    return fn


def _read_values(model, transcoders: TranscoderSet, clean: CleanRun, reads: list, resid: torch.Tensor,
                 targets: Sequence[Target], rows: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Target pre-activations from a run's reads (per layer [R, T, d_in]) and final residual.

    ``rows`` given: one value per (rows[i], targets[i]) pair -> [n]; else every target on every
    row -> [R, n]."""
    R = resid.shape[0]
    n = len(targets)
    pairs = rows is not None
    out = torch.zeros(n if pairs else (R, n), device=resid.device)
    fin = model.adapter.norm("ln_final")
    by_layer: dict[int, list[int]] = {}
    logit_idx = []
    for i, t in enumerate(targets):
        if t.kind == "feature":
            by_layer.setdefault(t.layer, []).append(i)
        else:
            logit_idx.append(i)
    rows_t = torch.as_tensor(list(rows) if pairs else [], dtype=torch.long, device=resid.device)
    for l, idx in by_layer.items():
        tc = transcoders[l]
        pos = torch.tensor([targets[i].pos for i in idx], device=resid.device)
        feat = torch.tensor([targets[i].feature for i in idx], device=resid.device)
        x = reads[l].float()
        x = x[rows_t[idx], pos] if pairs else x[:, pos]  # [n_l, d] or [R, n_l, d]
        x = tc.encoder_input(x)  # a feature's pre-activation is linear in its input
        w = tc.W_enc[:, feat].float().t()  # [n_l, d]
        v = (x * w).sum(-1) + tc.b_enc[feat].float()
        if pairs:
            out[idx] = v
        else:
            out[:, idx] = v
    if logit_idx:
        u, c = demeaned_unembed(model, [targets[i].token for i in logit_idx])
        z = apply_norm(fin, resid[:, -1].float(), clean.final_scale[0, -1])  # [R, d]
        if pairs:
            zz = z[rows_t[logit_idx]]
            out[logit_idx] = (zz * u).sum(-1) + c
        else:
            out[:, logit_idx] = z @ u.t() + c
    return out


class LinearisedForward:
    """The linearised model's forward pass over ``rows`` copies of the prompt, kept for backward passes.

    Why: the forward graph does not depend on the targets (they are read off its transcoder inputs
    and final residual afterwards), so one forward serves every batch of ``rows`` targets; each
    batch then costs one backward pass (``retain_graph``). The kept graph holds the activations of
    one forward of ``rows`` copies, the same memory the one-shot pass needs; ``release`` frees it.
    """

    def __init__(self, model, transcoders: TranscoderSet, clean: CleanRun, rows: int):
        if rows < 1:
            raise ValueError(f"a linearised forward needs at least one row, got {rows}")
        self.model, self.transcoders, self.clean, self.rows = model, transcoders, clean, rows
        tokens = clean.tokens[None].expand(rows, -1)
        leaves: dict = {}
        reads: dict = {}

        def leaf(name):
            def fn(y):
                z = y.detach().clone().requires_grad_(True)
                leaves[name] = z
                return z

            return fn

        def write(l):
            tc = transcoders[l]

            def fn(y):
                z = y.detach().clone().requires_grad_(True)
                leaves[l] = z
                if tc.W_skip is None:
                    return z
                s = tc.skip_output(reads[l].to(tc.W_skip.dtype)).to(z.dtype)
                return z + (s - s.detach())  # the skip path stays linear and differentiable

            return fn

        hooks = [(hook_name("embed"), leaf("embed"))] + norm_rule_hooks(model)  # RelP's LN rule: scales stop-gradient
        hooks += [(hook_name("pattern", l), lambda y: y.detach()) for l in range(model.n_layers)]
        for l, tc in enumerate(transcoders.layers):
            hooks += [(tc.hook_in, _recorder(reads, l)), (tc.hook_out, write(l))]
        with torch.enable_grad():
            self._resid: Optional[torch.Tensor] = run_to_final(model, tokens, hooks)
        self._reads = [reads[l] for l in range(model.n_layers)]
        self._sources = [leaves["embed"]] + [leaves[l] for l in range(model.n_layers)]

    def gradients(self, targets: Sequence[Target], keep: bool = True):
        """One backward pass for ``targets`` (one per row; exactly ``rows`` of them).

        Returns (objective values [R] = target pre-activations, grad at hook_embed [R, T, d],
        grads at each hook_mlp_out [L][R, T, d]). ``keep=False``: the forward is freed by this pass."""
        if self._resid is None:
            raise RuntimeError("this linearised forward was released: build a new one")
        if len(targets) != self.rows:
            raise ValueError(f"this forward has {self.rows} rows, got {len(targets)} targets: build a forward "
                             "with one row per target")
        with torch.enable_grad():
            values = _read_values(self.model, self.transcoders, self.clean, self._reads, self._resid, targets,
                                  rows=list(range(self.rows)))
            grads = torch.autograd.grad(values.sum(), self._sources, allow_unused=True, retain_graph=keep)
        grads = [torch.zeros_like(s) if g is None else g for s, g in zip(self._sources, grads)]
        if not keep:
            self.release()
        return values.detach(), grads[0].float(), [g.float() for g in grads[1:]]

    def release(self) -> None:
        """Drop the kept graph (its activations are freed once nothing else holds them)."""
        self._resid, self._reads, self._sources = None, [], []


class GradientReader:
    """Target gradients for batches of targets, keeping one linearised forward for the next batch.

    A forward is kept per batch size, one at a time: a batch of a new size releases the kept
    forward before building its own, so at most one forward of at most the largest batch is held.
    A graph's batches come in runs of one size (the logits, the full feature batches, the last
    one), so building it costs a linearised forward per run (three; four when the logits span
    more than one batch) and one backward per batch. Use as a context manager (or call
    ``release``) so the kept forward is freed at the end."""

    def __init__(self, model, transcoders: TranscoderSet, clean: CleanRun):
        self.model, self.transcoders, self.clean = model, transcoders, clean
        self._run: Optional[LinearisedForward] = None
        self.forward_passes = 0
        """Linearised forwards run so far."""
        self.backward_passes = 0
        """Backward passes (batches) run so far."""

    def __call__(self, targets: Sequence[Target]):
        """(values [R], grad at hook_embed [R, T, d], grads at each hook_mlp_out [L][R, T, d])."""
        R = len(targets)
        if R < 1:
            raise ValueError("no targets: pass at least one Target")
        if self._run is None or self._run.rows != R:
            self.release()  # before the new forward: never two kept at once
            self._run = LinearisedForward(self.model, self.transcoders, self.clean, R)
            self.forward_passes += 1
        self.backward_passes += 1
        return self._run.gradients(targets)

    def release(self) -> None:
        """Free the kept forward, if any."""
        if self._run is not None:
            self._run.release()
            self._run = None

    def __enter__(self) -> "GradientReader":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def read_gradients(model, transcoders: TranscoderSet, clean: CleanRun, targets: Sequence[Target]):
    """One forward + backward over ``len(targets)`` copies of the prompt in the linearised model,
    nothing kept (for many batches use :class:`GradientReader`).

    Returns (objective values [R] = target pre-activations, grad at hook_embed [R, T, d],
    grads at each hook_mlp_out [L][R, T, d])."""
    return LinearisedForward(model, transcoders, clean, len(targets)).gradients(targets, keep=False)


def frozen_run(model, transcoders: TranscoderSet, clean: CleanRun, targets: Sequence[Target],
               embed: Optional[torch.Tensor] = None, mlp_delta: Optional[list] = None,
               bias_only: bool = False) -> torch.Tensor:
    """Target pre-activations in the frozen replacement model, one row per intervention.

    ``embed`` [R, T, d] replaces the token embeddings (default: the clean ones); ``mlp_delta``
    (per layer [R, T, d] or None) is added to each MLP output, which is otherwise held at its
    clean value (the skip path recomputed live). ``bias_only``: every source removed (embeddings
    zero, features and errors zero), leaving only bias contributions. Returns [R, n_targets]."""
    R = 1 if embed is None else embed.shape[0]
    if mlp_delta is not None:
        R = max(R, max((d.shape[0] for d in mlp_delta if d is not None), default=1))
    tokens = clean.tokens[None].expand(R, -1)
    if bias_only:
        embed = torch.zeros(R, *clean.embed.shape, device=clean.embed.device)
    elif embed is None:
        embed = clean.embed[None].expand(R, -1, -1)
    reads: dict = {}

    def set_embed(y):
        return embed.to(device=y.device, dtype=y.dtype).expand_as(y)

    def write(l):
        tc = transcoders[l]
        const = tc.b_dec if bias_only else clean.mlp_out[l] - tc.skip_output(clean.reads[l])

        def fn(y):
            out = const.to(y.dtype) + tc.skip_output(reads[l].float()).to(y.dtype)
            if mlp_delta is not None and mlp_delta[l] is not None:
                out = out + mlp_delta[l].to(y.dtype)
            return out.expand_as(y).contiguous()

        return fn

    hooks = [(hook_name("embed"), set_embed)] + frozen_norm_hooks(model, clean.scales)
    hooks += frozen_pattern_hooks(clean.patterns)
    for l, tc in enumerate(transcoders.layers):
        hooks += [(tc.hook_in, _recorder(reads, l)), (tc.hook_out, write(l))]
    with torch.no_grad():
        resid = run_to_final(model, tokens, hooks).float()
        rd = [reads[l].float() for l in range(model.n_layers)]
        return _read_values(model, transcoders, clean, rd, resid, targets)
