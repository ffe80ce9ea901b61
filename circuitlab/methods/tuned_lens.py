"""Tuned lens (Belrose et al. 2023): the logit lens with one learned affine map per layer.

Why: an early layer's residual stream is not in the basis the unembedding reads, so the logit
lens (``logit_lens_topk``) is biased there and its KL to the output stays high even where the
layer already holds the answer. The tuned lens learns, per layer ``l``, a translator
``h -> W_l h + b_l`` (d_model x d_model plus a bias) trained on the model's own activations to
minimise KL(final distribution || translated layer through the final norm and unembedding).
Translators start at the identity and zero, so an untrained tuned lens is the logit lens.

Rows are those of :class:`~circuitlab.methods.logit_lens.LogitLensTopK`: ``resid_pre`` of
every block, then the residual after the last block (whose translator training keeps at the
identity: its KL is already 0). Activations are read through the engine's ``capture``; the
BOS position and padding are left out of training and of every KL average (the BOS residual
carries no prediction of the text and, in many models, has outsized norms).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits
from circuitlab.engine.sites import hook_name
from circuitlab.methods.logit_lens import LogitLensTopK, decode_each, prompt_tokens, topk_figure

KIND = "tuned_lens"
"""The saved format's kind (``circuitlab.tuned_lens/1`` in lens.json)."""
WEIGHTS_FILE = "lens.safetensors"
"""Translators: ``weight`` [rows, d_model, d_model] and ``bias`` [rows, d_model], float32."""
INFO_FILE = "lens.json"
"""Format tag, the model the lens was trained on, the training config and its statistics."""
UNEMBED_RTOL = 1e-3
"""How far the unembedding's Frobenius norm may differ from the trained-on model's (bf16 rounding
moves it by far less; another checkpoint of the same shape by far more)."""


