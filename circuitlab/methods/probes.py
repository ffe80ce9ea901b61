"""Linear probes: can a label be read off one site's activations by a linear map?

A probe is multinomial logistic regression trained on activations read with the engine's
cache at one site (``resid_post``, ``attn_out``, ...) of each layer, at one position per prompt.
High probe accuracy alone does not say the model *uses* the information, nor even that the
site encodes it in a simple way: a flexible probe can memorise. Hewitt & Liang's (2019)
control task guards against the second: every input type (a word, a prompt) gets a random
label fixed for that type, and the same probe class is trained on it. Selectivity = accuracy
on the real task - accuracy on the control task; a probe that only memorises identities
scores the same on both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.sites import VECTOR_FAMILIES, hook_name


@dataclass
class ProbeConfig:
    """How a probe is split, regularised and fitted."""

    val_frac: float = 0.2
    """Fraction of examples held out for choosing the weight decay."""
    test_frac: float = 0.2
    """Fraction held out for the reported test accuracy (never used in fitting or choosing)."""
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """L2 penalties on the weights (standardised features; the loss is the mean cross-entropy)
    tried, strongest first; the best validation accuracy (ties: lower validation loss) wins."""
    max_iter: int = 200
    """L-BFGS iterations per fit (full batch)."""
    seed: int = 0
    """Seeds the split and the control task's labels."""


@dataclass
class ProbeDataset:
    """Activations at one site and position for every layer asked, with their labels."""

    acts: torch.Tensor
    """[layer, n, d] float32 on the CPU."""
    labels: list
    """n labels (any hashable values)."""
    layers: list[int]
    """The block of each row of ``acts``."""
    site: str
    """The site family read (resid_post, attn_out, ...)."""
    position: int
    """The token index read in each prompt (negative counts back from each prompt's end)."""
    types: list = field(default_factory=list)
    """n input identities for the control task: by default each prompt's text."""


@dataclass
class Probe:
    """A fitted probe and its accuracy on each split."""

    weight: torch.Tensor
    """[d, n_classes] acting on raw activations: logits = x @ weight + bias."""
    bias: torch.Tensor
    """[n_classes]."""
    classes: list
    """The label of each output column."""
    weight_decay: float
    """The L2 penalty chosen on validation."""
    accuracy: dict[str, float]
    """Accuracy on ``train``, ``val`` and ``test``."""
    chance: float
    """Test accuracy of always answering the most frequent training label."""
    split: dict[str, torch.Tensor]
    """Example indices of ``train``, ``val`` and ``test``."""
    val_accuracy_by_decay: dict[float, float] = field(default_factory=dict)
    """Validation accuracy of every weight decay tried."""

    def predict(self, acts: torch.Tensor) -> list:
        """Predicted labels for activations [n, d]."""
        idx = (acts.float().cpu() @ self.weight + self.bias).argmax(-1)
        return [self.classes[int(i)] for i in idx]


