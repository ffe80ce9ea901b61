"""Encoder pre-activations at the k chosen latents, with a backward pass that stays sparse.

A TopK coder reads k of d_sae pre-activations per token. Autograd through the dense
``(x - shift) @ W_enc`` would spend two more dense [batch, d_in] x [d_in, d_sae] matmuls in the
backward pass (the weight gradient, and the input gradient that b_dec needs) on gradients that
are zero everywhere except at those k latents. Here the forward matmul runs without a graph and
the backward pass touches only the chosen columns: a sparse [d_sae, batch] x [batch, d_in]
product for the weight gradient, and, for the shift (b_dec, the same vector for every token), one
matrix-vector product: sum_b grad_x[b] = W_enc @ grad_b_enc. The per-token input gradient (k
rows of W_enc per token) is only built when the input itself needs a gradient. Both weight
gradients (encoder and decoder) run over the same (token, latent) pairs, sorted by latent once
per step (``LatentMajor``); ``row_topk`` is the selection itself, faster than torch's CPU top-k
where that one falls back to a full per-row nth_element.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch


class LatentMajor:
    """The batch's chosen (token, latent) pairs sorted by latent: the [d_sae, batch] sparse pattern
    of a TopK step's weight gradients. Both weight gradients are ``sum_b values[b, j] m[b]`` per
    latent j over the same pattern (encoder: upstream gradient times inputs; decoder: latent
    values times output gradient), so it is sorted once per step (one stable argsort of the
    batch * k indices) and shared; the product is one CSR [d_sae, batch] x [batch, d] matmul,
    already in [d_sae, d] layout."""

    def __init__(self, idx: torch.Tensor, n: int):
        self.idx, self.n = idx, n
        self._csr: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def _layout(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._csr is None:
            B, k = self.idx.shape
            flat = self.idx.reshape(-1)
            order = torch.argsort(flat.to(torch.int32), stable=True)  # stable: tokens ascending per latent
            crow = torch.zeros(self.n + 1, dtype=torch.long, device=flat.device)
            torch.cumsum(torch.bincount(flat, minlength=self.n), 0, out=crow[1:])
            self._csr = (crow, torch.div(order, k, rounding_mode="floor"), order)
        return self._csr

    def matmul(self, values: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """[d_sae, d]: row j is sum over the pairs (b, j) of values[b, slot] * m[b]."""
        crow, tokens, order = self._layout()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            csr = torch.sparse_csr_tensor(crow, tokens, values.reshape(-1)[order], (self.n, self.idx.shape[0]),
                                          check_invariants=False)
        # beta=0 into an uninitialised output: ``csr @ m`` zero-fills a result and copies it
        # (~2x the product's own time on CPU at d_sae 6144); beta=0 ignores what ``out`` holds.
        out = torch.empty(self.n, m.shape[1], dtype=m.dtype, device=m.device)
        try:
            return torch.addmm(out, csr, m, beta=0, out=out)
        except (RuntimeError, NotImplementedError):  # a backend without the out= variant
            return csr @ m

    def sampled(self, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """[batch, k]: entry (b, slot) is a[idx[b, slot]] . m[b] -- the dense product a @ m.T read
        only at the pattern (one sampled CSR matmul, each latent's row of ``a`` loaded once for
        all its tokens)."""
        crow, tokens, order = self._layout()
        B, k = self.idx.shape
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            csr = torch.sparse_csr_tensor(crow, tokens, torch.zeros(B * k, dtype=m.dtype, device=m.device),
                                          (self.n, B), check_invariants=False)
            sampled = torch.sparse.sampled_addmm(csr, a, m.t(), beta=0).values()
        out = torch.empty(B * k, dtype=m.dtype, device=m.device)
        out[order] = sampled  # latent-major back to token-major
        return out.view(B, k)


class _GatherPre(torch.autograd.Function):
    """values[b, j] = x_enc[b] @ W_enc[:, idx[b, j]] + b_enc[idx[b, j]] with x_enc = x - shift
    (precomputed in forward, without a graph)."""

    @staticmethod
    def forward(ctx, x, shift, W_enc, b_enc, x_enc, idx, values, pattern):
        ctx.save_for_backward(x_enc, W_enc, idx)
        ctx.pattern = pattern
        return values

    @staticmethod
    def backward(ctx, grad):
        x_enc, W_enc, idx = ctx.saved_tensors
        n = W_enc.shape[1]
        grad = grad.contiguous()
        need_x, need_shift, need_W, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_shift = grad_W = grad_b = None
        flat_idx, flat_g = idx.reshape(-1), grad.reshape(-1)
        if need_x:
            grad_x = torch.nn.functional.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=grad,
                                                       mode="sum")
        if need_b or need_shift:
            grad_b = torch.zeros(n, dtype=grad.dtype, device=grad.device).index_add_(0, flat_idx, flat_g)
            if need_shift:
                grad_shift = -(W_enc @ grad_b)
            if not need_b:
                grad_b = None
        if need_W:
            grad_W = ctx.pattern.matmul(grad, x_enc).t()  # [d_sae, d_in] -> W_enc's [d_in, d_sae]
        return grad_x, grad_shift, grad_W, grad_b, None, None, None, None


def _group_size(n: int, k: int) -> int:
    """Columns per group for ``row_topk``: the largest power of two up to 8 that divides n and
    leaves at least 8k groups; 1 (no grouping) where none does."""
    g = 1
    while g < 8 and n % (2 * g) == 0 and n // (2 * g) >= 8 * k:
        g *= 2
    return g


def row_topk(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row, unordered: ``h.topk(k, -1,
    sorted=False)`` up to the order of ties, faster on CPU. Split the n columns into n / g
    groups of g columns j, j + n/g, j + 2n/g, ... (a strided split, so the group maxima are one
    vectorised elementwise max of g slices), keep the k groups with the largest maxima and select
    among their k * g entries: the top k always lie in those groups, since each of the k groups
    holds an entry at least the k-th largest group maximum, so the k-th largest entry is at least
    that too. At k 32, 4096 rows: 43 -> 35 ms for 6144 columns, 20 -> 14 ms for 1024."""
    B, n = h.shape
    g = _group_size(n, k)
    if h.device.type != "cpu" or g == 1:
        return h.topk(k, dim=-1, sorted=False)
    m = n // g
    groups = h.view(B, g, m).amax(1).topk(k, dim=-1, sorted=False).indices
    cols = (groups.unsqueeze(-1) + torch.arange(0, n, m, device=h.device)).view(B, k * g)
    values, j = h.gather(1, cols).topk(k, dim=-1, sorted=False)
    return values, cols.gather(1, j)


