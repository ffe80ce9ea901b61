"""Patchscopes: decode a hidden state by patching it into another forward pass.

A patchscope (Ghandeharioun et al. 2024) takes the residual stream of a *source* prompt at one
layer and position and writes it over the residual stream of a *target* prompt at a (possibly
different) layer and position. The target prompt is chosen so that the model, continuing it,
says what the patched vector holds: a few-shot "repeat the token" prompt reads out the token
identity, "The capital of X is" with the vector at X reads out an attribute. The logit lens is
the special case "final layer of the same prompt" without any target computation.

Layers are numbered 0..n_layers: layer l < n_layers is ``blocks.l.hook_resid_pre``, layer
n_layers is the residual leaving the last block (``blocks.{n-1}.hook_resid_post``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from circuitlab.engine.cache import capture
from circuitlab.engine.forward import final_logits, run_to_final
from circuitlab.engine.interventions import Intervention, generate, intervene
from circuitlab.engine.sites import Node
from circuitlab.methods.logit_lens import decode_each, prompt_tokens

Prompt = Union[str, torch.Tensor]
LayerMap = Union[int, tuple[int, int]]


@dataclass
class PatchscopeResult:
    """The target prompt's next token and continuation with one source vector patched in."""

    source_layer: int
    target_layer: int
    source_position: int
    """Absolute position read in the source prompt."""
    target_position: int
    """Absolute position written in the target prompt."""
    probs: torch.Tensor
    """[vocab] next-token distribution at the target prompt's last position."""
    top_ids: torch.Tensor
    """[k] most probable next tokens."""
    top_tokens: list[str]
    top_probs: torch.Tensor
    """[k] their probabilities."""
    continuation_ids: torch.Tensor
    """[new tokens] greedy continuation of the target prompt under the patch."""
    continuation: str
    """The continuation decoded."""
    expected_prob: Optional[float] = None
    """Probability of the ``expected`` token, when one was given."""


@dataclass
class PatchscopeGrid:
    """Patchscope outcomes for every (source layer, target layer) pair."""

    source_layers: list[int]
    target_layers: list[int]
    layer_labels: dict[int, str]
    """Hook-site label of each layer number (``L2.resid_pre``, ``L3.resid_post``)."""
    top_ids: torch.Tensor
    """[source, target, k] most probable next tokens of the patched target prompt."""
    top_tokens: list[list[list[str]]]
    top_probs: torch.Tensor
    """[source, target, k]."""
    continuations: Optional[list[list[str]]] = None
    """[source][target] greedy continuations (None when max_new_tokens was 0)."""
    expected: Optional[str] = None
    expected_prob: Optional[torch.Tensor] = None
    """[source, target] probability of ``expected`` (None when not given)."""

    def figure(self, title: Optional[str] = None):
        """Source layers down, target layers across: each cell shows the decoded top token (or
        the continuation), coloured by the expected token's probability (else the top one's)."""
        return grid_figure(self, title)


def layer_label(model, layer: int) -> str:
    """The site a patchscope layer number stands for."""
    L = model.n_layers
    return f"L{layer}.resid_pre" if layer < L else f"L{L - 1}.resid_post"


def _node(model, layer: int) -> Node:
    L = model.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= L:
        raise ValueError(f"layer {layer!r} is out of range: use 0..{L} ({L} is the residual after the "
                         f"last block, L{L - 1}.resid_post)")
    return Node(layer, "resid_pre") if layer < L else Node(L - 1, "resid_post")


def _position(pos: int, n: int, what: str) -> int:
    if isinstance(pos, bool) or not isinstance(pos, int) or not -n <= pos < n:
        raise ValueError(f"{what} {pos!r} is outside the {n}-token prompt; use 0..{n - 1} or -{n}..-1")
    return pos % n


def _token_id(model, expected: Union[None, int, str]) -> Optional[int]:
    if expected is None or isinstance(expected, int):
        return expected
    return model.token_id(expected)


def _source_vectors(model, src: torch.Tensor, layers: Sequence[int], pos: int) -> torch.Tensor:
    """[len(layers), d_model] the source prompt's residual at each layer, at ``pos``."""
    names = [_node(model, l).hook for l in layers]
    c = capture(model, src[None], names, positions=[pos])
    return torch.stack([c[n][0, 0] for n in names])


def _run_patched(model, tgt: torch.Tensor, target_layer: int, target_pos: int, vectors: torch.Tensor,
                 max_new_tokens: int, stop_token: Optional[int]):
    """Target prompt once per vector (as one batch) with the vector set at (layer, pos):
    next-token probabilities [n, vocab] and the greedy continuations [n, new]."""
    n = vectors.shape[0]
    iv = Intervention(_node(model, target_layer), "set", vectors[:, None, :], (target_pos,))
    batch = tgt[None].expand(n, -1)
    with intervene(model, [iv]), torch.no_grad():
        probs = final_logits(model, run_to_final(model, batch)[:, -1]).float().softmax(-1)
    cont = batch[:, :0]
    if max_new_tokens > 0:
        cont = generate(model, batch, max_new_tokens, [iv], stop_token)[:, tgt.shape[0]:]
    return probs, cont


