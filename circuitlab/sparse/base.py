"""The sparse-coder skeleton every architecture shares, and the registry that names them.

One module covers SAEs, transcoders and crosscoders because they differ only in *shapes*:
the input is ``n_sources`` activation vectors concatenated (one source for an SAE or a
transcoder, several layers / models / checkpoints for a crosscoder), the output is
``n_targets`` vectors (the same vectors for an autoencoder, the MLP output for a transcoder).
The crosscoder encoder ``sum_l W_enc^l a^l`` is exactly one matmul on the concatenation, so a
single code path trains all three. What differs between architectures is only the activation
function and the sparsity term; each lives in its own file and registers itself here by name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

import torch
from einops import rearrange
from torch import nn

from circuitlab.discovery import import_modules

ARCHITECTURES: dict[str, type["SparseCoder"]] = {}
"""name -> coder class (filled by ``@register`` as ``load_architectures`` imports the modules)."""

_loaded = False


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an architecture constructible by name (``make_coder``)."""

    def deco(cls):
        cls.arch = name
        ARCHITECTURES[name] = cls
        return cls

    return deco


def load_architectures() -> dict[str, type["SparseCoder"]]:
    """The registry, after importing every module of ``circuitlab/sparse/architectures/`` once.

    Why discovery instead of a list of imports: an architecture is one file in that folder and
    its ``@register`` line; nothing else names it."""
    global _loaded
    if not _loaded:
        import_modules("circuitlab.sparse.architectures")
        _loaded = True
    return ARCHITECTURES


def coder_class(arch: str) -> type["SparseCoder"]:
    """The coder class registered as ``arch``."""
    archs = load_architectures()
    if arch not in archs:
        raise ValueError(f"unknown architecture {arch!r}; registered: {', '.join(sorted(archs))}")
    return archs[arch]


def config_class(arch: str) -> type["CoderConfig"]:
    """The config dataclass of architecture ``arch``."""
    return coder_class(arch).config_cls


def make_coder(cfg: "CoderConfig") -> "SparseCoder":
    """Build the coder that ``cfg.arch`` names."""
    return coder_class(cfg.arch)(cfg)


@dataclass
class CoderConfig:
    """Shapes, sites and initialisation shared by every architecture."""

    arch: str = ""
    """Registered architecture name (``ARCHITECTURES``; each architecture's config sets it)."""
    d_in: int = 0
    """Width of one source vector (d_model for residual / MLP-input sites)."""
    d_sae: int = 0
    """Number of latents."""
    n_sources: int = 1
    """Input vectors concatenated: 1 for SAEs and transcoders, >1 for crosscoders."""
    d_out: Optional[int] = None
    """Width of one target vector; None means d_in."""
    n_targets: Optional[int] = None
    """Output vectors; None means n_sources (autoencoder / acausal crosscoder)."""
    skip: bool = False
    """Transcoders: add a learned linear skip ``x @ W_skip`` to the output."""
    apply_b_dec_to_input: Optional[bool] = None
    """Subtract b_dec from the input before encoding (SAE Lens convention). None: yes exactly
    when the coder reconstructs its own input (not for transcoders)."""
    hooks_in: tuple[str, ...] = ()
    """Hook name of each source (e.g. ``blocks.2.hook_resid_post``); repeated for model diffing."""
    hooks_out: tuple[str, ...] = ()
    """Hook name of each target; empty means the same as ``hooks_in``."""
    models: tuple[str, ...] = ()
    """Model (zoo name, folder or checkpoint folder) of each source; one entry means all."""
    init_decoder_norm: float = 0.1
    """Initial norm of each decoder row; the encoder starts as the decoder's transpose."""
    exclude_bos: bool = True
    """Ignore the first position (attention sink, huge norm) in training and evaluation."""
    exclude_token_ids: tuple[int, ...] = ()
    """Token ids never used (pad, special tokens), in training and evaluation."""
    exclude_norm_above: Optional[float] = None
    """Ignore tokens whose raw input norm exceeds this (set from data at training start)."""
    seed: int = 0
    """Initialisation seed."""

    @property
    def d_out_(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def n_targets_(self) -> int:
        return self.n_targets if self.n_targets is not None else self.n_sources

    @property
    def hook_in_(self) -> str:
        """The first source's hook ("" when none is named)."""
        return self.hooks_in[0] if self.hooks_in else ""

    @property
    def hook_out_(self) -> str:
        """The first target's hook (the first source's for an SAE)."""
        return (tuple(self.hooks_out) or tuple(self.hooks_in) or ("",))[0]

    @property
    def autoencoder(self) -> bool:
        """True when the target is the input (SAE or acausal crosscoder)."""
        return (not self.hooks_out or tuple(self.hooks_out) == tuple(self.hooks_in)) and self.d_out_ == self.d_in \
            and self.n_targets_ == self.n_sources and not self.skip

    @property
    def b_dec_in(self) -> bool:
        return self.autoencoder if self.apply_b_dec_to_input is None else bool(self.apply_b_dec_to_input)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CoderConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                continue
            if isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)


