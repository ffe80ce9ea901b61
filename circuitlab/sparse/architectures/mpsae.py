"""MP-SAE: the encoder is matching pursuit over the decoder's unit-norm atoms (Costa et al., 2025,
"From Flat to Hierarchical: Extracting Sparse Representations with Matching Pursuit").

Why: a one-shot encoder (ReLU, TopK, JumpReLU) scores every latent against the whole input at
once, so when a child feature's direction leans on its parent's, the parent's latent also scores
on the child's share and the child's on the parent's. Matching pursuit explains the input one
atom at a time and scores each next atom against what is still unexplained: once the parent's
atom is subtracted, the child is scored on its own component. Latents can therefore depend on
each other (hierarchies, correlated directions) in a way a single linear map cannot express.

Per token, with unit-norm atoms d_j (the rows of ``W_dec``)::

    r = x - b_dec;  f = 0
    repeat k times:  j = argmax_j <r, d_j>;  a = max(<r, d_j>, 0);  f_j += a;  r -= a d_j
    x_hat = b_dec + f @ W_dec  (= x - r)

An atom picked twice accumulates its coefficient; a step where no atom correlates positively
with the residual changes nothing (the paper's non-negative variant), so at most k latents are
active. Each step lowers ||r||^2 by a^2, so the residual never grows. The dictionary learns by
gradient descent on ||x - x_hat||^2 through the chosen coefficients and atoms (the choices are
constants); the atoms are renormalised to unit norm after each step. There is no sparsity
penalty, no encoder matrix and no encoder bias: ``W_enc`` is a view of ``W_dec``'s transpose.

Only SAEs: the residual lives in the input space and the atoms in the output space, so the coder
must reconstruct its own input from one source (no transcoders, no crosscoders).

Files (SAE Lens layout, ``circuitlab.sparse.files``): SAE Lens's ``matching_pursuit``
architecture is the same tied pursuit, and with ``max_iterations = k``, ``residual_threshold = 0``
and ``stop_on_duplicate_support = false`` (written to cfg.json by ``lens_fields``) it runs exactly
these k steps. The coder is ``tied``, so the weights file holds what that class loads: ``W_dec``
[d_sae, d_in] (unit rows) and ``b_dec`` [d_in]; no ``W_enc``, no ``b_enc``. The training
normalisation is folded into ``b_dec`` alone
(``fold_scaling``): the atoms stay unit-norm, which pursuit needs, and the latents come out in
raw activation units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitlab.sparse import validate as v
from circuitlab.sparse.base import CoderConfig, LossContext, LossOut, SparseCoder, recon_loss, register


@dataclass
class MPSAEConfig(CoderConfig):
    """Matching-pursuit SAE: k greedy pursuit steps over the unit-norm decoder atoms."""

    arch: str = "mpsae"
    """Architecture name (fixed)."""
    k: int = 32
    """Pursuit steps per token: at most k latents are active (fewer when an atom is picked twice
    or no atom correlates positively with the residual)."""
    init_decoder_norm: float = 1.0
    """Must be 1: pursuit needs unit-norm atoms (kept at unit norm during training)."""

    def __post_init__(self) -> None:
        w = "mpsae config"
        v.integer(w, "k", self.k, 1, self.d_sae if self.d_sae else None)
        if self.init_decoder_norm != 1.0:
            v.fail(w, "init_decoder_norm", self.init_decoder_norm,
                   "1.0 (matching pursuit needs unit-norm atoms; leave it out)")
        if self.n_sources != 1 or not self.autoencoder:
            raise ValueError(f"{w}: arch 'mpsae' is an SAE only (one source, reconstructing its own input): "
                             "pursuit subtracts atoms from the input, so they must live in the same space. Use "
                             "kind = 'sae', or arch topk / batchtopk / jumprelu / relu for transcoders and "
                             "crosscoders")
        if self.apply_b_dec_to_input is False:
            v.fail(w, "apply_b_dec_to_input", False, "true or unset (pursuit starts from x - b_dec)")


def matching_pursuit(r: torch.Tensor, atoms: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k steps of non-negative matching pursuit of residuals ``r`` [n, d] over ``atoms`` [m, d].

    Returns the chosen atom of each step ``idx`` [n, k], its coefficient ``coef`` [n, k] (>= 0;
    0 where no atom correlated positively) and the final residual [n, d]. Gradients flow through
    the coefficients and the chosen atoms; the choices themselves are constants."""
    idx, coef = [], []
    for _ in range(k):
        with torch.no_grad():  # the [n, m] scores only pick the atom; no graph for them
            j = (r @ atoms.t()).argmax(-1)
        d = atoms.index_select(0, j)
        a = (r * d).sum(-1).clamp_min(0)
        r = r - a[:, None] * d
        idx.append(j)
        coef.append(a)
    return torch.stack(idx, -1), torch.stack(coef, -1), r


