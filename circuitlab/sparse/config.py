"""The TOML file behind ``circuitlab train``: sections, every field documented, strict keys.

Why strict: a misspelt key (``l1_coef``) silently falling back to a default wastes a training
run, so unknown keys are an error that names the nearest valid key. Field documentation is
read from the dataclasses' attribute docstrings, so ``circuitlab train --show-config`` and the
code cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Optional

from circuitlab.data import check as check_data
from circuitlab.sparse import validate as v
from circuitlab.sparse.base import CoderConfig, config_class
from circuitlab.sparse.splice import site_hook
from circuitlab.sparse.trainer import TrainConfig


@dataclass
class RunConfig:
    """[run]: where activations come from and where results go."""

    out: str = "runs/sparse"
    """Output folder: one SAE Lens folder per coder, metrics (``~`` is expanded). Coders written to
    ``~/.cache/circuitlab/coders/<model>`` are found by ``circuitlab graph`` and ``probe``."""
    model: str = "gpt2-zoo"
    """Default model (zoo name, folder or hub id) for coders that name none."""
    data: str = "zoo"
    """Documents to train and evaluate on: zoo (the zoo corpus), text:PATH (one document per line),
    jsonl:PATH[:FIELD], tokens:PATH[:KEY] (.npy/.safetensors token ids) or hf:NAME[@CONFIG][:SPLIT[:FIELD]]
    (a Hugging Face dataset); evaluation reads the source's held-out documents (see circuitlab.data)."""
    ctx_len: int = 64
    """Tokens per document (longer documents are truncated)."""
    corpus_seed: int = 0
    """Seed of the training document stream (for the zoo, the corpus generator's seed; for files and
    datasets, the offsets documents are read from)."""
    shard_tokens: int = 16384
    """Activation rows per shard (the unit of caching, shuffling and data parallelism)."""
    docs_per_batch: int = 64
    """Documents per model forward pass when gathering activations."""
    buffer_shards: int = 4
    """Shards shuffled together (the shuffle buffer)."""
    cache_dir: str = ""
    """Folder for an on-disk activation cache reused across runs ("" = gather on the fly)."""
    shared_stream: bool = False
    """One activation stream for every coder on the same models, whatever its site: each forward
    pass gathers the union of the coders' hooks and each coder reads its own columns (30 layers'
    transcoders cost one forward pass per batch instead of 30). Needs exclude_norm_factor = 0: one
    norm cut-off cannot fit sites whose norms differ by orders of magnitude."""
    exclude_bos: bool = True
    """Exclude position 0 in training and evaluation."""
    exclude_special_tokens: bool = True
    """Exclude the tokenizer's special tokens (pad, eos, ...) in training and evaluation."""
    exclude_norm_factor: float = 10.0
    """Exclude tokens with norm above this many times the median (0 disables)."""
    threads: int = 2
    """torch CPU threads per process."""
    device: str = "cpu"
    """Device for the model and coders (cuda under torchrun uses the local rank)."""
    evaluate: bool = True
    """Evaluate each coder on held-out documents after training."""
    eval_docs: int = 1024
    """Held-out documents for evaluation (~38 tokens each). Dead and dense fractions need tens of
    thousands of tokens: on 256 documents (~9.5k tokens) a latent that fires once in 20k tokens
    counts as dead (gpt2-zoo's layer-0 transcoder: 13.4% "dead" there, 4.4% on 2048 documents)."""
    density_html: bool = True
    """Write each coder's latent-density histogram (density.html, several MB of inline plotly);
    false for coders shipped inside the package (``circuitlab eval`` regenerates it)."""
    seed: int = 0
    """Loader shuffling seed."""

    def __post_init__(self) -> None:
        w = "[run]"
        if not isinstance(self.out, str) or not self.out:
            v.fail(w, "out", self.out, "a non-empty folder path")
        if not isinstance(self.model, str) or not self.model:
            v.fail(w, "model", self.model, "a zoo name, model folder or hub id")
        if not isinstance(self.data, str):
            v.fail(w, "data", self.data, "a data-source name (zoo, text:PATH, jsonl:PATH[:FIELD], ...)")
        try:
            check_data(self.data)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{w}: data: {e}") from None
        v.integer(w, "ctx_len", self.ctx_len, 2 if self.exclude_bos else 1)
        v.integer(w, "corpus_seed", self.corpus_seed, 0)
        v.integer(w, "shard_tokens", self.shard_tokens, 1)
        v.integer(w, "docs_per_batch", self.docs_per_batch, 1)
        v.integer(w, "buffer_shards", self.buffer_shards, 1)
        v.number(w, "exclude_norm_factor", self.exclude_norm_factor, 0.0)
        if 0 < self.exclude_norm_factor <= 1:
            v.fail(w, "exclude_norm_factor", self.exclude_norm_factor,
                   "0 (no norm filter) or a number > 1 (a multiple of the median norm: at or below 1 "
                   "it drops half the tokens or more)")
        if self.shared_stream and self.exclude_norm_factor:
            v.fail(w, "exclude_norm_factor", self.exclude_norm_factor,
                   "0 with shared_stream = true (one norm cut-off cannot fit every site of a shared stream)")
        v.integer(w, "threads", self.threads, 1)
        v.integer(w, "eval_docs", self.eval_docs, 1)
        v.integer(w, "seed", self.seed, 0)


