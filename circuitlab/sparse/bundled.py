"""Coders that ship with the package, and the one search for a model's coders.

Why one place: the demo, ``circuitlab graph`` and the notebooks all look coders up by model
name. ``circuitlab train saes/configs/<model>.toml`` writes them into the package
(``circuitlab/sparse/pretrained/<model>/<coder>/``), so an installed circuitlab finds them; real
models' coders, too large to ship, are trained into the user cache (:func:`trained_folder`) and
found there; other folders are searched only when named (``roots``, or ``$CIRCUITLAB_CODERS``),
never the source checkout or the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from circuitlab.sparse.base import SparseCoder

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
"""Bundled coders: ``PRETRAINED/<model>/<coder>/`` (SAE Lens layout)."""
ENV = "CIRCUITLAB_CODERS"
"""Environment variable: folders of coder folders to search first (``os.pathsep``-separated)."""


def trained_folder(model_name: str) -> Path:
    """``coders/<model>`` under :func:`circuitlab.io.user_home` (default ``~/.cache/circuitlab/coders/<model>``):
    where coders too large to ship with the package are trained to (real models' configs write
    there)."""
    from circuitlab.io import user_home

    return user_home() / "coders" / Path(model_name).name


def search_folders(model_name: str, roots: Sequence[str | Path] = ()) -> list[Path]:
    """Existing folders that may hold coder folders for ``model_name``, in search order:
    ``roots``, then ``$CIRCUITLAB_CODERS``, then the bundled ``pretrained/<model>``, then
    :func:`trained_folder`."""
    cands = [Path(r).expanduser() for r in roots]
    cands += [Path(p).expanduser() for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    cands.append(PRETRAINED / Path(model_name).name)
    cands.append(trained_folder(model_name))
    return [c for c in dict.fromkeys(cands) if c.is_dir()]


def find_coder(model_name: str, kind: str = "resid", layer: Optional[int] = None) -> Optional[SparseCoder]:
    """A coder for ``model_name`` whose folder is named ``*_<kind>_L<layer>`` ('resid' SAE or
    'transcoder'), the middle layer by default; None when there is none."""
    from circuitlab.sparse.files import CFG_FILE, load_coder

    for root in search_folders(model_name):
        found = sorted(p for p in root.iterdir() if p.is_dir() and f"_{kind}_L" in p.name and (p / CFG_FILE).exists())
        if not found:
            continue
        if layer is None:
            layer = len(found) // 2
        pick = [p for p in found if p.name.endswith(f"_L{layer}")] or found
        return load_coder(pick[0])
    return None
