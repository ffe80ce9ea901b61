"""Activation signatures of features on probe prompts (probe prompting, steps 3-4).

For each feature (layer, index) and probe: the activation over the probe's positions (BOS
excluded), its peak token and position, whether the peak is on the concept label, sparsity
(max - mean) / max, cosine with the feature's activation on the seed prompt (aligned from the
end), robust z-score of the peak, density above the 90% quantile. Per feature: peak
consistency, distinct peaks, share of peaks on functional tokens, func_vs_sem, median sparsity.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.graphs.probes import Concept
from circuitlab.graphs.transcoders import TranscoderSet

PUNCT = {".", ",", "!", "?", ";", ":", "<bos>"}


def functional_words(tokenizer=None, data: Optional[str] = None, n: int = 40) -> set[str]:
    """Punctuation and function words.

    Default: English glue words and the zoo world's. With ``data`` (any circuitlab.data source)
    and the model's ``tokenizer``: punctuation plus the ``n`` most frequent word tokens of that
    text, which by Zipf's law are its function words, so the classification follows the
    language and vocabulary of the model at hand."""
    if data is not None:
        if tokenizer is None:
            raise ValueError("functional_words(data=...) needs the model's tokenizer to count word tokens")
        from circuitlab.data import token_pool

        return set(PUNCT) | {tokenizer.decode([i]).strip() for i in token_pool(tokenizer, data, n)}
    words = set(PUNCT) | {"the", "a", "an", "of", "to", "in", "is", "and", "was", "at", "on", "by", "for", "it", "its"}
    from circuitlab.zoo.world import FUNCTION_WORDS

    words |= {w for w in FUNCTION_WORDS if w not in ("capital", "country", "city", "language", "continent",
                                                      "speak", "spoken", "people", "People", "official")}
    return words


def feature_activations(model, transcoders: TranscoderSet, texts: Sequence[str],
                        features: Sequence[tuple[int, int]]) -> list[tuple[list[str], torch.Tensor]]:
    """Per text: (token strings, [T, n_features] activations of ``features``)."""
    layers = sorted({l for l, _ in features})
    out = []
    for text in texts:
        toks = model.to_tokens(text)
        acts = capture(model, toks[None], [transcoders[l].hook_in for l in layers], dtype=torch.float32)
        cols = []
        per_layer = {l: transcoders[l].encode(acts[transcoders[l].hook_in][0].float()) for l in layers}
        for l, f in features:
            cols.append(per_layer[l][:, f])
        strs = [model.tokenizer.decode([t]).strip() for t in toks.tolist()]
        out.append((strs, torch.stack(cols, 1).cpu()))
    return out


@dataclass
class ProbeStat:
    """One feature on one probe."""

    concept: str
    peak: float
    peak_token: str
    peak_pos: int
    on_label: bool
    sparsity: float
    cos_seed: float
    z: float
    density90: float


@dataclass
class Signature:
    """A feature's probe statistics and their aggregates."""

    layer: int
    feature: int
    stats: list[ProbeStat] = field(default_factory=list)
    vector: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """[n_probes] peak activation on each probe (the activation pattern)."""

    @property
    def fired(self) -> list[ProbeStat]:
        return [s for s in self.stats if s.peak > 0]

    @property
    def main_peak(self) -> str:
        f = self.fired
        return Counter(s.peak_token for s in f).most_common(1)[0][0] if f else ""

    @property
    def peak_consistency(self) -> float:
        f = self.fired
        return sum(s.peak_token == self.main_peak for s in f) / len(self.stats) if f and self.stats else 0.0

    @property
    def n_distinct_peaks(self) -> int:
        return len({s.peak_token for s in self.fired})

    def functional_share(self, func: set[str]) -> float:
        f = self.fired
        return sum(s.peak_token in func for s in f) / len(f) if f else 0.0

    def func_vs_sem(self, func: set[str]) -> float:
        f = self.fired
        if not f:
            return 0.0
        mx = max(s.peak for s in f)
        fa = max([s.peak for s in f if s.peak_token in func], default=0.0)
        sa = max([s.peak for s in f if s.peak_token not in func], default=0.0)
        return 100.0 * (fa - sa) / mx

    @property
    def median_sparsity(self) -> float:
        f = self.fired
        return float(torch.tensor([s.sparsity for s in f]).median()) if f else 0.0

    def concept_activation(self) -> dict[str, float]:
        """Mean peak activation per concept."""
        acc: dict[str, list[float]] = {}
        for s in self.stats:
            acc.setdefault(s.concept, []).append(s.peak)
        return {c: sum(v) / len(v) for c, v in acc.items()}

    def label_share(self) -> dict[str, float]:
        """Per concept: share of its probes where the peak is on the concept's label."""
        acc: dict[str, list[bool]] = {}
        for s in self.stats:
            acc.setdefault(s.concept, []).append(s.on_label)
        return {c: sum(v) / len(v) for c, v in acc.items()}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(len(a), len(b))
    if n == 0:
        return 0.0
    a, b = a[-n:], b[-n:]
    d = a.norm() * b.norm()
    return float(a @ b / d) if d > 0 else 0.0


def signatures(model, transcoders: TranscoderSet, features: Sequence[tuple[int, int]], concepts: Sequence[Concept],
               seed_prompt: str) -> list[Signature]:
    """Activation signatures of ``features`` on every concept's probes."""
    texts, owner = [], []
    for c in concepts:
        texts += c.probes
        owner += [c] * len(c.probes)
    runs = feature_activations(model, transcoders, [seed_prompt] + texts, features)
    seed = runs[0][1]
    sigs = [Signature(l, f) for l, f in features]
    vecs = torch.zeros(len(features), len(texts))
    for j, ((strs, acts), c) in enumerate(zip(runs[1:], owner)):
        a = acts[1:]  # BOS excluded
        s = strs[1:]
        for i, sig in enumerate(sigs):
            v = a[:, i]
            mx, pos = (float(v.max()), int(v.argmax())) if len(v) else (0.0, 0)
            vecs[i, j] = mx
            med = float(v.median()) if len(v) else 0.0
            mad = float((v - med).abs().median()) if len(v) else 0.0
            q90 = float(torch.quantile(v, 0.9)) if len(v) else 0.0
            sig.stats.append(ProbeStat(
                concept=c.label, peak=mx, peak_token=s[pos] if s else "", peak_pos=pos + 1,
                on_label=bool(s) and s[pos] == c.label and mx > 0,
                sparsity=(mx - float(v.mean())) / mx if mx > 0 else 0.0, cos_seed=_cos(v, seed[1:, i]),
                z=(mx - med) / (1.4826 * mad) if mad > 0 else (float("inf") if mx > med else 0.0),
                density90=float((v > q90).float().mean()) if mx > 0 else 0.0))
    for i, sig in enumerate(sigs):
        sig.vector = vecs[i]
    return sigs
