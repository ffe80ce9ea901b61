"""Training several sparse coders from one activation stream, resumable and data-parallel.

Why one stream for many coders: activations cost a forward pass of the model; an L0 sweep
(or an SAE and a transcoder on the same layer) reuses every batch. Why a step-indexed
loader and full checkpoints (weights, Adam moments, dead counters, loader position): a run
killed at any point and resumed produces the same weights as an uninterrupted run, which
the tests check bit for bit. Checkpoints are written atomically and the pointer to the latest
one moves last, so a crash (or a NaN, which stops training before it is saved) always leaves
the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from einops import rearrange

from circuitlab.io import atomic_write
from circuitlab.sparse.base import Comm, LossContext, SparseCoder, spread
from circuitlab.sparse.store import Columns, Rows, ShardLoader


@dataclass
class TrainConfig:
    """Optimisation settings shared by every coder of a run."""

    total_tokens: int = 2_000_000
    """Training tokens (global, across ranks)."""
    batch_size: int = 4096
    """Tokens per optimizer step (global, across ranks)."""
    lr: Optional[float] = None
    """Adam learning rate; None: 8e-4 / sqrt(d_sae / 2^14) per coder (see ``default_lr``)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    warmup_fraction: float = 0.02
    """Linear learning-rate warm-up over this fraction of the steps."""
    decay_fraction: float = 0.2
    """Linear decay to zero over the last fraction of the steps."""
    sparsity_warmup_fraction: float = 0.05
    """Linear warm-up of the L1 / L0 coefficient over this fraction of the steps."""
    dead_window_tokens: Optional[int] = None
    """A latent is dead after this many tokens without firing; None: min(10M, total/5)."""
    dense_threshold: float = 0.1
    """Firing frequency above which a latent counts as dense (reported, not penalised)."""
    b_dec_init: str = "geometric_median"
    """Decoder bias initialisation: geometric_median, mean, or zeros."""
    init_tokens: int = 8192
    """Tokens used to estimate the normalisation, the geometric median and the encoder scale."""
    fit_encoder_scale: bool = True
    """TopK / BatchTopK autoencoders: scale the initial encoder (the decoder's transpose) by the
    least-squares factor of the initial reconstruction on the init sample. With unit decoder rows
    the transpose overshoots (k latents each of about the input's projection), and the first
    steps are spent shrinking it; on gpt2-zoo layer-2 residuals (d_sae 1024, k 32) the fitted
    factor was 0.45 and held-out FVU went 0.137 -> 0.061 after 164k tokens, 0.036 -> 0.019 after
    820k. Exact because these activations are positively homogeneous while b_enc is zero (a coder
    whose b_enc was set before training is left alone)."""
    normalize: bool = True
    """Scale inputs to E||x|| = sqrt(d) (folded into the weights when saving)."""
    token_weighting: str = "none"
    """"none": plain MSE. "resid_norm": weight each token's squared error by 1/||r||^2 (batch
    mean 1), r the residual stream right after the coder's output (the input of a residual SAE;
    input + output of a resid_mid -> mlp_out transcoder). The final norm divides every write by
    the residual's norm, so an error of fixed size matters less where the residual is large;
    where norms are heavy-tailed, plain MSE spends the coder on those tokens (llama-zoo layer 3:
    the 1% largest errors are 46% of the squared error and 0.007% of the spliced KL)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (0: only at the end)."""
    log_every: int = 20
    """Steps between history records."""
    progress: bool = True
    """Show a tqdm bar with tokens/s, L0 and FVU."""

    def __post_init__(self) -> None:
        from circuitlab.sparse import validate as v

        w = "[train]"
        v.integer(w, "total_tokens", self.total_tokens, 1)
        v.integer(w, "batch_size", self.batch_size, 1)
        if self.lr is not None:
            v.number(w, "lr", self.lr, 0.0, lo_open=True)
        v.number(w, "beta1", self.beta1, 0.0, 1.0, hi_open=True)
        v.number(w, "beta2", self.beta2, 0.0, 1.0, hi_open=True)
        v.number(w, "warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        v.number(w, "decay_fraction", self.decay_fraction, 0.0, 1.0)
        v.number(w, "sparsity_warmup_fraction", self.sparsity_warmup_fraction, 0.0, 1.0)
        if self.dead_window_tokens is not None:
            v.integer(w, "dead_window_tokens", self.dead_window_tokens, 1)
        v.number(w, "dense_threshold", self.dense_threshold, 0.0, 1.0, lo_open=True)
        v.choice(w, "b_dec_init", self.b_dec_init, ("geometric_median", "mean", "zeros"))
        v.integer(w, "init_tokens", self.init_tokens, 1)
        v.choice(w, "token_weighting", self.token_weighting, ("none", "resid_norm"))
        v.integer(w, "checkpoint_every", self.checkpoint_every, 0)
        v.integer(w, "log_every", self.log_every, 1)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class ConfigMismatch(ValueError):
    """A saved training state was written by a run with a different configuration."""


RESUME_MODES = ("auto", "resume", "restart")
"""auto: resume a saved state only when its configuration equals this run's; resume: continue
it also when only safe settings changed (learning rate, schedule, total_tokens raised);
restart: discard it and train from scratch."""

UNCHECKED_TRAIN_KEYS = ("progress", "checkpoint_every", "log_every")
"""Train settings that change neither the coders nor the data: never compared."""

SAFE_TRAIN_KEYS = ("lr", "beta1", "beta2", "warmup_fraction", "decay_fraction", "sparsity_warmup_fraction",
                   "dead_window_tokens", "dense_threshold", "token_weighting", "total_tokens")
"""Train settings a saved state can continue under (``resume`` mode): they change the
optimisation from here on, not what the saved tensors mean. Everything else (the coders'
shapes and architecture, the data, the batch size, the initialisation) needs ``restart``."""


def code_version() -> dict:
    """Versions recorded with a training state (a difference is reported, not refused)."""
    import circuitlab

    return {"circuitlab": getattr(circuitlab, "__version__", "unknown"), "torch": torch.__version__}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0) or a == b
        except (TypeError, ValueError):
            return False
    return a == b


