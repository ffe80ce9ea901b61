"""The component graph edges live on: who writes into the residual stream, who reads it.

Every component reads the sum of all earlier writes, so an edge u -> v is "u's write as seen by
v's input". *Senders* write: the token embedding (with position embeddings, which never differ
between clean and corrupted prompts), each attention head (z W_O, without the shared bias b_O),
each MLP. *Receivers* read: each head's query, key and value input separately (under grouped-
query attention one key and one value receiver per key/value head, matching the engine's
``k``/``v`` node convention), each MLP's input, and the logits. Edge u -> v exists when u runs
before v: an earlier layer, or a head feeding its own layer's MLP in sequential blocks (not in
parallel-attention blocks such as GPT-NeoX, whose MLP reads the layer input).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sender:
    """A component that writes into the residual stream."""

    kind: str
    """'embed', 'head' or 'mlp'."""
    layer: int
    """Block index; -1 for the embedding."""
    head: int | None = None
    """Head index for 'head' senders."""

    def __str__(self) -> str:
        if self.kind == "embed":
            return "embed"
        return f"L{self.layer}.H{self.head}" if self.kind == "head" else f"L{self.layer}.mlp"


@dataclass(frozen=True)
class Receiver:
    """A component input that reads the residual stream."""

    kind: str
    """'q', 'k', 'v', 'mlp' or 'logits'."""
    layer: int
    """Block index; n_layers for the logits."""
    head: int | None = None
    """Query head for 'q'; key/value head (hook_k/hook_v head axis) for 'k' and 'v'."""

    def __str__(self) -> str:
        if self.kind == "logits":
            return "logits"
        if self.kind == "mlp":
            return f"L{self.layer}.mlp"
        return f"L{self.layer}.H{self.head}.{self.kind}"


@dataclass
class ComponentGraph:
    """Senders, receivers and which (sender, receiver) pairs are edges."""

    senders: list[Sender]
    """Writers in order: embed, then per layer its heads and its MLP (the order of write tensors)."""
    receivers: list[Receiver]
    """Readers in order: per layer q heads, k heads, v heads, MLP; then the logits."""
    mask: torch.Tensor
    """[senders, receivers] bool: True where the pair is an edge."""
    n_layers: int
    """Blocks in the model (the logits receiver sits at this layer)."""
    parallel: bool = False
    """Parallel attention/MLP blocks: a head does not feed its own layer's MLP."""
    _s_index: dict = field(default_factory=dict, repr=False)
    _r_index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._s_index = {str(s): i for i, s in enumerate(self.senders)}
        self._r_index = {str(r): i for i, r in enumerate(self.receivers)}

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def sender(self, label: str) -> int:
        if label not in self._s_index:
            raise KeyError(f"no sender {label!r}; senders look like 'embed', 'L0.H3', 'L1.mlp'")
        return self._s_index[label]

    def receiver(self, label: str) -> int:
        if label not in self._r_index:
            raise KeyError(f"no receiver {label!r}; receivers look like 'L1.H0.q', 'L2.H1.v', 'L1.mlp', 'logits'")
        return self._r_index[label]

    def edge_index(self, label: str) -> tuple[int, int]:
        """(sender, receiver) indices of an edge label 'L0.H1->L1.H0.k'."""
        if "->" not in label:
            raise ValueError(f"edge labels look like 'L0.H1->L1.H0.k', not {label!r}")
        s, r = label.split("->", 1)
        i, j = self.sender(s.strip()), self.receiver(r.strip())
        if not bool(self.mask[i, j]):
            raise ValueError(f"{label!r} is not an edge: the sender does not run before the receiver")
        return i, j

    def edge_label(self, i: int, j: int) -> str:
        return f"{self.senders[i]}->{self.receivers[j]}"

    def edges(self) -> list[tuple[int, int]]:
        """All (sender, receiver) index pairs that are edges, sender-major."""
        return [tuple(x) for x in self.mask.nonzero().tolist()]

    def edge_labels(self) -> list[str]:
        return [self.edge_label(i, j) for i, j in self.edges()]

    def senders_before(self, receiver: Receiver) -> list[int]:
        j = self._r_index[str(receiver)]
        return self.mask[:, j].nonzero().flatten().tolist()

    def receivers_at(self, layer: int) -> list[int]:
        return [j for j, r in enumerate(self.receivers) if r.layer == layer]

    def node_labels(self) -> list[str]:
        return [str(s) for s in self.senders]


def component_graph(model) -> ComponentGraph:
    """The graph of ``model``: raises for models whose head writes are not additive."""
    if getattr(model, "post_attn_norm", False):
        raise ValueError(
            f"model {model.name!r} normalises the attention output before the residual add "
            "(Gemma-2's ln1_post), so a head's write is not additive and edges between single "
            "heads are not defined; use node-level methods (cl.patch) for this model"
        )
    L, H, Hkv = model.n_layers, model.n_heads, model.heads_in("k")
    senders = [Sender("embed", -1)]
    for l in range(L):
        senders += [Sender("head", l, h) for h in range(H)]
        senders.append(Sender("mlp", l))
    receivers: list[Receiver] = []
    for l in range(L):
        receivers += [Receiver("q", l, h) for h in range(H)]
        receivers += [Receiver("k", l, h) for h in range(Hkv)]
        receivers += [Receiver("v", l, h) for h in range(Hkv)]
        receivers.append(Receiver("mlp", l))
    receivers.append(Receiver("logits", L))
    parallel = bool(model.parallel_attn_mlp)
    mask = torch.zeros(len(senders), len(receivers), dtype=torch.bool)
    for i, s in enumerate(senders):
        for j, r in enumerate(receivers):
            if s.kind == "embed" or r.layer > s.layer:
                mask[i, j] = True
            elif r.layer == s.layer and s.kind == "head" and r.kind == "mlp" and not parallel:
                mask[i, j] = True
    return ComponentGraph(senders, receivers, mask, L, parallel)
