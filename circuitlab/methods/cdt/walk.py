"""The CD-T walk: one (relevant, irrelevant) pair carried through every block to the logits.

Why a walk of its own and not hooks on the model: every operation must act on the two parts
separately, with the full forward pass fixing what CD-T holds constant (norm scales, attention
patterns, activation inputs). The full pass is captured once through the engine
(:func:`circuitlab.engine.cache.capture`); the walk then redoes each block's arithmetic on the
pairs with the weights the model's adapter states, so ``relevant + irrelevant`` reproduces the
model's own activations (tests check this against the model at every layer).

Pairs carry a leading *source* axis [S, B, T, ...]: S decompositions (one per source set) run
together. :class:`Taps` is where sources enter and records are kept: the walk hands it the pair
at every site it passes (the families of :mod:`circuitlab.engine.sites`) and, for edge
relevance, asks it for a perturbation of each receiver's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.norms import NormParams
from circuitlab.engine.sites import hook_name
from circuitlab.methods.cdt import rules as R
from circuitlab.methods.cdt.rules import Pair, Rules

POINT_SITES = ("resid_pre", "v", "heads", "attn_out", "resid_mid", "neurons", "mlp_out", "resid_post")
"""Sites the walk passes, in order within a block (``resid_mid`` only in sequential blocks)."""
RECEIVERS = ("v", "mlp", "logits")
"""Receiver inputs the walk can perturb (queries and keys only shape the fixed patterns)."""


def check_supported(model) -> None:
    """Refuse model families whose blocks the walk does not reproduce."""
    a = model.adapter
    problems = []
    if tuple(a.block_norms) != ("ln1", "ln2"):
        problems.append(f"its block norms are {', '.join(a.block_norms)} (the walk knows ln1 and ln2 only)")
    if getattr(model, "post_attn_norm", False):
        problems.append("it normalises the attention output before the residual add")
    if a.logit_softcap:
        problems.append("it soft-caps its logits")
    if not a.dense_mlp:
        problems.append("its MLPs are not dense (a mixture of experts)")
    if problems:
        raise ValueError(f"CD-T does not support model {model.name!r} ({a.family or 'generic'} family): "
                         + "; ".join(problems) + ". It supports pre-norm blocks with dense MLPs "
                         "(GPT-2, Llama, Qwen2, GPT-NeoX); use exact patching or AtP for this model")


def compute_dtype(model) -> torch.dtype:
    """float32 at least (half-precision models are decomposed in float32)."""
    return torch.promote_types(model.dtype, torch.float32)


@dataclass
class Frame:
    """A model's weights and per-layer facts, as the walk uses them."""

    n_layers: int
    W_V: torch.Tensor
    """[L, kv heads, d_model, d_head]"""
    b_V: Optional[torch.Tensor]
    W_O: torch.Tensor
    """[L, heads, d_head, d_model]"""
    b_O: Optional[torch.Tensor]
    W_in: torch.Tensor
    """[L, d_model, d_mlp]: the MLP input (the up projection of a gated MLP)."""
    b_in: Optional[torch.Tensor]
    W_gate: Optional[torch.Tensor]
    W_out: torch.Tensor
    b_out: Optional[torch.Tensor]
    W_U: torch.Tensor
    b_U: Optional[torch.Tensor]
    ln1: list[NormParams]
    ln2: list[NormParams]
    ln_final: NormParams
    act: list[Callable[[torch.Tensor], torch.Tensor]]
    kv_of_head: torch.Tensor
    """[heads]: the key/value head each query head reads."""
    gated: bool
    parallel: bool

    @staticmethod
    def of(model) -> "Frame":
        check_supported(model)
        a, dt = model.adapter, compute_dtype(model)

        def w(name):
            t = a.weight(name)
            return None if t is None else t.to(dt)

        def params(name, layer=None):
            p = a.norm(name, layer)
            return NormParams(p.eps, p.rms, None if p.weight is None else p.weight.to(dt),
                              None if p.bias is None else p.bias.to(dt))

        L, H = model.n_layers, model.n_heads
        W_V = w("W_V")
        kv = torch.arange(H, device=W_V.device) // (H // W_V.shape[1])
        return Frame(L, W_V, w("b_V"), w("W_O"), w("b_O"), w("W_in"), w("b_in"),
                     w("W_gate") if a.gated_mlp else None, w("W_out"), w("b_out"), w("W_U"), w("b_U"),
                     [params("ln1", l) for l in range(L)], [params("ln2", l) for l in range(L)],
                     params("ln_final"), [a.activation(l) for l in range(L)], kv, bool(a.gated_mlp),
                     bool(model.parallel_attn_mlp))

    def mlp_input_site(self) -> str:
        """The residual site an MLP reads (before its norm)."""
        return "resid_pre" if self.parallel else "resid_mid"


