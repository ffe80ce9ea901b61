"""MLP activations as a token matrix, and what a factor of them responds to.

Why here: a factor is only interpretable through the tokens that use it, so the matrix keeps,
for every row, the token id, its document and its position (the same rows the sparse-coder
store builds, through the engine's ``capture``: BOS and padding left out). From a factor's
coefficients this module reads its top-activating contexts and its *concept*, the token ids it
fires on most; the paper's supervised baseline, the difference of means, is built from the same
concept: mean activation on the concept's tokens minus the mean on every other token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from circuitlab.data import DEFAULT, Document
from circuitlab.engine.sites import hook_name
from circuitlab.sparse.dashboard import Context

SITES: dict[str, str] = {
    "neurons": "the MLP's hidden activations (d_mlp; after the nonlinearity and any gate)",
    "mlp_out": "the MLP's output (d_model; what it adds to the residual stream)",
}
"""Sites an SNMF factorises, and what each holds."""


@dataclass
class Activations:
    """Rows of one MLP site, one per kept token, and where each came from."""

    A: torch.Tensor
    """[tokens, d] activations (float32, CPU)."""
    tokens: torch.Tensor
    """[tokens] token id of each row."""
    doc: torch.Tensor
    """[tokens] document index (into ``grid``)."""
    pos: torch.Tensor
    """[tokens] position in the document."""
    grid: torch.Tensor
    """[documents, ctx_len] token ids of the documents (right-padded), for contexts."""
    lengths: torch.Tensor
    """[documents] real tokens of each document (the rest of its ``grid`` row is padding)."""
    layer: int
    """The block the site belongs to."""
    site: str
    """A key of :data:`SITES`."""

    @property
    def hook(self) -> str:
        return hook_name(self.site, self.layer)

    def __len__(self) -> int:
        return self.A.shape[0]


def check_site(model, layer: int, site: str) -> None:
    """Refuse a site SNMF does not factorise or a layer the model lacks."""
    if site not in SITES:
        raise ValueError(f"site {site!r} is not an MLP site; choose "
                         + "; ".join(f"{k!r} ({v})" for k, v in SITES.items()))
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer!r} is outside this model's blocks 0..{model.n_layers - 1}")


@torch.no_grad()
def mlp_activations(model, layer: int, site: str = "neurons", docs: Optional[Sequence[Document]] = None,
                    n_docs: int = 256, data: str = DEFAULT, ctx_len: int = 64, seed: int = 0,
                    batch_size: int = 32) -> Activations:
    """Activations of ``site`` in block ``layer`` on ``docs`` (default: ``n_docs`` training
    documents of source ``data`` drawn with ``seed``; see circuitlab.data)."""
    from circuitlab.api import exclusive
    from circuitlab.data import documents
    from circuitlab.sparse.store import ActivationSource, Exclusion, SourceSpec, tokenize_documents

    check_site(model, layer, site)
    if docs is None:
        if not isinstance(n_docs, int) or n_docs < 1:
            raise ValueError(f"n_docs must be an int >= 1, got {n_docs!r}")
        docs = documents(data, seed, n_docs, ctx_len)
    docs = list(docs)
    if not docs:
        raise ValueError("docs is empty; give at least one document")
    source = ActivationSource([model], SourceSpec((hook_name(site, layer),)), Exclusion(), ctx_len)
    parts = []
    with exclusive(model):
        for s in range(0, len(docs), batch_size):
            r = source.rows(docs[s:s + batch_size])
            parts.append((r.x, r.tokens.long(), r.doc.long() + s, r.pos.long()))
    grid, lengths = tokenize_documents(model.tokenizer, docs, ctx_len)
    A, tokens, doc, pos = (torch.cat(t) for t in zip(*parts))
    if len(A) == 0:
        raise ValueError(f"the {len(docs)} documents hold no token after BOS; give longer documents")
    return Activations(A.float(), tokens, doc, pos, grid, lengths, layer, site)


def top_contexts(acts: Activations, coefficients: torch.Tensor, tokenizer, n: int = 8,
                 window: int = 8) -> list[Context]:
    """The ``n`` rows with the largest coefficient, each as the ``window`` tokens before it, the
    token itself (``Context.index``) and up to two after (within the document)."""
    coefficients = _column(acts, coefficients)
    out = []
    for r in coefficients.topk(min(n, len(coefficients))).indices.tolist():
        value = float(coefficients[r])
        if value <= 0:
            break
        d, p = int(acts.doc[r]), int(acts.pos[r])
        lo = max(0, p - window)
        ids = acts.grid[d, lo:min(p + 3, int(acts.lengths[d]))].tolist()
        out.append(Context(tokenizer.convert_ids_to_tokens(ids), p - lo, value))
    return out


def concept_tokens(acts: Activations, coefficients: torch.Tensor, n: int = 5, min_count: int = 2,
                   rel: float = 0.3) -> list[int]:
    """The token ids a factor fires on most: up to ``n`` ids by mean coefficient over their
    occurrences, among ids seen at least ``min_count`` times (a word seen once says little about
    what the factor detects), keeping only those whose mean reaches ``rel`` times the first's
    (a factor of one token has a concept of one token)."""
    coefficients = _column(acts, coefficients).double()
    vocab = int(acts.tokens.max()) + 1
    total = torch.zeros(vocab, dtype=torch.float64).index_add_(0, acts.tokens, coefficients)
    count = torch.bincount(acts.tokens, minlength=vocab).double()
    mean = torch.where(count >= min_count, total / count.clamp_min(1), torch.full_like(total, -1.0))
    top = mean.topk(min(n, vocab))
    first = float(top.values[0])
    return [int(i) for v, i in zip(top.values, top.indices) if v > 0 and v >= rel * first]


def concept_share(acts: Activations, coefficients: torch.Tensor, ids: Sequence[int]) -> float:
    """Fraction of a factor's total coefficient that falls on tokens in ``ids``: near 1 for a
    factor that detects those tokens and nothing else."""
    coefficients = _column(acts, coefficients).double()
    total = float(coefficients.sum())
    return float(coefficients[_in(acts.tokens, ids)].sum()) / total if total > 0 else 0.0


def diff_means(acts: Activations, ids: Sequence[int]) -> torch.Tensor:
    """[d] mean activation on the tokens in ``ids`` minus the mean on all other tokens: the
    supervised difference-of-means direction of a concept."""
    mask = _in(acts.tokens, ids)
    if not mask.any() or mask.all():
        raise ValueError(f"the concept's tokens {list(ids)} occur on {int(mask.sum())} of {len(mask)} rows; a "
                         "difference of means needs rows with and rows without them")
    return acts.A[mask].double().mean(0).float() - acts.A[~mask].double().mean(0).float()


def _in(tokens: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    return torch.isin(tokens, torch.as_tensor(list(ids), dtype=tokens.dtype))


def _column(acts: Activations, coefficients: torch.Tensor) -> torch.Tensor:
    if coefficients.dim() != 1 or coefficients.shape[0] != len(acts):
        raise ValueError(f"coefficients must be one factor's column [{len(acts)}] (Z[:, i]), got shape "
                         f"{tuple(coefficients.shape)}")
    return coefficients.detach().cpu()
