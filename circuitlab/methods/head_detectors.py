"""Head detectors: score every head as previous-token, duplicate-token, induction or copying.

Attention scores are measured on repeated random token sequences [BOS, s, s] (s of length L),
where each kind of head has an unambiguous target:
- previous-token: attention from t to t - 1;
- duplicate-token: from a token in the second repeat to its earlier occurrence (t - L);
- induction: from a token in the second repeat to the token after its earlier occurrence
  (t - L + 1);
each averaged over the second repeat. The random sequences are drawn from a token pool: by
default the zoo's random-word list where the model speaks the zoo vocabulary, else the model's
first word tokens; ``data`` names any other text source (:mod:`circuitlab.data`), whose most
frequent word tokens are used. Copying is a weight-based score of the head's OV circuit
from token embedding to unembedding: sum of eigenvalues / sum of their magnitudes (1: the head
copies the tokens it attends to, Olsson et al. 2022), on ``n_tokens`` ordinary word tokens (see
:func:`word_tokens`). Grouped-query models share one value head among several query heads;
each query head is scored with the value weights it reads.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from circuitlab.data import DEFAULT, token_pool
from circuitlab.data.pool import word_kind
from circuitlab.engine.cache import capture
from circuitlab.engine.sites import hook_name
from circuitlab.models import weights
from circuitlab.result import Cost, HeadScores

KINDS = ("previous_token", "duplicate_token", "induction", "copying")
POOL_SIZE = 5000
"""Candidate tokens for the random sequences (the model's first word tokens, or a source's most
frequent ones)."""


def repeated_tokens(model, n: int = 16, length: int = 12, seed: int = 0,
                    vocab: Optional[list[int]] = None) -> torch.Tensor:
    """[n, 1 + 2 * length]: BOS then a random sequence twice (tokens drawn without repeats)."""
    from circuitlab.tasks.tokenize import bos_id

    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(vocab if vocab is not None else word_tokens(model.tokenizer, POOL_SIZE, model.d_vocab))
    special = special_ids(model.tokenizer)
    pool = pool[[int(t) not in special for t in pool]]
    if len(pool) < length:
        raise ValueError(f"only {len(pool)} candidate tokens for random sequences of length {length}; "
                         "pass a shorter length or a larger vocab list")
    seqs = torch.stack([pool[torch.randperm(len(pool), generator=g)[:length]] for _ in range(n)])
    bos = torch.full((n, 1), bos_id(model.tokenizer))
    return torch.cat([bos, seqs, seqs], 1).to(model.device)


def head_scores(model, tokens: Optional[torch.Tensor] = None, length: int = 12, n_tokens: int = 300,
                data: str = DEFAULT) -> HeadScores:
    """Values [kind, layer, head] for the four kinds (dims ('kind', 'layer', 'head')). Without
    ``tokens``, repeated random sequences are drawn from :func:`sequence_pool` of ``data``."""
    t0 = time.perf_counter()
    if tokens is None:
        tokens = repeated_tokens(model, length=length, vocab=sequence_pool(model, data))
    L = (tokens.shape[1] - 1) // 2
    names = [hook_name("pattern", l) for l in range(model.n_layers)]
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
    return HeadScores(out, labels, ("kind", "layer", "head"), cost=Cost(1, 0, time.perf_counter() - t0),
                      meta={"kinds": list(KINDS), "repeat_length": L})


def copying_scores(model, n_tokens: int = 300) -> torch.Tensor:
    """[layer, head]: eigenvalue-based copying score of W_E g1 W_V W_O g W_U on ``n_tokens`` word
    tokens (g1, g: the gains of the head's input norm and of the final norm).

    The nonzero eigenvalues of (W_E g1 W_V)(W_O g W_U) [n, n] are those of (W_O g W_U)(W_E g1 W_V)
    [d_head, d_head], so the small matrix is decomposed (both sums ignore zero eigenvalues)."""
    W_E = weights.W_E(model)
    ids = torch.tensor(word_tokens(model.tokenizer, n_tokens, model.d_vocab), device=W_E.device)
    with torch.no_grad():
        W_E = W_E[ids].float()
        W_V, W_O = weights.W_V(model).float(), weights.W_O(model).float()  # [L, KV, d, dh], [L, H, dh, d]
        gain, _ = weights.final_norm(model)
        W_U = gain.float()[:, None] * weights.W_U(model)[:, ids].float()
        group = model.n_heads // W_V.shape[1]  # query heads per value head (1 without GQA)
        out = torch.zeros(model.n_layers, model.n_heads)
        for l in range(model.n_layers):
            E = W_E * _input_gain(model, l)
            for h in range(model.n_heads):
                ev = torch.linalg.eigvals((W_O[l, h] @ W_U) @ (E @ W_V[l, h // group]))
                out[l, h] = float(ev.real.sum() / ev.abs().sum().clamp(min=1e-9))
    return out


def _input_gain(model, layer: int) -> torch.Tensor:
    """Gain of the norm in front of the layer's attention ([d_model]; ones when it has none)."""
    try:
        w = model.adapter.norm("ln1", layer).weight
    except AttributeError:
        w = None
    return torch.ones(model.d_model, device=model.device) if w is None else w.float()


def special_ids(tokenizer) -> set[int]:
    """Ids of special tokens, including added special tokens missing from ``all_special_ids``
    (chat and repository markers in code-trained BPE vocabularies)."""
    out = {int(i) for i in tokenizer.all_special_ids}
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            out.add(int(i))
    return out


def word_tokens(tokenizer, n: int, vocab_size: Optional[int] = None) -> list[int]:
    """The first ``n`` ids (in id order, below ``vocab_size``) of tokens that are ordinary words.

    Why: copying is a statement about words the model reads and writes; in a BPE vocabulary the
    first ids are bytes, punctuation and special tokens, whose OV eigenvalues say nothing about
    copying. A word token is not special and passes :func:`circuitlab.data.pool.word_kind` (two
    or more letters); where the vocabulary marks word starts (a leading space, as in byte-level
    BPE and SentencePiece), only word-start tokens count, not pieces inside words.
    Low ids are the frequent tokens in both frequency-ordered word vocabularies (the zoo's) and
    BPE vocabularies (ids follow merge order). Returns fewer than ``n`` when the vocabulary has
    fewer words; falls back to the first non-special tokens when it has almost none (< 20)."""
    tok = tokenizer
    special = special_ids(tok)
    V = len(tok) if vocab_size is None else min(vocab_size, len(tok))
    starts, inner = [], []
    for i in range(V):
        if i in special:
            continue
        word, start = word_kind(tok, i)
        if not word:
            continue
        (starts if start else inner).append(i)
        if len(starts) >= n:
            break
    pool = starts if starts else inner
    if len(pool) >= min(n, 20):
        return pool[:n]
    return [i for i in range(V) if i not in special][:n]


def sequence_pool(model, data: str = DEFAULT) -> Optional[list[int]]:
    """Token ids random sequences are drawn from. ``data`` 'zoo' (the default): the zoo's
    random-word list where the model speaks the zoo vocabulary, else None (the model's first
    :data:`POOL_SIZE` word tokens, see :func:`word_tokens`); any other source: its
    :data:`POOL_SIZE` most frequent word tokens (:func:`circuitlab.data.token_pool`)."""
    if data == DEFAULT:
        return _zoo_random_words(model)
    return token_pool(model.tokenizer, data, n=POOL_SIZE)


def _zoo_random_words(model) -> Optional[list[int]]:
    """The zoo's dedicated random-word pool when the model speaks the zoo vocabulary."""
    from circuitlab.zoo.world import RANDOM_WORDS

    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in RANDOM_WORDS]
    unk = model.tokenizer.unk_token_id
    ids = [i for i in ids if i is not None and i != unk]
    return ids if len(ids) >= 40 else None