_ABSENT = "<absent>"


def config_diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every flattened key whose value differs."""
    fo, fn = _flatten(old), _flatten(new)
    return [(k, fo.get(k, _ABSENT), fn.get(k, _ABSENT)) for k in sorted(set(fo) | set(fn))
            if not _same(fo.get(k, _ABSENT), fn.get(k, _ABSENT))]


def _fmt(v) -> str:
    return list(v).__repr__() if isinstance(v, tuple) else (v if v is _ABSENT else repr(v))


def default_lr(coder: SparseCoder) -> float:
    """8e-4 / sqrt(d_sae / 2^14): the 1/sqrt(d_sae) scaling of Gao et al. (2024), at 4x their
    constant. Our inputs are normalised to E||x|| = sqrt(d_in), and on that scale their constant
    learns slowly: held-out FVU after 820k tokens on gpt2-zoo activations (d_sae 1024) was 0.092
    at 1x, 0.036 at 4x, 0.023 at 8x; on d_in 768 synthetic data 0.166 at 1x, 0.129 at 4x and 8x."""
    return 8e-4 / math.sqrt(coder.d_sae / 2**14)


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    X = x.double()
    m = X.mean(0)
    for _ in range(iters):
        w = 1.0 / (X - m).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * X).sum(0) / w.sum()
        done = (new - m).norm() <= tol * m.norm().clamp_min(1.0)
        m = new
        if done:
            break
    return m.to(x.dtype)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_fraction * total))
    f = min(1.0, (step + 1) / warm)
    decay_start = int((1 - cfg.decay_fraction) * total)
    if cfg.decay_fraction > 0 and step >= decay_start:
        f *= max(0.0, (total - step) / max(1, total - decay_start))
    return f


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """||y - y_hat||^2 / ||y - mean(y)||^2 (variance around the mean, summed over the batch)."""
    return (y - y_hat).pow(2).sum() / spread(y).clamp_min(1e-12)


def _adam(coder: SparseCoder, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused where torch has a fused kernel for the parameters' device (CPU, CUDA): on a
    2-core CPU the fused step is ~4x faster than the foreach one (about 4% of a TopK step at
    d_model 768). Same update, same state-dict layout."""
    dev = next(coder.parameters()).device.type
    fused = dev in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
                                           for p in coder.parameters())
    return torch.optim.Adam(coder.parameters(), lr=lr, betas=betas, fused=fused or None)