@dataclass
class CoderSection:
    """[[coder]]: one coder; coders with the same sites share one activation stream."""

    name: str = ""
    """Folder name of the coder under run.out (default: kind_arch_layer)."""
    kind: str = "sae"
    """sae (reconstruct a site), transcoder (MLP input -> MLP output) or crosscoder."""
    arch: str = "topk"
    """Architecture: a registered name (circuitlab.sparse.ARCHITECTURES; --show-config lists each with
    its fields)."""
    layer: int = 0
    """Layer of the site (sae, transcoder, and crosscoders across models/checkpoints)."""
    layers: list = field(default_factory=list)
    """Crosscoder across layers: one source per layer."""
    hook: str = ""
    """Site: a hook point (resid_post, resid_mid, ln2.out ...; see circuitlab.engine.sites.HOOKS) or a
    hook-name template with {layer} substituted (default: resid_post; transcoders read resid_mid)."""
    models: list = field(default_factory=list)
    """Crosscoder across models or checkpoints: one model folder per source."""
    expansion: int = 8
    """d_sae = expansion * d_model (ignored when d_sae is set)."""
    d_sae: int = 0
    """Number of latents (0: use expansion)."""

    def __post_init__(self) -> None:
        w = "[[coder]]" + (f" {self.name!r}" if isinstance(self.name, str) and self.name else "")
        if self.name != "":
            v.folder_name(w, "name", self.name)
        v.choice(w, "kind", self.kind, ("sae", "transcoder", "crosscoder"))
        v.integer(w, "layer", self.layer, 0)
        for layer in self.layers:
            v.integer(w, "layers[...]", layer, 0)
        v.integer(w, "expansion", self.expansion, 1)
        v.integer(w, "d_sae", self.d_sae, 0)