@dataclass
class LossContext:
    """What a loss needs besides the batch: schedules, dead latents, and the process group."""

    sparsity_scale: float = 1.0
    """Sparsity warm-up multiplier in [0, 1] for the L1 / L0 coefficient."""
    dead: Optional[torch.Tensor] = None
    """[d_sae] bool, latents that have not fired for the dead window (AuxK uses them)."""
    comm: Optional["Comm"] = None
    """Cross-process reductions (BatchTopK threshold); None: single process."""
    token_weight: Optional[torch.Tensor] = None
    """[batch] weights of each token's squared error (mean 1); None: plain MSE."""


def spread(y: torch.Tensor) -> torch.Tensor:
    """||y - mean(y)||^2 over the batch: the denominator of FVU (variance around the mean)."""
    return torch.linalg.vector_norm(y - y.mean(0)).pow(2)


def recon_loss(y_hat: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Mean over the batch of ||y - y_hat||^2, weighted per token when the context says so."""
    if ctx.token_weight is None:  # one fused pass (forward and backward) instead of sub, pow, sum
        return torch.nn.functional.mse_loss(y_hat, y, reduction="sum") / max(1, y.numel() // y.shape[-1])
    err = (y_hat - y).pow(2).sum(-1)
    return (err * ctx.token_weight.to(err.device)).mean()


@dataclass
class LossOut:
    """The training loss and what the trainer logs."""

    loss: torch.Tensor
    recon: torch.Tensor
    """Mean over the batch of ||y - y_hat||^2 (summed over targets)."""
    sparsity: torch.Tensor
    """The sparsity / auxiliary term before its coefficient is applied."""
    f: torch.Tensor
    """[batch, d_sae] latent activations used for the reconstruction."""
    y_hat: torch.Tensor
    parts: dict = field(default_factory=dict)
    fired: Optional[torch.Tensor] = None
    """[d_sae] tokens on which each latent fired (None: computed from ``f``)."""
    l0: Optional[torch.Tensor] = None
    """Mean active latents per token (None: computed from ``f``)."""


class Comm:
    """Reductions across data-parallel ranks; the single-process default is the identity."""

    world: int = 1
    rank: int = 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        return t


class SparseCoder(nn.Module):
    """``f = act((x - b_pre) @ W_enc + b_enc)``, ``y_hat = f @ W_dec + b_dec (+ x @ W_skip)``.

    Parameters use the SAE Lens orientation (W_enc [d_in, d_sae], W_dec [d_sae, d_out]) with the
    source / target vectors concatenated; state dicts and files do too. The encoder is *held*
    transposed, as ``W_enc_t`` [d_sae, d_in] (one contiguous row per latent), and ``W_enc`` is its
    view: TopK's sparse weight gradient is computed latent by latent, so it lands in this layout
    directly instead of through a transposing copy every step (the dense matmuls run as fast
    with either layout). Buffers ``in_scale``/``out_scale`` hold the training
    normalisation (E||x|| = sqrt(d) per source); ``fold_scaling`` moves it into the weights.
    """

    arch: ClassVar[str] = ""
    """Registered name (set by ``@register``)."""
    config_cls: ClassVar[type[CoderConfig]] = CoderConfig
    """The architecture's config dataclass."""
    homogeneous_encoder: ClassVar[bool] = False
    """True when scaling W_enc (with b_enc = 0) scales every latent by the same factor and
    changes nothing else about training (TopK, BatchTopK: no penalty on latent size)."""
    tied: ClassVar[bool] = False
    """True when the coder has no encoder weights of its own (no ``W_enc_t``, no ``b_enc``): the
    encoder is derived from the decoder (matching pursuit). Files then hold no encoder either."""
    inference_arch: ClassVar[str] = ""
    """The architecture ``for_inference`` turns this one into, when it differs (BatchTopK:
    jumprelu). Files always hold that one; a file naming this architecture is read as it."""
    lens_sae: ClassVar[str] = ""
    """SAE Lens ``architecture`` of this coder as an SAE ("" where SAE Lens has none: saved as
    ``circuitlab_<arch>``). Files with this name and no circuitlab config are read as this class."""
    lens_transcoder: ClassVar[str] = ""
    """The same for a transcoder without a skip connection ("": ``circuitlab_<arch>_transcoder``)."""
    lens_skip_transcoder: ClassVar[str] = ""
    """The same for a skip transcoder ("": ``circuitlab_<arch>_transcoder``)."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        self.cfg = cfg
        S, T = cfg.n_sources, cfg.n_targets_
        din, dout, n = cfg.d_in * S, cfg.d_out_ * T, cfg.d_sae
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(n, dout, generator=g)
        w = w / w.norm(dim=-1, keepdim=True) * cfg.init_decoder_norm
        self.W_dec = nn.Parameter(w)
        if not self.tied:
            if cfg.autoencoder:
                w_enc = w.t().clone()
            else:
                w_enc = torch.randn(din, n, generator=g)
                w_enc = w_enc / w_enc.norm(dim=0, keepdim=True) * cfg.init_decoder_norm
            self.W_enc_t = nn.Parameter(w_enc.t().contiguous())
            self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(dout))
        self.W_skip = nn.Parameter(torch.zeros(din, dout)) if cfg.skip else None
        self.register_buffer("in_scale", torch.ones(S))
        self.register_buffer("out_scale", torch.ones(T))
        self.register_state_dict_post_hook(_encoder_to_saved_layout)
        self.register_load_state_dict_pre_hook(_encoder_from_saved_layout)

    @property
    def W_enc(self) -> torch.Tensor:
        """[d_in, d_sae] encoder (a view of ``W_enc_t``; its gradient is ``W_enc_t.grad``)."""
        return self.W_enc_t.t()

    # -- shapes and sites ------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_in(self) -> str:
        """The hook the coder reads (its first source; "" when the config names none)."""
        return self.cfg.hook_in_

    @property
    def hook_out(self) -> str:
        """The hook it writes (its first target; the hook it reads for an SAE)."""
        return self.cfg.hook_out_

    def flat_in(self, x: torch.Tensor) -> torch.Tensor:
        """[..., S, d_in] or [..., S*d_in] -> [..., S*d_in]."""
        if x.dim() >= 2 and x.shape[-2:] == (self.cfg.n_sources, self.cfg.d_in) and self.cfg.n_sources > 1:
            return x.flatten(-2)
        return x

    # -- forward ---------------------------------------------------------------------------
    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder multiplies: x, minus b_dec where the architecture centres inputs."""
        return x - self.b_dec if self.cfg.b_dec_in else x

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [batch, d_sae]."""
        x = self.encoder_input(x)
        return torch.addmm(self.b_enc, x, self.W_enc) if x.dim() == 2 else x @ self.W_enc + self.b_enc

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """Inference activation (deterministic per token)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre(self.flat_in(x)))

    def decode(self, f: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = torch.addmm(self.b_dec, f, self.W_dec) if f.dim() == 2 else f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a transcoder with a skip connection needs the input to decode")
            y = y + self.flat_in(x) @ self.W_skip
        return y

    def skip_output(self, x: torch.Tensor) -> torch.Tensor:
        """The skip connection's share of the output, ``x @ W_skip`` (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros(*x.shape[:-1], self.W_dec.shape[1], dtype=x.dtype, device=x.device)
        return self.flat_in(x) @ self.W_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flat_in(x)
        return self.decode(self.encode(x), x)

    # -- training --------------------------------------------------------------------------
    def decoder_norms(self) -> torch.Tensor:
        """[d_sae] sum over targets of each latent's decoder-row norm (crosscoder penalty)."""
        return self.source_norms().sum(-1)

    def source_norms(self) -> torch.Tensor:
        """[d_sae, n_targets] decoder norm per target: where / when a crosscoder feature lives."""
        per_target = rearrange(self.W_dec, "f (target d) -> f target d", target=self.cfg.n_targets_)
        return per_target.norm(dim=-1)

    def train_forward(self, x: torch.Tensor, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Latents used in training (may differ from inference, e.g. BatchTopK), the
        pre-activations, and extra parts; default: the inference activation."""
        h = self.pre(x)
        return self.activate(h), h, {}

    def sparsity_loss(self, f, h, x, y, y_hat, ctx: LossContext) -> torch.Tensor:
        return torch.zeros((), device=x.device)

    def loss(self, x: torch.Tensor, y: Optional[torch.Tensor], ctx: Optional[LossContext] = None) -> LossOut:
        """Training loss on a batch: x [B, S*d_in] inputs, y [B, T*d_out] targets (None: x)."""
        ctx = ctx or LossContext()
        x = self.flat_in(x)
        y = x if y is None else self.flat_in(y)
        f, h, parts = self.train_forward(x, ctx)
        y_hat = self.decode(f, x)
        recon = recon_loss(y_hat, y, ctx)
        sp = self.sparsity_loss(f, h, x, y, y_hat, ctx)
        return LossOut(recon + sp, recon, sp, f, y_hat, parts)

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. renormalise decoder rows)."""

    def observe(self, parts: dict) -> None:
        """Called after each optimizer step with the loss's extra parts (threshold statistics)."""

    # -- normalisation and export -------------------------------------------------------------
    @torch.no_grad()
    def fold_scaling(self) -> None:
        """Make the coder act on raw activations: fold ``in_scale``/``out_scale`` into weights.

        Trained on x' = s_x x and y' = s_y y: W_enc <- s_x W_enc, (b_pre in raw units) b_dec <-
        b_dec / s_y, W_dec <- W_dec / s_y, W_skip <- W_skip s_x / s_y. Latents are unchanged."""
        cfg = self.cfg
        s_in = self.in_scale.repeat_interleave(cfg.d_in)
        s_out = self.out_scale.repeat_interleave(cfg.d_out_)
        self.W_enc.mul_(s_in[:, None])
        self.W_dec.div_(s_out[None, :])
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s_in[:, None]).div_(s_out[None, :])
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)

    def for_inference(self) -> "SparseCoder":
        """The coder to save and splice (BatchTopK returns its JumpReLU equivalent)."""
        return self

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """Non-parameter tensors to save (thresholds)."""
        return {}

    # -- files in the SAE Lens layout (circuitlab.sparse.files) -------------------------------
    def lens_architecture(self) -> str:
        """The ``architecture`` written to cfg.json: SAE Lens's name where it has this coder."""
        cfg = self.cfg
        if cfg.n_sources != 1 or cfg.n_targets_ != 1:
            return f"circuitlab_crosscoder_{cfg.arch}"
        if cfg.autoencoder:
            return self.lens_sae or f"circuitlab_{cfg.arch}"
        return (self.lens_skip_transcoder if cfg.skip else self.lens_transcoder) or f"circuitlab_{cfg.arch}_transcoder"

    def lens_fields(self) -> dict:
        """Architecture fields of cfg.json besides the shapes and sites (TopK: ``k``)."""
        return {}

    @classmethod
    def lens_config(cls, lens: dict) -> dict:
        """Config fields of this architecture read from a cfg.json written by SAE Lens (the
        inverse of ``lens_fields``); raise ValueError for settings this class cannot reproduce."""
        act = lens.get("activation_fn", lens.get("activation_fn_str", "relu"))
        if act not in ("relu", None):
            raise ValueError(f"activation function {act!r} is not supported")
        return {}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The weights file's tensors, SAE Lens names and orientation (W_skip as [d_out, d_in])."""
        t = {"W_dec": self.W_dec, "b_dec": self.b_dec}
        if not self.tied:
            t.update(W_enc=self.W_enc, b_enc=self.b_enc)
        if self.W_skip is not None:
            t["W_skip"] = self.W_skip.t()
        t.update(self.extra_tensors())
        return t

    def state_from_file(self, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict that weights-file tensors ``t`` load as (the inverse of ``file_tensors``)."""
        sd = {"W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        if not self.tied:
            sd.update(W_enc=t["W_enc"], b_enc=t["b_enc"])
        if "W_skip" in t:
            sd["W_skip"] = t["W_skip"].t()
        return sd


def _encoder_to_saved_layout(module, state_dict, prefix, local_metadata) -> None:
    """State dicts carry W_enc [d_in, d_sae] (SAE Lens layout), not the held transpose."""
    if prefix + "W_enc_t" in state_dict:
        state_dict[prefix + "W_enc"] = state_dict.pop(prefix + "W_enc_t").t()


def _encoder_from_saved_layout(module, state_dict, prefix, *args) -> None:
    if prefix + "W_enc" in state_dict:
        state_dict[prefix + "W_enc_t"] = state_dict.pop(prefix + "W_enc").t()


def kaiming_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
