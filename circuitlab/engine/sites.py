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

HOOKS: dict[str, str] = {
    # the residual stream and what each block adds to it
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_in": "blocks.{layer}.hook_attn_in",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    # attention: per-head values [batch, pos, head, d_head]; patterns and scores [batch, head, q, k]
    "heads": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "rot_q": "blocks.{layer}.attn.hook_rot_q",
    "rot_k": "blocks.{layer}.attn.hook_rot_k",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    # MLP: its (normalised) input, gate pre-activation, linear branch, neurons
    "mlp_in": "blocks.{layer}.mlp.hook_in",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_pre_linear": "blocks.{layer}.mlp.hook_pre_linear",
    "neurons": "blocks.{layer}.mlp.hook_post",
    # a spliced sparse coder's latents
    "latents": "blocks.{layer}.hook_latents",
    # outside the blocks
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
}
"""Hook point -> legacy TransformerLens hook name; ``{layer}`` marks a point inside a block."""

NORMS: dict[str, str] = {
    "ln1": "blocks.{layer}.ln1",
    "ln2": "blocks.{layer}.ln2",
    "ln1_post": "blocks.{layer}.ln1_post",
    "ln2_post": "blocks.{layer}.ln2_post",
    "q_norm": "blocks.{layer}.attn.q_norm",
    "k_norm": "blocks.{layer}.attn.k_norm",
    "ln_final": "ln_final",
}
"""Norm -> its module path in the bridge. Each norm has four hook points, ``NAME.in``,
``NAME.scale`` (the normaliser), ``NAME.normalized`` (before the gain) and ``NAME.out``."""
NORM_POINTS = ("in", "scale", "normalized", "out")
HOOKS.update({f"{norm}.{point}": f"{path}.hook_{point}" for norm, path in NORMS.items() for point in NORM_POINTS})

# family -> (hook name template, index dims after [batch, pos])
# "head" dims index heads, "unit" dims index neurons/latents, "vector" dims are whole vectors.
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "resid_pre": (HOOKS["resid_pre"], ()),
    "resid_mid": (HOOKS["resid_mid"], ()),
    "resid_post": (HOOKS["resid_post"], ()),
    "attn_out": (HOOKS["attn_out"], ()),
    "mlp_out": (HOOKS["mlp_out"], ()),
    "heads": (HOOKS["heads"], ("head",)),
    "q": (HOOKS["q"], ("head",)),
    "k": (HOOKS["k"], ("head",)),
    "v": (HOOKS["v"], ("head",)),
    "pattern": (HOOKS["pattern"], ("head",)),
    "neurons": (HOOKS["neurons"], ("unit",)),
    "latents": (HOOKS["latents"], ("unit",)),
}
VECTOR_FAMILIES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_FAMILIES = ("heads", "q", "k", "v", "pattern")
UNIT_FAMILIES = ("neurons", "latents")
QUERY_AXIS_POINTS = ("pattern", "attn_scores")
"""Points shaped [batch, head, query, key]: their positions are on axis 2, not 1."""


def hook_name(site: str, layer: Optional[int] = None) -> str:
    """The TransformerLens (legacy) hook name of ``site`` at block ``layer``: the only place
    hook names are spelt. ``site`` is a node family (``heads``, ``resid_pre`` ...), another
    point of :data:`HOOKS` (``rot_q``, ``mlp_pre``, ``embed`` ...) or a norm point
    (``ln1.scale``, ``ln_final.in``); points outside the blocks take no layer."""
    template = HOOKS.get(site)
    if template is None:
        others = [h for h in HOOKS if h not in FAMILIES and h.split(".")[0] not in NORMS]
        raise ValueError(f"unknown site {site!r}; valid families are: {', '.join(FAMILIES)}; other "
                         f"hook points: {', '.join(others)}; norm points NORM.{{{','.join(NORM_POINTS)}}} "
                         f"for NORM in {', '.join(NORMS)}")
    if "{layer}" not in template:
        if layer is not None:
            raise ValueError(f"hook point {site!r} is outside the blocks; call hook_name({site!r}) without a layer")
        return template
    if layer is None:
        raise ValueError(f"hook point {site!r} is inside a block; give its layer, e.g. hook_name({site!r}, 0)")
    return template.format(layer=layer)


def norm_path(norm: str, layer: Optional[int] = None) -> str:
    """The bridge module path of a norm (``ln1`` of block 3 -> ``blocks.3.ln1``)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms are: {', '.join(NORMS)}")
    hook_name(f"{norm}.in", layer)  # the same layer rules as its hook points
    return NORMS[norm].format(layer=layer)


def parse_hook(name: str) -> Optional[tuple[str, Optional[int]]]:
    """The inverse of :func:`hook_name`: ``blocks.3.attn.hook_z`` -> ``('heads', 3)``,
    ``hook_embed`` -> ``('embed', None)``; None for a name not spelt by :func:`hook_name`."""
    for point, pattern in _PARSE:
        m = pattern.fullmatch(name)
        if m:
            return point, (int(m.group(1)) if m.groups() else None)
    return None


_PARSE = [(p, re.compile(re.escape(t).replace(re.escape("{layer}"), r"(\d+)"))) for p, t in HOOKS.items()]


def position_axis(hook: str) -> int:
    """The axis of a hook's activation that indexes positions: 2 (queries) for attention
    patterns and scores [batch, head, query, key], 1 for everything else."""
    parsed = parse_hook(hook)
    return 2 if parsed is not None and parsed[0] in QUERY_AXIS_POINTS else 1


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
