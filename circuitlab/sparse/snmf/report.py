"""One layer's SNMF, end to end: factorise, describe every factor, steer the clearest ones, save.

Why one object: the command line, the notebook and a later reader all want the same bundle:
the factors (``factors.safetensors``: directions, coefficients and the token of every fitted
row), what was done and found (``snmf.json``) and a page a person reads offline (``snmf.html``,
every token string escaped, plotly.js written beside it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from circuitlab.data import DEFAULT
from circuitlab.sparse.dashboard import Context
from circuitlab.sparse.snmf.activations import Activations, concept_share, concept_tokens, mlp_activations, top_contexts
from circuitlab.sparse.snmf.factorize import Factorization, SNMFConfig, snmf
from circuitlab.sparse.snmf.steering import SteeringConfig, SteeringTest, factor_steering

FACTORS_FILE = "factors.safetensors"
INFO_FILE = "snmf.json"
PAGE_FILE = "snmf.html"


@dataclass
class FactorCard:
    """What one factor responds to and what it writes."""

    factor: int
    usage: float
    """Fraction of tokens whose coefficient exceeds a tenth of the factor's largest."""
    mean: float
    """Mean coefficient over all tokens."""
    concept: list[int]
    """Token ids the factor fires on most (:func:`concept_tokens`)."""
    concept_text: list[str]
    share: float
    """Fraction of the factor's coefficient mass on its concept tokens."""
    contexts: list[Context] = field(default_factory=list)
    """Top-activating contexts."""
    entries: list[tuple[int, float]] = field(default_factory=list)
    """Largest-magnitude entries of the unit direction: (neuron or dimension, weight)."""
    promoted: list[tuple[str, float]] = field(default_factory=list)
    """Tokens whose logits the direction raises most through the unembedding (direct effect,
    the final norm's scale ignored)."""
    suppressed: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class SNMFReport:
    """The factors of one MLP site, their cards and steering tests."""

    model: str
    layer: int
    site: str
    hook: str
    fact: Factorization
    cards: list[FactorCard]
    steering: list[SteeringTest] = field(default_factory=list)
    data: str = DEFAULT
    n_docs: int = 0
    ctx_len: int = 0
    tokens: Optional[torch.Tensor] = None
    """[rows] token id of each fitted row (saved beside the coefficients)."""

    def info(self) -> dict:
        """Everything but the tensors, as saved in snmf.json."""
        from circuitlab.io import format_tag

        f = self.fact
        return {"format": format_tag("snmf"), "model": self.model, "layer": self.layer, "site": self.site,
                "hook": self.hook, "data": self.data, "n_docs": self.n_docs, "ctx_len": self.ctx_len,
                "rows": int(f.Z.shape[0]), "d": int(f.Y.shape[1]), "config": asdict(f.cfg), "error": f.error,
                "lambda": f.lam, "objective": f.objective,
                "factors": [{**asdict(c), "contexts": [asdict(x) for x in c.contexts]} for c in self.cards],
                "steering": [t.to_dict() for t in self.steering]}

    def save(self, out: str | Path) -> Path:
        """Write factors.safetensors, snmf.json and snmf.html into folder ``out`` (all or nothing)."""
        from safetensors.torch import save_file

        from circuitlab.io import atomic_folder
        from circuitlab.sparse.snmf.page import write_page

        tensors = {"directions": self.fact.Y.float().contiguous().cpu(),
                   "coefficients": self.fact.Z.float().contiguous().cpu()}
        if self.tokens is not None:
            tensors["tokens"] = self.tokens.to(torch.int64).contiguous().cpu()
        text = json.dumps(self.info(), indent=1)
        with atomic_folder(out) as tmp:
            save_file(tensors, str(tmp / FACTORS_FILE))
            (tmp / INFO_FILE).write_text(text)
            write_page(self, tmp / PAGE_FILE)
        return Path(out)


