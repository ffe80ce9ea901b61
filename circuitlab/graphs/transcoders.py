"""Per-layer transcoders as attribution graphs need them: plain tensors and two hook names.

Why a protocol of our own: graphs only need the encoder column of a feature (what it reads),
its decoder row (what it writes), the bias terms and the activation rule. Anything with SAE Lens
names (``W_enc [d_in, n]``, ``b_enc [n]``, ``W_dec [n, d]``, ``b_dec [d]``, optional
``threshold`` and ``W_skip``) adapts: circuitlab.sparse coders (duck-typed, the package is
optional), SAE Lens folders on disk, or coders fitted here for tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

KINDS = ("relu", "jumprelu", "topk")
READ_HOOK = "blocks.{layer}.ln2.hook_out"
"""Default read site: the MLP's input (after its norm)."""
WRITE_HOOK = "blocks.{layer}.hook_mlp_out"
"""Write site: the MLP's output joining the residual stream."""


@dataclass
class Transcoder:
    """One layer's transcoder: ``a = act((x - b_pre) @ W_enc + b_enc)``, ``y = a @ W_dec + b_dec (+ x @ W_skip)``."""

    layer: int
    """Block whose MLP it replaces."""
    W_enc: torch.Tensor
    """[d_in, n_features]."""
    b_enc: torch.Tensor
    """[n_features]."""
    W_dec: torch.Tensor
    """[n_features, d_out]."""
    b_dec: torch.Tensor
    """[d_out]."""
    kind: str = "relu"
    """Activation: relu, jumprelu (``threshold``) or topk (``k``)."""
    threshold: Optional[torch.Tensor] = None
    """[n_features] JumpReLU thresholds."""
    k: Optional[int] = None
    """TopK: latents kept per token."""
    b_pre: Optional[torch.Tensor] = None
    """[d_in] subtracted from the input before encoding (SAE Lens ``apply_b_dec_to_input``)."""
    W_skip: Optional[torch.Tensor] = None
    """[d_in, d_out] linear skip connection (skip transcoders)."""
    hook_in: str = ""
    """Read site (default ``blocks.{layer}.ln2.hook_out``; ``hook_resid_mid`` also works)."""
    hook_out: str = ""
    """Write site (``blocks.{layer}.hook_mlp_out``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown transcoder activation {self.kind!r}; choose from {KINDS}")
        if self.kind == "jumprelu" and self.threshold is None:
            raise ValueError("a JumpReLU transcoder needs a threshold")
        if self.kind == "topk" and not self.k:
            raise ValueError("a TopK transcoder needs k")
        if self.W_enc.shape[1] != self.W_dec.shape[0] or self.b_enc.shape[0] != self.W_enc.shape[1]:
            raise ValueError(f"layer {self.layer}: inconsistent transcoder shapes W_enc {tuple(self.W_enc.shape)}, "
                             f"b_enc {tuple(self.b_enc.shape)}, W_dec {tuple(self.W_dec.shape)}")
        self.hook_in = self.hook_in or READ_HOOK.format(layer=self.layer)
        self.hook_out = self.hook_out or WRITE_HOOK.format(layer=self.layer)
        if self.hook_out != WRITE_HOOK.format(layer=self.layer):
            raise ValueError(f"layer {self.layer}: transcoders must write {WRITE_HOOK.format(layer=self.layer)}, "
                             f"got {self.hook_out}")

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    def to(self, device=None, dtype=None) -> "Transcoder":
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_pre", "W_skip"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device=device, dtype=dtype or t.dtype))
        return self

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [..., n_features]."""
        if self.b_pre is not None:
            x = x - self.b_pre
        return x @ self.W_enc + self.b_enc

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.relu(h)
        if self.kind == "jumprelu":
            a = a * (h > self.threshold).to(a.dtype)
        elif self.kind == "topk":
            vals, idx = h.topk(self.k, dim=-1)
            a = torch.zeros_like(h).scatter(-1, idx, torch.relu(vals))
        return a

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre(x))

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The skip connection's output (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros(*x.shape[:-1], self.W_dec.shape[1], dtype=x.dtype, device=x.device)
        return x @ self.W_skip

    def decode(self, a: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = a @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y = y + x @ self.W_skip
        return y


@dataclass
class TranscoderSet:
    """One transcoder per layer, ordered by layer."""

    layers: list[Transcoder]
    name: str = "transcoders"
    """Identifier written to exported graphs (Neuronpedia's ``scan``)."""
    sources: list[str] = field(default_factory=list)
    """Where each layer's transcoder came from (folders), for metadata."""

    def __post_init__(self) -> None:
        self.layers = sorted(self.layers, key=lambda t: t.layer)
        if [t.layer for t in self.layers] != list(range(len(self.layers))):
            raise ValueError(f"need one transcoder for each layer 0..L-1, got layers {[t.layer for t in self.layers]}")

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Transcoder:
        return self.layers[i]

    def check(self, model) -> None:
        """Raise unless the set covers every layer of ``model`` with matching widths."""
        if len(self.layers) != model.n_layers:
            raise ValueError(f"{len(self.layers)} transcoders for a {model.n_layers}-layer model")
        for t in self.layers:
            if t.W_dec.shape[1] != model.d_model:
                raise ValueError(f"layer {t.layer}: decoder width {t.W_dec.shape[1]} != d_model {model.d_model}")

    def to(self, device=None, dtype=None) -> "TranscoderSet":
        for t in self.layers:
            t.to(device, dtype)
        return self


def _t(x) -> Optional[torch.Tensor]:
    return None if x is None else x.detach().clone()


def from_coder(coder, layer: Optional[int] = None) -> Transcoder:
    """Adapt any SAE-Lens-shaped transcoder object (e.g. a circuitlab.sparse coder).

    Reads attributes ``W_enc, b_enc, W_dec, b_dec`` and, where present, ``threshold`` (or
    ``log_threshold``), ``W_skip`` ([d_in, d_out]), ``cfg.arch`` / ``cfg.k`` / ``cfg.hooks_in`` /
    ``cfg.hooks_out`` / ``cfg.b_dec_in``."""
    if isinstance(coder, Transcoder):
        return coder
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if getattr(coder, name, None) is None:
            raise TypeError(f"{type(coder).__name__} is not a transcoder: no {name}")
    cfg = getattr(coder, "cfg", None)
    hooks_in = tuple(getattr(cfg, "hooks_in", ()) or ())
    hooks_out = tuple(getattr(cfg, "hooks_out", ()) or ())
    if layer is None:
        for h in hooks_out + hooks_in:
            m = re.match(r"blocks\.(\d+)\.", h)
            if m:
                layer = int(m.group(1))
                break
    if layer is None:
        raise ValueError("cannot tell the transcoder's layer: pass layer=")
    arch = getattr(cfg, "arch", "relu") or "relu"
    kind = {"batchtopk": "jumprelu"}.get(arch, arch)
    thr = getattr(coder, "threshold", None)
    if callable(thr):
        thr = thr()
    if thr is None and getattr(coder, "log_threshold", None) is not None:
        thr = coder.log_threshold.exp()
    if kind not in KINDS:
        kind = "jumprelu" if thr is not None else "relu"
    b_pre = coder.b_dec if bool(getattr(cfg, "b_dec_in", False)) else None
    skip = getattr(coder, "W_skip", None)
    return Transcoder(layer=layer, W_enc=_t(coder.W_enc), b_enc=_t(coder.b_enc), W_dec=_t(coder.W_dec),
                      b_dec=_t(coder.b_dec), kind=kind, threshold=_t(thr) if kind == "jumprelu" else None,
                      k=getattr(cfg, "k", None) if kind == "topk" else None, b_pre=_t(b_pre), W_skip=_t(skip),
                      hook_in=hooks_in[0] if hooks_in else "", hook_out=hooks_out[0] if hooks_out else "")


def as_transcoders(obj, name: str = "transcoders") -> TranscoderSet:
    """A TranscoderSet from a set, a list of coders / Transcoders, or a folder path."""
    if isinstance(obj, TranscoderSet):
        return obj
    if isinstance(obj, (str, Path)):
        return load_transcoders(obj)
    return TranscoderSet([from_coder(c) for c in obj], name=name)


# --------------------------------------------------------------------------- files
_LENS_KIND = {"standard": "relu", "transcoder": "relu", "skip_transcoder": "relu", "topk": "topk",
              "jumprelu": "jumprelu", "jumprelu_transcoder": "jumprelu", "jumprelu_skip_transcoder": "jumprelu",
              "circuitlab_topk_transcoder": "topk", "circuitlab_relu_transcoder": "relu",
              "circuitlab_jumprelu_transcoder": "jumprelu", "circuitlab_batchtopk_transcoder": "jumprelu"}


def load_transcoder(folder: str | Path, layer: Optional[int] = None) -> Transcoder:
    """One SAE Lens layout folder (``cfg.json`` + ``sae_weights.safetensors``) as a Transcoder."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not cfg_path.exists() or not w_path.exists():
        raise FileNotFoundError(f"{folder} is not a transcoder folder: expected cfg.json and sae_weights.safetensors")
    cfg = json.loads(cfg_path.read_text())
    t = load_file(str(w_path))
    ours = cfg.get("circuitlab") or {}
    meta = cfg.get("metadata") or {}
    arch = ours.get("arch") or cfg.get("architecture", "standard")
    kind = {"batchtopk": "jumprelu"}.get(arch, _LENS_KIND.get(arch, arch))
    if kind not in KINDS:
        raise ValueError(f"{folder}: architecture {arch!r} is not supported; supported: {sorted(_LENS_KIND)}")
    hook_in = (ours.get("hooks_in") or [None])[0] or meta.get("hook_name") or cfg.get("hook_name") or ""
    hook_out = (ours.get("hooks_out") or [None])[0] or meta.get("hook_name_out") or ""
    if layer is None:
        m = re.search(r"blocks\.(\d+)\.", hook_out or hook_in) or re.search(r"(\d+)$", folder.name)
        if not m:
            raise ValueError(f"{folder}: cannot tell the layer (no blocks.L hook in cfg.json, no number in the name)")
        layer = int(m.group(1))
    apply_pre = cfg.get("apply_b_dec_to_input", False)
    if ours.get("apply_b_dec_to_input") is not None:
        apply_pre = ours["apply_b_dec_to_input"]
    skip = t.get("W_skip")
    return Transcoder(layer=layer, W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"], kind=kind,
                      threshold=t.get("threshold") if kind == "jumprelu" else None,
                      k=int(ours.get("k") or cfg.get("k") or 0) or None if kind == "topk" else None,
                      b_pre=t["b_dec"].clone() if apply_pre else None,
                      W_skip=None if skip is None else skip.t().contiguous(),  # saved [d_out, d_in]
                      hook_in=hook_in, hook_out=hook_out)


def _writes_mlp_out(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
    except (OSError, ValueError):
        return False
    ours = cfg.get("circuitlab") or {}
    out = (ours.get("hooks_out") or [None])[0] or (cfg.get("metadata") or {}).get("hook_name_out") or ""
    return out.endswith("hook_mlp_out")


def load_transcoders(folder: str | Path, name: Optional[str] = None) -> TranscoderSet:
    """Every per-layer transcoder folder under ``folder`` (one level down, or ``folder`` itself);
    coders that do not write the MLP output (SAEs in the same folder) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no transcoder folder at {folder}")
    subs = sorted(p for p in folder.iterdir() if (p / "cfg.json").exists())
    if (folder / "cfg.json").exists():
        subs = [folder]
    if not subs:
        raise FileNotFoundError(f"{folder}: no per-layer transcoder folders (cfg.json + sae_weights.safetensors)")
    subs = [p for p in subs if _writes_mlp_out(p)]  # skip SAEs and other coders sharing the folder
    if not subs:
        raise FileNotFoundError(f"{folder}: no transcoder writing blocks.L.hook_mlp_out")
    tcs = [load_transcoder(p) for p in subs]
    return TranscoderSet(tcs, name=name or folder.name, sources=[str(p) for p in subs])


def save_transcoders(ts: TranscoderSet, folder: str | Path) -> Path:
    """Write each layer in the SAE Lens layout (``folder/layer_{l}/``), atomically."""
    from safetensors.torch import save_file

    from circuitlab.result import atomic_write

    folder = Path(folder)
    for t in ts.layers:
        sub = folder / f"layer_{t.layer}"
        sub.mkdir(parents=True, exist_ok=True)
        w = {"W_enc": t.W_enc, "b_enc": t.b_enc, "W_dec": t.W_dec, "b_dec": t.b_dec}
        if t.threshold is not None:
            w["threshold"] = t.threshold
        if t.W_skip is not None:
            w["W_skip"] = t.W_skip.t()
        w = {k: v.detach().float().contiguous().cpu() for k, v in w.items()}
        arch = {"relu": "skip_transcoder" if t.W_skip is not None else "transcoder",
                "jumprelu": "jumprelu_skip_transcoder" if t.W_skip is not None else "jumprelu_transcoder",
                "topk": "circuitlab_topk_transcoder"}[t.kind]
        cfg = {"architecture": arch, "d_in": t.W_enc.shape[0], "d_sae": t.n_features, "d_out": t.W_dec.shape[1],
               "apply_b_dec_to_input": t.b_pre is not None, "normalize_activations": "none",
               "metadata": {"hook_name": t.hook_in, "hook_name_out": t.hook_out}}
        if t.k:
            cfg["k"] = t.k
        atomic_write(sub / "sae_weights.safetensors", lambda p, w=w: save_file(w, p))
        atomic_write(sub / "cfg.json", lambda p, cfg=cfg: Path(p).write_text(json.dumps(cfg, indent=1)))
    return folder


def find_transcoders(model_name: str, roots: Sequence[str | Path] = ()) -> Optional[Path]:
    """A folder of trained transcoders for a zoo model, or None.

    Looks in ``$CIRCUITLAB_TRANSCODERS``, circuitlab.sparse's ``pretrained/{name}`` (where
    ``circuitlab train saes/configs/{name}.toml`` writes), ``saes/{name}/transcoders``,
    ``saes/{name}-transcoders``, ``saes/transcoders/{name}``, ``saes/{name}`` and the model
    folder's ``transcoders/``."""
    import os

    repo = Path(__file__).resolve().parents[2]
    short = Path(model_name).name
    cands = [Path(r) for r in roots]
    if os.environ.get("CIRCUITLAB_TRANSCODERS"):
        cands.append(Path(os.environ["CIRCUITLAB_TRANSCODERS"]))
    cands.append(repo / "circuitlab" / "sparse" / "pretrained" / short)
    for base in (repo / "saes", Path.cwd() / "saes"):
        cands += [base / short / "transcoders", base / f"{short}-transcoders", base / "transcoders" / short, base / short]
    if Path(model_name).is_dir():
        cands.append(Path(model_name) / "transcoders")
    try:
        from circuitlab.zoo import MODELS_DIR

        cands.append(MODELS_DIR / short / "transcoders")
    except ImportError:
        pass
    for c in cands:
        if c.is_dir():
            try:
                load_transcoders(c)
                return c
            except (FileNotFoundError, ValueError, KeyError):
                continue
    return None
