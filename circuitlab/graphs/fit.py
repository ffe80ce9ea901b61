"""Quick per-layer transcoders for tests and demos without trained ones.

Not a training run: ``circuitlab.sparse.quick.fit_coders`` (the sparse trainer, full batches
over the activations of a handful of prompts) on one transcoder config per layer. Exactness of
attribution graphs does not depend on transcoder quality; scores do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from circuitlab.graphs.transcoders import READ_SITE, TranscoderSet
from circuitlab.sparse.quick import fit_coders
from circuitlab.sparse.transcoder import transcoder_config


@dataclass
class FitConfig:
    """Quick transcoders: one per layer, all alike."""

    n_features: int = 128
    """Latents per layer."""
    arch: str = "relu"
    """A circuitlab.sparse architecture with a linear encoder: relu, topk, batchtopk, jumprelu."""
    fields: dict = field(default_factory=lambda: {"l1_coeff": 0.2})
    """Further fields of the architecture's config. The default suits relu: a light L1 penalty,
    dense enough for graphs with many active features (about 15 of 48 per token on the tiny test
    models); give the fields of another arch with it (topk: ``{"k": 8}``; jumprelu: ``{}``)."""
    steps: int = 300
    """Full-batch optimizer steps."""
    lr: float = 3e-3
    """Adam learning rate."""
    skip: bool = False
    """Add a linear skip connection (fitted jointly)."""
    read: str = READ_SITE
    """Read site: a hook point (``ln2.out``, ``resid_mid``) or a hook-name template with ``{layer}``."""
    seed: int = 0
    """Initialisation seed of every layer's coder."""


def fit_transcoders(model, prompts: Sequence[str], cfg: Optional[FitConfig] = None) -> TranscoderSet:
    """Fit one transcoder per layer on the MLP input/output of ``prompts`` (BOS excluded;
    default config: ``FitConfig()``)."""
    cfg = cfg or FitConfig()
    configs = [transcoder_config(cfg.arch, l, model.d_model, cfg.n_features, skip=cfg.skip, hook_in=cfg.read,
                                 seed=cfg.seed, **cfg.fields) for l in range(model.n_layers)]
    coders = fit_coders(model, list(prompts), configs, steps=cfg.steps, lr=cfg.lr)
    return TranscoderSet(coders, name=f"fit-{cfg.arch}-{cfg.n_features}")