def load_factors(folder: str | Path) -> tuple[Factorization, dict]:
    """The factorisation saved by :meth:`SNMFReport.save` (directions, coefficients) and its
    snmf.json contents."""
    from safetensors.torch import load_file

    from circuitlab.io import check_format

    folder = Path(folder)
    info_path, tensor_path = folder / INFO_FILE, folder / FACTORS_FILE
    for p in (info_path, tensor_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing; give a folder written by `circuitlab snmf --out`")
    info = json.loads(info_path.read_text())
    check_format(info, "snmf", info_path, "SNMF")
    t = load_file(str(tensor_path))
    fact = Factorization(t["coefficients"], t["directions"], list(info["objective"]), float(info["error"]),
                         float(info["lambda"]), SNMFConfig(**info["config"]))
    return fact, info


def to_residual(model, layer: int, site: str, direction: torch.Tensor) -> torch.Tensor:
    """[d_model] what a direction at an MLP site adds to the residual stream (through the MLP's
    output weights for a hidden-activation direction)."""
    from circuitlab.models.weights import W_out

    direction = direction.to(model.device, model.dtype)
    return direction @ W_out(model)[layer] if site == "neurons" else direction


def factor_cards(model, acts: Activations, fact: Factorization, n_contexts: int = 8,
                 n_entries: int = 10, n_tokens: int = 8) -> list[FactorCard]:
    """A card per factor (see :class:`FactorCard`)."""
    from circuitlab.models.weights import W_U

    tok = model.tokenizer
    cards = []
    for i in range(fact.Y.shape[0]):
        z = fact.Z[:, i].cpu()
        ids = concept_tokens(acts, z)
        peak = float(z.max())
        y = fact.Y[i].cpu()
        top = y.abs().topk(min(n_entries, y.numel())).indices.tolist()
        with torch.no_grad():
            eff = (to_residual(model, acts.layer, acts.site, y) @ W_U(model)).float().cpu()
        up, down = eff.topk(n_tokens), (-eff).topk(n_tokens)
        cards.append(FactorCard(
            i, float((z > 0.1 * peak).float().mean()) if peak > 0 else 0.0, float(z.mean()), ids,
            tok.convert_ids_to_tokens(ids), concept_share(acts, z, ids), top_contexts(acts, z, tok, n_contexts),
            [(j, float(y[j])) for j in top],
            [(tok.convert_ids_to_tokens(int(j)), float(v)) for v, j in zip(up.values, up.indices)],
            [(tok.convert_ids_to_tokens(int(j)), -float(v)) for v, j in zip(down.values, down.indices)]))
    return cards


def analyse(model, layer: int, site: str = "neurons", cfg: Optional[SNMFConfig] = None, data: str = DEFAULT,
            n_docs: int = 256, ctx_len: int = 64, seed: int = 0, steer: int = 4,
            steer_cfg: Optional[SteeringConfig] = None, n_contexts: int = 8) -> SNMFReport:
    """Factorise ``site`` of block ``layer`` on ``n_docs`` documents of ``data``, describe every
    factor, and run the steering test on the ``steer`` factors most concentrated on their
    concept tokens (0: none). The factorisation runs on the model's device."""
    if not isinstance(steer, int) or steer < 0:
        raise ValueError(f"steer must be an int >= 0 (factors to steer), got {steer!r}")
    cfg = cfg if cfg is not None else SNMFConfig()
    steer_cfg = steer_cfg if steer_cfg is not None else SteeringConfig()
    acts = mlp_activations(model, layer, site, n_docs=n_docs, data=data, ctx_len=ctx_len, seed=seed)
    fact = snmf(acts.A.to(model.device), cfg)
    fact.Z, fact.Y = fact.Z.cpu(), fact.Y.cpu()
    cards = factor_cards(model, acts, fact, n_contexts)
    report = SNMFReport(getattr(model, "name", ""), layer, site, acts.hook, fact, cards, [], data, n_docs, ctx_len,
                        acts.tokens)
    for c in sorted(cards, key=lambda c: -c.share)[:steer]:
        if c.concept:
            report.steering.append(factor_steering(model, acts, fact, c.factor, steer_cfg, data, c.concept))
    return report
