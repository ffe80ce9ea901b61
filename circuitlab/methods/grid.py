"""Which nodes a site specification names, and the grid their results are shaped in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from circuitlab.engine.sites import FAMILIES, HEAD_FAMILIES, VECTOR_FAMILIES, Node

SITE_SPECS = {
    **{f: "by [layer, pos]" for f in VECTOR_FAMILIES},
    "heads": "each head's output by [layer, pos, head]",
    "heads_all": "each head's output over all positions, [layer, head]",
    "q": "query vectors by [layer, pos, head]", "k": "key vectors by [layer, pos, head]",
    "v": "value vectors by [layer, pos, head]",
    "q_all": "[layer, head]", "k_all": "[layer, head]", "v_all": "[layer, head]",
    "neurons": "MLP neurons by [layer, pos, neuron] at chosen positions",
}


def _checked_positions(positions: Sequence[int | str], n_pos: int) -> list[int | str]:
    """``positions`` as a list of in-range token indices and role names."""
    if isinstance(positions, (str, int)):
        raise ValueError(f"positions must be a list (e.g. [{positions!r}]), not {positions!r}")
    import numbers

    pos = [int(p) if isinstance(p, numbers.Integral) and not isinstance(p, bool) else p for p in positions]
    if not pos:
        raise ValueError("positions is an empty list; give token indices or role names (or None for all positions)")
    for p in pos:
        if isinstance(p, bool) or not isinstance(p, (int, str)):
            raise ValueError(f"position {p!r} is neither a token index (int) nor a role name (str)")
        if isinstance(p, int) and not 0 <= p < n_pos:
            raise ValueError(f"position {p} is out of range: prompts have {n_pos} positions (0..{n_pos - 1})")
    return pos


@dataclass
class Grid:
    nodes: list[Node]
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    family: str


def site_grid(model, n_pos: int, sites: str, positions: Optional[Sequence[int | str]] = None,
              layers: Optional[Sequence[int]] = None) -> Grid:
    """Nodes for ``sites`` in layer-major order matching ``shape``."""
    if sites not in SITE_SPECS:
        raise ValueError(f"unknown sites {sites!r}; valid: " + ", ".join(f"{k} ({v})" for k, v in SITE_SPECS.items()))
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    all_pos = sites.endswith("_all")
    fam = sites[:-4] if all_pos else sites
    pos = list(range(n_pos)) if positions is None else _checked_positions(positions, n_pos)
    if fam in VECTOR_FAMILIES:
        nodes = [Node(l, fam, pos=p) for l in layers for p in pos]
        return Grid(nodes, ("layer", "pos"), (len(layers), len(pos)), fam)
    if fam in HEAD_FAMILIES:
        n_h = model.heads_in(fam)
        if all_pos:
            nodes = [Node(l, fam, head=h) for l in layers for h in range(n_h)]
            return Grid(nodes, ("layer", "head"), (len(layers), n_h), fam)
        nodes = [Node(l, fam, head=h, pos=p) for l in layers for p in pos for h in range(n_h)]
        return Grid(nodes, ("layer", "pos", "head"), (len(layers), len(pos), n_h), fam)
    if fam == "neurons":
        if positions is None:
            raise ValueError("neuron sweeps need positions=[...] (ints or role names like 'END'): "
                             "all neurons at all positions is rarely what you want")
        nodes = [Node(l, "neurons", unit=u, pos=p) for l in layers for p in pos for u in range(model.d_mlp)]
        return Grid(nodes, ("layer", "pos", "neuron"), (len(layers), len(pos), model.d_mlp), fam)
    raise ValueError(f"sites {sites!r} ({FAMILIES.get(fam)}) is not supported by sweeps")