@dataclass
class TunedLensConfig:
    """How a tuned lens is trained."""

    tokens: int = 262_144
    """Training positions (BOS and padding not counted); training stops once this many are seen."""
    ctx_len: int = 64
    """Tokens per document (BOS included)."""
    batch_docs: int = 32
    """Documents per optimiser step."""
    optimizer: str = "sgd"
    """'sgd': the paper's recipe (Nesterov momentum, learning rate ``lr * (1 - momentum)``,
    weight decay toward the identity, gradient norm clipped to 1); 'adam': Adam."""
    lr: float = 1.0
    """Learning rate (the paper's 1.0 for 'sgd'; about 1e-2 suits 'adam'), decayed linearly to 0."""
    momentum: float = 0.9
    """SGD's momentum, or Adam's beta1."""
    weight_decay: float = 1e-3
    """'sgd' only: pulls each translator toward the identity (W -> I, b -> 0)."""
    adam_eps: float = 1e-6
    """Adam's epsilon. Larger than torch's 1e-8 because Adam divides by the gradient's scale: the
    last row's translator is already optimal, its gradient is float rounding (~1e-9), and with a
    tiny epsilon that noise would be amplified into steps of size ``lr`` and walk it away from the
    identity. Real gradients are orders of magnitude above 1e-6."""
    seed: int = 0
    """Seed of the training documents (step ``i`` reads the documents of seed ``seed * 1_000_000 + i``)."""
    chunk_tokens: int = 2048
    """Positions decoded at once: bounds the [chunk, vocab] logits held for a backward pass; only
    memory (and float rounding) depends on it."""

    def check(self) -> None:
        """Every field in range; ValueError naming the field and what it must be."""
        from circuitlab.validate import check_choice, check_positive_int

        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), not {self.momentum!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, not {self.weight_decay!r}")
        for name in ("tokens", "batch_docs", "chunk_tokens"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("ctx_len", self.ctx_len)
        if self.ctx_len < 2:
            raise ValueError(f"ctx_len must be >= 2 (BOS plus at least one token), not {self.ctx_len}")
        for name in ("lr", "adam_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, not {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 900:
            raise ValueError(f"seed must be a whole number in 0..899, not {self.seed!r}")


# ------------------------------------------------------------------ rows and model identity


def row_names(n_layers: int) -> list[str]:
    """Hook names of the lens's rows: ``resid_pre`` of each block, then the last ``resid_post``."""
    return [hook_name("resid_pre", l) for l in range(n_layers)] + [hook_name("resid_post", n_layers - 1)]


def row_labels(n_layers: int) -> list[str]:
    """Display labels of the rows (as ``LogitLensTopK.layers``)."""
    return [f"L{l}.resid_pre" for l in range(n_layers)] + [f"L{n_layers - 1}.resid_post"]


def model_facts(model) -> dict:
    """What identifies the model a lens belongs to: its shapes and its unembedding's norm."""
    from circuitlab.models.weights import W_U

    return {"name": str(model.name), "n_layers": int(model.n_layers), "d_model": int(model.d_model),
            "d_vocab": int(model.d_vocab), "unembed_norm": float(W_U(model).detach().double().norm())}


# ------------------------------------------------------------------ the lens


class TunedLens(nn.Module):
    """Per-row affine translators; ``translate(h, row)`` maps a residual into the last layer's basis."""

    def __init__(self, facts: dict, config: Optional[TunedLensConfig] = None, stats: Optional[dict] = None):
        super().__init__()
        self.facts = dict(facts)
        self.config = config
        self.stats = dict(stats or {})
        """Training statistics (tokens seen, steps, held-out KL by depth), saved in lens.json."""
        L, d = self.n_layers, self.d_model
        self.weight = nn.ParameterList([nn.Parameter(torch.eye(d)) for _ in range(L + 1)])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(d)) for _ in range(L + 1)])

    @classmethod
    def for_model(cls, model, config: Optional[TunedLensConfig] = None) -> "TunedLens":
        """An untrained lens for ``model`` (identity translators: the logit lens), on its device."""
        return cls(model_facts(model), config).to(model.device)

    @property
    def n_layers(self) -> int:
        return int(self.facts["n_layers"])

    @property
    def d_model(self) -> int:
        return int(self.facts["d_model"])

    @property
    def layers(self) -> list[str]:
        """Row labels: ``L0.resid_pre`` .. ``L{n-1}.resid_pre``, ``L{n-1}.resid_post``."""
        return row_labels(self.n_layers)

    def check_row(self, row: int) -> None:
        """``row`` must index a translator; ValueError saying which rows exist."""
        L = self.n_layers
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= L:
            raise ValueError(f"layer {row!r} is out of range for this tuned lens: rows are 0..{L} (0..{L - 1}: "
                             f"resid_pre of that block; {L}: the residual after the last block)")

    def translate(self, h: torch.Tensor, row: int) -> torch.Tensor:
        """``W_row h + b_row`` for residual vectors ``h`` [..., d_model], computed in float32 and
        returned in ``h``'s dtype (identity translators return ``h`` unchanged)."""
        self.check_row(row)
        if h.shape[-1] != self.d_model:
            raise ValueError(f"residual vectors have width {h.shape[-1]}, this lens expects d_model {self.d_model} "
                             f"(it was trained on {self.facts.get('name')!r})")
        w, b = self.weight[row], self.bias[row]
        return (h.float() @ w.T + b).to(h.dtype)

    def check_model(self, model) -> None:
        """Refuse a model other than the one the lens was trained on (shapes, unembedding norm)."""
        got, want = model_facts(model), self.facts
        trained = want.get("name")
        for key in ("n_layers", "d_model", "d_vocab"):
            if got[key] != want[key]:
                raise ValueError(f"this tuned lens was trained on {trained!r} ({key} {want[key]}), but model "
                                 f"{got['name']!r} has {key} {got[key]}; load the lens with the model it was "
                                 f"trained on, or train one for this model (`circuitlab lens train`)")
        a, b = got["unembed_norm"], want["unembed_norm"]
        if abs(a - b) > UNEMBED_RTOL * max(abs(b), 1e-12):
            raise ValueError(f"this tuned lens was trained on {trained!r}, whose unembedding differs from model "
                             f"{got['name']!r}'s (norm {b:.6g} vs {a:.6g}): another checkpoint or model of the "
                             f"same shape. Use the model it was trained on, or train a lens for this one")

    # -------------------------------------------------------------- files

    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``folder/lens.safetensors`` and ``folder/lens.json`` together (all or nothing)."""
        from safetensors.torch import save_file

        from circuitlab.io import atomic_folder, format_tag

        tensors = {"weight": torch.stack([w.detach().float().cpu() for w in self.weight]).contiguous(),
                   "bias": torch.stack([b.detach().float().cpu() for b in self.bias]).contiguous()}
        info = {"format": format_tag(KIND), "model": self.facts,
                "config": asdict(self.config) if self.config is not None else None, "stats": self.stats}
        with atomic_folder(folder) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        return Path(folder)

    @classmethod
    def load(cls, folder: Union[str, Path], model=None) -> "TunedLens":
        """Read a saved lens; with ``model``, refuse it unless it was trained on that model, and
        move it to the model's device."""
        from safetensors.torch import load_file

        from circuitlab.io import check_format

        folder = Path(folder)
        info_path, weights_path = folder / INFO_FILE, folder / WEIGHTS_FILE
        if not folder.is_dir():
            raise FileNotFoundError(f"no tuned lens folder {folder} (train one with `circuitlab lens train ... "
                                    f"--out {folder}`)")
        for p in (info_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"{folder} is not a tuned lens folder: {p.name} is missing")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        check_format(info, KIND, info_path, "tuned lens")
        cfg = TunedLensConfig(**info["config"]) if info.get("config") else None
        lens = cls(info["model"], cfg, info.get("stats"))
        t = load_file(str(weights_path))
        L, d = lens.n_layers, lens.d_model
        want = {"weight": (L + 1, d, d), "bias": (L + 1, d)}
        for key, shape in want.items():
            if key not in t or tuple(t[key].shape) != shape:
                got = tuple(t[key].shape) if key in t else "missing"
                raise ValueError(f"{weights_path}: tensor {key!r} is {got}, expected {shape} for a lens of "
                                 f"{L} layers and d_model {d}; the files do not belong together")
        with torch.no_grad():
            for r in range(L + 1):
                lens.weight[r].copy_(t["weight"][r])
                lens.bias[r].copy_(t["bias"][r])
        if model is not None:
            lens.check_model(model)
            lens.to(model.device)
        return lens


