"""Sites: the names of the nodes every method talks about.

A *family* is one kind of node (``resid_pre``, ``heads``, ``neurons`` ...). A :class:`Node` is a
family plus indices. Nodes print and parse as short strings so results from different methods,
runs and models line up by label: ``L3.H5`` (head 5 of layer 3, all positions), ``L3.H5@4``
(at position 4), ``L3.H5.q@4`` (its query), ``L2.mlp_out@4``, ``L1.resid_pre``, ``L0.N17@3``
(neuron 17), ``L2.F9@5`` (sparse-coder latent 9).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# family -> (legacy TransformerLens hook name template, index dims after [batch, pos])
# "head" dims index heads, "unit" dims index neurons/latents, "vector" dims are whole vectors.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", ()),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", ()),
    "resid_post": ("blocks.{layer}.hook_resid_post", ()),
    "attn_out": ("blocks.{layer}.hook_attn_out", ()),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", ()),
    "heads": ("blocks.{layer}.attn.hook_z", ("head",)),
    "q": ("blocks.{layer}.attn.hook_q", ("head",)),
    "k": ("blocks.{layer}.attn.hook_k", ("head",)),
    "v": ("blocks.{layer}.attn.hook_v", ("head",)),
    "pattern": ("blocks.{layer}.attn.hook_pattern", ("head",)),
    "neurons": ("blocks.{layer}.mlp.hook_post", ("unit",)),
    "latents": ("blocks.{layer}.hook_latents", ("unit",)),
}
VECTOR_FAMILIES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_FAMILIES = ("heads", "q", "k", "v", "pattern")
UNIT_FAMILIES = ("neurons", "latents")


def hook_name(family: str, layer: int) -> str:
    """The TransformerLens (legacy) hook name that carries ``family`` at ``layer``."""
    check_family(family)
    return FAMILIES[family][0].format(layer=layer)


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(
            f"unknown site family {family!r}; valid families are: {', '.join(FAMILIES)}"
        )


@dataclass(frozen=True)
class Node:
    """One node: a site family at a layer, optionally at a position, head or unit.

    ``pos=None`` means the node spans every position (``L3.H5``). ``head`` is set for
    head families (heads, q, k, v, pattern), ``unit`` for neurons and latents.
    """

    layer: int
    family: str
    head: Optional[int] = None
    unit: Optional[int] = None
    pos: Optional[int | str] = None
    """An absolute position, a role name (``S2``: each prompt's own position), or None."""

    def __post_init__(self) -> None:
        check_family(self.family)
        if self.family in HEAD_FAMILIES and self.head is None:
            raise ValueError(f"a {self.family!r} node needs a head index (e.g. L{self.layer}.H0)")
        if self.family in UNIT_FAMILIES and self.unit is None:
            raise ValueError(f"a {self.family!r} node needs a unit index (e.g. L{self.layer}.N0)")

    @property
    def hook(self) -> str:
        return hook_name(self.family, self.layer)

    def __str__(self) -> str:
        s = f"L{self.layer}."
        if self.family == "heads":
            s += f"H{self.head}"
        elif self.family in HEAD_FAMILIES:
            s += f"H{self.head}.{self.family}"
        elif self.family == "neurons":
            s += f"N{self.unit}"
        elif self.family == "latents":
            s += f"F{self.unit}"
        else:
            s += self.family
        if self.pos is not None:
            s += f"@{self.pos}"
        return s

    @staticmethod
    def parse(label: str) -> "Node":
        """Parse a label such as ``L3.H5@4`` back into a Node (inverse of ``str``)."""
        m = _LABEL.fullmatch(label.strip())
        if not m:
            raise ValueError(
                f"cannot parse node label {label!r}; expected forms like 'L3.H5', 'L3.H5.q@4', "
                "'L2.mlp_out@4', 'L1.resid_pre', 'L0.N17@3', 'L2.F9@5'"
            )
        layer = int(m["layer"])
        pos = m["pos"]
        if pos is not None and pos.isdigit():
            pos = int(pos)
        if m["head"] is not None:
            return Node(layer, m["hfam"] or "heads", head=int(m["head"]), pos=pos)
        if m["unit"] is not None:
            family = "neurons" if m["ukind"] == "N" else "latents"
            return Node(layer, family, unit=int(m["unit"]), pos=pos)
        return Node(layer, m["family"], pos=pos)


_LABEL = re.compile(
    r"L(?P<layer>\d+)\."
    r"(?:H(?P<head>\d+)(?:\.(?P<hfam>q|k|v|pattern))?"
    r"|(?P<ukind>[NF])(?P<unit>\d+)"
    r"|(?P<family>resid_pre|resid_mid|resid_post|attn_out|mlp_out))"
    r"(?:@(?P<pos>\w+))?"
)
