"""Integrated gradients (Sundararajan et al.; EAP-IG), two variants and five step rules.

IG(n) = (n(x_source) - n(x_base)) . integral over alpha in [0, 1] of dL/dn at the interpolated
point, the integral taken by a quadrature ``rule`` with ``steps`` = m nodes (alpha = 0 is the
base prompt, alpha = 1 the source; weights sum to 1):

- ``"right"`` (default): alpha = k/m, k = 1..m, equal weights. The rule of Hanna et al.'s
  EAP-IG reference code for node scores and for IG on activations (and for EAP-IG-inputs edge
  scores before its 2025 rewrite); Captum's ``method="riemann_right"``.
- ``"left"``: alpha = k/m, k = 0..m-1. The rewritten EAP-IG-inputs edge code's rule; Captum's
  ``"riemann_left"``.
- ``"midpoint"``: alpha = (k - 1/2)/m, k = 1..m. Captum's ``"riemann_middle"``.
- ``"trapezoid"``: alpha = k/(m-1), k = 0..m-1, the two end weights halved (m >= 2). Captum's
  ``"riemann_trapezoid"`` uses the same nodes with weights summing to (m-1)/m, so its values
  are (m-1)/m times these.
- ``"gauss-legendre"``: Gauss-Legendre nodes and weights mapped to [0, 1]; exact for
  integrands polynomial in alpha of degree < 2m. Captum's default, ``"gausslegendre"``.

``variant="inputs"`` (EAP-IG-inputs) interpolates the token embeddings: m forward+backward
passes for all nodes at once. ``variant="activations"`` runs the *base* prompts and
interpolates one site's activations (all positions) at a time: m passes per layer of the site
family, like exact patching in the same ``direction``. Captum's LayerIntegratedGradients and
EAP-IG's IG on activations run the clean prompt and interpolate from corrupted to clean; for a
site that is not a full cut that is this method with ``direction="noising"`` and the mirrored
rule (alpha -> 1 - alpha: right <-> left), up to sign (Captum: minus; EAP-IG: equal).
Completeness (the values summing to L(source) - L(base)) holds over a full cut, e.g. the
residual stream at one layer over all positions, as m grows. The m steps run as batched copies.

``baseline`` chooses the alpha = 0 end. ``"prompt"`` (default) is the base prompt that
``direction`` picks (the corrupted prompt when denoising). The others keep the source prompt and
replace its token embeddings (positions and position embeddings stay): ``"zero"`` (zero vectors),
``"pad"`` (the tokenizer's pad token; its BOS where it has none), ``"mean"`` (the mean embedding
over the vocabulary) or ``"mean:SOURCE"`` (the mean embedding of the tokens of a data source,
e.g. ``"mean:zoo"``, weighted by how often each occurs). A leading BOS keeps its own embedding:
it is the same in every prompt, and a model's attention leans on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.gradients import forward_for_grads
from circuitlab.engine.sites import hook_name
from circuitlab.methods.attribution import make_result, node_values, prepare, reduce_to_nodes
from circuitlab.methods.registry import NodeOptions, node_method
from circuitlab.result import Result

VARIANTS = ("inputs", "activations")
RULES = ("right", "left", "midpoint", "trapezoid", "gauss-legendre")
BASELINES = ("prompt", "zero", "pad", "mean", "mean:SOURCE")
"""What ``baseline`` may name (``mean:SOURCE`` with a data-source name, see circuitlab.data)."""
MEAN_DOCS = 256
"""Documents of a data source whose tokens a ``mean:SOURCE`` baseline averages."""
MEAN_CTX = 64
"""Tokens read from each of those documents."""


@dataclass
class IGOptions(NodeOptions):
    """Options of integrated gradients (see the module docstring)."""

    steps: int = 16
    """m, the number of points the path integral is evaluated at (run as batched copies)."""
    variant: str = "inputs"
    """'inputs' interpolates the token embeddings (one batched pass for all nodes);
    'activations' interpolates each site's activations (one batched pass per layer)."""
    rule: str = "right"
    """Where the m points lie and how they are weighted: 'right', 'left', 'midpoint',
    'trapezoid' or 'gauss-legendre'."""
    baseline: str = "prompt"
    """The alpha = 0 end: 'prompt' (the base prompt of ``direction``), or the source prompt
    with 'zero', 'pad', 'mean' (vocabulary) or 'mean:SOURCE' (data source) token embeddings."""

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown IG variant {self.variant!r}; choose from {VARIANTS}")
        quadrature(self.rule, self.steps)  # refuses an unknown rule or a bad number of steps
        check_baseline(self.baseline)