def patchscope(model, source_prompt: Prompt, target_prompt: Prompt, layer_map: LayerMap,
               source_position: int = -1, target_position: int = -1, max_new_tokens: int = 8,
               k: int = 10, expected: Union[None, int, str] = None,
               stop_token: Optional[int] = None) -> PatchscopeResult:
    """Read the source prompt's residual at ``layer_map[0]`` and ``source_position``, set it into
    the target prompt's residual at ``layer_map[1]`` and ``target_position`` (an int maps a
    layer to itself), and decode the target's next token at its last position and its greedy
    continuation. ``expected``: a token (string or id) whose probability to report."""
    from circuitlab.api import exclusive

    s_layer, t_layer = _layer_pair(layer_map)
    src, tgt = prompt_tokens(model, source_prompt), prompt_tokens(model, target_prompt)
    s_pos = _position(source_position, src.shape[0], "source_position")
    t_pos = _position(target_position, tgt.shape[0], "target_position")
    _check_counts(k, max_new_tokens)
    want = _token_id(model, expected)
    with exclusive(model):
        vec = _source_vectors(model, src, [s_layer], s_pos)
        probs, cont = _run_patched(model, tgt, t_layer, t_pos, vec, max_new_tokens, stop_token)
    p = probs[0].cpu()
    top_p, top_i = p.topk(min(k, p.shape[0]))
    c = cont[0].cpu()
    return PatchscopeResult(s_layer, t_layer, s_pos, t_pos, p, top_i, decode_each(model.tokenizer, top_i.tolist()),
                            top_p, c, model.tokenizer.decode(c.tolist()),
                            None if want is None else float(p[want]))


def patchscope_grid(model, source_prompt: Prompt, target_prompt: Prompt,
                    source_layers: Optional[Sequence[int]] = None, target_layers: Optional[Sequence[int]] = None,
                    source_position: int = -1, target_position: int = -1, k: int = 5,
                    expected: Union[None, int, str] = None, max_new_tokens: int = 0,
                    stop_token: Optional[int] = None) -> PatchscopeGrid:
    """``patchscope`` for every (source layer, target layer) pair (default: all 0..n_layers on
    both axes). One batched target pass per target layer."""
    from circuitlab.api import exclusive

    L = model.n_layers
    s_layers = list(range(L + 1)) if source_layers is None else list(source_layers)
    t_layers = list(range(L + 1)) if target_layers is None else list(target_layers)
    if not s_layers or not t_layers:
        raise ValueError("source_layers and target_layers need at least one layer each (or None for all)")
    for l in s_layers + t_layers:
        _node(model, l)
    src, tgt = prompt_tokens(model, source_prompt), prompt_tokens(model, target_prompt)
    s_pos = _position(source_position, src.shape[0], "source_position")
    t_pos = _position(target_position, tgt.shape[0], "target_position")
    _check_counts(k, max_new_tokens)
    want = _token_id(model, expected)
    cols, conts = [], []
    with exclusive(model):
        vecs = _source_vectors(model, src, s_layers, s_pos)
        for t in t_layers:
            probs, cont = _run_patched(model, tgt, t, t_pos, vecs, max_new_tokens, stop_token)
            cols.append(probs.cpu())
            conts.append([model.tokenizer.decode(row) for row in cont.tolist()])
    probs = torch.stack(cols, 1)  # [source, target, vocab]
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), -1)
    uniq = top_i.unique().tolist()
    text = dict(zip(uniq, decode_each(model.tokenizer, uniq)))
    top_tokens = [[[text[i] for i in cell] for cell in row] for row in top_i.tolist()]
    return PatchscopeGrid(
        s_layers, t_layers, {l: layer_label(model, l) for l in sorted(set(s_layers + t_layers))},
        top_i, top_tokens, top_p,
        [list(r) for r in zip(*conts)] if max_new_tokens > 0 else None,
        None if expected is None else (expected if isinstance(expected, str) else model.tokenizer.decode([want])),
        None if want is None else probs[..., want])


# ------------------------------------------------------------------------------ presets

IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ? ->"
"""The few-shot token-identity target of Ghandeharioun et al. (2024); the vector goes at ``?``."""
REPEAT_IDENTITY_PROMPT = "<bos> cat dog tree lamp cat dog tree"
"""Identity target for word-level vocabularies without ``->`` (the zoo): a repeated sequence,
so the model copies the word after ``tree``; the vector goes at ``lamp``."""


@dataclass(frozen=True)
class TargetPrompt:
    """A target prompt and the position its placeholder occupies."""

    text: str
    position: int
    """Absolute token position of the placeholder (BOS counted)."""


