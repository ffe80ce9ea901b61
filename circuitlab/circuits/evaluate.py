"""Circuit evaluation: ablate everything outside a circuit and measure what is left.

The circuit runs on the clean prompts; every node (or edge) outside it takes a reference value:
``resample`` -- the corrupted prompt's own value (per prompt and position), or ``mean`` -- the
mean over a reference set of prompts, per position. Faithfulness
F(C) = (m(C) - m(empty)) / (m(M) - m(empty)), with m(M) the unablated clean run and m(empty)
everything ablated; the metric's normalisation is affine and cancels. Many circuits are
evaluated as copies of the batch in one pass (see circuitlab.circuits.ablation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from circuitlab.circuits.ablation import edge_ablation_hooks, replace_hook
from circuitlab.circuits.circuit import Circuit, Scores, ranking
from circuitlab.circuits.edges import Readers, sender_hooks, writes_from_cache
from circuitlab.circuits.graph import ComponentGraph, component_graph
from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits, gather_positions, run_to_final
from circuitlab.engine.sites import hook_name
from circuitlab.io import atomic_write, check_format, format_tag, result_files

ABLATIONS = ("resample", "mean")


@dataclass
class AblationConfig:
    """How components outside a circuit are replaced."""

    mode: str = "resample"
    """'resample': each prompt's corrupted value; 'mean': the mean over ``reference`` prompts."""
    reference: Optional[torch.Tensor] = None
    """[prompts, pos] token ids whose per-position mean is used by 'mean' (default: the task's
    corrupted prompts). Must be at least as long as the task's prompts."""
    circuits_per_pass: int = 8
    """Circuits evaluated together as copies of the batch."""

    def __post_init__(self) -> None:
        if self.mode not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.mode!r}; choose from {ABLATIONS}")


class Evaluator:
    """The reference values and baselines for evaluating many circuits on one task."""

    def __init__(self, model, task, ablation: AblationConfig | str = "resample",
                 graph: Optional[ComponentGraph] = None):
        self.model, self.task = model, task
        self.cfg = AblationConfig(ablation) if isinstance(ablation, str) else ablation
        self.graph = graph or component_graph(model)
        self.readers = Readers.of(model)
        self.base = task.clean_tokens
        B, T = self.base.shape
        ref_tokens = task.corrupt_tokens if self.cfg.reference is None else self.cfg.reference.to(self.base.device)
        if ref_tokens.shape[1] < T:
            raise ValueError(f"reference prompts have {ref_tokens.shape[1]} positions; the task needs {T}")
        ref_tokens = ref_tokens[:, :T]
        c = capture(model, ref_tokens, sender_hooks(model))
        if self.cfg.mode == "mean":
            c = {k: v.mean(0, keepdim=True) for k, v in c.items()}
        self.ref_nodes = c
        self.ref_writes = writes_from_cache(model, self.readers, c)
        self.rows = torch.arange(B, device=self.base.device)
        with torch.no_grad():
            self.full = self._metric(run_to_final(model, self.base))
        self._empty: dict[str, torch.Tensor] = {}

    def _metric(self, final: torch.Tensor) -> torch.Tensor:
        k = final.shape[0] // self.base.shape[0]
        rows = self.rows.repeat(k)
        m = self.task.metric
        acc = torch.promote_types(torch.float32, final.dtype)
        return m.per_prompt(final_logits(self.model, gather_positions(final, m.positions, rows)), rows).to(acc)

    # ----- masks
    def _positions(self, pos: Optional[str]) -> Optional[torch.Tensor]:
        B = self.base.shape[0]
        if pos is None:
            return None
        if pos.isdigit():
            return torch.full((B,), int(pos), dtype=torch.long)
        if pos not in self.task.roles:
            raise ValueError(f"unknown position {pos!r}; use an integer or a role of the task: {list(self.task.roles)}")
        return self.task.roles[pos].cpu().long()

    def node_keep(self, circuits: Sequence[Circuit]) -> dict[str, torch.Tensor]:
        """{hook: bool [K, B, T, X]} where nodes are kept."""
        K, (B, T) = len(circuits), self.base.shape
        L, H = self.model.n_layers, self.model.n_heads
        keep = {hook_name("resid_pre", 0): torch.zeros(K, B, T, 1, dtype=torch.bool)}
        for l in range(L):
            keep[hook_name("heads", l)] = torch.zeros(K, B, T, H, dtype=torch.bool)
            keep[hook_name("mlp_out", l)] = torch.zeros(K, B, T, 1, dtype=torch.bool)
        b = torch.arange(B)
        for k, c in enumerate(circuits):
            for item in c.items:
                name, _, pos = item.partition("@")
                hook, x = self._node_site(name)
                p = self._positions(pos or None)
                if p is None:
                    keep[hook][k, :, :, x] = True
                else:
                    keep[hook][k, b, p, x] = True
        return {h: v.to(self.base.device) for h, v in keep.items()}

    def _node_site(self, name: str) -> tuple[str, int]:
        if name == "embed":
            return hook_name("resid_pre", 0), 0
        i = self.graph.sender(name)
        s = self.graph.senders[i]
        if s.kind == "head":
            return hook_name("heads", s.layer), s.head
        return hook_name("mlp_out", s.layer), 0

    def edge_ablate(self, circuits: Sequence[Circuit]) -> torch.Tensor:
        """[K, S, R] (or [K, T, S, R] when any edge has a position) float, 1 = ablated."""
        K, T = len(circuits), self.base.shape[1]
        per_pos = any("@" in e for c in circuits for e in c.items)
        S, R = self.graph.mask.shape
        keep = torch.zeros(K, T, S, R, dtype=torch.bool) if per_pos else torch.zeros(K, S, R, dtype=torch.bool)
        for k, c in enumerate(circuits):
            for item in c.items:
                label, _, pos = item.partition("@")
                i, j = self.graph.edge_index(label)
                if pos:
                    if not pos.isdigit():
                        raise ValueError(f"edge positions must be integers, not {pos!r}")
                    keep[k, int(pos), i, j] = True
                elif per_pos:
                    keep[k, :, i, j] = True
                else:
                    keep[k, i, j] = True
        return (~keep).to(self.model.dtype).to(self.base.device)

    # ----- runs
    def per_prompt(self, circuits: Sequence[Circuit]) -> torch.Tensor:
        """[K, B] metric of each circuit on each prompt."""
        if not circuits:
            return torch.empty(0, self.base.shape[0])
        kinds = {c.kind for c in circuits}
        if len(kinds) > 1:
            raise ValueError("evaluate node circuits and edge circuits in separate calls")
        out = []
        step = max(1, self.cfg.circuits_per_pass)
        for a in range(0, len(circuits), step):
            chunk = list(circuits[a : a + step])
            k = len(chunk)
            if chunk[0].kind == "nodes":
                keep = self.node_keep(chunk)
                hooks = [(h, replace_hook(keep[h], self.ref_nodes[h], k)) for h in keep]
            else:
                ablate = self.edge_ablate(chunk)
                hooks = edge_ablation_hooks(self.model, self.graph, self.readers, ablate, self.ref_writes)
            with torch.no_grad():
                out.append(self._metric(run_to_final(self.model, self.base.repeat(k, 1), hooks)).view(k, -1))
        return torch.cat(out)

    def empty(self, kind: str) -> torch.Tensor:
        if kind not in self._empty:
            self._empty[kind] = self.per_prompt([Circuit(kind, frozenset())])[0]
        return self._empty[kind]

    def faithfulness(self, circuits: Sequence[Circuit]) -> torch.Tensor:
        """[K] F(C) for each circuit."""
        if not circuits:
            return torch.empty(0)
        pp = self.per_prompt(circuits)
        return faithfulness_from(pp, self.full, self.empty(circuits[0].kind))


def faithfulness_from(per_prompt: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """F from per-prompt values: (mean m_C - mean m_empty) / (mean m_M - mean m_empty)."""
    denom = full.mean() - empty.mean()
    if abs(float(denom)) < 1e-12:
        raise ValueError("the full model and the empty circuit score the same: the corruption does not "
                         "change the behaviour, so faithfulness is undefined")
    return ((per_prompt.mean(-1) - empty.mean()) / denom).cpu()


def bootstrap_ci(per_prompt: torch.Tensor, full: torch.Tensor, empty: torch.Tensor, n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile bootstrap over prompts of F for each row of ``per_prompt`` [K, B]: (lo, hi)."""
    B = full.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, B, (n, B), generator=g)
    P, M, E = per_prompt.cpu().double(), full.cpu().double(), empty.cpu().double()
    e = E[idx].mean(-1)  # [n]
    f = (P[:, idx].mean(-1) - e) / (M[idx].mean(-1) - e)  # [K, n]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=f.dtype)
    lo, hi = torch.nanquantile(f, q, dim=-1)
    return lo.float(), hi.float()


def faithfulness(model, task, circuit: Circuit, ablation: AblationConfig | str = "resample") -> float:
    """F(C) of one circuit."""
    return float(Evaluator(model, task, ablation).faithfulness([circuit])[0])


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-n circuits as n grows, with bootstrap intervals."""

    kind: str
    """'nodes' or 'edges'."""
    sizes: list[int]
    """Circuit sizes evaluated (top-n by |score|)."""
    faithfulness: list[float]
    """F of each top-n circuit."""
    lo: list[float]
    """Lower end of the 95% bootstrap interval over prompts."""
    hi: list[float]
    """Upper end of the interval."""
    total: int
    """Nodes or edges in the full graph scored."""
    ablation: str
    """'resample' or 'mean'."""
    threshold: float = 0.8
    """The faithfulness target for ``smallest``."""
    smallest: Optional[int] = None
    """Fewest top-ranked items with F >= threshold (None: no evaluated size reaches it)."""
    smallest_circuit: Optional[Circuit] = None
    """The top-``smallest`` circuit itself."""
    meta: dict = field(default_factory=dict)
    """Scoring method and the metric of the full model and of the empty circuit."""

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("kind", "sizes", "faithfulness", "lo", "hi", "total", "ablation",
                                            "threshold", "smallest", "meta")}
        d["smallest_circuit"] = sorted(self.smallest_circuit.items) if self.smallest_circuit else None
        d["format"] = format_tag("faithfulness")
        return d

    def save(self, path: str | Path) -> Path:
        path = result_files(path)[0]
        text = json.dumps(self.to_dict(), indent=1, default=str)
        atomic_write(path, lambda p: Path(p).write_text(text))
        return path

    @staticmethod
    def load(path: str | Path) -> "FaithfulnessCurve":
        d = json.loads(result_files(path)[0].read_text())
        check_format(d, "faithfulness", path, "faithfulness curve")
        d.pop("format")
        sc = d.pop("smallest_circuit")
        return FaithfulnessCurve(**d, smallest_circuit=Circuit(d["kind"], frozenset(sc)) if sc is not None else None)

    def plot(self, title: Optional[str] = None):
        from circuitlab.circuits.viz import curve_figure

        return curve_figure(self, title)


def default_sizes(total: int, points: int = 16) -> list[int]:
    """0, then roughly geometric sizes up to ``total``."""
    sizes = {0, total}
    for i in range(points):
        sizes.add(max(1, round(total ** (i / max(1, points - 1)))))
    return sorted(s for s in sizes if s <= total)


def faithfulness_curve(model, task, scores: Scores, sizes: Optional[Sequence[int]] = None,
                       ablation: AblationConfig | str = "resample", threshold: float = 0.8,
                       bootstrap: int = 500, seed: int = 0, evaluator: Optional[Evaluator] = None,
                       refine: bool = True) -> FaithfulnessCurve:
    """F of the top-n circuits for each n in ``sizes`` (default: a geometric grid), bootstrap
    intervals over prompts, and the smallest n with F >= ``threshold`` (refined by bisection
    between the grid points around the first crossing)."""
    ev = evaluator or Evaluator(model, task, ablation)
    kind, ordered = ranking(scores)
    total = len(ordered)
    sizes = sorted(set(default_sizes(total) if sizes is None else [min(int(s), total) for s in sizes]))
    circuits = [Circuit(kind, frozenset(ordered[:n])) for n in sizes]
    pp = ev.per_prompt(circuits)
    empty = ev.empty(kind)
    F = faithfulness_from(pp, ev.full, empty)
    lo, hi = bootstrap_ci(pp, ev.full, empty, bootstrap, seed)
    sizes, F, lo, hi = list(sizes), F.tolist(), lo.tolist(), hi.tolist()
    smallest = next((n for n, f in zip(sizes, F) if f >= threshold), None)
    if smallest is not None and refine:
        i = sizes.index(smallest)
        a, b = (sizes[i - 1] if i > 0 else 0), smallest
        while b - a > 1:  # bisection, assuming F is monotone between the two grid points
            mid = (a + b) // 2
            if float(ev.faithfulness([Circuit(kind, frozenset(ordered[:mid]))])[0]) >= threshold:
                b = mid
            else:
                a = mid
        smallest = b
    best = Circuit(kind, frozenset(ordered[:smallest])) if smallest is not None else None
    method = getattr(scores, "method", "scores")
    return FaithfulnessCurve(kind, sizes, F, lo, hi, total, ev.cfg.mode, threshold, smallest, best,
                             {"method": method, "m_full": float(ev.full.mean()), "m_empty": float(empty.mean())})


def greedy_nodes(model, task, scores: Scores, n: int, pool: Optional[int] = None,
                 ablation: AblationConfig | str = "resample", evaluator: Optional[Evaluator] = None) -> Circuit:
    """Greedy forward selection of nodes by measured faithfulness: each step adds the candidate
    (among the ``pool`` best-scoring nodes) that raises F the most. Costs n x pool circuit runs."""
    ev = evaluator or Evaluator(model, task, ablation)
    kind, ordered = ranking(scores)
    if kind != "nodes":
        raise ValueError("greedy_nodes needs node scores; for edges use circuitlab.circuits.greedy")
    cands = ordered[: pool or len(ordered)]
    chosen: list[str] = []
    for _ in range(min(n, len(cands))):
        rest = [c for c in cands if c not in chosen]
        F = ev.faithfulness([Circuit("nodes", frozenset(chosen + [c])) for c in rest])
        chosen.append(rest[int(F.argmax())])
    return Circuit("nodes", frozenset(chosen))