class Trainer:
    """Trains ``coders`` ({name: coder}) on batches from ``loader``; writes to ``out_dir``."""

    def __init__(self, coders: dict[str, SparseCoder], loader: ShardLoader, cfg: TrainConfig,
                 out_dir: str | Path, comm: Optional[Comm] = None, data: Optional[dict] = None,
                 resume_mode: str = "auto", columns: Optional[dict[str, Columns]] = None):
        """``data``: what else defines the run (model, sites, corpus, ...), recorded with each
        checkpoint and compared on resume with the coders' and train configs; ``resume_mode``:
        one of ``RESUME_MODES``; ``columns``: where each coder's inputs and targets sit when the
        loader serves a shared stream (:func:`circuitlab.sparse.store.shared_spec`)."""
        if resume_mode not in RESUME_MODES:
            raise ValueError(f"resume_mode must be one of {', '.join(RESUME_MODES)}, not {resume_mode!r}")
        self.coders = coders
        self.columns = dict(columns or {})
        self.loader = loader
        self.cfg = cfg
        self.out = Path(out_dir)
        self.comm = comm or Comm()
        self.data = dict(data or {})
        self.resume_mode = resume_mode
        self.total_steps = max(1, cfg.total_tokens // cfg.batch_size)
        self.step = 0
        if cfg.token_weighting not in ("none", "resid_norm"):
            raise ValueError(f"unknown token_weighting {cfg.token_weighting!r}; use 'none' or 'resid_norm'")
        if cfg.token_weighting == "resid_norm":
            for n, c in coders.items():
                cc = c.cfg
                if cc.n_sources != 1 or cc.n_targets_ != 1 or (not cc.autoencoder and cc.d_in != cc.d_out_):
                    raise ValueError(f"coder {n!r}: token_weighting='resid_norm' needs one residual-stream "
                                     "source (an SAE) or a transcoder whose input and output add up to the "
                                     "residual (resid_mid -> mlp_out); use token_weighting='none'")
        self.opts = {n: _adam(c, cfg.lr or default_lr(c), (cfg.beta1, cfg.beta2)) for n, c in coders.items()}
        self.base_lr = {n: cfg.lr or default_lr(c) for n, c in coders.items()}
        self.since_fired = {n: torch.zeros(c.d_sae, dtype=torch.long) for n, c in coders.items()}
        self.fire_count = {n: torch.zeros(c.d_sae, dtype=torch.long) for n, c in coders.items()}
        self.tokens_seen = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        """Wall seconds of the last ``run`` (checkpoint writes included)."""
        self.checkpoint_seconds = 0.0
        """Of those, the seconds spent writing checkpoints."""

    @property
    def dead_window(self) -> int:
        c = self.cfg
        return c.dead_window_tokens or min(10_000_000, max(c.total_tokens // 5, 4 * c.batch_size))

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def initialise(self, sample: Rows) -> None:
        """Normalisation scales and b_dec from a sample (rank 0's values are broadcast)."""
        for n, c in self.coders.items():
            cfg = c.cfg
            rows = self.rows_of(n, sample)
            x = rows.x.float()
            y = x if rows.y is None or cfg.autoencoder else rows.y.float()
            if self.cfg.normalize:
                xs = rearrange(x, "n (source d) -> n source d", source=cfg.n_sources).norm(dim=-1).mean(0)
                c.in_scale.copy_(math.sqrt(cfg.d_in) / xs.clamp_min(1e-12))
                if cfg.autoencoder:
                    c.out_scale.copy_(c.in_scale)
                else:
                    ys = rearrange(y, "n (target d) -> n target d", target=cfg.n_targets_).norm(dim=-1).mean(0)
                    c.out_scale.copy_(math.sqrt(cfg.d_out_) / ys.clamp_min(1e-12))
            ys_ = y * c.out_scale.repeat_interleave(cfg.d_out_)
            if self.cfg.b_dec_init == "geometric_median":
                c.b_dec.copy_(geometric_median(ys_))
            elif self.cfg.b_dec_init == "mean":
                c.b_dec.copy_(ys_.mean(0))
            elif self.cfg.b_dec_init != "zeros":
                raise ValueError(f"unknown b_dec_init {self.cfg.b_dec_init!r}; use geometric_median, mean or zeros")
            if self.cfg.fit_encoder_scale and c.homogeneous_encoder and cfg.autoencoder and not bool(c.b_enc.any()):
                self._fit_encoder_scale(c, x * c.in_scale.repeat_interleave(cfg.d_in))
        if self.comm.world > 1:
            for c in self.coders.values():
                self.comm.broadcast_(list(c.parameters()) + list(c.buffers()))

    @staticmethod
    @torch.no_grad()
    def _fit_encoder_scale(c: SparseCoder, x: torch.Tensor) -> float:
        """Multiply W_enc by s = <r, t> / <r, r>, r the initial reconstruction minus b_dec and t
        the (scaled) input minus b_dec: the s minimising ||s r - t||^2, since latents scale with
        the encoder. Returns s (1.0 when the fit is degenerate and nothing changed)."""
        r = c.loss(x, None, LossContext()).y_hat - c.b_dec
        t = c.flat_in(x) - c.b_dec
        num, den = float((r * t).sum()), float(r.pow(2).sum())
        if not (den > 0 and num > 0 and math.isfinite(num / den)):
            return 1.0
        c.W_enc.mul_(num / den)
        return num / den

    # ------------------------------------------------------------------ checkpoints
    def identity(self) -> dict:
        """Everything that defines this run: train settings, every coder's config, the data."""
        train = {k: v for k, v in asdict(self.cfg).items() if k not in UNCHECKED_TRAIN_KEYS}
        return json.loads(json.dumps({"train": train, "coders": {n: c.cfg.to_dict() for n, c in self.coders.items()},
                                      "data": self.data}))

    def _check_identity(self, info: dict, where: Path) -> None:
        """Refuse (ConfigMismatch) a saved state whose configuration differs from this run's,
        unless ``resume_mode='resume'`` and every difference is safe."""
        import warnings

        old = info.get("identity")
        new = self.identity()
        if old is None:  # states written before configurations were recorded
            old = {"train": {k: v for k, v in info.get("config", {}).items() if k not in UNCHECKED_TRAIN_KEYS}}
            new = {"train": new["train"]}
            warnings.warn(f"the training state in {where} predates recorded configurations: only its train "
                          "settings can be compared; pass --restart (resume_mode='restart') if the coders or "
                          "the data changed", stacklevel=3)
        if info.get("code_version") and info["code_version"] != code_version():
            warnings.warn(f"the training state in {where} was written by {info['code_version']}; this is "
                          f"{code_version()}", stacklevel=3)
        diff = config_diff(old, new)
        if not diff:
            return
        unsafe = [d for d in diff if not self._safe_change(*d, tokens=info.get("tokens", 0))]
        if self.resume_mode == "resume" and not unsafe:
            warnings.warn("resuming a training state written with other settings: " +
                          "; ".join(f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in diff), stacklevel=3)
            return
        lines = [f"  {k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in diff[:30]]
        if len(diff) > 30:
            lines.append(f"  ... and {len(diff) - 30} more")
        if unsafe:
            how = (f"--resume cannot continue it: {', '.join(k for k, _, _ in unsafe[:5])} "
                   f"{'changes' if len(unsafe) == 1 else 'change'} what the saved state means")
        else:
            how = "these changes are safe to continue under: pass --resume to continue the saved state"
        raise ConfigMismatch(
            f"the training state in {where} (step {info.get('step')}, {info.get('tokens')} tokens) was written "
            f"with a different configuration (old -> new):\n" + "\n".join(lines) + "\n"
            f"Pass --restart to discard it and train from scratch ({how}); in Python: "
            "Trainer(..., resume_mode='restart' | 'resume'), train_file(..., resume_mode=...).")

    @staticmethod
    def _safe_change(key: str, old, new, tokens: int) -> bool:
        if not key.startswith("train."):
            return False
        name = key.split(".", 1)[1]
        if name == "total_tokens":
            return isinstance(new, int) and new >= max(tokens, 1)
        return name in SAFE_TRAIN_KEYS

    def clean_temporaries(self) -> list[Path]:
        """Remove temporary files an interrupted (killed) checkpoint write left behind."""
        if self.comm.rank != 0 or not self.ckpt_dir.exists():
            return []
        gone = []
        for p in self.ckpt_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            gone.append(p)
        return gone

    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {}
        for n, c in self.coders.items():
            for k, v in c.state_dict().items():
                t[f"{n}/coder/{k}"] = v
            names = [k for k, _ in c.named_parameters()]
            st = self.opts[n].state_dict()["state"]
            for i, s in st.items():
                for k, v in s.items():
                    t[f"{n}/adam/{names[i]}/{k}"] = torch.as_tensor(v)
            t[f"{n}/since_fired"] = self.since_fired[n]
            t[f"{n}/fire_count"] = self.fire_count[n]
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def save_checkpoint(self) -> Optional[Path]:
        from safetensors.torch import save_file

        states = [self.loader.state_dict()]
        if self.comm.world > 1:
            import torch.distributed as dist

            states = [None] * self.comm.world
            dist.all_gather_object(states, self.loader.state_dict())
        if self.comm.rank != 0:
            return None
        name = f"step_{self.step:08d}.safetensors"
        tensors = self._tensors()
        info = {"step": self.step, "tokens": self.tokens_seen, "file": name, "loaders": states,
                "config": asdict(self.cfg), "identity": self.identity(), "code_version": code_version(),
                "history": self.history}
        # the file carries its own info, so a previous checkpoint can be resumed if the latest is damaged
        atomic_write(self.ckpt_dir / name, lambda p: save_file(tensors, p, metadata={"info": json.dumps(info)}))
        atomic_write(self.ckpt_dir / "latest.json", lambda p: Path(p).write_text(json.dumps(info)))
        for old in sorted(self.ckpt_dir.glob("step_*.safetensors"))[:-2]:  # keep the previous one too
            old.unlink(missing_ok=True)
        return self.ckpt_dir / name

    def discard_state(self) -> None:
        """Delete the saved training state (rank 0; the others wait)."""
        import shutil

        if self.comm.rank == 0 and self.ckpt_dir.exists():
            shutil.rmtree(self.ckpt_dir)
        if self.comm.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def resume(self) -> bool:
        """Load the latest usable checkpoint if there is one; True when resumed.

        The saved configuration is compared first (ConfigMismatch names every difference). A
        checkpoint that cannot be read is reported by name and the previous one is tried."""
        import warnings

        if self.resume_mode == "restart":
            self.discard_state()
            return False
        latest = self.ckpt_dir / "latest.json"
        info = None
        problems = []
        if latest.exists():
            try:
                info = json.loads(latest.read_text())
                if not isinstance(info, dict) or "file" not in info:
                    raise ValueError("no 'file' entry")
            except (ValueError, OSError) as e:
                problems.append(f"{latest}: {e}")
                warnings.warn(f"training state pointer {latest} is unreadable ({e}); trying the checkpoint files",
                              stacklevel=2)
                info = None
        files = sorted(self.ckpt_dir.glob("step_*.safetensors"), reverse=True) if self.ckpt_dir.exists() else []
        if info is None and not files:
            return False
        order = [(self.ckpt_dir / info["file"], info)] if info else []
        order += [(f, None) for f in files if not order or f != order[0][0]]
        for f, finfo in order:
            try:
                t, meta = self._read_checkpoint(f)
                finfo = finfo or meta
                if finfo is None:
                    raise ValueError("it records no step, loader position or configuration (an older format)")
            except Exception as e:  # noqa: BLE001 (any damage: truncated, missing, wrong keys)
                problems.append(f"{f}: {e}")
                if f != order[-1][0]:
                    warnings.warn(f"checkpoint {f} could not be read ({type(e).__name__}: {e}); falling back "
                                  "to the previous checkpoint", stacklevel=2)
                continue
            self._check_identity(finfo, self.ckpt_dir)
            try:
                self._load_state(t, finfo)
            except (KeyError, RuntimeError, ValueError, IndexError) as e:
                problems.append(f"{f}: {e}")
                warnings.warn(f"checkpoint {f} does not fit these coders ({type(e).__name__}: {e}); falling "
                              "back to the previous checkpoint", stacklevel=2)
                continue
            return True
        raise RuntimeError("no usable checkpoint in " + str(self.ckpt_dir) + ":\n  " + "\n  ".join(problems)
                           + "\nPass --restart (resume_mode='restart') to discard this state and train from scratch.")

    @staticmethod
    def _read_checkpoint(f: Path) -> tuple[dict, Optional[dict]]:
        """The tensors of a checkpoint file and the info it carries (None for older files)."""
        from safetensors import safe_open

        if not f.exists():
            raise FileNotFoundError(f"missing checkpoint file {f}")
        with safe_open(str(f), framework="pt") as h:
            meta = h.metadata() or {}
            t = {k: h.get_tensor(k) for k in h.keys()}
        return t, (json.loads(meta["info"]) if "info" in meta else None)

    def _load_state(self, t: dict, info: dict) -> None:
        for n, c in self.coders.items():
            sd = {k.split("/coder/", 1)[1]: v for k, v in t.items() if k.startswith(f"{n}/coder/")}
            c.load_state_dict(sd)
            names = [k for k, _ in c.named_parameters()]
            opt = self.opts[n]
            state = {}
            for i, pn in enumerate(names):
                pre = f"{n}/adam/{pn}/"
                s = {k[len(pre):]: v for k, v in t.items() if k.startswith(pre)}
                if not s and pn == "W_enc_t":  # checkpoints from before the encoder was held transposed
                    pre = f"{n}/adam/W_enc/"
                    s = {k[len(pre):]: (v.t().contiguous() if v.dim() == 2 else v) for k, v in t.items()
                         if k.startswith(pre)}
                if s:
                    state[i] = s
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
            self.since_fired[n] = t[f"{n}/since_fired"].clone()
            self.fire_count[n] = t[f"{n}/fire_count"].clone()
        self.step, self.tokens_seen, self.history = info["step"], info["tokens"], info["history"]
        self.loader.load_state_dict(info["loaders"][self.comm.rank])

    # ------------------------------------------------------------------ training
    def rows_of(self, name: str, rows: Rows) -> Rows:
        """Coder ``name``'s part of a batch (all of it unless the stream is shared)."""
        return self.columns[name].select(rows) if name in self.columns else rows

    def _token_weight(self, coder: SparseCoder, rows: Rows) -> Optional[torch.Tensor]:
        """Per-token weights of the reconstruction error (see ``TrainConfig.token_weighting``)."""
        if self.cfg.token_weighting == "none":
            return None
        r = rows.x.float() if rows.y is None or coder.cfg.autoencoder else rows.x.float() + rows.y.float()
        w = 1.0 / r.pow(2).sum(-1).clamp_min(1e-12)
        return w / w.mean()

    def train_step(self) -> dict[str, dict]:
        cfg = self.cfg
        batch = self.loader.next()
        global_batch = len(batch) * self.comm.world
        sp = min(1.0, (self.step + 1) / max(1, int(cfg.sparsity_warmup_fraction * self.total_steps)))
        lrf = lr_factor(self.step, self.total_steps, cfg)
        logs = {}
        for n, c in self.coders.items():
            ccfg = c.cfg
            rows = self.rows_of(n, batch)
            x = rows.x.float() * c.in_scale.repeat_interleave(ccfg.d_in)
            y = (None if rows.y is None or ccfg.autoencoder
                 else rows.y.float() * c.out_scale.repeat_interleave(ccfg.d_out_))
            dead = self.since_fired[n] >= self.dead_window
            opt = self.opts[n]
            opt.zero_grad(set_to_none=True)
            weight = self._token_weight(c, rows)
            out = c.loss(x, y, LossContext(sparsity_scale=sp, dead=dead, comm=self.comm, token_weight=weight))
            out.loss.backward()
            lossv = out.loss.detach().reshape(1)
            if self.comm.world > 1:
                self.comm.average_grads_(c.parameters())
                lossv = self.comm.all_reduce_sum(lossv) / self.comm.world
            if not bool(torch.isfinite(lossv).all()):
                last = self.ckpt_dir / "latest.json"
                raise NonFiniteLoss(
                    f"coder {n!r}: the loss became {float(lossv[0])} at step {self.step} "
                    f"({self.tokens_seen} tokens); stopped without saving. The last good checkpoint is "
                    f"{last if last.exists() else 'none (no checkpoint written yet)'}. Lower the learning "
                    "rate or check the activations for inf/nan, then resume.")
            for g in opt.param_groups:
                g["lr"] = self.base_lr[n] * lrf
            opt.step()
            c.after_step()
            c.observe(out.parts)
            with torch.no_grad():
                fired = out.fired if out.fired is not None else (out.f > 0).sum(0)
                if self.comm.world > 1:
                    fired = self.comm.all_reduce_sum(fired)
                self.since_fired[n] = torch.where(fired > 0, torch.zeros_like(self.since_fired[n]),
                                                  self.since_fired[n] + global_batch)
                self.fire_count[n] += fired.cpu()
                yy = x if y is None else y
                # Unweighted, the loss's reconstruction term is already the mean squared error:
                # FVU = recon * batch / spread, without another pass over the error.
                f = float(out.recon) * len(yy) / float(spread(yy).clamp_min(1e-12)) if weight is None \
                    else float(fvu(yy, out.y_hat))
                l0 = out.l0 if out.l0 is not None else (out.f > 0).sum(-1).float().mean()
                logs[n] = {"loss": float(lossv[0]), "l0": float(l0),
                           "fvu": f, "dead": float(dead.float().mean())}
        self.step += 1
        self.tokens_seen += global_batch
        return logs

    def run(self, sample: Optional[Rows] = None, stop_after: Optional[int] = None) -> dict[str, dict]:
        """Train to ``total_tokens`` (or ``stop_after`` steps, for tests of resumption),
        resuming from the latest checkpoint if any; returns the last logs per coder."""
        from tqdm.auto import tqdm

        self.clean_temporaries()
        if not self.resume():
            if sample is None:
                raise ValueError("a fresh run needs a sample of rows to initialise from")
            self.initialise(sample)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training",
                   disable=not (self.cfg.progress and self.comm.rank == 0), dynamic_ncols=True)
        t0, tok0 = time.perf_counter(), self.tokens_seen
        self.checkpoint_seconds = 0.0
        logs: dict = {}
        try:
            while self.step < self.total_steps:
                if stop_after is not None and self.step >= stop_after:
                    break
                logs = self.train_step()
                first = next(iter(logs.values()))
                rate = (self.tokens_seen - tok0) / max(1e-9, time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(tok_s=f"{rate:,.0f}", L0=f"{first['l0']:.1f}", FVU=f"{first['fvu']:.3f}")
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    self.history.append({"step": self.step, "tokens": self.tokens_seen, "tokens_per_s": rate, **{
                        f"{n}.{k}": v for n, d in logs.items() for k, v in d.items()}})
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                    self._timed_checkpoint()
        finally:
            bar.close()
        if stop_after is None or self.step >= self.total_steps:
            self._timed_checkpoint()
        self.elapsed = time.perf_counter() - t0
        return logs

    def _timed_checkpoint(self) -> None:
        t0 = time.perf_counter()
        self.save_checkpoint()
        self.checkpoint_seconds += time.perf_counter() - t0

    def densities(self, name: str) -> torch.Tensor:
        """[d_sae] firing frequency of each latent over training."""
        return self.fire_count[name].double() / max(1, self.tokens_seen)

    def export(self, name: str) -> SparseCoder:
        """A copy of coder ``name`` ready to save: scaling folded, BatchTopK as JumpReLU."""
        import copy

        c = copy.deepcopy(self.coders[name])
        c.fold_scaling()
        return c.for_inference()