# ------------------------------------------------------------------ batches


def training_batches(model, data: str, cfg: TunedLensConfig, start: int = 0
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (tokens, mask) batches training reads, in order from step ``start``, until
    ``cfg.tokens`` positions; deterministic in the source and ``cfg.seed`` (another library can
    train on the same ones)."""
    from circuitlab.data import documents, pad_documents

    seen, step = 0, start
    while seen < cfg.tokens:
        docs = documents(data, cfg.seed * 1_000_000 + step, cfg.batch_docs, cfg.ctx_len)
        toks, lengths = pad_documents(model.tokenizer, docs, cfg.ctx_len)
        mask = torch.arange(toks.shape[1])[None] < lengths[:, None]
        mask[:, 0] = False
        n = int(mask.sum())
        if n == 0:
            raise ValueError(f"data source {data!r} gave {cfg.batch_docs} documents with no token after BOS; "
                             "use a source with longer documents")
        seen += n
        step += 1
        yield toks, mask


def heldout_batches(model, data: str, n_docs: int, ctx_len: int, batch_docs: int = 32
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Held-out documents of ``data`` (never trained on) as (tokens, mask) batches."""
    from circuitlab.data import heldout, pad_documents

    docs = heldout(data, n_docs, ctx_len=ctx_len)
    for i in range(0, len(docs), batch_docs):
        toks, lengths = pad_documents(model.tokenizer, docs[i:i + batch_docs], ctx_len)
        mask = torch.arange(toks.shape[1])[None] < lengths[:, None]
        mask[:, 0] = False
        yield toks, mask


def _residuals(model, toks: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[N, d_model] residual of every row at the masked positions (engine capture, no graph)."""
    names = row_names(model.n_layers)
    c = capture(model, toks.to(model.device), names)
    m = mask.to(model.device)
    return [c[n][m] for n in names]


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


# ------------------------------------------------------------------ training


def _base_lr(cfg: TunedLensConfig) -> float:
    return cfg.lr * (1 - cfg.momentum) if cfg.optimizer == "sgd" else cfg.lr


def _optimizer(cfg: TunedLensConfig, params: list) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=_base_lr(cfg), momentum=cfg.momentum, nesterov=True)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), eps=cfg.adam_eps)


def train_tuned_lens(model, data: str = "zoo", cfg: Optional[TunedLensConfig] = None,
                     lens: Optional[TunedLens] = None, progress: bool = False) -> TunedLens:
    """Train (or continue training) a tuned lens on ``model``'s activations over source ``data``.

    Each step captures every row's residual for ``cfg.batch_docs`` documents, and for each row
    takes a gradient of the mean KL(final || translated row) over the batch's positions; the
    optimiser (``cfg.optimizer``) then updates all translators. The model's weights are never
    changed (gradients are taken for the translators only). Continuing a trained ``lens`` reads
    the documents after those it was trained on (its ``stats['steps']``)."""
    from circuitlab.api import exclusive
    from circuitlab.data import check

    cfg = cfg or TunedLensConfig()
    cfg.check()
    check(data)
    start = 0
    if lens is None:
        lens = TunedLens.for_model(model, cfg)
    else:
        start = int(lens.stats.get("steps", 0))
        lens.check_model(model)
        lens.config = cfg
    lens.to(model.device)
    params = [*lens.weight, *lens.bias]
    opt = _optimizer(cfg, params)
    L = model.n_layers
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.tokens, unit="tok", desc="tuned lens", dynamic_ncols=True)
    seen, steps, recent = 0, 0, torch.zeros(L + 1, dtype=torch.float64)
    with exclusive(model):
        for toks, mask in training_batches(model, data, cfg, start):
            for g in opt.param_groups:
                g["lr"] = _base_lr(cfg) * max(0.0, 1.0 - seen / cfg.tokens)
            resid = _residuals(model, toks, mask)
            n = resid[0].shape[0]
            grads = [torch.zeros_like(p) for p in params]
            step_kl = torch.zeros(L + 1, dtype=torch.float64)
            for lo in range(0, n, cfg.chunk_tokens):
                hi = min(n, lo + cfg.chunk_tokens)
                with torch.no_grad():
                    logp = torch.log_softmax(final_logits(model, resid[L][lo:hi]).float(), -1)
                for r in range(L + 1):
                    with torch.enable_grad():
                        logq = torch.log_softmax(final_logits(model, lens.translate(resid[r][lo:hi], r)).float(), -1)
                        loss = _kl(logp, logq).sum() / n
                        gw, gb = torch.autograd.grad(loss, [lens.weight[r], lens.bias[r]])
                    grads[r] += gw
                    grads[L + 1 + r] += gb
                    step_kl[r] += float(loss.detach())
            if cfg.optimizer == "sgd":  # decay toward the identity (the logit lens), then clip as the paper
                with torch.no_grad():
                    for r in range(L + 1):
                        eye = torch.eye(lens.d_model, device=grads[r].device)
                        grads[r] += cfg.weight_decay * (lens.weight[r] - eye)
                        grads[L + 1 + r] += cfg.weight_decay * lens.bias[r]
            for p, g in zip(params, grads):
                p.grad = g
            if cfg.optimizer == "sgd":
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seen += n
            steps += 1
            recent = step_kl if steps == 1 else 0.9 * recent + 0.1 * step_kl
            if bar is not None:
                bar.update(min(n, bar.total - bar.n))
                bar.set_postfix(kl_first=f"{recent[0]:.3f}", kl_mean=f"{recent[:L].mean():.3f}")
    if bar is not None:
        bar.close()
    lens.stats.update({"data": data, "tokens_seen": seen + int(lens.stats.get("tokens_seen", 0)),
                       "steps": steps + int(lens.stats.get("steps", 0)),
                       "train_kl_last": [round(float(v), 6) for v in recent]})
    return lens


# ------------------------------------------------------------------ reading


@dataclass
class LensDepth:
    """Mean KL(final || row) by depth for the logit lens and a tuned lens, on the same positions."""

    layers: list[str]
    """Row labels (``L0.resid_pre`` .. ``L{n-1}.resid_post``)."""
    logit_kl: torch.Tensor
    """[rows] mean KL of the logit lens, in nats."""
    tuned_kl: torch.Tensor
    """[rows] mean KL of the tuned lens, in nats."""
    positions: int
    """How many positions were averaged over."""
    source: str = ""
    """What they came from (a data source, or a prompt)."""
    extra: dict = field(default_factory=dict)
    """Further curves by name ({label: [rows] KL}), drawn beside the two lenses."""

    def to_dict(self) -> dict:
        return {"layers": self.layers, "logit_kl": [float(v) for v in self.logit_kl],
                "tuned_kl": [float(v) for v in self.tuned_kl], "positions": self.positions, "source": self.source,
                **({"extra": {k: [float(v) for v in vals] for k, vals in self.extra.items()}} if self.extra else {})}

    def figure(self, title: Optional[str] = None):
        """KL to the final layer by depth: logit lens against tuned lens (lower is closer)."""
        import plotly.graph_objects as go

        from circuitlab.webpage import plot_text

        fig = go.Figure()
        curves = {"logit lens": self.logit_kl, "tuned lens": self.tuned_kl,
                  **{k: torch.as_tensor(v) for k, v in self.extra.items()}}
        for name, vals in curves.items():
            fig.add_trace(go.Scatter(x=self.layers, y=[float(v) for v in vals], mode="lines+markers",
                                     name=plot_text(name)))
        src = f" ({self.source}, {self.positions} positions)" if self.source else ""
        fig.update_layout(title=plot_text(title or f"KL(final || layer) by depth{src}"),
                          xaxis_title="layer", yaxis_title="KL to the final layer (nats)")
        return fig


def lens_depth(model, lens: TunedLens, data: str = "zoo", n_docs: int = 64, ctx_len: int = 64,
               batch_docs: int = 32) -> LensDepth:
    """Mean KL(final || row) of the logit lens and of ``lens`` on held-out documents of ``data``."""
    from circuitlab.api import exclusive
    from circuitlab.validate import check_positive_int

    check_positive_int("n_docs", n_docs)
    lens.check_model(model)
    lens.to(model.device)
    L = model.n_layers
    logit, tuned, total = torch.zeros(L + 1, dtype=torch.float64), torch.zeros(L + 1, dtype=torch.float64), 0
    with exclusive(model), torch.no_grad():
        for toks, mask in heldout_batches(model, data, n_docs, ctx_len, batch_docs):
            resid = _residuals(model, toks, mask)
            n = resid[0].shape[0]
            for lo in range(0, n, 2048):
                sl = slice(lo, min(n, lo + 2048))
                logp = torch.log_softmax(final_logits(model, resid[L][sl]).float(), -1)
                for r in range(L + 1):
                    plain = torch.log_softmax(final_logits(model, resid[r][sl]).float(), -1)
                    tl = torch.log_softmax(final_logits(model, lens.translate(resid[r][sl], r)).float(), -1)
                    logit[r] += float(_kl(logp, plain).sum())
                    tuned[r] += float(_kl(logp, tl).sum())
            total += n
    if total == 0:
        raise ValueError(f"the held-out documents of {data!r} have no tokens after BOS")
    return LensDepth(lens.layers, (logit / total).float(), (tuned / total).float(), total, data)


class TunedLensTopK(LogitLensTopK):
    """:class:`LogitLensTopK` read through a tuned lens (each row translated first)."""

    def figure(self, title: Optional[str] = None):
        return topk_figure(self, title or "tuned lens: top token per layer and position")


def tuned_lens_topk(model, lens: TunedLens, prompt: Union[str, torch.Tensor], k: int = 10) -> TunedLensTopK:
    """Top-k tokens and KL(final || row) at every row and position of ``prompt``, each row's
    residual translated by ``lens`` before the final norm and unembedding. With an untrained
    lens this equals ``logit_lens_topk`` exactly."""
    from circuitlab.api import exclusive
    from circuitlab.validate import check_positive_int

    check_positive_int("k", k)
    lens.check_model(model)
    lens.to(model.device)
    toks = prompt_tokens(model, prompt)
    k = min(k, model.d_vocab)
    L = model.n_layers
    names = row_names(L)
    with exclusive(model), torch.no_grad():
        c = capture(model, toks[None], names)
        final = torch.log_softmax(final_logits(model, c[names[-1]][0]).float(), -1)
        ids, probs, kls = [], [], []
        for r, n in enumerate(names):
            logp = torch.log_softmax(final_logits(model, lens.translate(c[n][0], r)).float(), -1)
            p, i = logp.exp().topk(k, dim=-1)
            ids.append(i)
            probs.append(p)
            kls.append(_kl(final, logp).clamp_min(0))
    ids_t = torch.stack(ids).cpu()
    uniq = ids_t.unique().tolist()
    text = dict(zip(uniq, decode_each(model.tokenizer, uniq)))
    top_tokens = [[[text[i] for i in row] for row in layer] for layer in ids_t.tolist()]
    return TunedLensTopK(row_labels(L), decode_each(model.tokenizer, toks.tolist()), ids_t, top_tokens,
                         torch.stack(probs).cpu(), torch.stack(kls).cpu())


def prompt_depth(logit: LogitLensTopK, tuned: LogitLensTopK, source: str = "prompt") -> LensDepth:
    """KL by depth on one prompt: each row's KL averaged over the positions after BOS."""
    T = logit.kl.shape[1]
    cols = slice(1, None) if T > 1 else slice(None)
    return LensDepth(list(logit.layers), logit.kl[:, cols].mean(1), tuned.kl[:, cols].mean(1),
                     max(T - 1, 1), source)
