"""Multi-dimensional features: groups of latents whose directions span one subspace and whose
activations, taken together, trace a shape a single direction cannot ("Not All Language Model
Features Are Linear", Engels et al. 2024; e.g. days of the week on a circle).

Why from the decoder: latents of one multi-dimensional feature point into the same low-
dimensional subspace (neighbouring days write neighbouring directions), so they cluster by the
cosine similarity of their decoder rows. As in the paper the clusters come from spectral
clustering of that similarity, here applied to each connected group of latents (cosines below
chance level count as 0) larger than a cluster may be. For each cluster the reconstruction
restricted to its latents, ``sum_{i in cluster} f_i W_dec[i]``, over the tokens where one of
them fires, is projected onto its top principal components.

A cluster is *reducible* when it is a sum of independent lower-dimensional features or a
mixture of ones that never fire together; the paper's two measures, on the projection (scaled
to unit RMS radius):

- separability index (top two components): the smallest mutual information (bits, a 2-D
  histogram) between the two coordinates over all rotations. Independent features have a
  rotation with ~0 bits; a circle keeps ~1 bit or more at every angle.
- mixture index (the components with 5% of the variance or more, up to 4): the largest
  fraction of points within ``eps`` of one hyperplane. Features that do not co-occur leave
  every point where one of them is off in the hyperplane of the others; a circle or ring has
  at most a small arc near any line.

A cluster is irreducible when separability >= ``min_separability`` and mixture <=
``max_mixture`` (:class:`IrreducibilityConfig`). :func:`word_circle` asks the question for a
list of words (days, months): which cluster of latents the words use, and whether the words
lie around a circle in its plane in their given cyclic order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.sparse.base import SparseCoder

# ------------------------------------------------------------------ spectral clustering


@dataclass
class ClusterConfig:
    """How decoder directions are clustered."""

    max_size: int = 25
    """Latents per cluster at most, about: a connected group of latents (cosines at or above
    ``min_cosine`` linking them) larger than this is split by spectral clustering into
    ``ceil(size / max_size)`` clusters (the paper's GPT-2 run averaged ~25 latents per cluster)."""
    min_cosine: Optional[float] = None
    """Cosines below this count as 0 in the affinity. None: 3 / sqrt(d), three standard
    deviations of the cosine of two random directions in d dimensions, so unrelated latents are
    not linked by chance (chance links pull unrelated latents into every cluster and make
    spectral clustering cut real groups to fill its quota)."""
    restarts: int = 10
    """k-means restarts on the spectral embedding (the best inertia wins)."""
    seed: int = 0
    """Seed of the k-means initialisation (results are repeatable)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size < 2:
            raise ValueError(f"ClusterConfig.max_size must be a whole number >= 2, not {self.max_size!r}")
        if self.min_cosine is not None and not -1 <= self.min_cosine < 1:
            raise ValueError(f"ClusterConfig.min_cosine must be a cosine in [-1, 1) or None, not {self.min_cosine!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"ClusterConfig.restarts must be a whole number >= 1, not {self.restarts!r}")


def kmeans(x: torch.Tensor, k: int, seed: int = 0, restarts: int = 10, iters: int = 100) -> torch.Tensor:
    """[n] cluster labels of the rows of ``x`` (k-means++ starts, Lloyd iterations; the restart
    with the lowest within-cluster sum of squares wins)."""
    x = x.double()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} clusters of {n} points; choose 1 <= k <= {n}")
    g = torch.Generator().manual_seed(seed)
    best, best_cost = None, math.inf
    for _ in range(restarts):
        centres = x[torch.randint(n, (1,), generator=g)]
        for _ in range(1, k):
            d2 = torch.cdist(x, centres).pow(2).min(1).values
            p = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=x.dtype)
            centres = torch.cat([centres, x[torch.multinomial(p, 1, generator=g)]])
        labels = None
        for _ in range(iters):
            new = torch.cdist(x, centres).argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            count = torch.bincount(labels, minlength=k)
            centres = torch.where(count[:, None] > 0, sums / count.clamp_min(1)[:, None], centres)
        cost = float((x - centres[labels]).pow(2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def affinity(vectors: torch.Tensor, min_cosine: Optional[float] = None) -> torch.Tensor:
    """[n, n] cosine similarity of the rows of ``vectors``, 0 below ``min_cosine`` (None:
    3 / sqrt(d)) and on the diagonal."""
    v = vectors.detach().double().cpu()
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    floor = min_cosine if min_cosine is not None else 3 / math.sqrt(v.shape[1])
    a = v @ v.T
    a = torch.where(a >= max(floor, 0.0), a, torch.zeros_like(a))
    a.fill_diagonal_(0)
    return a


def spectral_clusters(a: torch.Tensor, k: int, restarts: int = 10, seed: int = 0) -> torch.Tensor:
    """[n] labels of ``k`` clusters of the graph with affinity ``a`` (Ng, Jordan and Weiss: the top
    ``k`` eigenvectors of ``D^-1/2 A D^-1/2``, rows normalised, then k-means)."""
    n = a.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} clusters of {n} latents; choose 1 <= k <= {n}")
    deg = a.sum(1)
    inv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    _, vecs = torch.linalg.eigh(inv[:, None] * a * inv[None, :])
    emb = vecs[:, -k:]
    return kmeans(emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12), k, seed, restarts)


def components(a: torch.Tensor) -> torch.Tensor:
    """[n] connected-component label of every node of the graph with affinity ``a`` (the smallest
    node index in its component)."""
    n = a.shape[0]
    linked = a > 0
    labels = torch.arange(n)
    while True:
        spread = torch.where(linked, labels[None, :], n).min(1).values
        new = torch.minimum(labels, spread)
        new = new[new]  # jump along already-found links
        if torch.equal(new, labels):
            return labels
        labels = new


def cluster_directions(vectors: torch.Tensor, config: Optional[ClusterConfig] = None) -> list[list[int]]:
    """Clusters of the rows of ``vectors`` (row indices), largest first: the connected groups of
    the cosine affinity, each larger than ``max_size`` split by spectral clustering.

    Why groups first: spectral clustering into a fixed number of clusters must fill its quota,
    and with many unrelated directions (most of a dictionary) it does so by cutting the few real
    groups into arcs; on a graph of separate groups it returns exactly the groups, so they are
    taken as they are and only large groups are cut."""
    cfg = config or ClusterConfig()
    a = affinity(vectors, cfg.min_cosine)
    labels = components(a)
    out = []
    for c in labels.unique():
        ids = (labels == c).nonzero().flatten()
        if len(ids) <= cfg.max_size:
            out.append(ids.tolist())
            continue
        k = math.ceil(len(ids) / cfg.max_size)
        sub = spectral_clusters(a[ids][:, ids], k, cfg.restarts, cfg.seed)
        out += [ids[sub == j].tolist() for j in range(k) if bool((sub == j).any())]
    return sorted((sorted(g) for g in out), key=lambda g: (-len(g), g[0]))


def cluster_decoder(coder: SparseCoder, latents: Optional[Sequence[int]] = None,
                    config: Optional[ClusterConfig] = None) -> list[list[int]]:
    """Clusters of ``coder``'s latents (all, or ``latents``) by their decoder directions
    (:func:`cluster_directions`), largest first, each a sorted list of latent indices. Splitting
    a connected group of n latents needs one dense n x n eigendecomposition (seconds for a few
    thousand)."""
    from circuitlab.sparse.flow import directions

    ids = torch.arange(coder.d_sae) if latents is None else torch.as_tensor(list(latents), dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("latents is empty; give the latents to cluster (or None for all)")
    if int(ids.min()) < 0 or int(ids.max()) >= coder.d_sae:
        raise ValueError(f"latents must lie in 0..{coder.d_sae - 1}")
    groups = cluster_directions(directions(coder, "decoder")[ids], config)
    return [sorted(ids[g].tolist()) for g in groups]


# ------------------------------------------------------------------ irreducibility on a 2-D projection


@dataclass
class IrreducibilityConfig:
    """Thresholds and resolution of the two reducibility measures."""

    min_separability: float = 0.1
    """Bits: below this some rotation makes the two coordinates (nearly) independent (a Gaussian
    blob of 300+ points scores under 0.05, a clean circle about 1.4, a ring whose radius varies
    fourfold about 0.1)."""
    max_mixture: float = 0.3
    """Fraction of points: above this many lie near one line (features that do not co-occur;
    two such features score about 0.5, three about 0.33, a circle about 0.2)."""
    eps: float = 0.1
    """Half-width of the mixture index's band, in units of the points' RMS radius."""
    bins: int = 10
    """Histogram bins per coordinate for the mutual information."""
    angles: int = 36
    """Rotations (separability, over 90 degrees) and line directions (mixture, over 180) tried."""
    max_dims: int = 4
    """The mixture index looks for hyperplanes among the principal components holding at least
    5% of the variance (at most this many): a group of three independent features spans three
    dimensions, and in a 2-D projection its separate lines blur together."""


def _normalise(points: torch.Tensor) -> torch.Tensor:
    p = points.double() - points.double().mean(0)
    rms = p.pow(2).sum(1).mean().sqrt()
    return p / rms.clamp_min(1e-12)


def mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = 10) -> float:
    """Mutual information (bits) of two samples from a ``bins`` x ``bins`` equal-width histogram
    (1st-99th percentile range; outer points fall into the edge bins), less the Miller-Madow
    estimate of the histogram's upward bias (which would otherwise make a few hundred
    independent points look dependent)."""
    def codes(v: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.quantile(v, 0.01), torch.quantile(v, 0.99)
        if hi <= lo:
            return torch.zeros_like(v, dtype=torch.long)
        return ((v - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()

    joint = torch.bincount(codes(x) * bins + codes(y), minlength=bins * bins).double().view(bins, bins)
    n = joint.sum()
    p = joint / n
    px, py = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (px * py).expand_as(p)[nz]).log2()).sum())
    # Miller-Madow: the plug-in estimate exceeds the true value by about this many bits
    bias = (int(nz.sum()) - int((px > 0).sum()) - int((py > 0).sum()) + 1) / (2 * float(n) * math.log(2))
    return max(0.0, mi - bias)


def separability_index(points: torch.Tensor, bins: int = 10, angles: int = 36) -> float:
    """min over rotations of the mutual information (bits) of the two coordinates of [n, 2]
    ``points``: ~0 when the points are a product of two independent 1-D features."""
    p = _normalise(points)
    best = math.inf
    for t in torch.arange(angles, dtype=torch.float64) * (math.pi / 2 / angles):
        c, s = math.cos(t), math.sin(t)
        best = min(best, mutual_information(p[:, 0] * c + p[:, 1] * s, -p[:, 0] * s + p[:, 1] * c, bins))
    return best


def mixture_index(points: torch.Tensor, eps: float = 0.1, angles: int = 36, samples: int = 2000,
                  seed: int = 0) -> float:
    """max over hyperplanes of the fraction of [n, m] ``points`` within ``eps`` RMS radii of the
    hyperplane: large when part of the points lie in one (lower-dimensional features firing
    without the others). In 2-D every line direction of a grid of ``angles`` is tried; in more
    dimensions ``samples`` random normals, then small perturbations of the best few."""
    p = _normalise(points)
    m = p.shape[1]
    if m == 1:
        normals = torch.ones(1, 1, dtype=p.dtype)
    elif m == 2:
        t = torch.arange(angles, dtype=p.dtype) * (math.pi / angles)
        normals = torch.stack([t.cos(), t.sin()], 1)
    else:
        g = torch.Generator().manual_seed(seed)
        normals = torch.cat([torch.eye(m, dtype=p.dtype), torch.randn(samples, m, generator=g, dtype=p.dtype)])
    score = _band_fractions(p, normals, eps)
    if m > 2:  # refine around the best normals
        g = torch.Generator().manual_seed(seed + 1)
        for scale in (0.05, 0.015):
            top = normals[score.topk(min(8, len(score))).indices]
            normals = (top.repeat_interleave(64, 0) + scale * torch.randn(len(top) * 64, m, generator=g,
                                                                          dtype=p.dtype))
            normals = torch.cat([top, normals])
            score = _band_fractions(p, normals, eps)
    return float(score.max())


def _band_fractions(p: torch.Tensor, normals: torch.Tensor, eps: float) -> torch.Tensor:
    """For each normal: the largest fraction of points whose projection on it falls in one window
    of width 2 * eps (the best offset of the hyperplane)."""
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-12)
    proj, _ = (normals @ p.T).sort(dim=1)
    inside = torch.searchsorted(proj, proj + 2 * eps, right=True) - torch.arange(proj.shape[1])
    return inside.max(1).values.double() / proj.shape[1]


# ------------------------------------------------------------------ one cluster's projection


@dataclass
class ClusterView:
    """A cluster of latents, its reconstructions projected on their top two principal
    components, and the reducibility measures of that projection."""

    latents: list[int]
    points: torch.Tensor
    """[n, 2] PCA coordinates of the tokens where one of the latents fires."""
    rows: torch.Tensor
    """[n] indices of those tokens among the activations given."""
    explained: list[float]
    """Variance share of the top principal components (up to 4) of the reconstructions."""
    decoder_rank: int
    """Singular values of the cluster's unit decoder rows above 10% of the largest: the
    dimension of the subspace its latents span."""
    separability: float = float("nan")
    """Separability index of the 2-D projection (bits)."""
    mixture: float = float("nan")
    """Mixture index in the top ``dims`` principal components."""
    dims: int = 2
    """Principal components the mixture index searched (those with >= 5% of the variance)."""
    irreducible: bool = False
    basis: Optional[torch.Tensor] = None
    """[2, d] the two principal directions (rows), in the model's activation space."""
    labels: list[str] = field(default_factory=list)
    """Token string of each point (filled when token ids and a tokenizer are given)."""

    def to_dict(self) -> dict:
        return {"latents": self.latents, "tokens": int(len(self.rows)),
                "explained": [round(e, 4) for e in self.explained], "decoder_rank": self.decoder_rank,
                "dims": self.dims, "separability": round(self.separability, 4),
                "mixture": round(self.mixture, 4), "irreducible": self.irreducible}

    def figure(self, title: str = "", max_points: int = 3000, top_labels: int = 12):
        """Plotly scatter of the 2-D projection, coloured by token (the ``top_labels`` most common
        tokens get their own colour, the rest are grey)."""
        import plotly.graph_objects as go

        from circuitlab.webpage import plot_text

        idx = torch.arange(len(self.points))
        if len(idx) > max_points:
            idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))[:max_points]]
        pts = self.points[idx].tolist()
        labs = [self.labels[i] for i in idx.tolist()] if self.labels else ["" for _ in pts]
        common = [t for t, _ in _most_common(labs, top_labels)] if self.labels else []
        fig = go.Figure()
        for name in [*common, None]:
            sel = [i for i, t in enumerate(labs) if (t == name if name is not None else t not in common)]
            if not sel:
                continue
            fig.add_trace(go.Scattergl(
                x=[pts[i][0] for i in sel], y=[pts[i][1] for i in sel], mode="markers",
                name=plot_text(name) if name is not None else "other", text=[plot_text(labs[i]) for i in sel],
                hovertemplate="%{text}<extra></extra>",
                marker=dict(size=5, opacity=0.7, **({} if name is not None else {"color": "#bbbbbb"}))))
        verdict = "irreducible" if self.irreducible else "reducible"
        fig.update_layout(
            title=plot_text(title or f"latents {self.latents[:8]}{'...' if len(self.latents) > 8 else ''}: {verdict} "
                            f"(separability {self.separability:.2f} bits, mixture {self.mixture:.2f})"),
            xaxis_title=f"PC1 ({self.explained[0]:.0%})", yaxis_title=f"PC2 ({self.explained[1]:.0%})"
            if len(self.explained) > 1 else "PC2", yaxis=dict(scaleanchor="x"))
        return fig


