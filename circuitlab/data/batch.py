"""Documents (texts or token ids) as one right-padded batch of token ids.

Why here: texts are tokenized exactly as prompts are everywhere else (BOS first, no other special
tokens; :func:`circuitlab.tasks.tokenize.right_pad`); token-id documents get the same BOS rule and
are checked against the tokenizer, since ids from another tokenizer would otherwise be read as
different words, or index past the embedding.
"""

from __future__ import annotations

from typing import Sequence

import torch

from circuitlab.data.source import Document


def _ids(tokenizer, doc: Document, ctx_len: int) -> torch.Tensor:
    from circuitlab.tasks.tokenize import bos_id, encode

    if isinstance(doc, str):
        return torch.tensor(encode(tokenizer, doc, bos=True)[:ctx_len], dtype=torch.long)
    ids = doc.to(torch.long).flatten()
    hi = int(ids.max()) if ids.numel() else 0
    if hi >= len(tokenizer):
        raise ValueError(f"token id {hi} is outside the tokenizer's {len(tokenizer)} ids; the token file was "
                         "made with another tokenizer (re-tokenize the texts for this model)")
    b = bos_id(tokenizer)
    if not ids.numel() or int(ids[0]) != b:
        ids = torch.cat([torch.tensor([b]), ids])
    return ids[:ctx_len]


def pad_documents(tokenizer, docs: Sequence[Document], ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, longest] token ids (one document per row, BOS first, cut to ``ctx_len``, right-padded)
    and the lengths [B]. Texts alone are tokenized by ``right_pad`` itself."""
    from circuitlab.tasks.tokenize import pad_id, right_pad

    if all(isinstance(d, str) for d in docs):
        return right_pad(tokenizer, docs, ctx_len)
    rows = [_ids(tokenizer, d, ctx_len) for d in docs]
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.full((len(rows), int(lengths.max())), pad_id(tokenizer), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths
