"""Activation store: model activations for training and evaluating coders.

Why this shape: activations come through the engine (``capture``: one forward pass per model
for all requested hooks, stopping after the last one), are filtered by one function
(``keep_mask``) that evaluation calls too — so BOS, special and very-high-norm tokens are
excluded identically — and are grouped into *shards* that are a pure function of
``(data source, seed, shard index)``; documents come from any :mod:`circuitlab.data` source. A
shard can be generated on the fly or read from an on-disk cache (sharded safetensors with token
ids, written atomically, read one shard at a time), and a resumed run regenerates or rereads
exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from einops import rearrange

from circuitlab.data import DEFAULT, Document, fingerprint, open_source, pad_documents
from circuitlab.engine.cache import capture
from circuitlab.io import atomic_write


@dataclass
class Exclusion:
    """Which tokens never reach a coder, in training and evaluation alike."""

    bos: bool = True
    """Drop position 0 (the BOS token: an attention sink with an outsized norm)."""
    token_ids: tuple[int, ...] = ()
    """Drop these token ids (padding, special tokens)."""
    norm_above: Optional[float] = None
    """Drop tokens whose largest source-vector norm exceeds this (raw units)."""

    @classmethod
    def of(cls, cfg) -> "Exclusion":
        """The exclusion a coder config records."""
        return cls(cfg.exclude_bos, tuple(cfg.exclude_token_ids), cfg.exclude_norm_above)


def keep_mask(tokens: torch.Tensor, lengths: torch.Tensor, norms: Optional[torch.Tensor],
              ex: Exclusion) -> torch.Tensor:
    """[B, T] True where a token is used: inside its document and not excluded."""
    B, T = tokens.shape
    pos = torch.arange(T, device=tokens.device)[None, :]
    keep = pos < lengths.to(tokens.device)[:, None]
    if ex.bos:
        keep &= pos > 0
    for t in ex.token_ids:
        keep &= tokens != t
    if ex.norm_above is not None and norms is not None:
        keep &= norms <= ex.norm_above
    return keep


@dataclass
class Rows:
    """Activation rows (one per kept token) and where they came from."""

    x: torch.Tensor
    """[n, n_sources * d_in] inputs (sources concatenated)."""
    y: Optional[torch.Tensor]
    """[n, n_targets * d_out] targets; None when the target is the input."""
    tokens: torch.Tensor
    """[n] token id."""
    doc: torch.Tensor
    """[n] document index (within the shard's document seed)."""
    pos: torch.Tensor
    """[n] position in the document."""

    def __len__(self) -> int:
        return self.x.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        d = {"x": self.x, "tokens": self.tokens, "doc": self.doc, "pos": self.pos}
        if self.y is not None:
            d["y"] = self.y
        return d

    @staticmethod
    def cat(rows: Sequence["Rows"]) -> "Rows":
        """The rows one after another (a single part is returned as it is, not copied)."""
        if len(rows) == 1:
            return rows[0]
        y = None if rows[0].y is None else torch.cat([r.y for r in rows])
        return Rows(torch.cat([r.x for r in rows]), y, torch.cat([r.tokens for r in rows]),
                    torch.cat([r.doc for r in rows]), torch.cat([r.pos for r in rows]))

    def index(self, idx: torch.Tensor) -> "Rows":
        y = None if self.y is None else self.y[idx]
        return Rows(self.x[idx], y, self.tokens[idx], self.doc[idx], self.pos[idx])


def tokenize_documents(tokenizer, docs: Sequence[Document], ctx_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, ctx_len] token ids (one document per row, truncated, right-padded) and lengths."""
    return pad_documents(tokenizer, docs, ctx_len)


@dataclass
class SourceSpec:
    """Where a coder's inputs and targets come from."""

    hooks_in: tuple[str, ...]
    """Hook name per source."""
    hooks_out: tuple[str, ...] = ()
    """Hook name per target (empty: the sources themselves)."""
    model_in: tuple[int, ...] = ()
    """Index into the model list per source (empty: all model 0)."""

    @classmethod
    def of(cls, cfg) -> "SourceSpec":
        n = len(cfg.hooks_in)
        models = tuple(cfg.models) if cfg.models else ("",)
        if len(models) == 1:
            idx = (0,) * n
        else:
            names = list(dict.fromkeys(models))
            idx = tuple(names.index(m) for m in models)
        out = tuple(cfg.hooks_out) if cfg.hooks_out and tuple(cfg.hooks_out) != tuple(cfg.hooks_in) else ()
        return cls(tuple(cfg.hooks_in), out, idx)


@dataclass(frozen=True)
class Columns:
    """Where one coder's inputs and targets sit in the rows of a shared stream (see
    :func:`shared_spec`): hook positions, each ``d`` columns wide."""

    x: tuple[int, ...]
    """Position of each of the coder's sources among the stream's hooks."""
    y: tuple[int, ...]
    """Position of each of its targets (empty: the sources are the targets)."""
    d: int
    """Columns per hook (the model width)."""

    def _take(self, t: torch.Tensor, at: tuple[int, ...]) -> torch.Tensor:
        if len(at) == 1:  # one hook: a view, no copy
            return t[:, at[0] * self.d: (at[0] + 1) * self.d]
        return torch.cat([t[:, i * self.d: (i + 1) * self.d] for i in at], dim=-1)

    def select(self, rows: Rows) -> Rows:
        """The coder's rows: its sources as x, its targets as y."""
        return Rows(self._take(rows.x, self.x), self._take(rows.x, self.y) if self.y else None,
                    rows.tokens, rows.doc, rows.pos)


def shared_spec(specs: Sequence["SourceSpec"], d: int) -> tuple["SourceSpec", list[Columns]]:
    """One stream for several coders on the same models: the union of their hooks (sources and
    targets alike become the stream's sources, in first-seen order) and each coder's columns in
    it. One forward pass then feeds every coder, whatever its layer."""
    hooks: list[tuple[int, str]] = []
    for sp in specs:
        for key in [*zip(sp.model_in or (0,) * len(sp.hooks_in), sp.hooks_in), *((0, h) for h in sp.hooks_out)]:
            if key not in hooks:
                hooks.append(key)
    cols = []
    for sp in specs:
        xs = tuple(hooks.index(k) for k in zip(sp.model_in or (0,) * len(sp.hooks_in), sp.hooks_in))
        cols.append(Columns(xs, tuple(hooks.index((0, h)) for h in sp.hooks_out), d))
    return SourceSpec(tuple(h for _, h in hooks), (), tuple(m for m, _ in hooks)), cols


class ActivationSource:
    """Turns documents into activation rows for one coder layout, via the engine."""

    def __init__(self, models: Sequence, spec: SourceSpec, exclusion: Exclusion, ctx_len: int = 64,
                 dtype: torch.dtype = torch.float32):
        self.models = list(models)
        self.spec = spec
        self.exclusion = exclusion
        self.ctx_len = ctx_len
        self.dtype = dtype
        self.model_in = spec.model_in or (0,) * len(spec.hooks_in)

    def rows(self, docs: Sequence[Document]) -> Rows:
        """Activations of every kept token of ``docs``."""
        m0 = self.models[0]
        tokens, lengths = tokenize_documents(m0.tokenizer, docs, self.ctx_len)
        by_model: dict[int, list[str]] = {}
        for mi, h in zip(self.model_in, self.spec.hooks_in):
            by_model.setdefault(mi, []).append(h)
        if self.spec.hooks_out:
            by_model.setdefault(0, []).extend(self.spec.hooks_out)
        got: dict[tuple[int, str], torch.Tensor] = {}
        for mi, names in by_model.items():
            model = self.models[mi]
            acts = capture(model, tokens.to(model.device), names, dtype=self.dtype, device="cpu")
            for n in names:
                got[(mi, n)] = acts[n]
        xs = [got[(mi, h)] for mi, h in zip(self.model_in, self.spec.hooks_in)]
        norms = torch.stack([x.norm(dim=-1) for x in xs]).amax(0)
        keep = keep_mask(tokens, lengths, norms, self.exclusion)
        finite = torch.isfinite(norms)
        if self.spec.hooks_out:
            for h in self.spec.hooks_out:
                finite &= torch.isfinite(got[(0, h)]).all(-1)
        self.last_counts = _exclusion_counts(tokens, lengths, norms, finite, self.exclusion)
        keep &= finite  # a NaN/inf row would only end training with a non-finite loss
        b, p = keep.nonzero(as_tuple=True)
        x = torch.cat([t[b, p] for t in xs], dim=-1)
        y = torch.cat([got[(0, h)][b, p] for h in self.spec.hooks_out], dim=-1) if self.spec.hooks_out else None
        return Rows(x, y, tokens[b, p].to(torch.int32), b.to(torch.int32), p.to(torch.int32))

    def calibrate(self, docs: Sequence[Document], factor: float = 10.0) -> float:
        """A high-norm cut-off: ``factor`` x the median source norm of ``docs`` (BOS and
        special tokens already excluded)."""
        ex, self.exclusion = self.exclusion, Exclusion(self.exclusion.bos, self.exclusion.token_ids, None)
        try:
            r = self.rows(docs)
        finally:
            self.exclusion = ex
        if len(r) == 0:
            raise ValueError(f"no usable token in {len(docs)} calibration documents for the norm filter "
                             f"({describe_counts(self.last_counts)}); check the model and the hooks "
                             f"{', '.join(self.spec.hooks_in)}")
        d = self.models[0].d_model
        per_source = rearrange(r.x, "n (source d) -> n source d", d=d).norm(dim=-1).amax(-1)
        return float(factor * per_source.median())


def _exclusion_counts(tokens: torch.Tensor, lengths: torch.Tensor, norms: torch.Tensor, finite: torch.Tensor,
                      ex: Exclusion) -> dict[str, int]:
    """How many tokens of a batch each filter removed, in the order the filters apply."""
    T = tokens.shape[1]
    pos = torch.arange(T)[None, :]
    left = pos < lengths[:, None]
    counts = {"tokens": int(left.sum())}
    if ex.bos:
        counts["bos"] = int((left & (pos == 0)).sum())
        left &= pos > 0
    special = torch.zeros_like(left)
    for t in ex.token_ids:
        special |= tokens == t
    counts["special_tokens"] = int((left & special).sum())
    left &= ~special
    norms, finite = norms.cpu(), finite.cpu()
    counts["nan_or_inf"] = int((left & ~finite).sum())
    left &= finite
    if ex.norm_above is not None:
        counts["norm_filter"] = int((left & ~(norms <= ex.norm_above)).sum())
        left &= norms <= ex.norm_above
    counts["kept"] = int(left.sum())
    return counts


def describe_counts(c: dict[str, int]) -> str:
    """'of 640 tokens: 64 BOS, 576 NaN/inf activations, ...' for an error message."""
    labels = {"bos": "BOS (exclude_bos)", "special_tokens": "special tokens (exclude_special_tokens)",
              "nan_or_inf": "NaN/inf activations", "norm_filter": "above the norm cut-off (exclude_norm_factor)"}
    parts = [f"{c[k]} {lab}" for k, lab in labels.items() if c.get(k)]
    return f"of {c.get('tokens', 0)} tokens {c.get('kept', 0)} kept; excluded: " + (", ".join(parts) or "none")


MAX_EMPTY_BATCHES = 8
"""Consecutive document batches that yield no token before shard building gives up."""


def documents(seed: int, n: int, data: str = DEFAULT, ctx_len: int = 64) -> list[Document]:
    """Training documents of source ``data`` (default: the zoo corpus), deterministic in ``seed``;
    ``ctx_len`` only cuts a 1-D token stream into documents."""
    return open_source(data, ctx_len).documents(seed, n)


@dataclass
class ShardPlan:
    """How shards are cut: shard ``i`` is documents of seeds ``(seed, i, j)`` of source ``data``."""

    seed: int = 0
    """Corpus seed; shard i batch j uses documents of seed ``seed * 1_000_003 + i * 1_009 + j``."""
    shard_tokens: int = 16384
    """Rows per shard (the last document batch is truncated to fit)."""
    docs_per_batch: int = 64
    """Documents per forward pass."""
    data: str = DEFAULT
    """Data source the documents come from (see :mod:`circuitlab.data`)."""

    def info(self) -> dict:
        """The plan as recorded by an activation cache (the default source is left out, so a cache
        built before sources were named still matches)."""
        d = asdict(self)
        if self.data == DEFAULT:
            del d["data"]
        return d


def make_shard(source: ActivationSource, plan: ShardPlan, i: int,
               docs_fn: Optional[Callable[[int, int], list[Document]]] = None) -> Rows:
    """Shard ``i``: a pure function of (plan, i), documents from ``plan.data`` unless ``docs_fn``
    gives them. Raises ValueError, naming what excluded the tokens, after ``MAX_EMPTY_BATCHES``
    document batches in a row yield none (otherwise a model whose activations are all NaN, or a
    norm filter that drops everything, loops forever)."""
    if docs_fn is None:
        docs_fn = open_source(plan.data, source.ctx_len).documents
    parts, n, j, empty = [], 0, 0, 0
    totals: dict[str, int] = {}
    while n < plan.shard_tokens:
        r = source.rows(docs_fn(plan.seed * 1_000_003 + i * 1_009 + j, plan.docs_per_batch))
        r.doc = r.doc + j * plan.docs_per_batch
        parts.append(r)
        n += len(r)
        j += 1
        empty = 0 if len(r) else empty + 1
        for k, c in getattr(source, "last_counts", {}).items():
            totals[k] = totals.get(k, 0) + c
        if empty >= MAX_EMPTY_BATCHES:
            raise ValueError(
                f"shard {i}: {empty} document batches in a row added no activation row "
                f"({n} of {plan.shard_tokens} rows gathered; {describe_counts(totals) if totals else 'no counts'}). "
                "NaN/inf activations point at the model or the hooks; tokens above the norm cut-off at "
                "run.exclude_norm_factor (0 disables the filter); a short run.ctx_len leaves only BOS.")
    return Rows.cat(parts).index(torch.arange(plan.shard_tokens))


# ------------------------------------------------------------------------------ disk cache
class ActivationCache:
    """Sharded safetensors on disk: ``shard_00000.safetensors`` ... and ``index.json``.

    Each shard holds x (and y), token ids, document and position; it is written atomically,
    so an interrupted cache build resumes at the first missing shard."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def shard_path(self, i: int) -> Path:
        return self.path / f"shard_{i:05d}.safetensors"

    @property
    def index(self) -> dict:
        p = self.path / "index.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def build(self, source: ActivationSource, plan: ShardPlan, n_shards: int, meta: Optional[dict] = None,
              progress: bool = False) -> "ActivationCache":
        """Write shards 0..n_shards-1 (existing ones are kept when the metadata matches)."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        self.path.mkdir(parents=True, exist_ok=True)
        info = {"plan": plan.info(), "hooks_in": list(source.spec.hooks_in), "hooks_out": list(source.spec.hooks_out),
                "exclusion": asdict(source.exclusion), "ctx_len": source.ctx_len, "meta": meta or {}}
        if plan.data != DEFAULT:  # a file edited after the cache was built must not be read stale
            info["data_fingerprint"] = fingerprint(plan.data, source.ctx_len)
        old = self.index
        if old and {k: old.get(k) for k in info} != json.loads(json.dumps(info)):
            raise ValueError(f"activation cache {self.path} was built with different settings; "
                             "use another cache_dir or delete it")
        self._write_index({**info, "n_shards": old.get("n_shards", 0)})
        for i in tqdm(range(n_shards), desc="activation cache", disable=not progress, leave=False):
            if self.shard_path(i).exists():
                continue
            rows = make_shard(source, plan, i)
            tensors = {k: v.contiguous() for k, v in rows.tensors().items()}
            atomic_write(self.shard_path(i), lambda t, tensors=tensors: save_file(tensors, t))
        n = max(n_shards, old.get("n_shards", 0))
        self._write_index({**info, "n_shards": n})
        return self

    def _write_index(self, info: dict) -> None:
        atomic_write(self.path / "index.json", lambda t: Path(t).write_text(json.dumps(info, indent=1)))

    @property
    def n_shards(self) -> int:
        return int(self.index.get("n_shards", 0))

    def read(self, i: int) -> Rows:
        """Load one shard (nothing else is read)."""
        from safetensors import safe_open

        p = self.shard_path(i)
        if not p.exists():
            raise FileNotFoundError(f"missing activation shard {p}")
        with safe_open(str(p), framework="pt") as f:
            keys = set(f.keys())
            get = f.get_tensor
            return Rows(get("x"), get("y") if "y" in keys else None, get("tokens"), get("doc"), get("pos"))


# ------------------------------------------------------------------------------ loader
@dataclass
class LoaderState:
    """Where a loader is; saved in checkpoints so a resumed run continues identically."""

    epoch: list = field(default_factory=list)
    group: list = field(default_factory=list)
    offset: list = field(default_factory=list)


class ShardLoader:
    """Deterministic shuffled batches from shards, split into data-parallel *parts*.

    Part ``p`` owns shards ``i % parts == p`` (disjoint); each rank serves the parts
    ``p % world == rank``; the global batch is the concatenation over parts, so a single
    process with ``parts=2`` sees exactly the rows two ranks see together. Each part shuffles a
    buffer of ``buffer_shards`` shards with a generator seeded by (seed, part, epoch, group)."""

    def __init__(self, shard_fn: Callable[[int], Rows], n_shards: int, batch_size: int, seed: int = 0,
                 parts: int = 1, rank: int = 0, world: int = 1, buffer_shards: int = 4):
        if n_shards < parts:
            raise ValueError(f"need at least {parts} shards for {parts} data-parallel parts (have {n_shards})")
        if batch_size % parts:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of parts ({parts})")
        if parts % world:
            raise ValueError(f"parts ({parts}) must be a multiple of the world size ({world})")
        self.shard_fn, self.n_shards, self.seed = shard_fn, n_shards, seed
        self.parts = [p for p in range(parts) if p % world == rank]
        self.n_parts = parts
        self.local = batch_size // parts
        self.buffer_shards = buffer_shards
        self.state = LoaderState([0] * len(self.parts), [0] * len(self.parts), [0] * len(self.parts))
        self._buf: dict[int, tuple[tuple[int, int], tuple[Rows, torch.Tensor]]] = {}

    def shards_of(self, part: int) -> list[int]:
        return [i for i in range(self.n_shards) if i % self.n_parts == part]

    def _group(self, j: int, part: int, epoch: int, group: int) -> Optional[tuple[Rows, torch.Tensor]]:
        """The buffer (rows of ``buffer_shards`` shards) and its shuffled order. The order is kept
        apart from the rows: each batch gathers its own rows, so the buffer is never copied in
        shuffled order (that copy cost as much memory as the buffer and, for a large buffer,
        most of a first step's time)."""
        key = (epoch, group)
        if j in self._buf and self._buf[j][0] == key:
            return self._buf[j][1]
        own = self.shards_of(part)
        g = torch.Generator().manual_seed(hash((self.seed, part, epoch)) % (2**62))
        order = [own[i] for i in torch.randperm(len(own), generator=g).tolist()]
        chunk = order[group * self.buffer_shards: (group + 1) * self.buffer_shards]
        if not chunk:
            return None
        rows = Rows.cat([self.shard_fn(i) for i in chunk])
        g2 = torch.Generator().manual_seed(hash((self.seed, part, epoch, group)) % (2**62))
        self._buf[j] = (key, (rows, torch.randperm(len(rows), generator=g2)))
        return self._buf[j][1]

    def next(self) -> Rows:
        """The next batch of this rank's parts (concatenated in part order)."""
        out = []
        st = self.state
        for j, part in enumerate(self.parts):
            wrapped = 0
            while True:
                buffered = self._group(j, part, st.epoch[j], st.group[j])
                if buffered is None:
                    wrapped += 1
                    if wrapped > 1:  # a whole pass over the part's shards served no batch
                        raise ValueError(
                            f"data-parallel part {part}: no buffer of {self.buffer_shards} shard(s) holds "
                            f"{self.local} rows (the batch per part); raise shard_tokens or buffer_shards, "
                            "or lower batch_size")
                    st.epoch[j] += 1
                    st.group[j], st.offset[j] = 0, 0
                    continue
                rows, perm = buffered
                if st.offset[j] + self.local > len(rows):
                    st.group[j] += 1
                    st.offset[j] = 0
                    continue
                out.append(rows.index(perm[st.offset[j]: st.offset[j] + self.local]))
                st.offset[j] += self.local
                break
        return Rows.cat(out)

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        self.state = LoaderState(list(d["epoch"]), list(d["group"]), list(d["offset"]))
