"""Semi-nonnegative matrix factorisation: A ~= Z Y with Z >= 0 and Y of any sign.

Why this shape: MLP activations are read as sums of parts. Each token's activation vector (a row
of A, [tokens, d]) is a non-negative mix (a row of Z, [tokens, k]) of k factor directions (the
rows of Y, [k, d]); the directions may have either sign, as neuron activations and MLP outputs
do. Non-negative coefficients make a factor *present or absent* on a token, so each factor maps
back to the tokens that use it (Shafran et al. 2025, "Decomposing MLP Activations into
Interpretable Features via Semi-Nonnegative Matrix Factorization").

The updates are those of Ding, Li & Jordan (2010, "Convex and Semi-Nonnegative Matrix
Factorizations"), written for rows as tokens:

- Y <- (Z^T Z)^-1 Z^T A, the least-squares directions for the current coefficients;
- Z <- Z * sqrt(([A Y^T]^+ + Z [Y Y^T]^-) / ([A Y^T]^- + Z [Y Y^T]^+)), with X^+ and X^- the
  positive and negative parts of X; it keeps Z >= 0 and never increases ||A - Z Y||^2.

After each direction step the directions are scaled to unit norm and the coefficients take the
scale (Z Y is unchanged), so coefficients are in the units of A. Without sparsity the objective
never increases from one iteration to the next.

Sparsity, two kinds:

- ``l1`` on the coefficients: the objective becomes ||A - Z Y||^2 + 2 lambda sum(Z), whose
  coefficient update only adds lambda to the denominator. This is what makes the factors
  identifiable: without it any Z M, M^-1 Y with M >= 0 fits equally well (Z M stays
  non-negative), so directions come out as mixtures; the sparsest coefficients pick the
  planted ones. ``lambda = l1 x`` the root-mean-square row norm of A, so ``l1`` is a fraction
  of a typical activation's size (coefficients whose evidence is below it go to zero).
- ``keep``, the paper's hard winner-take-all on the directions: each direction keeps only its
  largest-magnitude entries, so a factor over neurons is a small group of neurons.

Neither sparsity step is guaranteed to be a descent step of the penalised objective (the
rescaling moves weight between the penalised and the free factor; winner-take-all is a
projection), so the best iterate is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

INITS = ("kmeans", "random")


@dataclass
class SNMFConfig:
    """How to factorise."""

    factors: int = 32
    """k, the number of factors (rows of Y, columns of Z)."""
    iters: int = 500
    """Most outer iterations (one direction step and ``inner`` coefficient steps each)."""
    inner: int = 5
    """Coefficient updates per direction step: cheap (they reuse A Y^T), and each one is a
    descent step, so several per iteration converge in fewer passes over A."""
    l1: float = 0.0
    """Sparsity of the coefficients: the L1 weight as a fraction of the root-mean-square row
    norm of A (0 = plain semi-NMF; 0.01-0.03 recovers planted sparse factors at the noise
    floor)."""
    keep: float = 1.0
    """Fraction of each direction's entries kept by winner-take-all (1 keeps all: plain
    semi-NMF; the paper keeps a few percent of the MLP neurons per factor)."""
    init: str = "kmeans"
    """'kmeans' (Ding et al.: cluster the rows, a factor per centroid, one-hot coefficients
    plus 0.2) or 'random' (uniform coefficients)."""
    tol: float = 1e-7
    """Stop once the relative error improved by less than this over ``patience`` iterations."""
    patience: int = 20
    """Iterations over which the improvement is measured for ``tol``."""
    ridge: float = 1e-9
    """Ridge on Z^T Z in the direction step, relative to its mean diagonal (keeps the solve
    defined when a factor's coefficients vanish)."""
    seed: int = 0
    """Seed of the initialisation."""

    def __post_init__(self) -> None:
        if not isinstance(self.factors, int) or self.factors < 1:
            raise ValueError(f"factors must be an int >= 1, got {self.factors!r}")
        for name in ("iters", "inner", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep is the fraction of each direction's entries kept, in (0, 1]; got {self.keep!r} "
                             "(1 = no sparsity)")
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is not one of {', '.join(INITS)}")
        for name in ("l1", "tol", "ridge"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


@dataclass
class Factorization:
    """A ~= Z Y, with the directions at unit norm (the scale lives in the coefficients)."""

    Z: torch.Tensor
    """[tokens, k] non-negative coefficients: how much of each factor a token uses."""
    Y: torch.Tensor
    """[k, d] factor directions, unit norm, any sign."""
    objective: list[float] = field(default_factory=list)
    """(||A - Z Y||^2 + 2 lambda sum(Z)) / ||A||^2 after each iteration (the relative error
    when ``l1`` is 0)."""
    error: float = float("nan")
    """Relative error ||A - Z Y||^2 / ||A||^2 of the returned factors."""
    lam: float = 0.0
    """The L1 weight lambda in the units of A (``cfg.l1`` x rms row norm of A)."""
    cfg: SNMFConfig = field(default_factory=SNMFConfig)

    def coefficients(self, A: torch.Tensor, iters: int = 100) -> torch.Tensor:
        """Non-negative coefficients of new rows ``A`` [n, d] on these directions (the same
        multiplicative updates with Y fixed): what each factor contributes to unseen tokens."""
        _check_matrix(A)
        if A.shape[1] != self.Y.shape[1]:
            raise ValueError(f"A has {A.shape[1]} columns but the factors live in {self.Y.shape[1]} dimensions; "
                             "give activations from the same site")
        Y = self.Y.to(A.device, A.dtype)
        AYt, YYt = A @ Y.t(), Y @ Y.t()
        Z = (A @ torch.linalg.pinv(Y)).clamp_min(0) + _eps(A) ** 0.5
        for _ in range(iters):
            Z = _coefficient_step(Z, AYt, YYt, self.lam)
        return Z


def snmf(A: torch.Tensor, cfg: Optional[SNMFConfig] = None) -> Factorization:
    """Factorise ``A`` [tokens, d] as Z Y (see the module docstring). Computes in A's dtype and
    device; pass float64 for exact monotonicity checks."""
    cfg = cfg if cfg is not None else SNMFConfig()
    _check_matrix(A)
    n, d = A.shape
    k = cfg.factors
    if k > min(n, d) and cfg.keep == 1:
        raise ValueError(f"factors={k} exceeds the rank bound min(tokens, d) = {min(n, d)} of A {tuple(A.shape)}; "
                         "use fewer factors or more tokens")
    if k > n:
        raise ValueError(f"factors={k} exceeds the {n} rows of A; use fewer factors or more tokens")
    gen = torch.Generator().manual_seed(cfg.seed)
    Z = _init(A, k, cfg.init, gen)
    norm2 = float(A.double().pow(2).sum())
    if norm2 == 0:
        raise ValueError("A is all zeros; there is nothing to factorise (check the site and layer)")
    n_keep = max(1, math.ceil(cfg.keep * d))
    lam = cfg.l1 * math.sqrt(norm2 / n)
    history: list[float] = []
    best = (math.inf, math.nan, Z, None)
    eye = torch.eye(k, dtype=A.dtype, device=A.device)
    for _ in range(cfg.iters):
        ZtA, ZtZ = Z.t() @ A, Z.t() @ Z
        ridge = cfg.ridge * float(ZtZ.diagonal().mean()) + _eps(A)
        Y = torch.linalg.solve(ZtZ + ridge * eye, ZtA)
        if n_keep < d:
            Y = _winner_take_all(Y, n_keep)
        scale = Y.norm(dim=1).clamp_min(_eps(A))
        Y, Z = Y / scale[:, None], Z * scale
        AYt, YYt = A @ Y.t(), Y @ Y.t()
        for _ in range(cfg.inner):
            Z = _coefficient_step(Z, AYt, YYt, lam)
        err = _relative_error(Z, Y, AYt, norm2)
        obj = err + 2 * lam * float(Z.double().sum()) / norm2
        history.append(obj)
        if obj < best[0]:
            best = (obj, err, Z, Y)
        if len(history) > cfg.patience and history[-cfg.patience - 1] - obj < cfg.tol:
            break
    _, err, Z, Y = best
    return Factorization(Z, Y, history, err, lam, cfg)


def _check_matrix(A) -> None:
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or 0 in A.shape:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be a non-empty 2-D tensor [tokens, d], got {got}")
    if not A.is_floating_point():
        raise ValueError(f"A must be floating point, got {A.dtype}; convert with A.float()")
    if not torch.isfinite(A).all():
        raise ValueError("A contains NaN or inf; drop those rows before factorising")


def _eps(A: torch.Tensor) -> float:
    return float(torch.finfo(A.dtype).tiny) ** 0.5


def _coefficient_step(Z: torch.Tensor, AYt: torch.Tensor, YYt: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
    """Ding et al.'s multiplicative update of the non-negative factor (descent on
    ||A - Z Y||^2 + 2 lam sum(Z) for fixed Y; keeps Z >= 0)."""
    pos, neg = YYt.clamp_min(0), (-YYt).clamp_min(0)
    num = AYt.clamp_min(0) + Z @ neg
    den = (-AYt).clamp_min(0) + Z @ pos + lam
    return Z * torch.sqrt(num / den.clamp_min(_eps(Z)))


def _relative_error(Z, Y, AYt, norm2: float) -> float:
    """||A - Z Y||^2 / ||A||^2 without forming the residual: ||A||^2 - 2<Z, A Y^T> + <Z^T Z, Y Y^T>."""
    cross = float((Z.double() * AYt.double()).sum())
    quad = float(((Z.t() @ Z).double() * (Y @ Y.t()).double()).sum())
    return max(norm2 - 2 * cross + quad, 0.0) / norm2


def _winner_take_all(Y: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Each row keeps its ``n_keep`` largest-magnitude entries."""
    idx = Y.abs().topk(n_keep, dim=1).indices
    return torch.zeros_like(Y).scatter(1, idx, Y.gather(1, idx))


def _init(A: torch.Tensor, k: int, how: str, gen: torch.Generator) -> torch.Tensor:
    n = A.shape[0]
    if how == "random":
        return torch.rand(n, k, generator=gen, dtype=A.dtype).to(A.device) + 0.01
    labels = _kmeans(A, k, gen)
    Z = torch.full((n, k), 0.2, dtype=A.dtype, device=A.device)
    Z[torch.arange(n, device=A.device), labels] += 1.0
    return Z


def _kmeans(A: torch.Tensor, k: int, gen: torch.Generator, iters: int = 20, chunk: int = 8192) -> torch.Tensor:
    """Cluster labels of the rows of A: k-means++ seeding, then Lloyd iterations."""
    n = A.shape[0]
    sq = A.pow(2).sum(1)

    def dist2(C: torch.Tensor, rows: slice) -> torch.Tensor:
        return (sq[rows, None] - 2 * A[rows] @ C.t() + C.pow(2).sum(1)[None]).clamp_min(0)

    first = int(torch.randint(n, (1,), generator=gen))
    centres = A[first:first + 1]
    closest = dist2(centres, slice(None))[:, 0]
    for _ in range(1, k):
        w = closest.double().cpu()
        i = int(torch.multinomial(w / w.sum(), 1, generator=gen)) if float(w.sum()) > 0 else \
            int(torch.randint(n, (1,), generator=gen))
        centres = torch.cat([centres, A[i:i + 1]])
        closest = torch.minimum(closest, dist2(A[i:i + 1], slice(None))[:, 0])
    labels = torch.zeros(n, dtype=torch.long, device=A.device)
    for _ in range(iters):
        for s in range(0, n, chunk):
            labels[s:s + chunk] = dist2(centres, slice(s, s + chunk)).argmin(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, A)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None].to(A.dtype))
    return labels


def match_factors(found: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Cosine of each true direction [m, d] with the found direction [k, d] it is paired with,
    pairing greedily by the largest remaining cosine (one found direction per true one; signed,
    as factors are added with non-negative coefficients)."""
    if found.dim() != 2 or true.dim() != 2 or found.shape[1] != true.shape[1]:
        raise ValueError(f"found {tuple(found.shape)} and true {tuple(true.shape)} must be [rows, d] with the same d")
    if found.shape[0] < true.shape[0]:
        raise ValueError(f"{found.shape[0]} found directions cannot be paired with {true.shape[0]} true ones; "
                         "factorise with at least as many factors")
    f = found.double() / found.double().norm(dim=1, keepdim=True).clamp_min(1e-30)
    t = true.double().to(f.device) / true.double().to(f.device).norm(dim=1, keepdim=True).clamp_min(1e-30)
    cos = t @ f.t()
    out = torch.empty(t.shape[0], dtype=torch.float64)
    for _ in range(t.shape[0]):
        i, j = divmod(int(cos.argmax()), cos.shape[1])
        out[i] = cos[i, j]
        cos[i, :] = -math.inf
        cos[:, j] = -math.inf
    return out
