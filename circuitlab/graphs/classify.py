"""Feature classes (Semantic / Relationship / Say-X) and concept supernodes (probe prompting, steps 5-6).

Rules, in order (Birardi 2025; thresholds configurable, layer cut-offs as fractions of depth):
1. peak_consistency >= 0.8 and n_distinct_peaks <= 1        -> Semantic
2. func_vs_sem >= 50 and functional share >= 0.9 and late    -> Say "X"
3. median sparsity < 0.45                                    -> Relationship
4. early layer or semantic share >= 0.5                      -> Semantic (concept)
5. otherwise                                                 -> review
The reference tuned its cut-offs on 26-layer Gemma-2-2B (early features around layer 6,
Say-X around layer 16); here ``early_frac``/``late_frac`` of ``n_layers`` stand in for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from circuitlab.graphs.probes import Concept
from circuitlab.graphs.signatures import Signature, functional_words

CLASSES = ("Semantic", "Say X", "Relationship", "Semantic (concept)", "review")


@dataclass
class ClassifyConfig:
    """Thresholds of the classification rules."""

    peak_consistency: float = 0.8
    max_distinct_peaks: int = 1
    func_vs_sem: float = 50.0
    functional_share: float = 0.9
    relationship_sparsity: float = 0.45
    """Median sparsity below this -> Relationship (diffuse activation)."""
    semantic_share: float = 0.5
    early_frac: float = 0.35
    """Layers < early_frac * n_layers are early (Gemma-2-2B: about 9 of 26)."""
    late_frac: float = 0.5
    """Layers >= late_frac * n_layers are late (Gemma-2-2B: about 13 of 26)."""
    functional: Optional[set[str]] = None
    """Functional tokens (default: punctuation and the zoo's function words; for another model or
    language, ``signatures.functional_words(tokenizer, data=SOURCE)``)."""

    def cutoffs(self, n_layers: int) -> tuple[int, int]:
        """(first non-early layer, first late layer) for a model of ``n_layers``."""
        early = max(1, round(self.early_frac * n_layers))
        late = min(n_layers - 1, max(early, round(self.late_frac * n_layers)))
        return early, late


def classify(sig: Signature, n_layers: int, cfg: Optional[ClassifyConfig] = None) -> tuple[str, str]:
    """(class, the rule that fired); default config ``ClassifyConfig()``."""
    cfg = cfg or ClassifyConfig()
    func = cfg.functional if cfg.functional is not None else functional_words()
    early, late = cfg.cutoffs(n_layers)
    fshare = sig.functional_share(func)
    if sig.peak_consistency >= cfg.peak_consistency and sig.n_distinct_peaks <= cfg.max_distinct_peaks:
        return "Semantic", f"peak_consistency {sig.peak_consistency:.2f} >= {cfg.peak_consistency}, one peak token"
    if sig.func_vs_sem(func) >= cfg.func_vs_sem and fshare >= cfg.functional_share and sig.layer >= late:
        return "Say X", (f"func_vs_sem {sig.func_vs_sem(func):.0f}, functional share {fshare:.2f}, "
                         f"layer {sig.layer} >= {late}")
    if sig.fired and sig.median_sparsity < cfg.relationship_sparsity:
        return "Relationship", f"median sparsity {sig.median_sparsity:.2f} < {cfg.relationship_sparsity}"
    if sig.layer < early or (sig.fired and 1 - fshare >= cfg.semantic_share):
        return "Semantic (concept)", f"layer {sig.layer} < {early} or semantic share {1 - fshare:.2f}"
    return "review", "no rule matched"


@dataclass
class FeatureGroup:
    """A supernode of a graph: a named group of features (each feature in at most one group).

    Not to be confused with ``graphs.targets.Supernode``, which groups intervention targets."""

    label: str
    kind: str
    """The concept category or 'say'."""
    features: list[tuple[int, int]] = field(default_factory=list)
    """(layer, feature index) members."""


def build_supernodes(sigs: Sequence[Signature], classes: Sequence[str], concepts: Sequence[Concept],
                     answer: str = "") -> list[FeatureGroup]:
    """One supernode per concept plus ``Say "answer"``; Say-X features go to the latter,
    Relationship features to the relationship concept they activate most on, Semantic ones to
    the concept whose label they peak on most (ties: highest mean activation). 'review'
    features stay out."""
    nodes = {c.label: FeatureGroup(c.label, c.category) for c in concepts}
    say = FeatureGroup(f'Say "{answer.strip()}"' if answer else "Say X", "say")
    rel = [c.label for c in concepts if c.category == "relationship"]
    for sig, cls in zip(sigs, classes):
        if cls == "review" or not sig.fired:
            continue
        if cls == "Say X":
            say.features.append((sig.layer, sig.feature))
            continue
        act = sig.concept_activation()
        share = sig.label_share()
        pool = rel if cls == "Relationship" and rel else [c.label for c in concepts]
        best = max(pool, key=lambda c: (share.get(c, 0.0), act.get(c, 0.0)))
        nodes[best].features.append((sig.layer, sig.feature))
    out = [n for n in nodes.values() if n.features]
    if say.features:
        out.append(say)
    return out
