"""Model card (README.md), loss curve and evaluation record of an exported zoo model.

Why generated: the card states numbers (parameters, tokens, throughput, held-out
accuracy) that must match the shipped weights, so it is written from the weights and the
training log, never by hand. Outputs in the model folder:

- ``eval.json``: held-out metrics of the final model and of each ``checkpoints/step_*``;
- ``loss_curve.svg``: a dependency-free plot, shown in the README;
- ``loss_curve.html``: an interactive plotly figure (plotly.js in ``plotly.min.js`` beside
  it, so it opens offline; a PNG is written only if ``kaleido`` is importable);
- ``README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from .evaluate import ACCEPTANCE, evaluate_model

_METRIC_NAMES = {
    "ioi_top1": "IOI top-1 (held-out templates)",
    "induction_top1": "Induction top-1 (second repeat, held-out sequences)",
    "greater_than_prob_diff": "Greater-than P(>start) - P(<start) (held-out nouns/frame)",
    "capital_top1": "Capital recall top-1 (held-out phrasings)",
    "language_top1": "Language recall top-1 (held-out phrasings)",
    "continent_top1": "Continent recall top-1 (held-out phrasings)",
    "multihop_top1": "Multi-hop capital top-1 (language -> country -> capital, held-out phrasings)",
    "multihop_top1_seen": "... countries with multi-hop sentences in training",
    "multihop_top1_unseen": "... countries never in a multi-hop training sentence",
}


def loss_svg(losses: list[list[float]], width: int = 640, height: int = 280) -> str:
    """A minimal SVG line plot of ``[step, tokens, loss]`` rows (loss vs tokens, log-y)."""
    import math
    pts = [(t, math.log10(l)) for _, t, l in losses if l > 0]
    x0, x1 = 0.0, max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = 40

    def sx(x: float) -> float:
        return pad + (width - 2 * pad) * (x - x0) / max(x1 - x0, 1e-9)

    def sy(y: float) -> float:
        return height - pad - (height - 2 * pad) * (y - y0) / max(y1 - y0, 1e-9)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    ticks = "".join(
        f'<text x="{pad - 4}" y="{sy(y):.1f}" font-size="10" text-anchor="end">'
        f"{10 ** y:.2f}</text>" for y in (y0, (y0 + y1) / 2, y1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
            f'stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" '
            f'stroke="black"/>{ticks}'
            f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
            f"training tokens (0 .. {x1 / 1e6:.1f}M)</text>"
            f'<text x="{width / 2}" y="16" font-size="12" text-anchor="middle">'
            f"training loss (log scale)</text></svg>")


def _write_plotly(folder: Path, losses: list[list[float]]) -> bool:
    """Write loss_curve.html (and .png when kaleido works); True if a PNG was written."""
    import plotly.graph_objects as go
    fig = go.Figure(go.Scatter(x=[r[1] for r in losses], y=[r[2] for r in losses],
                               mode="lines", name="train loss"))
    from circuitlab.webpage import plot_text, write_figure

    fig.update_layout(title=plot_text(f"{folder.name}: training loss"), xaxis_title="tokens",
                      yaxis_title="loss", yaxis_type="log", template="plotly_white")
    write_figure(fig, folder / "loss_curve.html")
    try:
        import kaleido  # noqa: F401
        fig.write_image(str(folder / "loss_curve.png"))
        return True
    except Exception:
        return False


def evaluate_folder(folder: Path) -> dict[str, dict[str, float]]:
    """Held-out metrics of the final model and every checkpoint, keyed ``final`` / step."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    out = {"final": evaluate_model(AutoModelForCausalLM.from_pretrained(str(folder)), tok)}
    for ck in sorted((folder / "checkpoints").glob("step_*")):
        model = AutoModelForCausalLM.from_pretrained(str(ck)).float()
        out[ck.name] = evaluate_model(model, tok)
    return out


def _fmt(v: float) -> str:
    return f"{100 * v:.1f}%" if v <= 1.0 else f"{v:.3f}"


def write_card(folder: str | Path) -> dict[str, dict[str, float]]:
    """Evaluate the exported model in ``folder`` and write its card and plots."""
    folder = Path(folder)
    log = json.loads((folder / "training_log.json").read_text())
    cfg = log["config"]
    evals = evaluate_folder(folder)
    (folder / "eval.json").write_text(json.dumps(evals, indent=1))
    (folder / "loss_curve.svg").write_text(loss_svg(log["losses"]))
    has_png = _write_plotly(folder, log["losses"])
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    n_params = sum(p.numel() for p in model.parameters())
    final = evals["final"]
    gpt2 = cfg["arch"] == "gpt2"
    arch = ("GPT-2 (LayerNorm, GELU MLP, learned absolute positions)" if gpt2 else
            "Llama (RMSNorm, SwiGLU MLP, RoPE, grouped-query attention)")
    rows = []
    for k, label in _METRIC_NAMES.items():
        bar = ACCEPTANCE.get(k)
        status = "" if bar is None else ("pass" if final[k] >= bar else "**FAIL**")
        rows.append(f"| {label} | {final[k]:.3f} | {'' if bar is None else bar} | {status} |")
    ck_rows = []
    snaps = {f"step_{s:05d}": t for s, t in log.get("snapshots", [])}
    keys = ["ioi_top1", "induction_top1", "greater_than_prob_diff", "capital_top1",
            "multihop_top1"]
    for name, ev in evals.items():
        if name == "final":
            continue
        ck_rows.append(f"| `checkpoints/{name}` | {snaps.get(name, 0) / 1e6:.2f}M | "
                       + " | ".join(f"{ev[k]:.3f}" for k in keys) + " |")
    ck_rows.append(f"| final (this folder) | {log['tokens'] / 1e6:.2f}M | "
                   + " | ".join(f"{final[k]:.3f}" for k in keys) + " |")
    minutes = log["elapsed_s"] / 60
    steps = (f"{log['step']} x {cfg['batch_size']} rows of {cfg['n_ctx']} tokens (documents first-fit packed; "
             "each attends only to itself, positions restart at 0)")
    optimizer = (f"AdamW, lr {cfg['lr']}, betas {tuple(cfg['betas'])}, weight decay {cfg['weight_decay']}, "
                 f"clip {cfg['grad_clip']}")
    text = f"""# {folder.name}

A small {arch} language model trained from scratch on the synthetic corpus of
`circuitlab.zoo.corpus`, so that it implements tasks with well-known circuits: indirect
object identification (IOI), induction, greater-than and factual recall (single- and
multi-hop). Bundled with circuitlab for offline tests and analyses.

**What it is for, and what it is not.** The zoo models are for speed, tests and planted ground
truth: they load in a second, run the whole test suite offline, and their circuits are known.
Their circuits are also far simpler than a pretrained model's, so they cannot tell a good
attribution estimator from a bad one; measure estimators on a real pretrained model
(`circuitlab models fetch smollm2-135m`).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder.name}")   # this folder
tok = AutoTokenizer.from_pretrained("{folder.name}")
ids = tok("<bos> When Mary and John went to the store , John gave a drink to",
          add_special_tokens=False, return_tensors="pt").input_ids
```

**Tokenizer convention**: word level, one word = one token, punctuation separate, `" Mary"`
and `"Mary"` are the same id. `<bos>` (id 0) is BOS, EOS and PAD. The tokenizer never adds
BOS: prompts are written starting with `"<bos> "`.

## Architecture

| | |
|---|---|
| family | {arch} |
| layers | {cfg['n_layers']} |
| d_model | {cfg['d_model']} |
| heads (query / key-value) | {cfg['n_heads']} / {cfg['n_kv_heads'] if not gpt2 else cfg['n_heads']} |
| MLP width | {cfg['d_mlp']} |
| context | {cfg['n_ctx']} tokens |
| vocabulary | {model.config.vocab_size} word-level tokens |
| tied embeddings | yes |
| parameters | {n_params:,} |

## Training

| | |
|---|---|
| tokens (non-padding) | {log['tokens']:,} ({log['tokens'] / 1e6:.1f}M) |
| steps x batch | {steps} |
| optimizer | {optimizer} |
| schedule | {cfg['warmup_steps']} warmup steps, cosine decay to {cfg['min_lr_frac']} x lr |
| wall time | {minutes:.1f} min on {log.get('torch_threads', 2)} CPU threads |
| throughput | {log['tokens_per_s']:,.0f} tokens/s |
| seed | {cfg['seed']} |

Throughput is bounded by the CPU: two cores, fp32, matrices of width {cfg['d_model']} too
small to use them well, so per-op overhead dominates (`torch.compile` gave no measurable
gain, so the loop runs eager). Batches of {cfg['batch_size']} x {cfg['n_ctx']} give more optimizer steps
per token, which shortens the plateau before copying circuits form, at little cost in
speed (bare GPT-2 steps on an idle machine: 22.8k tokens/s at 16 x 128, 21.6k at 32 x 128).
Other jobs shared the machine during parts of training, which lowers the average above.

Corpus mix (sentence proportions): {json.dumps({k: v for k, v in cfg['mix'].items() if isinstance(v, float)})}.
Induction repetitions have 2-4 repeats and names recur in `name_copy` sentences: with only
two-repeat sequences and IOI, copying a token from context is as often wrong as right, and
an earlier run of this model learned no copying at all in 7M tokens.
Reproduce with `python -m circuitlab.zoo.train {cfg['name']}` (or `circuitlab zoo train
{cfg['name']}`); a killed run resumes from its last saved state.

![loss curve](loss_curve.svg)

Interactive: `loss_curve.html`{' and `loss_curve.png`' if has_png else ''}.

## Held-out evaluation

Every prompt below uses templates, nouns or sequences never seen in training (made only of
trained tokens); every country's facts do occur in training. Computed by
`circuitlab.zoo.evaluate` directly on these weights.

| metric | value | bar | |
|---|---|---|---|
{chr(10).join(rows)}

## Checkpoints

fp16 HF folders under `checkpoints/` (load with `AutoModelForCausalLM.from_pretrained`,
tokenizer from this folder), for studying how features evolve during training.
Columns: {', '.join(keys)}.

| checkpoint | tokens | {' | '.join(keys)} |
|---|---|{'---|' * len(keys)}
{chr(10).join(ck_rows)}
"""
    (folder / "README.md").write_text(text)
    return evals