def dense_latents(idx: torch.Tensor, coef: torch.Tensor, n: int) -> torch.Tensor:
    """[rows, n] latents: each step's coefficient added at its atom (repeats accumulate)."""
    return torch.zeros(idx.shape[0], n, dtype=coef.dtype, device=coef.device).scatter_add(-1, idx, coef)


@register("mpsae")
class MPSAECoder(SparseCoder):
    config_cls = MPSAEConfig
    tied = True  # the atoms are both the analysis and the synthesis dictionary: no W_enc, no b_enc
    lens_sae = "matching_pursuit"

    @property
    def W_enc(self) -> torch.Tensor:
        """[d_in, d_sae] the atoms as columns (a view of ``W_dec``; scores of the first step)."""
        return self.W_dec.t()

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of the first pursuit step, <x - b_dec, d_j> (later steps score the residual)."""
        return self.encoder_input(x) @ self.W_dec.t()

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("MP-SAE latents are not a function of one set of pre-activations: each pursuit "
                                  "step scores the residual left by the previous ones; use encode(x)")

    def pursue(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``matching_pursuit`` of x [..., d_in] (flattened to rows) from r = x - b_dec."""
        r = self.encoder_input(x).reshape(-1, x.shape[-1])
        return matching_pursuit(r, self.W_dec, self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        idx, coef, _ = self.pursue(x)
        return dense_latents(idx, coef, self.d_sae).reshape(*x.shape[:-1], self.d_sae)

    def train_forward(self, x, ctx: LossContext):
        return self.encode(x), self.pre(x), {}

    def loss(self, x: torch.Tensor, y=None, ctx=None) -> LossOut:
        """Reconstruction loss only (L0 <= k by construction); x_hat = x - final residual."""
        ctx = ctx or LossContext()
        if y is not None and y is not x:
            raise ValueError("an MP-SAE reconstructs its input: call loss(x) (y must be None)")
        idx, coef, r = self.pursue(x)
        y_hat = x - r.reshape(x.shape)
        recon = recon_loss(y_hat, x, ctx)
        with torch.no_grad():
            f = dense_latents(idx, coef.detach(), self.d_sae)
            on = f > 0
            fired = on.sum(0)
            l0 = on.sum(-1).float().mean()
        return LossOut(recon, recon, torch.zeros((), device=x.device), f, y_hat, {}, fired, l0)

    @torch.no_grad()
    def after_step(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def fold_scaling(self) -> None:
        """Act on raw activations: trained on x' = s x, pursuit of x (from b_dec / s) picks the
        same atoms with coefficients a / s, so only b_dec is divided by s. Unlike the other
        architectures the latents change (by 1/s, to raw units) and W_dec keeps unit rows."""
        self.b_dec.div_(self.out_scale)
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)

    def lens_fields(self) -> dict:
        """SAE Lens's matching_pursuit runs exactly k steps with these settings."""
        return {"max_iterations": self.cfg.k, "residual_threshold": 0.0, "stop_on_duplicate_support": False}

    @classmethod
    def lens_config(cls, lens: dict) -> dict:
        """``k`` from a fixed-step matching_pursuit cfg.json; other stopping rules are refused."""
        super().lens_config(lens)
        if lens.get("residual_threshold", 1e-2) != 0 or lens.get("stop_on_duplicate_support", True) \
                or lens.get("max_iterations") is None:
            raise ValueError("only fixed-step matching_pursuit SAEs are supported (max_iterations set, "
                             "residual_threshold = 0, stop_on_duplicate_support = false): mpsae runs exactly k steps")
        return {"k": int(lens["max_iterations"])}
