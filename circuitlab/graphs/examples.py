"""Top activating tokens of transcoder features over a corpus (hover text, feature labels)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.graphs.transcoders import TranscoderSet


def corpus_texts(n: int = 200, seed: int = 1) -> list[str]:
    """Documents from the zoo corpus, or [] when the zoo package is unavailable."""
    try:
        from circuitlab.zoo.corpus import training_documents
    except ImportError:
        return []
    return training_documents(seed, n)


def top_activating_tokens(model, transcoders: TranscoderSet, features: Sequence[tuple[int, int]],
                          texts: Optional[Sequence[str]] = None, k: int = 5, max_len: int = 64,
                          batch: int = 16) -> dict[tuple[int, int], list[tuple[str, float, str]]]:
    """(layer, feature) -> up to ``k`` (token, activation, context) with the highest activation
    over ``texts`` (default: zoo corpus documents). BOS positions are skipped."""
    texts = list(texts) if texts is not None else corpus_texts()
    feats = sorted(set((int(l), int(f)) for l, f in features))
    out: dict = {lf: [] for lf in feats}
    if not texts or not feats:
        return out
    by_layer: dict[int, list[int]] = {}
    for l, f in feats:
        by_layer.setdefault(l, []).append(f)
    tok = model.tokenizer
    best: dict = {lf: [] for lf in feats}
    for s in range(0, len(texts), batch):
        seqs = [model.to_tokens(t)[:max_len] for t in texts[s:s + batch]]
        T = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), T), int(seqs[0][0]), dtype=torch.long, device=model.device)
        mask = torch.zeros(len(seqs), T, dtype=torch.bool)
        for i, x in enumerate(seqs):
            ids[i, : len(x)] = x
            mask[i, 1: len(x)] = True
        names = [transcoders[l].hook_in for l in by_layer]
        acts = capture(model, ids, names, dtype=torch.float32)
        for l, fs in by_layer.items():
            tc = transcoders[l]
            a = tc.encode(acts[tc.hook_in].float())[..., fs].cpu()  # [B, T, n_f]
            a[~mask] = 0
            for j, f in enumerate(fs):
                flat = a[..., j].flatten()
                top = torch.topk(flat, min(k, flat.numel()))
                for v, idx in zip(top.values.tolist(), top.indices.tolist()):
                    if v <= 0:
                        continue
                    b, p = divmod(idx, T)
                    best[(l, f)].append((v, b + s, p, ids[b].tolist()))
    for lf, items in best.items():
        items.sort(key=lambda x: -x[0])
        res = []
        for v, _, p, row in items[:k]:
            ctx = tok.decode(row[max(1, p - 4): p + 1])
            res.append((tok.decode([row[p]]), float(v), ctx))
        out[lf] = res
    return out