def _most_common(items: Sequence[str], n: int) -> list[tuple[str, int]]:
    from collections import Counter

    return Counter(items).most_common(n)


def cluster_reconstructions(coder: SparseCoder, f: torch.Tensor,
                            latents: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, [n, d] reconstructions restricted to ``latents``) for the rows of activations ``f``
    [tokens, d_sae] where at least one of the latents is active."""
    ids = torch.as_tensor(list(latents), dtype=torch.long)
    sub = f[:, ids].float()
    rows = (sub > 0).any(1).nonzero().flatten()
    w = coder.W_dec.detach().float().cpu()[ids]
    return rows, sub[rows].cpu() @ w


def project_cluster(coder: SparseCoder, f: torch.Tensor, latents: Sequence[int],
                    config: Optional[IrreducibilityConfig] = None, tokens: Optional[torch.Tensor] = None,
                    tokenizer=None) -> ClusterView:
    """:class:`ClusterView` of ``latents`` on activations ``f`` [tokens, d_sae] (``tokens``, the
    token id of each row, and ``tokenizer`` label the points). Fewer than 3 active tokens give a
    view with no measures."""
    from circuitlab.sparse.flow import directions

    cfg = config or IrreducibilityConfig()
    latents = sorted(int(i) for i in latents)
    rows, rec = cluster_reconstructions(coder, f, latents)
    sv = torch.linalg.svdvals(directions(coder, "decoder")[latents].double())
    rank = int((sv > 0.1 * sv[0]).sum())
    d = rec.shape[1]
    if len(rows) < 3:
        return ClusterView(latents, torch.zeros(len(rows), 2), rows, [], rank)
    centred = rec.double() - rec.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s.pow(2)
    explained = (var / var.sum().clamp_min(1e-300))[:4].tolist()
    basis = vh[:2] if vh.shape[0] >= 2 else torch.cat([vh, torch.zeros(1, d, dtype=vh.dtype)])
    pts = (centred @ basis.T).float()
    view = ClusterView(latents, pts, rows, explained, rank, basis=basis.float())
    view.separability = separability_index(pts, cfg.bins, cfg.angles)
    dims = max(2, min(cfg.max_dims, int((var / var.sum().clamp_min(1e-300) >= 0.05).sum()), vh.shape[0]))
    view.mixture = mixture_index((centred @ vh[:dims].T).float(), cfg.eps, cfg.angles)
    view.dims = dims
    view.irreducible = view.separability >= cfg.min_separability and view.mixture <= cfg.max_mixture
    if tokens is not None and tokenizer is not None:
        view.labels = [str(t) for t in tokenizer.convert_ids_to_tokens(tokens[rows].tolist())]
    return view


def multidim_features(model, coder: SparseCoder, docs, clusters: Optional[list[list[int]]] = None,
                      cluster_config: Optional[ClusterConfig] = None,
                      config: Optional[IrreducibilityConfig] = None, ctx_len: int = 64,
                      min_tokens: int = 200) -> list[ClusterView]:
    """Every cluster of two or more latents (``clusters``, default :func:`cluster_decoder`) with at
    least ``min_tokens`` active tokens in ``docs`` (the mutual information needs a few hundred
    points to be trusted), projected and measured; irreducible ones first, then by separability."""
    from circuitlab.sparse.flow import coder_activations

    if clusters is None:
        clusters = cluster_decoder(coder, config=cluster_config)
    acts, toks = coder_activations(model, {"coder": coder}, docs, ctx_len)
    f = acts["coder"]
    views = []
    for c in clusters:
        if len(c) < 2:
            continue
        v = project_cluster(coder, f, c, config, toks, model.tokenizer)
        if len(v.rows) >= min_tokens:
            views.append(v)
    return sorted(views, key=lambda v: (not v.irreducible, -v.separability))


# ------------------------------------------------------------------ words around a circle

WORD_TEMPLATES: tuple[str, ...] = ("{word}", "It was {word}", "See you {word}", "and then {word}",
                                   "The answer is {word}")
"""Contexts that end in the word (its last token is read); several, so that a word's point is a
mean over contexts rather than one accident of position."""


@dataclass
class CircleScore:
    """How well points (one per word) lie around a circle in the words' given cyclic order."""

    cyclic_adjacency: float
    """Share of the given neighbouring pairs (the last word next to the first) that are also
    neighbours in angle around the points' centre: 1 for the right circular order, about
    2/(n-1) for a random one."""
    radius_cv: float
    """Spread of the distances to the centre (std / mean): 0 on a circle."""
    largest_gap: float
    """Largest empty angle between neighbouring points, as a fraction of a full turn (1/n when
    evenly spread; near 1/2 or more for points along a line or an arc)."""
    is_circle: bool
    """adjacency >= 0.7, radius spread <= 0.35 and largest gap <= 0.35."""

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def circle_score(points: torch.Tensor) -> CircleScore:
    """:class:`CircleScore` of [n, 2] ``points`` given in their intended cyclic order (n >= 3)."""
    n = points.shape[0]
    if n < 3:
        raise ValueError(f"a circle needs at least 3 words, got {n}")
    p = points.double() - points.double().mean(0)
    theta = torch.atan2(p[:, 1], p[:, 0])
    r = p.norm(dim=1)
    order = theta.argsort()
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    step = (rank.roll(-1) - rank) % n
    adjacency = float(((step == 1) | (step == n - 1)).double().mean())
    sorted_theta = theta[order]
    gaps = torch.cat([sorted_theta[1:] - sorted_theta[:-1], (sorted_theta[:1] + 2 * math.pi) - sorted_theta[-1:]])
    gap = float(gaps.max() / (2 * math.pi))
    cv = float(r.std(unbiased=False) / r.mean().clamp_min(1e-12))
    return CircleScore(adjacency, cv, gap, adjacency >= 0.7 and cv <= 0.35 and gap <= 0.35)