def check_baseline(baseline, allowed: Sequence[str] = BASELINES) -> None:
    """``baseline`` names one of ``allowed`` ('mean:SOURCE' with a valid data-source name)."""
    from circuitlab.data import check as check_source

    if isinstance(baseline, str) and baseline.startswith("mean:") and "mean:SOURCE" in allowed:
        try:
            check_source(baseline[len("mean:"):])
        except ValueError as e:
            raise ValueError(f"baseline {baseline!r}: {e}") from None
        return
    if not isinstance(baseline, str) or baseline not in allowed or baseline == "mean:SOURCE":
        raise ValueError(f"unknown IG baseline {baseline!r}; choose from {', '.join(allowed)} (SOURCE: a data "
                         "source such as 'zoo' or 'text:PATH')")


def token_embeddings(model, tokens: torch.Tensor) -> torch.Tensor:
    """What ``hook_embed`` holds for ``tokens`` [..., pos]: the model's own embedding module
    (with any scaling it applies, e.g. Gemma's sqrt(d_model)), no gradient."""
    with torch.no_grad():
        return model.bridge.embed(tokens.to(model.device))


def mean_embedding(model, baseline: str = "mean") -> torch.Tensor:
    """[d_model] mean token embedding: over the vocabulary ('mean') or over the tokens of a data
    source ('mean:SOURCE', each token weighted by its count; BOS not counted)."""
    if baseline == "mean":
        ids = torch.arange(model.d_vocab, device=model.device)
        total = sum(token_embeddings(model, c).double().sum(0) for c in ids.split(8192))
        return (total / model.d_vocab).to(model.dtype)
    from circuitlab.data import documents, pad_documents

    spec = baseline[len("mean:"):]
    ids, lengths = pad_documents(model.tokenizer, documents(spec, 0, MEAN_DOCS, MEAN_CTX), MEAN_CTX)
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]
    real[:, 0] = False  # the BOS every document starts with
    counts = torch.bincount(ids[real], minlength=model.d_vocab).to(model.device)
    if int(counts.sum()) == 0:
        raise ValueError(f"baseline {baseline!r}: the data source has no tokens after BOS; choose another source")
    used = counts.nonzero().flatten()
    emb = token_embeddings(model, used).double()
    return ((emb * counts[used, None]).sum(0) / counts.sum()).to(model.dtype)


def baseline_embeddings(model, tokens: torch.Tensor, baseline: str, keep_bos: bool = True) -> torch.Tensor:
    """[B, T, d_model] token embeddings of ``tokens`` [B, T] with ``baseline`` ('zero', 'pad', 'mean'
    or 'mean:SOURCE') in place of each token's own; with ``keep_bos`` a first token that is the
    tokenizer's BOS keeps its own embedding."""
    from circuitlab.tasks.tokenize import bos_id, pad_id

    check_baseline(baseline, [b for b in BASELINES if b != "prompt"])
    own = token_embeddings(model, tokens)
    if baseline == "zero":
        out = torch.zeros_like(own)
    elif baseline == "pad":
        out = token_embeddings(model, torch.full_like(tokens, pad_id(model.tokenizer)))
    else:
        out = mean_embedding(model, baseline).expand_as(own).clone()
    if keep_bos:
        first = tokens[:, 0].to(own.device) == bos_id(model.tokenizer)
        out[first, 0] = own[first, 0]
    return out