SECTIONS = {"run": RunConfig, "train": TrainConfig}


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr) \
                    and isinstance(getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
                docs[a.target.id] = " ".join(b.value.value.split())
    return docs


def _check_keys(where: str, given: dict, valid: list[str]) -> None:
    for k in given:
        if k not in valid:
            near = difflib.get_close_matches(k, valid, n=1, cutoff=0.0)
            raise ValueError(f"unknown key {k!r} in {where}; did you mean {near[0]!r}? "
                             f"(valid keys: {', '.join(sorted(valid))})")


AUTO_FIELDS = {"arch", "d_in", "d_sae", "n_sources", "d_out", "n_targets", "hooks_in", "hooks_out", "models",
               "exclude_bos", "exclude_token_ids", "exclude_norm_above"}
"""Coder-config fields filled from the [[coder]] section and the model, not set by hand."""


def coder_keys(arch: str) -> list[str]:
    cls = config_class(arch)
    return [f.name for f in dataclasses.fields(CoderSection)] + \
        [f.name for f in dataclasses.fields(cls) if f.name not in AUTO_FIELDS]


@dataclass
class TrainFile:
    """A parsed training file."""

    run: RunConfig
    train: TrainConfig
    coders: list[tuple[CoderSection, dict]]
    """Each coder's section and its architecture fields (k, l1_coeff, ...)."""


def parse(data: dict) -> TrainFile:
    """Validate a loaded TOML dict (unknown keys name the nearest valid key)."""
    _check_keys("the top level", data, ["run", "train", "coder"])
    secs = {}
    for name, cls in SECTIONS.items():
        d = dict(data.get(name, {}))
        _check_keys(f"[{name}]", d, [f.name for f in dataclasses.fields(cls)])
        secs[name] = cls(**{k: (tuple(x) if isinstance(x, list) else x) for k, x in d.items()})
    coders = []
    raw = data.get("coder", [])
    if isinstance(raw, dict):
        raw = [raw]
    if not raw:
        raise ValueError("the file defines no coder: add at least one [[coder]] section")
    for i, c in enumerate(raw):
        arch = c.get("arch", "topk")
        config_class(arch)  # validates the name
        _check_keys(f"[[coder]] #{i + 1} ({arch})", c, coder_keys(arch))
        sec_names = {f.name for f in dataclasses.fields(CoderSection)}
        sec = CoderSection(**{k: x for k, x in c.items() if k in sec_names})
        fields = {k: x for k, x in c.items() if k not in sec_names}
        check_coder_fields(f"[[coder]] #{i + 1} ({sec.name or arch})", fields, sec.d_sae or None)
        coders.append((sec, fields))
    names = [s.name for s, _ in coders if s.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two [[coder]] sections share the name {dup[0]!r}; each coder needs its own folder name")
    return TrainFile(secs["run"], secs["train"], coders)


def load(path) -> TrainFile:
    import tomllib
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such config file: {p}")
    with open(p, "rb") as f:
        return parse(tomllib.load(f))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '"none"'
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return repr(v)


def example_toml() -> str:
    """A complete, commented config: every field with its default and documentation."""
    out = ["# circuitlab train CONFIG.toml -- every field, its default, and what it does.",
           "# Fields left out take these defaults; unknown keys are an error.", ""]
    for name, cls in SECTIONS.items():
        docs = field_docs(cls)
        out.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            line = f"{f.name} = {_fmt(default)}" if default is not None else f"# {f.name} = (unset)"
            out.append(f"{line:<40} # {docs.get(f.name, '')}")
        out.append("")
    out.append("[[coder]]  # repeat for more coders (an L0 sweep: same sites, different k)")
    docs = field_docs(CoderSection)
    for f in dataclasses.fields(CoderSection):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(f"{f.name + ' = ' + _fmt(default):<40} # {docs.get(f.name, '')}")
    from circuitlab.sparse.base import load_architectures

    for arch in sorted(load_architectures()):
        cls = config_class(arch)
        docs = field_docs(cls)
        out.append(f"# fields of arch = \"{arch}\":")
        for f in dataclasses.fields(cls):
            if f.name in AUTO_FIELDS:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            out.append(f"#   {f.name + ' = ' + _fmt(default):<36} # {docs.get(f.name, '')}")
    return "\n".join(out) + "\n"


def coder_config(sec: CoderSection, fields: dict, d_model: int, default_model: str) -> CoderConfig:
    """The coder config a [[coder]] section describes, for a model of width d_model."""
    d_sae = sec.d_sae or sec.expansion * d_model
    check_coder_fields(f"[[coder]] {sec.name or sec.arch} (d_sae = {d_sae})", fields, d_sae)
    cls = config_class(sec.arch)
    if sec.kind == "sae":
        hook = site_hook(sec.hook or "resid_post", sec.layer)
        models = tuple(sec.models) or (default_model,)
        return cls(d_in=d_model, d_sae=d_sae, hooks_in=(hook,), models=models[:1], **fields)
    if sec.kind == "transcoder":
        fields = {"skip": True, **fields}
        hin = site_hook(sec.hook or "resid_mid", sec.layer)
        return cls(d_in=d_model, d_sae=d_sae, d_out=d_model, hooks_in=(hin,),
                   hooks_out=(site_hook("mlp_out", sec.layer),),
                   models=(tuple(sec.models) or (default_model,))[:1], **fields)
    hook = sec.hook or "resid_post"
    if sec.layers:
        hooks = tuple(site_hook(hook, l) for l in sec.layers)
        models = (tuple(sec.models) or (default_model,))[:1]
    elif sec.models:
        hooks = (site_hook(hook, sec.layer),) * len(sec.models)
        models = tuple(sec.models)
    else:
        raise ValueError("a crosscoder needs layers = [...] or models = [...] (one source each)")
    return cls(d_in=d_model, d_sae=d_sae, n_sources=len(hooks), hooks_in=hooks, models=models, **fields)


def check_coder_fields(where: str, fields: dict, d_sae: Optional[int] = None) -> None:
    """Ranges of the architecture fields of a [[coder]] section (k against d_sae when known)."""
    if "k" in fields:
        v.integer(where, "k", fields["k"], 1, d_sae or None)
    if fields.get("aux_k") is not None:
        v.integer(where, "aux_k", fields["aux_k"], 1, d_sae or None)
    for name in ("aux_coeff", "l1_coeff", "l0_coeff", "init_threshold"):
        if name in fields:
            v.number(where, name, fields[name], 0.0)
    for name in ("bandwidth", "init_decoder_norm"):
        if name in fields:
            v.number(where, name, fields[name], 0.0, lo_open=True)
    if "threshold_ema" in fields:
        v.number(where, "threshold_ema", fields["threshold_ema"], 0.0, 1.0, hi_open=True)
    if "seed" in fields:
        v.integer(where, "seed", fields["seed"], 0)


def default_name(sec: CoderSection, cfg: CoderConfig) -> str:
    where = f"L{sec.layer}" if not sec.layers else "L" + "-".join(map(str, sec.layers))
    extra = f"k{cfg.k}" if hasattr(cfg, "k") else ""
    return sec.name or f"{sec.kind}_{sec.arch}{extra}_{where}"

