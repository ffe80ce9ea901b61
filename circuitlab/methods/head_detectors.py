"""Head detectors: score every head as previous-token, duplicate-token, induction or copying.

Attention scores are measured on repeated random token sequences [BOS, s, s] (s of length L),
where each kind of head has an unambiguous target:
- previous-token: attention from t to t - 1;
- duplicate-token: from a token in the second repeat to its earlier occurrence (t - L);
- induction: from a token in the second repeat to the token after its earlier occurrence
  (t - L + 1);
each averaged over the second repeat. Copying is a weight-based score of the head's OV circuit
from token embedding to unembedding: sum of eigenvalues / sum of their magnitudes (1: the head
copies the tokens it attends to, Olsson et al. 2022), on the most frequent ``n_tokens`` tokens.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from circuitlab.engine.cache import capture
from circuitlab.models import weights
from circuitlab.result import Cost, Result

KINDS = ("previous_token", "duplicate_token", "induction", "copying")


def repeated_tokens(model, n: int = 16, length: int = 12, seed: int = 0, vocab: Optional[list[int]] = None) -> torch.Tensor:
    """[n, 1 + 2 * length]: BOS then a random sequence twice (tokens drawn without repeats)."""
    from circuitlab.tasks.tokenize import bos_id

    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocab) if vocab is not None else torch.arange(min(model.d_vocab, 5000))
    special = set(model.tokenizer.all_special_ids)
    pool = pool[[int(t) not in special for t in pool]]
    seqs = torch.stack([pool[torch.randperm(len(pool), generator=g)[:length]] for _ in range(n)])
    bos = torch.full((n, 1), bos_id(model.tokenizer))
    return torch.cat([bos, seqs, seqs], 1).to(model.device)


def head_scores(model, tokens: Optional[torch.Tensor] = None, length: int = 12, n_tokens: int = 300) -> Result:
    """Values [kind, layer, head] for the four kinds (dims ('kind', 'layer', 'head'))."""
    t0 = time.perf_counter()
    if tokens is None:
        tokens = repeated_tokens(model, length=length, vocab=_zoo_random_words(model))
    L = (tokens.shape[1] - 1) // 2
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.n_layers)]
    c = capture(model, tokens, names)
    second = torch.arange(1 + L, 1 + 2 * L, device=tokens.device)
    out = torch.zeros(4, model.n_layers, model.n_heads)
    for l in range(model.n_layers):
        A = c[names[l]].float()  # [B, H, T, T]
        out[0, l] = A[:, :, second, second - 1].mean((0, 2)).cpu()
        out[1, l] = A[:, :, second, second - L].mean((0, 2)).cpu()
        out[2, l] = A[:, :, second[:-1], second[:-1] - L + 1].mean((0, 2)).cpu()
    out[3] = copying_scores(model, n_tokens)
    labels = [f"{k}:L{l}.H{h}" for k in KINDS for l in range(model.n_layers) for h in range(model.n_heads)]
    return Result(out, labels, ("kind", "layer", "head"), "head_detectors", "heads", "none", "attention",
                  0.0, Cost(1, 0, time.perf_counter() - t0), meta={"kinds": list(KINDS), "repeat_length": L})


def copying_scores(model, n_tokens: int = 300) -> torch.Tensor:
    """[layer, head]: eigenvalue-based copying score of W_E W_V W_O W_U on ``n_tokens`` tokens."""
    bridge = model.bridge
    with torch.no_grad():
        W_E = bridge.W_E.detach()[:n_tokens].float()
        W_V, W_O = bridge.W_V.detach().float(), weights.W_O(model).float()  # [L, H, d, dh], [L, H, dh, d]
        W_U = weights.W_U(model)[:, :n_tokens].float()
        gain, _ = weights.final_norm(model)
        W_U = gain.float()[:, None] * W_U
        out = torch.zeros(model.n_layers, model.n_heads)
        for l in range(model.n_layers):
            for h in range(model.n_heads):
                M = (W_E @ W_V[l, h]) @ (W_O[l, h] @ W_U)  # [n, n]
                ev = torch.linalg.eigvals(M)
                out[l, h] = float(ev.real.sum() / ev.abs().sum().clamp(min=1e-9))
    return out


def _zoo_random_words(model) -> Optional[list[int]]:
    """The zoo's dedicated random-word pool when the model speaks the zoo vocabulary."""
    try:
        from circuitlab.zoo.world import RANDOM_WORDS
    except ImportError:
        return None
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in RANDOM_WORDS]
    unk = model.tokenizer.unk_token_id
    ids = [i for i in ids if i is not None and i != unk]
    return ids if len(ids) >= 40 else None
