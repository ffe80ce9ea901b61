"""Packing of training documents into fixed-length rows.

Why whole-document first-fit packing (not a continuous token stream cut every ``n_ctx``): every row
starts with a document, so BOS sits at position 0 like in the analysis prompts, and no
document is cut in half. The few unused slots at the end of a row are padding whose
targets are masked out of the loss.

Why a pure function of the step: batch ``k`` depends only on ``(seed, k)``, so a resumed
run sees exactly the batches an uninterrupted one would, without saving RNG state.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer

from .corpus import Mix, training_documents

_DOC_CHUNK = 64
_MAX_MISSES = 48
"""Stop filling a batch after this many documents found no row with room (first-fit)."""


def step_seed(seed: int, step: int) -> int:
    """The corpus seed of one optimizer step."""
    return seed * 1_000_003 + step


def pack_batch(tok: Tokenizer, seed: int, step: int, batch_size: int, n_ctx: int,
               mix: Mix, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, n_real)`` for one step: ``[batch_size, n_ctx]`` ids (padded with
    ``pad_id``) and the number of real (non-pad) tokens in each row."""
    rows: list[list[int]] = [[] for _ in range(batch_size)]
    base = step_seed(seed, step)
    misses, chunk = 0, 0
    while misses < _MAX_MISSES:
        docs = training_documents(base * 97 + chunk, _DOC_CHUNK, mix)
        chunk += 1
        for enc in tok.encode_batch(docs, add_special_tokens=False):
            ids = enc.ids[:n_ctx]
            row = next((r for r in rows if len(r) + len(ids) <= n_ctx), None)
            if row is None:
                misses += 1
                if misses >= _MAX_MISSES:
                    break
            else:
                row.extend(ids)
    out = torch.full((batch_size, n_ctx), pad_id, dtype=torch.long)
    n_real = torch.zeros(batch_size, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        n_real[i] = len(r)
    return out, n_real


def loss_mask(n_real: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """``[batch, n_ctx - 1]`` bool mask of next-token targets that are real tokens."""
    pos = torch.arange(1, n_ctx).unsqueeze(0)
    return pos < n_real.unsqueeze(1)