@dataclass
class Run:
    """The full forward pass a decomposition is linearised around."""

    tokens: torch.Tensor
    resid_pre: list[torch.Tensor]
    """[B, T, d] per layer."""
    scale1: list[torch.Tensor]
    """[B, T, 1] per layer: the attention norm's scale at the full residual."""
    scale2: list[torch.Tensor]
    """[B, T, 1] per layer: the MLP norm's scale at the full residual."""
    pattern: list[torch.Tensor]
    """[B, heads, query, key] per layer."""
    mlp_pre: list[torch.Tensor]
    """[B, T, d_mlp] per layer: the activation function's full input (the gate where gated)."""
    v: list[torch.Tensor]
    """[B, T, kv heads, d_head] per layer: the full run's values (keys before a walk's window)."""
    final: torch.Tensor
    """[B, T, d]: the final norm's input."""
    final_scale: torch.Tensor
    acts: dict[str, torch.Tensor]
    """Further activations captured with the run, by hook name."""

    @staticmethod
    def of(model, frame: Frame, tokens: torch.Tensor, extra_hooks=()) -> "Run":
        L, dt = frame.n_layers, compute_dtype(model)
        mid = frame.mlp_input_site()
        names = [hook_name("ln_final.in")]
        for l in range(L):
            names += [hook_name(s, l) for s in ("resid_pre", mid, "pattern", "mlp_pre", "v")]
        names = list(dict.fromkeys(names))
        got = capture(model, tokens, names + [h for h in extra_hooks if h not in names])
        f = {k: v.to(dt) for k, v in got.items()}
        resid = [f[hook_name("resid_pre", l)] for l in range(L)]
        mlp_resid = [f[hook_name(mid, l)] for l in range(L)]
        final = f[hook_name("ln_final.in")]
        return Run(tokens, resid, [R.norm_scale_of(frame.ln1[l], resid[l], dt) for l in range(L)],
                   [R.norm_scale_of(frame.ln2[l], mlp_resid[l], dt) for l in range(L)],
                   [f[hook_name("pattern", l)] for l in range(L)], [f[hook_name("mlp_pre", l)] for l in range(L)],
                   [f[hook_name("v", l)] for l in range(L)], final, R.norm_scale_of(frame.ln_final, final, dt),
                   {h: got[h] for h in extra_hooks})


class Taps:
    """What the walk consults at each site: the default changes nothing and records nothing."""

    first: int = 0
    """First position the walk computes: every relevant part is 0 before it (a source's
    relevance only reaches later positions), so earlier positions are the full run's."""

    def point(self, site: str, layer: int, pair: Pair) -> Pair:
        """The pair at ``site`` of block ``layer`` (shapes [S, B, T, ...]); return it, changed
        where sources enter."""
        return pair

    def receiver(self, kind: str, layer: Optional[int]) -> Optional[torch.Tensor]:
        """A perturbation of receiver inputs (residual before the norm), moved from the
        irrelevant to the relevant part: 'v' [B, T, kv heads, d] (one per key/value head),
        'mlp' [B, T, d], 'logits' [B, T, d] (layer None); or None."""
        return None


def _plus(a: Pair, b: Pair) -> Pair:
    return a[0] + b[0], a[1] + b[1]


def _move(pair: Pair, delta: torch.Tensor) -> Pair:
    """``delta`` moved from the irrelevant part to the relevant part (the sum is unchanged)."""
    return pair[0] + delta, pair[1] - delta