def probe_dataset(model, prompts: Sequence[str], labels: Sequence[Hashable], site: str = "resid_post",
                  layers: Optional[Sequence[int]] = None, position: int = -1,
                  types: Optional[Sequence[Hashable]] = None, batch_size: int = 64) -> ProbeDataset:
    """Activations at ``site`` of each of ``layers`` (default: all) at token ``position`` of every
    prompt (BOS is 0; negative counts back from each prompt's own last token), read with the
    engine's cache. ``types`` (default: the prompt texts) are the identities the control task
    labels; give the word at the probed position for word-level probes."""
    from circuitlab.api import exclusive
    from circuitlab.tasks.tokenize import resolve_positions, right_pad

    if isinstance(prompts, str) or not len(prompts) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of prompt strings")
    labels = _check_labels(labels, len(prompts), "prompts")
    types = list(prompts) if types is None else _check_labels(types, len(prompts), "prompts", what="types")
    if site not in VECTOR_FAMILIES:
        raise ValueError(f"probe site {site!r} is not a vector site; choose one of {', '.join(VECTOR_FAMILIES)}")
    layers = list(range(model.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} are outside this model's blocks 0..{model.n_layers - 1}")
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be an int token index, got {position!r}")
    toks, lengths = right_pad(model.tokenizer, list(prompts))
    toks = toks.to(model.device)
    pos = resolve_positions(position, lengths)
    out_of_range = ((pos < 0) | (pos >= lengths)).nonzero().flatten()
    if len(out_of_range):
        i = int(out_of_range[0])
        raise ValueError(f"position {position} is outside prompt {prompts[i]!r} ({int(lengths[i])} tokens "
                         "with BOS); use an index inside every prompt")
    hooks = [hook_name(site, l) for l in layers]
    chunks = []
    with exclusive(model):
        for i in range(0, len(prompts), batch_size):
            p = pos[i:i + batch_size]
            width = int(p.max()) + 1  # later positions cannot change these activations
            cache = capture(model, toks[i:i + batch_size, :width], hooks)
            rows = torch.arange(len(p))
            chunks.append(torch.stack([cache[h][rows, p.to(cache[h].device)].float().cpu() for h in hooks]))
    return ProbeDataset(torch.cat(chunks, 1), labels, layers, site, position, types)


def split_indices(n: int, config: Optional[ProbeConfig] = None) -> dict[str, torch.Tensor]:
    """A seeded random split of ``range(n)`` into train / val / test (val and test get
    ``floor(frac * n)`` examples, at least one each; train the rest)."""
    config = config or ProbeConfig()
    if not (0 < config.val_frac < 1 and 0 < config.test_frac < 1 and config.val_frac + config.test_frac < 1):
        raise ValueError(f"val_frac={config.val_frac} and test_frac={config.test_frac} must be in (0, 1) "
                         "and sum to less than 1")
    n_val, n_test = max(1, int(n * config.val_frac)), max(1, int(n * config.test_frac))
    if n - n_val - n_test < 2:
        raise ValueError(f"{n} examples leave fewer than 2 for training after {n_val} validation and "
                         f"{n_test} test examples; give more examples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    return {"train": perm[n_val + n_test:], "val": perm[:n_val], "test": perm[n_val:n_val + n_test]}


def train_probe(acts: torch.Tensor, labels: Sequence[Hashable], config: Optional[ProbeConfig] = None,
                split: Optional[dict[str, torch.Tensor]] = None) -> Probe:
    """Fit multinomial logistic regression from ``acts`` [n, d] to ``labels`` on the training
    split, choose the weight decay on validation, report accuracy on every split."""
    config = config or ProbeConfig()
    acts = torch.as_tensor(acts)
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n, d] (one layer; index a ProbeDataset's acts[i]), got shape "
                         f"{tuple(acts.shape)}")
    labels = _check_labels(labels, acts.shape[0], "activation rows")
    x = acts.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ValueError("acts contain NaN or infinite values")
    split = split_indices(len(labels), config) if split is None else split
    classes = list(dict.fromkeys(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    tr, va, te = split["train"], split["val"], split["test"]
    if len(set(y[tr].tolist())) < 2:
        raise ValueError("the training split holds a single class; a probe needs at least two labels "
                         "among the training examples (add examples or change the seed)")
    mean, std = x[tr].mean(0), x[tr].std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    best, start = None, None
    by_decay = {}
    for wd in sorted(config.weight_decays, reverse=True):  # strongest first: each fit warm-starts the next
        w, b = _fit(z[tr], y[tr], len(classes), float(wd), config.max_iter, start)
        start = (w, b)
        logits = z[va] @ w + b
        acc = _acc(logits, y[va])
        loss = float(torch.nn.functional.cross_entropy(logits, y[va]))
        by_decay[float(wd)] = acc
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, float(wd), w, b)
    _, _, wd, w, b = best
    weight = w / std[:, None]
    bias = b - (mean / std) @ w
    accuracy = {k: _acc(x[idx] @ weight + bias, y[idx]) for k, idx in split.items()}
    majority = torch.bincount(y[tr], minlength=len(classes)).argmax()
    chance = float((y[te] == majority).float().mean())
    return Probe(weight, bias, classes, wd, accuracy, chance, split, by_decay)


def control_labels(types: Sequence[Hashable], labels: Sequence[Hashable], seed: int = 0) -> list:
    """Hewitt & Liang's control task: every distinct type gets one random label, fixed for the
    type. The labels are the real per-type labels (each type's first) shuffled across types, so
    the control task has the real task's classes and their frequency over types."""
    labels = _check_labels(labels, len(types), "types")
    first = dict(zip(reversed(list(types)), reversed(labels)))  # each type's first label
    kinds = list(first)
    perm = torch.randperm(len(kinds), generator=torch.Generator().manual_seed(seed))
    assigned = {k: first[kinds[int(j)]] for k, j in zip(kinds, perm)}
    return [assigned[t] for t in types]


@dataclass
class Selectivity:
    """A probe on the real task and the same probe class on its control task."""

    real: Probe
    control: Probe

    @property
    def selectivity(self) -> float:
        """Real-task minus control-task test accuracy."""
        return self.real.accuracy["test"] - self.control.accuracy["test"]


def selectivity(acts: torch.Tensor, labels: Sequence[Hashable], types: Sequence[Hashable],
                config: Optional[ProbeConfig] = None) -> Selectivity:
    """Train the probe on the real labels and on control labels of ``types``, same split and
    settings; see :class:`Selectivity`."""
    config = config or ProbeConfig()
    split = split_indices(len(labels), config)
    real = train_probe(acts, labels, config, split)
    ctrl = control_labels(types, labels, config.seed)
    if len(set(ctrl[int(i)] for i in split["train"])) < 2:
        raise ValueError("the control task puts one label on every training example (all inputs share "
                         "one type?); pass types that vary, e.g. the word at the probed position")
    return Selectivity(real, train_probe(acts, ctrl, config, split))


@dataclass
class LayerProbes:
    """Probe accuracy and selectivity at each layer of one site."""

    layers: list[int]
    site: str
    test_accuracy: list[float]
    control_accuracy: list[float]
    """Test accuracy of the same probe class on the control task (NaN if not run)."""
    selectivity: list[float]
    """test_accuracy - control_accuracy per layer (NaN if not run)."""
    chance: float
    """Test accuracy of answering the most frequent training label."""
    probes: list[Probe]
    """The real-task probe of each layer."""

    def figure(self):
        """Plotly figure: test accuracy, control accuracy and selectivity against layer."""
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_trace(go.Scatter(x=self.layers, y=self.test_accuracy, name="test accuracy", mode="lines+markers"))
        if not all(math.isnan(v) for v in self.control_accuracy):
            fig.add_trace(go.Scatter(x=self.layers, y=self.control_accuracy, name="control task accuracy",
                                     mode="lines+markers"))
            fig.add_trace(go.Scatter(x=self.layers, y=self.selectivity, name="selectivity", mode="lines+markers"))
        fig.add_hline(y=self.chance, line_dash="dot", annotation_text="majority class")
        fig.update_layout(title=f"Linear probe at {self.site} by layer", xaxis_title="layer",
                          yaxis_title="accuracy", yaxis_range=[-0.05, 1.05], legend=dict(orientation="h", y=-0.2))
        return fig


def layer_curve(data: ProbeDataset, config: Optional[ProbeConfig] = None, control: bool = True) -> LayerProbes:
    """Train a probe (and, with ``control``, its control task) on every layer of ``data``."""
    config = config or ProbeConfig()
    test, ctrl, sel, probes = [], [], [], []
    for i in range(len(data.layers)):
        if control:
            s = selectivity(data.acts[i], data.labels, data.types, config)
            probe = s.real
            ctrl.append(s.control.accuracy["test"])
            sel.append(s.selectivity)
        else:
            probe = train_probe(data.acts[i], data.labels, config)
            ctrl.append(float("nan"))
            sel.append(float("nan"))
        probes.append(probe)
        test.append(probe.accuracy["test"])
    return LayerProbes(list(data.layers), data.site, test, ctrl, sel, probes[0].chance, probes)


def probe_layers(model, prompts: Sequence[str], labels: Sequence[Hashable], site: str = "resid_post",
                 layers: Optional[Sequence[int]] = None, position: int = -1,
                 types: Optional[Sequence[Hashable]] = None, config: Optional[ProbeConfig] = None,
                 control: bool = True) -> LayerProbes:
    """Per-layer probe accuracy and control-task selectivity for ``labels`` of ``prompts`` read at
    ``site`` and ``position`` (see :func:`probe_dataset`); ``.figure()`` plots the curve."""
    data = probe_dataset(model, prompts, labels, site, layers, position, types)
    return layer_curve(data, config, control)


def _fit(z: torch.Tensor, y: torch.Tensor, n_classes: int, wd: float, max_iter: int, start=None):
    """Full-batch L-BFGS on mean cross-entropy + wd * |W|^2 (bias unpenalised), from ``start``
    (w, b) or zeros."""
    if start is None:
        start = (torch.zeros(z.shape[1], n_classes), torch.zeros(n_classes))
    w, b = (t.clone().requires_grad_(True) for t in start)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + wd * (w * w).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    small = z.numel() * n_classes < 10_000_000
    if small:  # intra-op threads only add overhead to these tiny steps (x100 on a busy CPU)
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        if small:
            torch.set_num_threads(threads)
    return w.detach(), b.detach()


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).float().mean())


def _check_labels(labels, n: int, against: str, what: str = "labels") -> list:
    if isinstance(labels, str):
        raise ValueError(f"{what} must be a sequence with one entry per example, not a string")
    labels = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} {what} for {n} {against}; give exactly one per example")
    if what == "labels" and len(set(labels)) < 2:
        got = f"every label is {labels[0]!r}" if labels else "there are no labels"
        raise ValueError(f"{got}; a probe needs at least two classes")
    return labels