@dataclass
class WordCircle:
    """The words' points in the plane of the cluster of latents they use most, and in the top
    two principal components of the raw activations (a baseline without the coder)."""

    words: list[str]
    latents: list[int]
    """The chosen cluster (the largest share of the words' activation)."""
    word_points: torch.Tensor
    """[n_words, 2] each word's mean over contexts in the cluster's plane."""
    prompt_points: torch.Tensor
    """[n_words * n_templates, 2] every context's point in that plane (word-major)."""
    score: CircleScore
    raw_word_points: torch.Tensor
    """[n_words, 2] the same from the raw activations' top two principal components."""
    raw_score: CircleScore
    clusters: list[dict] = field(default_factory=list)
    """Every candidate cluster: latents, share of the words' activation, circle score."""
    explained: list[float] = field(default_factory=list)
    """Variance share of the chosen plane's two axes among the cluster's reconstructions."""

    def to_dict(self) -> dict:
        return {"words": self.words, "latents": self.latents, "score": self.score.to_dict(),
                "word_points": [[round(v, 4) for v in p] for p in self.word_points.tolist()],
                "explained": [round(e, 4) for e in self.explained],
                "raw_score": self.raw_score.to_dict(),
                "raw_word_points": [[round(v, 4) for v in p] for p in self.raw_word_points.tolist()],
                "clusters": self.clusters}

    def figure(self):
        """Plotly: the words in the cluster's plane (left) and in the raw activations' top two
        principal components (right), each word's contexts as small points, the given order drawn
        as a closed line."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from circuitlab.webpage import plot_text

        def verdict(s: CircleScore) -> str:
            return f"{'circle' if s.is_circle else 'no circle'} (adjacency {s.cyclic_adjacency:.2f}, radius cv " \
                   f"{s.radius_cv:.2f})"

        fig = make_subplots(1, 2, subplot_titles=(plot_text(f"latents {self.latents[:6]}: {verdict(self.score)}"),
                                                  plot_text(f"raw activations: {verdict(self.raw_score)}")))
        words = [plot_text(w) for w in self.words]
        per = self.prompt_points.shape[0] // max(1, len(self.words))
        for col, wp in ((1, self.word_points), (2, self.raw_word_points)):
            loop = wp.tolist() + wp[:1].tolist()
            fig.add_trace(go.Scatter(x=[p[0] for p in loop], y=[p[1] for p in loop], mode="lines+markers+text",
                                     text=words + [""], textposition="top center", showlegend=False,
                                     line=dict(color="#577590")), 1, col)
        if per:
            pp = self.prompt_points.tolist()
            fig.add_trace(go.Scatter(x=[p[0] for p in pp], y=[p[1] for p in pp], mode="markers",
                                     text=[words[i // per] for i in range(len(pp))], hovertemplate="%{text}",
                                     marker=dict(size=4, color="#f8961e", opacity=0.6), showlegend=False), 1, 1)
        fig.update_layout(title="Do the words lie on a circle?")
        return fig


@torch.no_grad()
def word_activations(model, coder: SparseCoder, words: Sequence[str],
                     templates: Sequence[str] = WORD_TEMPLATES) -> torch.Tensor:
    """[n_words * n_templates, d] the coder's input at each context's last token (word-major)."""
    from circuitlab.engine.cache import capture
    from circuitlab.tasks.tokenize import right_pad

    texts = [t.format(word=w) for w in words for t in templates]
    toks, lengths = right_pad(model.tokenizer, texts)
    x = capture(model, toks.to(model.device), [coder.hook_in], dtype=torch.float32, device="cpu")[coder.hook_in]
    return x[torch.arange(len(texts)), lengths - 1]


@torch.no_grad()
def word_circle(model, coder: SparseCoder, words: Sequence[str], templates: Sequence[str] = WORD_TEMPLATES,
                max_latents: int = 64, cluster_config: Optional[ClusterConfig] = None) -> WordCircle:
    """Which cluster of ``coder``'s latents ``words`` (e.g. the days of the week, in order) use, and
    whether the words lie around a circle in its plane in the order given.

    The latents active on at least two of the contexts (up to ``max_latents``, by total
    activation) are clustered by decoder direction; the cluster holding the largest share of the
    words' activation is projected on the top two principal components of its reconstructions,
    and each word's mean point scored by :func:`circle_score`. The raw activations' own top two
    components are scored too, as a baseline that does not depend on the coder."""
    words = [str(w) for w in words]
    if len(words) < 3:
        raise ValueError(f"give at least 3 words in their cyclic order (e.g. the days of the week), got {words}")
    if len(set(words)) != len(words):
        raise ValueError(f"words repeat: {words}; give each word once, in order")
    templates = list(templates)
    if not templates or not all("{word}" in t and t.rstrip().endswith("{word}") for t in templates):
        raise ValueError("every template must end with '{word}' (the word's last token is read), e.g. 'It was {word}'")
    x = word_activations(model, coder, words, templates)
    f = coder.encode(x.to(coder.W_dec.device, coder.W_dec.dtype)).float().cpu()
    fired = (f > 0).sum(0)
    cand = (fired >= 2).nonzero().flatten()
    if len(cand) < 2:
        raise ValueError(f"fewer than two latents of the coder fire on two or more of the {len(x)} contexts of "
                         f"{words}; check that the coder belongs to this model and site")
    cand = cand[f[:, cand].sum(0).argsort(descending=True)[:max_latents]]
    groups = cluster_decoder(coder, cand.tolist(), cluster_config)
    mass = f.sum().clamp_min(1e-12)
    n_t = len(templates)
    table, best = [], None
    for g in groups:
        share = float(f[:, g].sum() / mass)
        entry = {"latents": g, "share": round(share, 4)}
        if len(g) >= 2:
            pts, wp, explained = _plane(f, coder, g, n_t)
            entry.update(circle_score(wp).to_dict())
            if best is None or share > best[0]:
                best = (share, g, pts, wp, explained)
        table.append(entry)
    if best is None:
        raise ValueError(f"the latents active on {words} fall into clusters of one latent each; no plane to project "
                         "on (try more templates or another layer's coder)")
    raw = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(raw, full_matrices=False)
    raw_words = (raw @ vh[:2].T).float().view(len(words), n_t, 2).mean(1)
    _, g, pts, wp, explained = best
    return WordCircle(words, g, wp, pts, circle_score(wp), raw_words, circle_score(raw_words), table, explained)


def _plane(f: torch.Tensor, coder: SparseCoder, latents: list[int], n_templates: int):
    """Context points, word mean points and explained shares of ``latents``'s reconstructions on
    every context (zero where none fires) in their top two principal components."""
    w = coder.W_dec.detach().float().cpu()[latents]
    rec = f[:, latents] @ w
    centred = rec.double() - rec.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s.pow(2)
    pts = (centred @ vh[:2].T).float()
    if pts.shape[1] < 2:
        pts = torch.cat([pts, torch.zeros(pts.shape[0], 2 - pts.shape[1])], 1)
    return pts, pts.view(-1, n_templates, 2).mean(1), (var / var.sum().clamp_min(1e-300))[:2].tolist()