def replace_embeddings(embeds: torch.Tensor):
    """A hook (for ``hook_embed``) putting ``embeds`` [B, T, d] in place of the model's token
    embeddings, tiled over batched copies of the B prompts."""
    def fn(x):
        return embeds.to(x.dtype).repeat(x.shape[0] // embeds.shape[0], 1, 1)

    return fn


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights) of ``rule`` with ``steps`` nodes on [0, 1], float64; weights sum to 1.

    Computed in float64 so that a float64 model sees the exact nodes (k/3 rounded to float32 is
    off by 1e-8); cast to float32 they equal the float32 quotients bit for bit."""
    if rule not in RULES:
        raise ValueError(f"unknown IG rule {rule!r}; choose from {', '.join(RULES)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"IG needs a whole number of steps >= 1 (got {steps!r}); e.g. steps=16")
    m = int(steps)
    k = torch.arange(m, dtype=torch.float64)
    w = torch.full((m,), 1.0 / m, dtype=torch.float64)
    if rule == "right":
        a = (k + 1) / m
    elif rule == "left":
        a = k / m
    elif rule == "midpoint":
        a = (k + 0.5) / m
    elif rule == "trapezoid":
        if m < 2:
            raise ValueError("the trapezoid rule needs steps >= 2 (both end points); e.g. steps=16")
        a = k / (m - 1)
        w = torch.full((m,), 1.0 / (m - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (m - 1)
    else:
        x, wx = np.polynomial.legendre.leggauss(m)
        a, w = torch.from_numpy(0.5 * (x + 1)), torch.from_numpy(0.5 * wx)
    return a, w


def _interpolate(base_act: torch.Tensor, src_act: torch.Tensor, alphas: torch.Tensor):
    copies = alphas.shape[0] // base_act.shape[0]

    def fn(x):
        ones = [1] * (base_act.dim() - 1)
        b, s = base_act.repeat(copies, *ones), src_act.repeat(copies, *ones)
        a = alphas.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return b + a * (s - b)

    return fn


def _integrate(g: torch.Tensor, weights: torch.Tensor, B: int) -> tuple[torch.Tensor, int]:
    """(weighted sum over the steps of gradients stacked as [steps * B, ...], divisor).

    Equal weights give the plain sum and the step count, divided only after multiplying by the
    activation difference: the right rule then stays bit-identical to the plain mean."""
    steps = weights.shape[0]
    g = g.view(steps, B, *g.shape[1:])
    if bool((weights == weights[0]).all()):
        return g.sum(0), steps
    return (g * weights.to(g.device, g.dtype).view(-1, *([1] * (g.dim() - 1)))).sum(0), 1


def embedding_path(model, tokens: torch.Tensor, metric, names: Sequence[str], base_embed: torch.Tensor,
                   src_embed: torch.Tensor, rule: str, steps: int) -> dict[str, tuple[torch.Tensor, int]]:
    """The path integral of IG on the token embeddings: {name: (weighted sum over the steps of
    d metric / d activation, divisor)} for each hook in ``names`` (``hook_embed`` itself gives
    the gradient at the interpolated embeddings), the embeddings going straight from
    ``base_embed`` to ``src_embed`` [B, T, d] on ``tokens`` [B, T]. One batched forward and
    backward pass of ``steps`` copies; multiply by the activation difference, then divide."""
    alphas, weights = quadrature(rule, steps)
    B = tokens.shape[0]
    alphas = alphas.to(tokens.device).repeat_interleave(B)
    interp = _interpolate(base_embed, src_embed, alphas)
    run = forward_for_grads(model, tokens, metric, names, extra_hooks=[(hook_name("embed"), interp)],
                            copies=int(steps))
    g = run.grads()
    return {h: _integrate(g[h], weights, B) for h in names}


@node_method("ig", IGOptions, order=4)
def ig(model, task, sites: str = "resid_pre", direction: str = "denoising",
       positions: Optional[Sequence[int | str]] = None, layers: Optional[Sequence[int]] = None,
       steps: int = 16, variant: str = "inputs", rule: str = "right", baseline: str = "prompt") -> Result:
    """IG of ``task.metric`` for each node of ``sites``; see the module docstring for
    ``variant`` ("inputs" or "activations"), ``rule`` (how the m = ``steps`` points are
    placed and weighted) and ``baseline`` (where the path starts)."""
    IGOptions(layers, steps, variant, rule, baseline)  # refuses bad options before any work
    alphas, weights = quadrature(rule, steps)
    steps = int(steps)
    t0 = time.perf_counter()
    base, src, grid = prepare(model, task, sites, direction, positions, layers)
    base_hooks: list = []
    if baseline != "prompt":  # the source prompt with its token embeddings replaced
        base = src
        base_hooks = [(hook_name("embed"), replace_embeddings(baseline_embeddings(model, src, baseline)))]
    hooks = sorted({n.hook for n in grid.nodes})
    B = base.shape[0]
    alphas = alphas.to(base.device).repeat_interleave(B)
    embed = hook_name("embed")
    names = hooks + [embed] if variant == "inputs" else hooks
    src_acts = capture(model, src, names)
    base_acts = capture(model, base, names, hooks=base_hooks)
    grads: dict[str, tuple[torch.Tensor, int]] = {}
    with torch.no_grad():
        base_value = float(task.metric.reduce(_per_prompt(model, base, task, base_hooks)[None])[0])
    if variant == "inputs":
        grads = embedding_path(model, base, task.metric, hooks, base_acts[embed], src_acts[embed], rule, steps)
        passes = 1
    else:
        passes = 0
        for h in hooks:
            interp = _interpolate(base_acts[h], src_acts[h], alphas)
            run = forward_for_grads(model, base, task.metric, [h], extra_hooks=base_hooks + [(h, interp)],
                                    copies=steps)
            grads[h] = _integrate(run.grads()[h], weights, B)
            passes += 1
    scores = {h: reduce_to_nodes(grid.family, (src_acts[h] - base_acts[h]) * grads[h][0] / grads[h][1]) for h in hooks}
    values = node_values(grid.nodes, scores, task.roles, B)
    fwd = steps * passes + 3
    return make_result(grid, values, "ig", sites, direction, task, base_value, t0, fwd, steps * passes,
                       meta={"variant": variant, "steps": steps, "rule": rule, "baseline": baseline,
                             "forward_passes_note": "forward-pass equivalents (steps run as batched copies)"})


def _per_prompt(model, tokens, task, hooks=()):
    from circuitlab.engine.forward import metric_per_prompt

    return metric_per_prompt(model, tokens, task.metric, hooks)
