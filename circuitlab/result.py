"""Result types: patching effects (``Result``), direct effects read off one run
(``DirectEffects``: DLA, logit lens) and head-detector scores (``HeadScores``); all saveable,
plottable and tabulated the same way, but compared only with their own kind."""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

import torch


@dataclass
class Cost:
    """What a result cost to compute."""

    forward_passes: int = 0
    """Forward passes run (a pass over a batch of K patched copies counts once)."""
    backward_passes: int = 0
    seconds: float = 0.0


class NodeValues:
    """What every per-node result shares: a grid of values with a label per node.

    Subclasses are dataclasses with at least ``values`` (the grid), ``labels`` (the nodes in
    ``values.flatten()`` order), ``dims`` (axis names), ``cost``, ``extras`` (further tensors)
    and ``meta``; what the values *mean* is the subclass's: patching effects (:class:`Result`),
    direct effects read off one run (:class:`DirectEffects`) or head-detector scores
    (:class:`HeadScores`)."""

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    cost: Cost
    extras: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def flat(self) -> torch.Tensor:
        return self.values.flatten()

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[str, float]]:
        v = self.flat
        idx = (v.abs() if by_abs else v).argsort(descending=True)[:k]
        return [(self.labels[i], float(v[i])) for i in idx.tolist()]

    def to_frame(self):
        """A pandas DataFrame, one row per node (node, value, and its grid coordinates)."""
        import pandas as pd

        grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in self.values.shape], indexing="ij"), -1)
        rows = {"node": self.labels, "value": self.flat.tolist()}
        for i, d in enumerate(self.dims):
            rows[d] = grid.reshape(-1, len(self.dims))[:, i].tolist()
        for k, t in self.extras.items():
            if t.numel() == self.values.numel():
                rows[k] = t.flatten().tolist()
        return pd.DataFrame(rows)

    def plot(self, title: Optional[str] = None):
        from circuitlab.viz.heatmap import result_heatmap

        return result_heatmap(self, title or self.title())

    def title(self) -> str:
        """Default plot title."""
        return type(self).__name__

    def save(self, path: str | Path) -> Path:
        """Write ``path``.safetensors (tensors) and ``path``.json (everything else); return the
        .json path. Only a ``.json`` or ``.safetensors`` ending is taken as a suffix, so
        ``ioi_lr0.1`` and ``ioi_lr0.2`` are two results. Both files are staged first and then
        renamed into place; a failed save leaves the previous pair whole, and both carry one
        ``save_id`` so ``load`` refuses a pair from two different saves."""
        from safetensors.torch import save_file

        js, st = result_files(path)
        save_id = uuid.uuid4().hex
        tensors = {"values": self.values.detach().cpu().contiguous()}
        tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extras.items()})
        info: dict[str, Any] = {"format": RESULT_FORMAT}
        if type(self) is not Result:
            info["type"] = type(self).__name__
        for f in fields(self):  # type: ignore[arg-type]
            if f.name not in ("values", "extras"):
                v = getattr(self, f.name)
                info[f.name] = vars(v) if isinstance(v, Cost) else list(v) if isinstance(v, tuple) else v
        info["save_id"] = save_id
        text = json.dumps(info, indent=1, default=str)
        with atomic_files(st, js) as (tmp_st, tmp_js):
            save_file(tensors, str(tmp_st), metadata={"save_id": save_id})
            tmp_js.write_text(text)
        return js

    @staticmethod
    def load(path: str | Path) -> "NodeValues":
        """Read a result saved by :meth:`save` (as the type it was saved as)."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        js, st = result_files(path)
        try:
            tensors = load_file(str(st))
            with safe_open(str(st), framework="pt") as f:
                st_id = (f.metadata() or {}).get("save_id")
        except (SafetensorError, OSError, Exception) as e:
            raise ValueError(f"{st} is not a readable safetensors file ({e})") from e
        info = json.loads(js.read_text())
        if info.get("format") != RESULT_FORMAT:
            raise ValueError(f"{js} is not a circuitlab result file")
        if info.get("save_id") != st_id:
            raise ValueError(f"{js} and {st} come from two different saves (an interrupted save or a file "
                             "copied from elsewhere): save the result again")
        types = {c.__name__: c for c in (Result, DirectEffects, HeadScores)}
        cls = types.get(info.get("type", "Result"))
        if cls is None:
            raise ValueError(f"{js} holds a {info['type']!r} result, which this version cannot read")
        extras = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
        kw = {f.name: info[f.name] for f in fields(cls) if f.name in info and f.name not in ("values", "extras")}
        kw.update(dims=tuple(info["dims"]), cost=Cost(**info["cost"]))
        return cls(values=tensors["values"], extras=extras, **kw)

    def _top_text(self) -> str:
        return ", ".join(f"{l}={v:+.3g}" for l, v in self.top(3))


@dataclass
class Result(NodeValues):
    """Per-node patching effects of one method on one task.

    ``values`` is a grid (e.g. [layer, pos, head]) of effects: the metric under the
    intervention minus ``baseline`` (the unpatched run's metric). ``labels`` names the nodes
    in ``values.flatten()`` order.
    """

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    """Axis names of ``values``, e.g. ('layer', 'pos', 'head')."""
    method: str
    sites: str
    direction: str
    """'denoising' (clean into corrupted) or 'noising' (corrupted into clean)."""
    metric: str
    baseline: float
    """Metric value of the unpatched base run (corrupted for denoising, clean for noising)."""
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Further tensors, e.g. 'rank_score' (AtP* GradDrop) or 'per_prompt'."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def patched(self) -> torch.Tensor:
        """Raw metric values under each intervention (what TransformerLens' patching returns)."""
        return self.values + self.baseline

    def title(self) -> str:
        return f"{self.method} · {self.sites} · {self.direction} · {self.metric}"

    def __repr__(self) -> str:
        return (f"Result({self.method} {self.sites} {self.direction}, {self.metric}, grid "
                f"{tuple(self.values.shape)} {self.dims}, baseline {self.baseline:.4g}; top: {self._top_text()})")


@dataclass
class DirectEffects(NodeValues):
    """Direct effects on the logit difference read off one run, with nothing patched.

    DLA (``method='dla'``): each component's share of the answer-minus-wrong logit difference
    through the final norm (frozen) and the unembedding; the components and ``extras`` sum to
    ``baseline``. Logit lens (``method='logit_lens'``): the logit difference each layer's
    residual stream would give if it were the last. Neither counts what a component does
    through later layers, so these values are not patching effects."""

    values: torch.Tensor
    labels: list[str]
    dims: tuple[str, ...]
    """Axis names of ``values``, e.g. ('layer', 'head')."""
    method: str
    """'dla' or 'logit_lens'."""
    by: str
    """How DLA groups components ('layer', 'head', 'neuron', 'source'); 'resid' for the lens."""
    tokens: str
    """Which prompts were run: 'clean' or 'corrupt'."""
    metric: str
    """What the values are shares of ('logit_diff')."""
    baseline: float
    """The run's real logit difference (mean over prompts): what DLA's components sum to and
    what the lens's last layer reads."""
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """DLA: every component outside the grid (embeddings, biases, ...), so that all sum to
    ``baseline``."""
    meta: dict[str, Any] = field(default_factory=dict)

    def title(self) -> str:
        return f"{self.method} by {self.by} · {self.tokens} prompts · {self.metric}"

    def __repr__(self) -> str:
        return (f"DirectEffects({self.method} by {self.by}, {self.tokens} prompts, {self.metric} {self.baseline:.4g}, "
                f"grid {tuple(self.values.shape)} {self.dims}; top: {self._top_text()})")


@dataclass
class HeadScores(NodeValues):
    """How strongly each head behaves as each kind of head (previous-token, duplicate-token,
    induction, copying): attention on repeated random tokens and a weight-based copying score,
    not an effect on any task's metric."""

    values: torch.Tensor
    """[kind, layer, head] scores."""
    labels: list[str]
    """``kind:L{layer}.H{head}`` per entry."""
    dims: tuple[str, ...] = ("kind", "layer", "head")
    method: str = "head_detectors"
    cost: Cost = field(default_factory=Cost)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    """'kinds' (the names along the first axis) and 'repeat_length'."""

    @property
    def kinds(self) -> list[str]:
        return list(self.meta["kinds"])

    def title(self) -> str:
        return "head detectors: " + ", ".join(self.kinds)

    def __repr__(self) -> str:
        return f"HeadScores({', '.join(self.kinds)}; grid {tuple(self.values.shape)}; top: {self._top_text()})"


RESULT_FORMAT = "circuitlab.result/1"
"""Tag of the JSON half of a saved result."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


RESULT_SUFFIXES = (".json", ".safetensors")
"""The endings ``Result.save``/``load`` strip from a path; any other dot is part of the name."""


def result_files(path: str | Path) -> tuple[Path, Path]:
    """(.json, .safetensors) files of the result saved at ``path``."""
    path = Path(path)
    if path.suffix in RESULT_SUFFIXES:
        path = path.with_suffix("")
    if not path.name:
        raise ValueError(f"{str(path)!r} names no file: pass a path such as out/ioi_exact")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")


# ------------------------------------------------------------------ all-or-nothing multi-file writes

def _normal_mode(p: str | Path, directory: bool = False) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(p, (0o777 if directory else 0o666) & ~umask)  # mkdtemp/mkstemp create owner-only entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _clean_orphans(target: Path) -> None:
    """Remove staging folders of ``target`` left by writes whose process is gone."""
    for p in glob.glob(os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.tmp-*")):
        pid = os.path.basename(p)[len(target.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _stage(target: Path) -> Path:
    """A new empty staging folder beside ``target`` (``.NAME.tmp-PID-*``; orphans cleaned first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_orphans(target)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` the entries of ``old`` the new write did not produce."""
    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in os.scandir(old):
        dst = new / entry.name
        if os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=link)
        else:
            link(entry.path, dst)


@contextmanager
def atomic_folder(path: str | Path, keep_others: bool = True) -> Iterator[Path]:
    """Write a folder of files all-or-nothing.

    Yields an empty staging folder beside ``path``; when the block finishes, the staging
    folder replaces ``path`` in one rename (an atomic exchange on Linux), so readers see the
    old folder or the new one, never a mix. If the block raises, ``path`` is left as it was.
    Entries of the old folder the block did not write are kept (hard-linked) unless
    ``keep_others`` is False. A staging folder orphaned by a killed process is removed by the
    next write to the same path and is never read.
    """
    target = Path(os.path.abspath(path))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder: pass a folder path (or remove the file)")
    tmp = _stage(target)
    try:
        yield tmp
        _normal_mode(tmp, directory=True)
        if not target.exists():
            os.rename(tmp, target)
            return
        if keep_others:
            _carry_over(target, tmp)
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
            return
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-old-"))
        os.rename(target, old / "x")
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_files(*paths: str | Path) -> Iterator[list[Path]]:
    """Write sibling files all-or-nothing: yields one staging path per target (in a staging
    folder beside them); when the block finishes each is renamed over its target, in order.
    If the block raises, no target changes. Readers that need the set to match (``Result``)
    store a shared id in every file: a process killed between two renames leaves a pair that
    ``Result.load`` refuses rather than mixes."""
    targets = [Path(os.path.abspath(p)) for p in paths]
    tmp = _stage(targets[0])
    staged = [tmp / f"{i}_{t.name}" for i, t in enumerate(targets)]
    try:
        yield staged
        for s, t in zip(staged, targets):
            _normal_mode(s)
            os.replace(s, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