def block(frame: Frame, run: Run, l: int, pair: Pair, taps: Taps, rules: Rules) -> Pair:
    """Block ``l`` on the residual pair entering it; returns the pair leaving it."""
    rb, p0 = rules.bias, taps.first
    pair = taps.point("resid_pre", l, pair)
    # attention: values decomposed, the pattern is the full run's
    n1 = R.norm(pair, frame.ln1[l], run.scale1[l][:, p0:], rb)
    W_V = frame.W_V[l]
    v = (torch.einsum("sbtd,hde->sbthe", n1[0], W_V), torch.einsum("sbtd,hde->sbthe", n1[1], W_V))
    e = taps.receiver("v", l)
    if e is not None:
        v = _move(v, torch.einsum("bthd,hde->bthe", R.norm_linear(frame.ln1[l], run.scale1[l][:, :, None], e), W_V))
    v = R.add_bias(*v, None if frame.b_V is None else frame.b_V[l], rb)
    v = taps.point("v", l, v)
    if p0:  # keys before the window: nothing relevant, the full run's values
        early = run.v[l][:, :p0].expand(v[0].shape[0], *run.v[l][:, :p0].shape)
        v = (torch.cat([torch.zeros_like(early), v[0]], 2), torch.cat([early, v[1]], 2))
    pat = run.pattern[l][:, :, p0:]
    z = tuple(torch.einsum("bhqk,sbkhe->sbqhe", pat, x[:, :, :, frame.kv_of_head]) for x in v)
    z = taps.point("heads", l, z)
    W_O = frame.W_O[l]
    attn = R.add_bias(torch.einsum("sbthe,hed->sbtd", z[0], W_O), torch.einsum("sbthe,hed->sbtd", z[1], W_O),
                      None if frame.b_O is None else frame.b_O[l], rb)
    attn = taps.point("attn_out", l, attn)
    mid = _plus(pair, attn)
    if not frame.parallel:
        mid = taps.point("resid_mid", l, mid)
    # MLP: the nonlinearity at the full pre-activation
    n2 = R.norm(pair if frame.parallel else mid, frame.ln2[l], run.scale2[l][:, p0:], rb)
    e = taps.receiver("mlp", l)
    if e is not None:
        n2 = _move(n2, R.norm_linear(frame.ln2[l], run.scale2[l], e))
    b_in = None if frame.b_in is None else frame.b_in[l]
    if frame.gated:
        gate = R.linear(n2, frame.W_gate[l], None, rb)
        up = R.linear(n2, frame.W_in[l], b_in, rb)
        h = R.product(R.activation(gate, frame.act[l], run.mlp_pre[l][:, p0:], rules.activation), up)
    else:
        h = R.activation(R.linear(n2, frame.W_in[l], b_in, rb), frame.act[l], run.mlp_pre[l][:, p0:], rules.activation)
    h = taps.point("neurons", l, h)
    out = R.linear(h, frame.W_out[l], None if frame.b_out is None else frame.b_out[l], rb)
    out = taps.point("mlp_out", l, out)
    post = _plus(mid, out)
    return taps.point("resid_post", l, post)


def walk(frame: Frame, run: Run, n_sources: int, taps: Taps, rules: Rules, start: int = 0) -> Pair:
    """The residual pair entering the final norm, [S, B, T, d]: everything irrelevant before
    block ``start`` (sources enter through ``taps`` at ``start`` or later). Positions before
    ``taps.first`` are not walked: they hold the full run's residual as irrelevant part."""
    p0 = taps.first
    full = run.resid_pre[start] if start < frame.n_layers else run.final
    full = full[:, p0:]
    pair = (torch.zeros((n_sources,) + full.shape, dtype=full.dtype, device=full.device),
            full.expand(n_sources, *full.shape))
    for l in range(start, frame.n_layers):
        pair = block(frame, run, l, pair, taps, rules)
    if p0:
        early = run.final[:, :p0].expand(n_sources, *run.final[:, :p0].shape)
        pair = (torch.cat([torch.zeros_like(early), pair[0]], 2), torch.cat([early, pair[1]], 2))
    return pair


def unembed(frame: Frame, run: Run, pair: Pair, positions: Optional[torch.Tensor], taps: Taps,
            rules: Rules) -> Pair:
    """Logit pair [S, B, k, vocab] at ``positions`` [B, k] (None: every position)."""
    scale, e = run.final_scale, taps.receiver("logits", None)
    if positions is not None:
        idx = positions.to(pair[0].device)
        pair = tuple(x.gather(2, idx[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])) for x in pair)
        scale = scale.gather(1, idx[:, :, None])
        if e is not None:
            e = e.gather(1, idx[:, :, None].expand(-1, -1, e.shape[-1]))
    n = R.norm(pair, frame.ln_final, scale, rules.bias)
    if e is not None:
        n = _move(n, R.norm_linear(frame.ln_final, scale, e))
    return R.linear(n, frame.W_U, frame.b_U, rules.bias)


def metric_relevance(metric, logits: Pair) -> torch.Tensor:
    """[S]: the metric's relevant part, metric(full) - metric(irrelevant) (the relevant logits'
    logit difference for a logit-difference metric), in the metric's reported units."""
    rel, irrel = logits
    S, B = rel.shape[:2]
    rows = torch.arange(B, device=rel.device).repeat(S)
    flat = lambda x: x.reshape(S * B, *x.shape[2:])  # noqa: E731
    full = metric.per_prompt(flat(rel + irrel), rows).view(S, B)
    rest = metric.per_prompt(flat(irrel), rows).view(S, B)
    return metric.reduce(full) - metric.reduce(rest)