class _ScratchBuffer:
    """One reusable CPU tensor. A fresh allocation above glibc's mmap threshold (32 MB) is
    mapped anew on every call and pays a page fault per 4 kB on first touch: for the [4096, 6144]
    pre-activations of a d_in 768 TopK step that is ~30 ms (10% of the step) spent before the
    matmul writes a single value."""

    def __init__(self):
        self.t: Optional[torch.Tensor] = None

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        t = self.t
        if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
            t = self.t = torch.empty(shape, dtype=like.dtype, device=like.device)
        return t


_PRE_SCRATCH = _ScratchBuffer()


def _onednn_linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> Optional[torch.Tensor]:
    """x @ W + b in fp32 through oneDNN, or None where that path does not apply. W must be the
    transposed view of a contiguous [d_sae, d_in] matrix (how coders hold W_enc). On this
    project's CPU machine (AMD, AVX-512) oneDNN's fp32 GEMM ran the d_in 768 encoder product
    ~20% faster than the MKL GEMM behind ``torch.addmm`` -- same precision (fp32 products and
    sums; errors against float64 of the same order as MKL's) -- even though it allocates its
    output each call."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or W.dtype != torch.float32 or x.dim() != 2
            or not x.is_contiguous() or not W.t().is_contiguous() or not torch.backends.mkldnn.is_available()):
        return None
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None:
        return None
    try:
        return op(x, W.t(), b, "none", [], "")
    except (RuntimeError, TypeError):  # a build or version without this kernel
        return None


def topk_pre(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
             shift: Optional[torch.Tensor] = None, scratch: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LatentMajor]:
    """(values [batch, k], indices [batch, k], dense pre-activations [batch, d_sae] without grad,
    the indices' latent-major pattern to pass on to ``sparse_decode``) of the k largest
    pre-activations ``(x - shift) @ W_enc + b_enc``; gradients reach x, shift, W_enc and b_enc
    through the k chosen entries only. The fp32 CPU product runs through oneDNN where it can
    (``_onednn_linear``). ``scratch``: where it cannot, on CPU, write the pre-activations into a
    buffer shared by every call (the returned tensor is overwritten by the next such call: for
    a training step that reads them only inside its loss)."""
    with torch.no_grad():
        x_enc = x if shift is None else x - shift
        h = _onednn_linear(x_enc, W_enc, b_enc)
        if h is None:
            out = None
            if scratch and x.device.type == "cpu":
                out = _PRE_SCRATCH.get((x_enc.shape[0], W_enc.shape[1]), x_enc)
            h = torch.addmm(b_enc, x_enc, W_enc, out=out) if out is not None else torch.addmm(b_enc, x_enc, W_enc)
        values, idx = row_topk(h, k)
    pattern = LatentMajor(idx, W_enc.shape[1])
    return _GatherPre.apply(x, shift, W_enc, b_enc, x_enc, idx, values, pattern), idx, h, pattern


def pre_at(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Pre-activations [batch, len(columns)] of some latents, with an ordinary (small) graph."""
    return torch.addmm(b_enc[columns], x, W_enc[:, columns])


def _chosen_values_grad(grad: torch.Tensor, W_dec: torch.Tensor, idx: torch.Tensor,
                        pattern: Optional[LatentMajor] = None) -> torch.Tensor:
    """grad_vals[b, j] = grad[b] . W_dec[idx[b, j]]: a sampled matmul over the step's latent-major
    pattern when there is one (each W_dec row read once per step, not once per token: 2.5 ms
    of a 45 ms d_in 128 step; at d_in 768 inside the timing noise), else embedding_bag's
    per-sample-weight backward kernel where this torch has it (no [batch, k, d] gather), else
    through its autograd."""
    B, k = idx.shape
    if pattern is not None:
        try:
            return pattern.sampled(W_dec, grad)
        except (RuntimeError, NotImplementedError):  # a backend without sampled CSR matmuls
            pass
    op = getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)
    if op is not None:
        try:
            offsets = torch.arange(0, B * k, k, device=idx.device)
            bags = torch.arange(B, device=idx.device).repeat_interleave(k)
            return op(grad, W_dec, idx.reshape(-1), offsets, bags, 0, -1).reshape(B, k)
        except (RuntimeError, TypeError):  # signature changed: fall back
            pass
    with torch.enable_grad():
        v = torch.ones(B, k, dtype=grad.dtype, device=grad.device, requires_grad=True)
        out = torch.nn.functional.embedding_bag(idx, W_dec.detach(), per_sample_weights=v, mode="sum")
        return torch.autograd.grad(out, v, grad)[0]


