"""Per-layer transcoders as attribution graphs use them: circuitlab.sparse coders, one per layer.

Graphs read a transcoder through a small protocol that every ``circuitlab.sparse`` coder with a
linear encoder (relu, topk, batchtopk, jumprelu) offers: ``hook_in`` / ``hook_out`` (the sites it
reads and writes), ``pre`` / ``activate`` / ``encode`` / ``decode`` / ``skip_output``,
``encoder_input`` with the columns of ``W_enc`` and ``b_enc`` (a feature's pre-activation is
linear in the input, which the graph's edges need), a feature's decoder row ``W_dec[f]`` and
``b_dec``. Files are read and written by ``circuitlab.sparse.files`` (SAE Lens layout), quick
coders come from ``circuitlab.sparse.quick`` (``graphs.fit``), and bundled ones are found by
``circuitlab.sparse.bundled``. This module only groups coders by layer and checks that they fit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from circuitlab.sparse.base import SparseCoder
from circuitlab.sparse.bundled import search_folders
from circuitlab.sparse.files import CFG_FILE, load_coder, load_config, save_coder
from circuitlab.engine.sites import hook_name, parse_hook
from circuitlab.sparse.splice import site_layer

READ_SITE = "ln2.out"
"""Default read site of quick transcoders (``graphs.fit``): the MLP's input after its norm."""
WRITE_SITE = "mlp_out"
"""Write site: the MLP's output joining the residual stream."""


def _check(coder: SparseCoder) -> int:
    """The layer ``coder`` replaces; ValueError unless graphs can use it."""
    if not isinstance(coder, SparseCoder):
        raise TypeError(f"{type(coder).__name__} is not a circuitlab.sparse coder: load transcoders with "
                        "circuitlab.sparse.load_coder or circuitlab.graphs.load_transcoders")
    if coder.tied or coder.cfg.n_sources != 1 or coder.cfg.n_targets_ != 1:
        raise ValueError(f"a {coder.cfg.arch} coder with {coder.cfg.n_sources} source(s) cannot be a graph's "
                         "transcoder: use one reading one site with its own encoder (relu, topk, batchtopk, jumprelu)")
    layer = site_layer(coder.hook_out)
    if coder.hook_out != hook_name(WRITE_SITE, layer):
        raise ValueError(f"layer {layer}: transcoders must write {hook_name(WRITE_SITE, layer)}, "
                         f"got {coder.hook_out}")
    return layer


@dataclass
class TranscoderSet:
    """One transcoder (a ``SparseCoder``) per layer, ordered by layer; a collection, not a coder.

    The coders are held frozen (no gradients): graphs differentiate the model, not the coders."""

    layers: list[SparseCoder]
    name: str = "transcoders"
    """Identifier written to exported graphs (Neuronpedia's ``scan``)."""
    sources: list[str] = field(default_factory=list)
    """Where each layer's transcoder came from (folders), for metadata."""

    def __post_init__(self) -> None:
        by_layer = sorted(((_check(c), c) for c in self.layers), key=lambda lc: lc[0])
        if [l for l, _ in by_layer] != list(range(len(by_layer))):
            raise ValueError(f"need one transcoder for each layer 0..L-1, got layers {[l for l, _ in by_layer]}")
        self.layers = [c.requires_grad_(False) for _, c in by_layer]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> SparseCoder:
        return self.layers[i]

    def check(self, model) -> None:
        """Raise unless the set covers every layer of ``model`` with matching widths."""
        if len(self.layers) != model.n_layers:
            raise ValueError(f"{len(self.layers)} transcoders for a {model.n_layers}-layer model")
        for l, t in enumerate(self.layers):
            if t.W_dec.shape[1] != model.d_model:
                raise ValueError(f"layer {l}: decoder width {t.W_dec.shape[1]} != d_model {model.d_model}")

    def to(self, device=None, dtype=None) -> "TranscoderSet":
        for t in self.layers:
            t.to(device=device, dtype=dtype)
        return self


def as_transcoders(obj, name: str = "transcoders") -> TranscoderSet:
    """A TranscoderSet from a set, a folder path, or a list of sparse coders (copied, so moving
    or freezing them for a graph leaves the caller's coders alone)."""
    if isinstance(obj, TranscoderSet):
        return obj
    if isinstance(obj, (str, Path)):
        return load_transcoders(obj)
    return TranscoderSet([copy.deepcopy(c) for c in obj], name=name)


def _writes_mlp_out(folder: Path) -> bool:
    try:
        parsed = parse_hook(load_config(folder).hook_out_)
        return parsed is not None and parsed[0] == WRITE_SITE
    except (OSError, ValueError, KeyError):
        return False


def load_transcoders(folder: str | Path, name: Optional[str] = None) -> TranscoderSet:
    """Every per-layer transcoder folder under ``folder`` (one level down, or ``folder`` itself);
    coders that do not write the MLP output (SAEs in the same folder) are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no transcoder folder at {folder}")
    subs = [folder] if (folder / CFG_FILE).exists() else sorted(p for p in folder.iterdir() if (p / CFG_FILE).exists())
    if not subs:
        raise FileNotFoundError(f"{folder}: no per-layer transcoder folders (cfg.json + sae_weights.safetensors)")
    subs = [p for p in subs if _writes_mlp_out(p)]  # skip SAEs and other coders sharing the folder
    if not subs:
        raise FileNotFoundError(f"{folder}: no transcoder writing an MLP's output ({WRITE_SITE})")
    return TranscoderSet([load_coder(p) for p in subs], name=name or folder.name, sources=[str(p) for p in subs])


def save_transcoders(ts: TranscoderSet, folder: str | Path) -> Path:
    """Write each layer's coder to ``folder/layer_{l}/`` (``circuitlab.sparse.save_coder``)."""
    folder = Path(folder)
    for l, t in enumerate(ts.layers):
        save_coder(t, folder / f"layer_{l}")
    return folder


def find_transcoders(model_name: str, roots: Sequence[str | Path] = ()) -> Optional[Path]:
    """The first folder of ``circuitlab.sparse.bundled.search_folders`` (``roots``,
    ``$CIRCUITLAB_CODERS``, the bundled coders) holding a transcoder for every layer, or None."""
    for folder in search_folders(model_name, roots):
        try:
            load_transcoders(folder)
            return folder
        except (FileNotFoundError, ValueError, KeyError):
            continue
    return None
