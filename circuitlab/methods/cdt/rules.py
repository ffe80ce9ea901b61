"""The CD-T propagation rules: how each operation splits a (relevant, irrelevant) pair.

Why one place: the decomposition, the node relevance and the edge relevance all run the same
rules, and each rule keeps ``relevant + irrelevant`` equal to the operation's output on their
sum, which is what makes the decomposition complete. The rules are those of contextual
decomposition for transformers (Hsu et al. 2024):

* linear maps act on each part; a bias is split between the parts in proportion to the
  magnitude of what each part contributes to the same element (``bias="share"``), or left to
  the irrelevant part (``bias="irrelevant"``);
* a norm is linearised around the full activation: its scale (and mean) are those of the full
  input, so each part is normalised by the same scale and the bias is split as above;
* an elementwise nonlinearity ``f`` at the full pre-activation ``x``: ``activation="share"``
  gives each part its share of the output in proportion to its share of the pre-activation,
  ``f(x) * part / x`` (each part is multiplied by the gain ``f(x) / x``);
  ``activation="difference"`` gives the irrelevant part ``f(irrelevant)`` and the relevant
  part the rest, ``f(x) - f(irrelevant)``;
* a product of two decomposed factors (a gated MLP's ``act(gate) * up``): every term that
  involves a relevant factor is relevant, only ``irrelevant * irrelevant`` is irrelevant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from circuitlab.engine.norms import NormParams
from circuitlab.validate import check_choice

BIAS_RULES = ("share", "irrelevant")
ACTIVATION_RULES = ("share", "difference")

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Rules:
    """How biases and nonlinearities are split (see the module docstring)."""

    bias: str = "share"
    """'share': a bias goes to the parts in proportion to the magnitude each part contributes
    to the same element (the paper's rule: with everything relevant the bias is relevant too);
    'irrelevant': biases stay in the irrelevant part (the relevant part is then linear in the
    source for non-gated MLPs with activation='share')."""
    activation: str = "share"
    """'share': each part gets f(x) * part / x, its share of the pre-activation x; 'difference':
    the irrelevant part gets f(irrelevant), the relevant part f(x) - f(irrelevant)."""

    def __post_init__(self) -> None:
        check_choice("bias", self.bias, BIAS_RULES)
        check_choice("activation", self.activation, ACTIVATION_RULES)


def add_bias(rel: torch.Tensor, irrel: torch.Tensor, bias: Optional[torch.Tensor], rule: str) -> Pair:
    """``(rel, irrel)`` plus ``bias`` split by ``rule`` (where both parts are 0 the bias is
    irrelevant). The irrelevant part takes what the relevant part does not, so the sum is
    always the full output."""
    if bias is None:
        return rel, irrel
    if rule == "irrelevant":
        return rel, irrel + bias
    ar = rel.abs()
    share = bias * (ar / (ar + irrel.abs() + torch.finfo(ar.dtype).tiny))  # exactly bias where irrel is 0
    return rel + share, irrel + (bias - share)


def linear(pair: Pair, W: torch.Tensor, b: Optional[torch.Tensor], rule: str) -> Pair:
    """``x @ W + b`` on both parts (``W`` [d_in, d_out])."""
    return add_bias(pair[0] @ W, pair[1] @ W, b, rule)


def norm_linear(p: NormParams, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The norm's linear part at a fixed ``scale``: (x - mean x) / scale * gain (no mean
    subtraction for RMSNorm, no bias)."""
    xc = x if p.rms else x - x.mean(-1, keepdim=True)
    out = xc / scale
    return out * p.weight.to(out.dtype) if p.weight is not None else out


def norm_scale_of(p: NormParams, full: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The norm's scale at the full input [..., 1], computed in ``dtype`` (float32 or wider)."""
    x = full.to(dtype)
    xc = x if p.rms else x - x.mean(-1, keepdim=True)
    return (xc.pow(2).mean(-1, keepdim=True) + p.eps).sqrt()


def norm(pair: Pair, p: NormParams, scale: torch.Tensor, rule: str) -> Pair:
    """A norm linearised around the full input whose scale is ``scale``."""
    bias = p.bias.to(pair[0].dtype) if p.bias is not None else None
    return add_bias(norm_linear(p, scale, pair[0]), norm_linear(p, scale, pair[1]), bias, rule)


def activation_gain(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """f(x) / x, with the slope of f at 0 where x is (nearly) 0 (f(0) = 0 for the MLP
    activations this is used on: GELU, SiLU, ReLU)."""
    small = x.abs() <= 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    h = torch.tensor([1e-3, -1e-3], dtype=x.dtype, device=x.device)
    fh = f(h)
    slope0 = (fh[0] - fh[1]) / (h[0] - h[1])
    return torch.where(small, slope0, f(x) / safe)


def activation(pair: Pair, f: Callable[[torch.Tensor], torch.Tensor], full: torch.Tensor, rule: str) -> Pair:
    """``f`` applied at the full pre-activation ``full``, split by ``rule``."""
    if rule == "share":
        g = activation_gain(f, full)
        return g * pair[0], g * pair[1]
    fi = f(pair[1])
    return f(pair[0] + pair[1]) - fi, fi


def product(a: Pair, u: Pair) -> Pair:
    """``(a_r + a_i) * (u_r + u_i)``: the terms with a relevant factor are relevant."""
    return a[0] * (u[0] + u[1]) + a[1] * u[0], a[1] * u[1]
