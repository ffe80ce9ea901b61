"""Supervised feature dictionaries on IOI, and a sparse coder scored against them.

Why: FVU and CE recovered say how well a coder reconstructs, not whether its latents are the
variables the model computes with. On indirect object identification those variables are known
(the indirect object's name ``io``, the subject's name ``s``, the name order ``order``: ABBA or
BABA), so a dictionary can be built from the labels alone (Makelov, Lange & Nanda 2024,
"Towards Principled Evaluations of Sparse Autoencoders for Interpretability and Control"). At
one site and token position, each attribute value v gets the vector
``u[a, v] = E[x | a = v] - E[x]`` and a prompt is reconstructed as ``E[x] + sum_a u[a, v_a]``.
That dictionary is the yardstick; a coder is measured against it on the paper's three axes:

- approximation: patching a reconstruction in for the activation should keep the logit
  difference (sufficiency), and removing what it explains (``x - x_hat + E[x]``) should remove
  it as mean ablation does (necessity); both are 1 at best, relative to mean ablation.
- control: change one attribute of a prompt (a new IO name, say) by editing the fewest latents,
  chosen greedily to move the activation toward the counterfactual prompt's activation; success
  is the model's answer switching to the new name, against the number of latents edited, beside
  the supervised edit ``x - u[a, old] + u[a, new]``. An edit at one site can at best do what
  patching in the counterfactual's own activation does, so edits are also scored as a share of
  that patch's effect (the only score for s and order, which do not change the answer).
- interpretability: for each attribute value, the latent whose activity best predicts it (F1 of
  "latent active" against "prompt has this value").

Every forward pass goes through the engine (``capture``, ``run_to_final`` with hook pairs); the
dictionary, the greedy edits and the F1 scores are plain tensor functions, testable without a
model.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import torch

ATTRIBUTES = ("io", "s", "order")
"""IOI attributes: the indirect object's name, the subject's name, ABBA/BABA name order."""
EDIT_BUDGET = 2
"""Latents a supervised edit changes (one attribute vector out, one in): the control column."""
MIN_SPAN = 0.1
"""Sufficiency and necessity are left undefined (NaN) where mean-ablating the site moves the
logit difference by less than this fraction of its clean value, and edit effects where patching
in the counterfactual's activation moves it by less than this fraction of what the
counterfactual prompt does: the site does not carry the task (or the attribute) there, and the
ratios would divide by noise."""


class Coder(Protocol):
    """What is scored: a SparseCoder, or anything with the same reading/writing surface."""

    W_dec: torch.Tensor
    hook_in: str
    hook_out: str

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, f: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- the dictionary
@dataclass
class SupervisedDictionary:
    """A mean and one vector per attribute value, at one site and position."""

    mean: torch.Tensor
    """[d] the mean activation over the prompts it was fitted on."""
    vectors: torch.Tensor
    """[n_keys, d] ``u[a, v] = E[x | a = v] - E[x]``, one row per key."""
    keys: list[tuple[str, str]]
    """(attribute, value) of each row, grouped by attribute."""
    hook: str = ""
    """Hook name the activations were read at."""
    role: str = ""
    """Token position (IOI role) they were read at."""

    def values(self, attribute: str) -> list[str]:
        """The values of ``attribute`` that have a vector."""
        return [v for a, v in self.keys if a == attribute]

    @property
    def attributes(self) -> list[str]:
        return list(dict.fromkeys(a for a, _ in self.keys))

    def index(self, attribute: str, values: Sequence[str]) -> torch.Tensor:
        """Row of ``(attribute, v)`` for each v (ValueError naming a value without a vector)."""
        rows = {k: i for i, k in enumerate(self.keys)}
        missing = sorted({v for v in values if (attribute, v) not in rows})
        if missing:
            raise ValueError(f"the dictionary has no vector for {attribute}={missing[:5]} (values seen when "
                             f"fitting: {len(self.values(attribute))}); fit on more prompts (n_fit) so every "
                             "value occurs")
        return torch.tensor([rows[(attribute, v)] for v in values], dtype=torch.long)

    def reconstruct(self, labels: dict[str, Sequence[str]]) -> torch.Tensor:
        """[n, d] ``E[x] + sum_a u[a, v_a]`` for prompts with attribute values ``labels``."""
        missing = [a for a in self.attributes if a not in labels]
        if missing:
            raise ValueError(f"labels lack attributes {missing}; give a value list for each of {self.attributes}")
        n = len(next(iter(labels.values())))
        out = self.mean.expand(n, -1).clone()
        for a in self.attributes:
            out += self.vectors[self.index(a, labels[a])]
        return out

    def edit(self, x: torch.Tensor, attribute: str, old: Sequence[str], new: Sequence[str]) -> torch.Tensor:
        """The supervised edit ``x - u[a, old] + u[a, new]`` (rows of x: one per prompt)."""
        return x - self.vectors[self.index(attribute, old)].to(x) + self.vectors[self.index(attribute, new)].to(x)

    def as_coder(self) -> "SupervisedCoder":
        """The dictionary as a coder: one latent per (attribute, value)."""
        return SupervisedCoder(self)


def fit_dictionary(x: torch.Tensor, labels: dict[str, Sequence[str]], hook: str = "",
                   role: str = "") -> SupervisedDictionary:
    """The supervised dictionary of activations ``x`` [n, d] whose prompts have attribute values
    ``labels`` ({attribute: [value per row]}): for every value seen, the conditional mean minus
    the overall mean. Exact on activations that are a mean plus one vector per attribute value
    when the values are balanced (each value's vectors average to zero over the others)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [rows, d] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not labels:
        raise ValueError("labels is empty; give {attribute: [value per row]} for at least one attribute")
    for a, vals in labels.items():
        if len(vals) != x.shape[0]:
            raise ValueError(f"labels[{a!r}] has {len(vals)} values but x has {x.shape[0]} rows; give one per row")
    x = x.detach().double()
    mean = x.mean(0)
    keys, rows = [], []
    for a, vals in labels.items():
        for v in sorted(set(map(str, vals))):
            sel = torch.tensor([str(u) == v for u in vals])
            keys.append((a, v))
            rows.append(x[sel].mean(0) - mean)
    return SupervisedDictionary(mean.float(), torch.stack(rows).float(), keys, hook, role)


class SupervisedCoder:
    """A supervised dictionary used as a coder, so it can be scored like one (the reference row).

    Latent ``(a, v)`` is 1 when the activation's nearest class mean for attribute ``a`` is value
    ``v`` (``argmax_v (x - E[x]).u[a,v] - |u[a,v]|^2 / 2``), else 0; decoding adds the chosen
    vectors to the mean. Editing one attribute is then two latents, and gives exactly the
    supervised edit."""

    def __init__(self, dictionary: SupervisedDictionary):
        self.dictionary = dictionary
        self.W_dec = dictionary.vectors
        self.hook_in = self.hook_out = dictionary.hook
        self.groups = [torch.tensor([i for i, (b, _) in enumerate(dictionary.keys) if b == a])
                       for a in dictionary.attributes]

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dictionary
        u = d.vectors.to(x.device, x.dtype)
        score = (x - d.mean.to(x)) @ u.T - 0.5 * (u * u).sum(-1)
        f = torch.zeros_like(score)
        for g in self.groups:
            g = g.to(x.device)
            best = g[score[..., g].argmax(-1)]
            f.scatter_(-1, best[..., None], 1.0)
        return f

    def decode(self, f: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.dictionary.mean.to(f) + f @ self.W_dec.to(f)


# ------------------------------------------------------------------------- greedy sparse edit
def greedy_edit(x_source: torch.Tensor, f_source: torch.Tensor, f_target: torch.Tensor,
                decoder: torch.Tensor, x_target: torch.Tensor,
                max_latents: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Edit each source activation toward its target by changing at most ``max_latents`` latents.

    A latent i edited moves ``x`` by ``(f_target[i] - f_source[i]) * decoder[i]`` (it takes the
    target's value: switched off, switched on, or rescaled). Each step takes the latent whose move
    brings ``x`` closest to ``x_target`` and stops when none gets closer. Returns the edited
    activations after 1..max_latents steps ([n, d] each) and the latents chosen [n, max_latents]
    (-1 where a row stopped)."""
    if max_latents < 1:
        raise ValueError(f"max_latents must be >= 1, not {max_latents}")
    dec = decoder.to(x_source)
    c = (f_target - f_source).to(x_source)
    avail = c != 0
    norms = (dec * dec).sum(-1)
    x = x_source.clone()
    r = x_target.to(x_source) - x_source
    rows = torch.arange(x.shape[0], device=x.device)
    chosen = torch.full((x.shape[0], max_latents), -1, dtype=torch.long, device=x.device)
    steps = []
    for k in range(max_latents):
        gain = 2 * c * (r @ dec.T) - c * c * norms  # |r|^2 - |r - c_i d_i|^2
        gain = gain.masked_fill(~avail, -math.inf)
        best = gain.argmax(-1)
        ok = gain[rows, best] > 0
        move = (c[rows, best, None] * dec[best]) * ok[:, None]
        x, r = x + move, r - move
        avail[rows[ok], best[ok]] = False
        chosen[ok, k] = best[ok]
        steps.append(x.clone())
    return steps, chosen


# ------------------------------------------------------------------------------- interpretability
def latent_f1(active: torch.Tensor, values: Sequence[str]) -> dict[str, dict]:
    """For each value, the latent whose activity best predicts it: {value: {latent, f1,
    precision, recall}} from ``active`` [n, latents] (bool) and one value per row."""
    if active.shape[0] != len(values):
        raise ValueError(f"active has {active.shape[0]} rows but {len(values)} values were given")
    act = active.double()
    fired = act.sum(0)
    out = {}
    for v in sorted(set(values)):
        y = torch.tensor([u == v for u in values], dtype=torch.float64, device=act.device)
        tp = y @ act
        precision = tp / fired.clamp_min(1)
        recall = tp / y.sum()
        f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
        i = int(f1.argmax())
        out[v] = {"latent": i, "f1": float(f1[i]), "precision": float(precision[i]), "recall": float(recall[i])}
    return out


# ------------------------------------------------------------------------------------ IOI data
@dataclass
class IOIPrompts:
    """Clean IOI prompts as the scores need them: tokens, role positions, names and labels."""

    tokens: torch.Tensor
    """[n, pos] right-padded token ids."""
    lengths: torch.Tensor
    """[n] real lengths; the answer is predicted at lengths - 1."""
    roles: dict[str, torch.Tensor]
    """{S1, IO, S2, END: [n] positions}."""
    answer: torch.Tensor
    """[n] the IO name's token id."""
    wrong: torch.Tensor
    """[n] the subject's token id."""
    labels: dict[str, list[str]]
    """{io, s, order: [value per prompt]}."""
    name_ids: dict[str, int] = field(default_factory=dict)
    """Token id of every name seen."""

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, keep: torch.Tensor) -> "IOIPrompts":
        idx = keep.nonzero().flatten()
        return IOIPrompts(self.tokens[idx], self.lengths[idx], {k: v[idx] for k, v in self.roles.items()},
                          self.answer[idx], self.wrong[idx],
                          {a: [vs[i] for i in idx.tolist()] for a, vs in self.labels.items()}, self.name_ids)


def ioi_prompts(model, n: int, seed: int) -> IOIPrompts:
    """``n`` clean IOI prompts of the bundled task (zoo or real language, by model)."""
    from circuitlab.tasks import ioi

    task = ioi(model, n=n, seed=seed)
    recs = task.prompts
    labels = {"io": [r["io"] for r in recs], "s": [r["s"] for r in recs], "order": [r["order"] for r in recs]}
    toks, roles = task.clean_tokens.cpu(), {k: v.cpu() for k, v in task.roles.items()}
    rows = torch.arange(len(recs))
    ans, wrong = task.answer_ids.cpu(), task.wrong_ids.cpu()
    bad = (toks[rows, roles["IO"]] != ans) | (toks[rows, roles["S1"]] != wrong) | (toks[rows, roles["S2"]] != wrong)
    if bad.any():  # the counterfactual prompts swap name tokens in place
        i = int(bad.nonzero()[0])
        raise ValueError(f"IOI prompt {i} ({recs[i]['clean']!r}) spells a name differently inside the prompt than "
                         "as the answer token; this tokenizer cannot give the token-level counterfactuals")
    names = {r["io"]: int(a) for r, a in zip(recs, ans)} | {r["s"]: int(w) for r, w in zip(recs, wrong)}
    return IOIPrompts(task.clean_tokens, task.lengths, task.roles, task.answer_ids, task.wrong_ids, labels, names)


def counterfactual(p: IOIPrompts, attribute: str, names: Sequence[str], seed: int = 0) -> IOIPrompts:
    """The prompts with one attribute changed, token for token: ``io`` puts a new name (from
    ``names``, never the prompt's IO or S) at the IO position; ``s`` puts one at both subject
    positions; ``order`` swaps the IO and first subject tokens (ABBA <-> BABA)."""
    from circuitlab.validate import check_choice

    check_choice("edit attribute", attribute, ATTRIBUTES)
    tokens, roles = p.tokens.clone(), {k: v.clone() for k, v in p.roles.items()}
    answer, wrong = p.answer.clone(), p.wrong.clone()
    labels = {a: list(v) for a, v in p.labels.items()}
    rows = torch.arange(len(p), device=tokens.device)
    if attribute == "order":
        io, s1 = roles["IO"].clone(), roles["S1"].clone()
        tokens[rows, io], tokens[rows, s1] = p.tokens[rows, s1], p.tokens[rows, io]
        roles["IO"], roles["S1"] = s1, io
        labels["order"] = ["BABA" if o == "ABBA" else "ABBA" for o in p.labels["order"]]
        return IOIPrompts(tokens, p.lengths, roles, answer, wrong, labels, p.name_ids)
    pool = [nm for nm in names if nm in p.name_ids]
    rng = random.Random(seed)
    new = []
    for io, s in zip(p.labels["io"], p.labels["s"]):
        options = [nm for nm in pool if nm not in (io, s)]
        if not options:
            raise ValueError(f"no name left to put in for {attribute}: the dictionary knows {pool}")
        new.append(rng.choice(options))
    ids = torch.tensor([p.name_ids[nm] for nm in new], device=tokens.device)
    if attribute == "io":
        tokens[rows, roles["IO"]] = ids
        answer = ids
    else:
        tokens[rows, roles["S1"]] = ids
        tokens[rows, roles["S2"]] = ids
        wrong = ids
    labels[attribute] = new
    return IOIPrompts(tokens, p.lengths, roles, answer, wrong, labels, p.name_ids)


# ------------------------------------------------------------------------------ model passes
def _site_acts(model, p: IOIPrompts, hooks: Sequence[str], role: str, batch: int) -> list[torch.Tensor]:
    """Activations at each hook at the ``role`` position of every prompt, [n, d] float32 each."""
    from circuitlab.engine.cache import capture

    hooks = list(dict.fromkeys(hooks))
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for i in range(0, len(p), batch):
        toks = p.tokens[i:i + batch]
        pos = p.roles[role][i:i + batch].to(toks.device)
        acts = capture(model, toks, hooks)
        for h in hooks:
            a = acts[h]
            if a.dim() != 3:
                raise ValueError(f"site {h} gives activations of shape {tuple(a.shape)}; choose a site with one "
                                 "vector per position (resid_pre/mid/post, attn_out, mlp_out)")
            out[h].append(a[torch.arange(a.shape[0], device=a.device), pos].float().cpu())
    return [torch.cat(out[h]) for h in hooks]


def _in_out(model, p: IOIPrompts, hook_in: str, hook_out: str, role: str, batch: int):
    """(coder input, site activation) at ``role``: the same tensor for an SAE."""
    if hook_in == hook_out:
        (x,) = _site_acts(model, p, [hook_out], role, batch)
        return x, x
    x_in, x = _site_acts(model, p, [hook_in, hook_out], role, batch)
    return x_in, x


def _logits(model, p: IOIPrompts, ids: torch.Tensor, hook: str = "", role: str = "END",
            values: Optional[torch.Tensor] = None, batch: int = 64) -> torch.Tensor:
    """Logits [n, k] of token ids ``ids`` [n, k] at the answer position, with ``values`` [n, d]
    written over the activation at ``hook`` at each prompt's ``role`` position."""
    from circuitlab.engine.forward import final_logits, run_to_final

    out = []
    for i in range(0, len(p), batch):
        toks = p.tokens[i:i + batch]
        rows = torch.arange(toks.shape[0], device=toks.device)
        hooks = []
        if values is not None:
            hooks = [(hook, _writer(p.roles[role][i:i + batch].to(toks.device), values[i:i + batch]))]
        with torch.no_grad():
            resid = run_to_final(model, toks, hooks)
            end = resid[rows, (p.lengths[i:i + batch] - 1).to(toks.device)]
            logits = final_logits(model, end).float()
        out.append(logits.gather(-1, ids[i:i + batch].to(logits.device)).cpu())
    return torch.cat(out)


def _writer(pos: torch.Tensor, values: torch.Tensor):
    def fn(act: torch.Tensor) -> torch.Tensor:
        out = act.clone()
        out[torch.arange(act.shape[0], device=act.device), pos] = values.to(act.device, act.dtype)
        return out

    return fn


# ------------------------------------------------------------------------------------- scores
@dataclass
class Approximation:
    """How much of the task a reconstruction carries, relative to mean ablation of the site."""

    sufficiency: float
    """(LD with the reconstruction patched in - LD mean-ablated) / (LD clean - LD mean-ablated)."""
    necessity: float
    """(LD clean - LD with x - x_hat + mean patched in) / (LD clean - LD mean-ablated)."""
    logit_diff_reconstructed: float
    """Mean logit difference (IO - S) with the reconstruction patched in."""
    logit_diff_removed: float
    """Mean logit difference with what the reconstruction explains removed."""


@dataclass
class Control:
    """Editing one attribute at the site: the supervised edit, and the coder's greedy edit by the
    number of latents changed. ``effect`` compares an edit with patching in the counterfactual
    prompt's own activation (what any edit at this one site and position can hope to do), in
    the logit difference between the counterfactual's answer and its competitor."""

    attribute: str
    """The attribute edited (io, s or order)."""
    patch_success: Optional[float]
    """Fraction of prompts whose answer switches to the new name when the counterfactual's
    activation is patched in (the ceiling; None for s and order, which keep the answer)."""
    supervised_success: Optional[float]
    """The same under the supervised edit ``x - u[a, old] + u[a, new]``."""
    supervised_effect: float
    """(LD edited - LD unedited) / (LD counterfactual patched in - LD unedited), LD = the
    counterfactual answer's logit minus its competitor's; 1: the patch's whole effect. NaN where
    the patch moves LD by less than ``MIN_SPAN`` of what the counterfactual prompt itself does
    (the site and position do not carry the attribute)."""
    patch_effect: float
    """Mean LD change (logits) from patching in the counterfactual's activation."""
    counterfactual_effect: float
    """Mean LD change (logits) from running the counterfactual prompt itself."""
    success: list[Optional[float]]
    """Switch rate with 1, 2, ... max_latents latents edited (None where the answer stays)."""
    effect: list[float]
    """Effect with 1, 2, ... max_latents latents edited."""
    latents_to_switch: Optional[float]
    """Mean number of latents at which a prompt's answer first switches, over the prompts that
    switch within the budget (None: none does, or the attribute keeps the answer)."""
    switched: Optional[float]
    """Fraction of prompts that switch within the budget."""


@dataclass
class Interpretability:
    """How well single latents predict the values of one attribute."""

    attribute: str
    """The attribute scored (io, s or order)."""
    mean_f1: float
    """Mean over values of the best latent's F1 (1: a latent active exactly on each value)."""
    per_value: dict[str, dict]
    """{value: {latent, f1, precision, recall}}."""


@dataclass
class SupervisedScores:
    """The three scores of one coder against the supervised dictionary at its site."""

    coder: str
    """Name of the coder scored ("supervised" for the dictionary itself)."""
    hook: str
    """Site of the dictionary and of the patches (the coder's output hook)."""
    role: str
    """Token position read and patched."""
    n_fit: int
    """Prompts the dictionary was fitted on."""
    n_eval: int
    """Held-out prompts scored (those whose names the dictionary knows)."""
    logit_diff_clean: float
    """Mean IO - S logit difference of the unpatched model."""
    logit_diff_mean_ablated: float
    """The same with the site's activation replaced by the mean."""
    supervised: Approximation
    """The supervised dictionary's approximation (the reference)."""
    approximation: Approximation
    """The coder's (reconstruction = decode(encode(x)))."""
    control: dict[str, Control]
    """Per edited attribute."""
    interpretability: dict[str, Interpretability]
    """Per attribute of the dictionary."""

    def summary(self) -> dict[str, Optional[float]]:
        """Flat columns for an eval table: ``sup_suff``/``sup_nec`` (the dictionary),
        ``suff``/``nec`` (the coder), per edited attribute ``A_sup`` (supervised edit),
        ``A@2`` (two latents edited), ``A@K`` (the full budget) and, where the answer changes,
        ``A_latents`` (mean latents to switch) — switch rates for io, the effect otherwise —
        and ``f1_A`` per attribute."""
        r = lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 3)  # noqa: E731
        out = {"sup_suff": r(self.supervised.sufficiency), "sup_nec": r(self.supervised.necessity),
               "suff": r(self.approximation.sufficiency), "nec": r(self.approximation.necessity)}
        for a, c in self.control.items():
            score = c.success if c.supervised_success is not None else c.effect
            out[f"{a}_sup"] = r(c.supervised_success if c.supervised_success is not None else c.supervised_effect)
            out[f"{a}@{EDIT_BUDGET}"] = r(score[min(EDIT_BUDGET, len(score)) - 1])
            out[f"{a}@{len(score)}"] = r(score[-1])
            if c.supervised_success is not None:
                out[f"{a}_latents"] = r(c.latents_to_switch)
        for a, s in self.interpretability.items():
            out[f"f1_{a}"] = r(s.mean_f1)
        return out

    def to_dict(self) -> dict:
        return asdict(self) | {"summary": self.summary()}


@dataclass
class SupervisedOptions:
    """Where and on how many prompts the supervised dictionary is built and the coder scored."""

    site: Optional[str] = None
    """Hook point (``resid_post``, ``attn_out``, ``mlp_out`` ...); None: the coder's output
    site, or ``resid_post`` when no coder is given. Must match the coder's when both are given."""
    layer: Optional[int] = None
    """Block of ``site``; None: the coder's, or the last block when no coder is given."""
    role: str = "END"
    """IOI position whose activation is read, patched and edited: S1, IO, S2 or END."""
    attributes: tuple[str, ...] = ATTRIBUTES
    """Attributes of the dictionary (and of the interpretability score)."""
    edit: tuple[str, ...] = ("io", "s")
    """Attributes edited for the control score (io switches the answer; s and order do not)."""
    n_fit: int = 512
    """Prompts the dictionary is fitted on (every name should occur several times)."""
    n_eval: int = 256
    """Other prompts (another seed) on which everything is scored."""
    seed: int = 0
    """Fit prompts use this seed, evaluation prompts seed + 1, counterfactual names seed + 2."""
    max_latents: int = 8
    """Most latents the greedy edit may change."""
    batch_size: int = 64
    """Prompts per forward pass."""

    def check(self) -> None:
        from circuitlab.validate import check_choice, check_positive_int

        for a in self.attributes:
            check_choice("attribute", a, ATTRIBUTES)
        for a in self.edit:
            check_choice("edit attribute", a, ATTRIBUTES)
            if a not in self.attributes:
                raise ValueError(f"edit attribute {a!r} is not among attributes {self.attributes}; add it there")
        check_choice("role", self.role, ("S1", "IO", "S2", "END"))
        for name in ("n_fit", "n_eval", "max_latents", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.n_fit < 2:
            raise ValueError("n_fit must be at least 2 (a mean and a difference need two prompts)")


def _site_of(model, coder: Optional[Coder], opts: SupervisedOptions) -> tuple[str, str]:
    """(hook read by the coder, hook written and patched)."""
    from circuitlab.sparse.splice import site_hook

    if coder is None:
        site = opts.site or "resid_post"
        layer = opts.layer if opts.layer is not None else model.n_layers - 1
        if not 0 <= layer < model.n_layers:
            raise ValueError(f"layer {layer} is outside the model's blocks 0..{model.n_layers - 1}")
        h = site_hook(site, layer)
        return h, h
    cfg = getattr(coder, "cfg", None)
    if cfg is not None:
        if cfg.n_sources != 1 or cfg.n_targets_ != 1:
            raise ValueError("a crosscoder reads several sites; score a single-source coder (SAE or transcoder)")
        if not (torch.all(coder.in_scale == 1) and torch.all(coder.out_scale == 1)):
            raise ValueError("the coder still has training normalisation; call coder.fold_scaling() first")
    if not coder.hook_in or not coder.hook_out:
        raise ValueError("the coder names no site; set its cfg.hooks_in to the hook it was trained on")
    if opts.site is not None or opts.layer is not None:
        from circuitlab.sparse.splice import site_layer

        layer = opts.layer if opts.layer is not None else site_layer(coder.hook_out)
        want = site_hook(opts.site or "resid_post", layer)
        if want != coder.hook_out:
            raise ValueError(f"site/layer give {want} but the coder writes {coder.hook_out}; leave site and layer "
                             "unset to score a coder at its own site")
    return coder.hook_in, coder.hook_out


def _ld(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 0] - logits[:, 1]


def evaluate_supervised(model, coder: Optional[Coder] = None, options: Optional[SupervisedOptions] = None,
                        name: str = "") -> SupervisedScores:
    """Score ``coder`` (None: the supervised dictionary itself, as a coder) against the supervised
    IOI dictionary at its site: approximation, control and interpretability (see the module).

    The dictionary is fitted on ``n_fit`` IOI prompts and everything is scored on ``n_eval``
    others; for a coder, decode(encode(x)) is the reconstruction and its latents are edited."""
    from circuitlab.api import exclusive

    opts = options or SupervisedOptions()
    opts.check()
    hook_in, hook_out = _site_of(model, coder, opts)
    with exclusive(model):
        return _evaluate(model, coder, opts, hook_in, hook_out, name)


def _evaluate(model, coder, opts: SupervisedOptions, hook_in: str, hook_out: str, name: str) -> SupervisedScores:
    role, bs = opts.role, opts.batch_size
    fit = ioi_prompts(model, opts.n_fit, opts.seed)
    (x_fit,) = _site_acts(model, fit, [hook_out], role, bs)
    dictionary = fit_dictionary(x_fit, {a: fit.labels[a] for a in opts.attributes}, hook_out, role)
    ev = ioi_prompts(model, opts.n_eval, opts.seed + 1)
    ev.name_ids = fit.name_ids | ev.name_ids
    keys = set(dictionary.keys)
    known = torch.tensor([all((a, ev.labels[a][i]) in keys for a in opts.attributes) for i in range(len(ev))])
    if int(known.sum()) < 2:
        raise ValueError(f"only {int(known.sum())} of {len(ev)} evaluation prompts use names the dictionary knows; "
                         "raise n_fit")
    ev = ev.subset(known)
    if coder is None:
        coder, name = dictionary.as_coder(), name or "supervised"
    x_in, x = _in_out(model, ev, hook_in, hook_out, role, bs)
    labels = {a: ev.labels[a] for a in opts.attributes}
    ids = torch.stack([ev.answer, ev.wrong], 1)
    clean = _ld(_logits(model, ev, ids, batch=bs))
    mean = dictionary.mean.expand_as(x)
    ablated = _ld(_logits(model, ev, ids, hook_out, role, mean, bs))

    span = float(clean.mean() - ablated.mean())
    defined = span > MIN_SPAN * abs(float(clean.mean()))

    def approximation(x_hat: torch.Tensor) -> Approximation:
        rec = float(_ld(_logits(model, ev, ids, hook_out, role, x_hat, bs)).mean())
        rem = float(_ld(_logits(model, ev, ids, hook_out, role, x - x_hat + mean, bs)).mean())
        if not defined:
            return Approximation(math.nan, math.nan, rec, rem)
        return Approximation((rec - float(ablated.mean())) / span, (float(clean.mean()) - rem) / span, rec, rem)

    with torch.no_grad():
        dt = coder.W_dec.dtype
        f = coder.encode(x_in.to(coder.W_dec.device, dt))
        x_hat = coder.decode(f, x_in.to(coder.W_dec.device, dt)).float().cpu()
    sup = approximation(dictionary.reconstruct(labels))
    approx = approximation(x_hat)
    control = {a: _control(model, coder, dictionary, ev, a, x_in, x, opts) for a in opts.edit}
    active = (f > 0).cpu()
    interp = {}
    for a in opts.attributes:
        per = latent_f1(active, ev.labels[a])
        interp[a] = Interpretability(a, sum(v["f1"] for v in per.values()) / len(per), per)
    return SupervisedScores(name or getattr(getattr(coder, "cfg", None), "arch", "coder"), hook_out, role,
                            opts.n_fit, len(ev), float(clean.mean()), float(ablated.mean()), sup, approx,
                            control, interp)


def _control(model, coder, dictionary: SupervisedDictionary, ev: IOIPrompts, attribute: str,
             x_in: torch.Tensor, x: torch.Tensor, opts: SupervisedOptions) -> Control:
    role, bs, hook_in, hook_out = opts.role, opts.batch_size, coder.hook_in, coder.hook_out
    cf = counterfactual(ev, attribute, dictionary.values(attribute), opts.seed + 2)
    t_in, t = _in_out(model, cf, hook_in, hook_out, role, bs)
    # logits of (counterfactual answer, counterfactual wrong, original answer, original wrong)
    ids = torch.stack([cf.answer, cf.wrong, ev.answer, ev.wrong], 1)
    changes = attribute == "io"

    def measure(values: Optional[torch.Tensor]) -> torch.Tensor:
        return _logits(model, ev, ids, hook_out, role, values, bs)

    def switched(lg: torch.Tensor) -> torch.Tensor:
        return lg[:, 0] > lg[:, 1:].max(-1).values

    base = _ld(measure(None)).mean()
    patched = measure(t)
    gap = float(_ld(patched).mean() - base)
    whole = float(_ld(_logits(model, cf, ids, batch=bs)).mean() - base)
    defined = abs(gap) > max(MIN_SPAN * abs(whole), 1e-6)

    def effect(lg: torch.Tensor) -> float:
        return float((_ld(lg).mean() - base) / gap) if defined else math.nan

    def rate(lg: torch.Tensor) -> Optional[float]:
        return float(switched(lg).double().mean()) if changes else None

    sup = measure(dictionary.edit(x, attribute, ev.labels[attribute], cf.labels[attribute]))
    dev, dt = coder.W_dec.device, coder.W_dec.dtype
    with torch.no_grad():
        f_s = coder.encode(x_in.to(dev, dt)).float().cpu()
        f_t = coder.encode(t_in.to(dev, dt)).float().cpu()
    steps, _ = greedy_edit(x, f_s, f_t, coder.W_dec.detach().float().cpu(), t, opts.max_latents)
    logits = [measure(s) for s in steps]
    first = share = None
    if changes:
        hits = torch.stack([switched(lg) for lg in logits], 1)  # [n, k]
        any_hit = hits.any(1)
        share = float(any_hit.double().mean())
        if any_hit.any():
            first = float((hits.double().argmax(1)[any_hit] + 1).double().mean())
    return Control(attribute, rate(patched), rate(sup), effect(sup), gap, whole, [rate(lg) for lg in logits],
                   [effect(lg) for lg in logits], first, share)


# ------------------------------------------------------------------------------------ output
def save_scores(scores: Sequence[SupervisedScores], path: str | Path, model: str = "",
                options: Optional[SupervisedOptions] = None) -> Path:
    """Write scores as JSON (``circuitlab.supervised/1``): one entry per coder, full and summary."""
    from circuitlab.io import atomic_write, format_tag

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(u) for u in v]
        return v

    info = {"format": format_tag("supervised"), "model": model,
            "options": asdict(options) if options is not None else None,
            "results": [s.to_dict() for s in scores]}
    atomic_write(path, lambda t: Path(t).write_text(json.dumps(clean(info), indent=1)))
    return Path(path)


def control_figure(scores: Sequence[SupervisedScores]):
    """Plotly figure, one panel per edited attribute: the coder's edit (switch rate for io, share
    of the patch's effect otherwise) against the number of latents edited, with the supervised
    edit of the same site as a marker at two latents."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    attrs = list(dict.fromkeys(a for s in scores for a in s.control))
    fig = make_subplots(rows=1, cols=max(len(attrs), 1), subplot_titles=[
        f"{a}: {'answer switched' if a == 'io' else 'share of patch effect'}" for a in attrs])
    for col, a in enumerate(attrs, 1):
        done = set()
        for s in scores:
            c = s.control.get(a)
            if c is None:
                continue
            switch = c.supervised_success is not None
            y = c.success if switch else c.effect
            label = f"{s.coder} ({s.hook})"
            fig.add_trace(go.Scatter(x=list(range(1, len(y) + 1)), y=y, mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=col == 1), row=1, col=col)
            if s.hook not in done:
                done.add(s.hook)
                fig.add_trace(go.Scatter(x=[EDIT_BUDGET], y=[c.supervised_success if switch else c.supervised_effect],
                                         mode="markers", marker={"symbol": "star", "size": 14},
                                         name=f"supervised edit ({s.hook})", legendgroup=f"sup {s.hook}",
                                         showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="latents edited", row=1, col=col)
    fig.update_layout(title="Sparse control on IOI: coder edits vs the supervised edit", height=450)
    return fig