class _SparseDecode(torch.autograd.Function):
    """out[b] = sum_j vals[b, j] W_dec[idx[b, j]]: embedding_bag forward; the backward computes
    the decoder gradient as one CSR product (embedding_bag's own backward scatters row by row)."""

    @staticmethod
    def forward(ctx, vals, W_dec, idx, pattern):
        ctx.save_for_backward(vals, W_dec, idx)
        ctx.pattern = pattern
        return torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        vals, W_dec, idx = ctx.saved_tensors
        grad = grad.contiguous()
        grad_vals = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_vals = _chosen_values_grad(grad, W_dec, idx, ctx.pattern)
        if ctx.needs_input_grad[1]:
            grad_W = (ctx.pattern or LatentMajor(idx, W_dec.shape[0])).matmul(vals, grad)
        return grad_vals, grad_W, None, None


def sparse_decode(W_dec: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor,
                  pattern: Optional[LatentMajor] = None) -> torch.Tensor:
    """sum_j vals[:, j] * W_dec[idx[:, j]] without materialising the dense latents
    (k rows gathered per token instead of a [batch, d_sae] x [d_sae, d] matmul). ``pattern``:
    ``idx``'s LatentMajor when the caller already has one (``topk_pre`` returns it)."""
    return _SparseDecode.apply(vals, W_dec, idx, pattern)