def placeholder_target(model, text: str, placeholder: str) -> TargetPrompt:
    """``text`` with the patch going at the last token of the last ``placeholder`` in it, e.g.
    ``placeholder_target(model, "<bos> The capital of Germany is", "Germany")``."""
    from circuitlab.tasks.tokenize import unknown_words

    at = text.rfind(placeholder) if placeholder else -1
    if at < 0:
        raise ValueError(f"placeholder {placeholder!r} does not occur in the target prompt {text!r}")
    if unknown_words(model.tokenizer, placeholder):
        raise ValueError(f"placeholder {placeholder!r} is not in the model's vocabulary; use a word it "
                         "knows (its value is overwritten from the target layer on)")
    head = prompt_tokens(model, text[: at + len(placeholder)])
    full = prompt_tokens(model, text)
    if full.shape[0] < head.shape[0] or not torch.equal(full[: head.shape[0]], head):
        raise ValueError(f"{placeholder!r} does not end on a token boundary in {text!r}; put a space "
                         "after it")
    return TargetPrompt(text, head.shape[0] - 1)


def identity_target(model) -> TargetPrompt:
    """The token-identity target: the paper's ``cat -> cat; ...; ? ->`` where the tokenizer knows
    every piece of it, else (word-level vocabularies) :data:`REPEAT_IDENTITY_PROMPT`."""
    from circuitlab.tasks.tokenize import unknown_words

    if not unknown_words(model.tokenizer, IDENTITY_PROMPT):
        return placeholder_target(model, IDENTITY_PROMPT, "?")
    if unknown_words(model.tokenizer, REPEAT_IDENTITY_PROMPT):
        raise ValueError("this tokenizer knows neither identity prompt; build one with "
                         "placeholder_target(model, text, placeholder)")
    return placeholder_target(model, REPEAT_IDENTITY_PROMPT, "lamp")


def token_identity(model, source_prompt: Prompt, layer_map: LayerMap, source_position: int = -1,
                   **kwargs) -> PatchscopeResult:
    """What token the source residual stands for: ``patchscope`` into :func:`identity_target`."""
    t = identity_target(model)
    return patchscope(model, source_prompt, t.text, layer_map, source_position, t.position, **kwargs)


def attribute_extraction(model, source_prompt: Prompt, target_prompt: str, placeholder: str,
                         layer_map: LayerMap, source_position: int = -1, **kwargs) -> PatchscopeResult:
    """An attribute of the entity the source residual encodes: ``patchscope`` into a target such
    as ``"<bos> The capital of Germany is"`` with the vector at ``placeholder`` (``"Germany"``)."""
    t = placeholder_target(model, target_prompt, placeholder)
    return patchscope(model, source_prompt, t.text, layer_map, source_position, t.position, **kwargs)


def _layer_pair(layer_map: LayerMap) -> tuple[int, int]:
    if isinstance(layer_map, int) and not isinstance(layer_map, bool):
        return layer_map, layer_map
    if isinstance(layer_map, (tuple, list)) and len(layer_map) == 2:
        return int(layer_map[0]), int(layer_map[1])
    raise ValueError(f"layer_map must be a layer (same layer in both prompts) or a (source_layer, "
                     f"target_layer) pair, not {layer_map!r}; use patchscope_grid for many pairs")


def _check_counts(k: int, max_new_tokens: int) -> None:
    from circuitlab.validate import check_positive_int

    check_positive_int("k", k)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, not {max_new_tokens!r}")


def grid_figure(grid: PatchscopeGrid, title: Optional[str] = None):
    """Plotly heatmap of a :class:`PatchscopeGrid` (see its ``figure``)."""
    import plotly.graph_objects as go

    from circuitlab.webpage import plot_text

    z = (grid.expected_prob if grid.expected_prob is not None else grid.top_probs[..., 0]).numpy()
    label = f"p({grid.expected!r})" if grid.expected_prob is not None else "top-1 prob"
    shown = grid.continuations or [[cell[0] for cell in row] for row in grid.top_tokens]

    def hover(i: int, j: int) -> str:
        lines = [f"source {grid.layer_labels[grid.source_layers[i]]} -> target "
                 f"{grid.layer_labels[grid.target_layers[j]]}"]
        lines += [f"{t!r}: {float(q):.3f}" for t, q in zip(grid.top_tokens[i][j], grid.top_probs[i, j])]
        if grid.continuations:
            lines.append(f"continuation: {grid.continuations[i][j]!r}")
        return "<br>".join(plot_text(x) for x in lines)

    fig = go.Figure(go.Heatmap(
        z=z, zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title=plot_text(label)),
        x=[plot_text(grid.layer_labels[l]) for l in grid.target_layers],
        y=[plot_text(grid.layer_labels[l]) for l in grid.source_layers],
        text=[[plot_text(s) for s in row] for row in shown], texttemplate="%{text}",
        hovertext=[[hover(i, j) for j in range(len(grid.target_layers))] for i in range(len(grid.source_layers))],
        hoverinfo="text"))
    fig.update_layout(title=plot_text(title or "patchscope: decoded token by source and target layer"),
                      yaxis_autorange="reversed", xaxis_title="target layer", yaxis_title="source layer")
    return fig
