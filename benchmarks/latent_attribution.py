"""Attribution on sparse-coder latents against exact latent patching: AtP, AtP*, RelP and IG.

For one model and task: each kind of coder the model has (residual SAEs, transcoders) is spliced
at every layer it exists, with its error term, and every latent at each role position is a node
(one call per kind, all layers pooled, as the component benchmarks pool a site family's layers).
Each estimator is compared with exact patching (denoising): Pearson over all nodes, Spearman over
the nodes whose exact effect exceeds 1% of the largest, recall@10, sign agreement on those nodes,
verifications to recall the true top 10, and Pearson over the error-term nodes ([coder, position]).
Costs are in forward-pass equivalents (a backward pass counted as two forwards) beside seconds.

    python benchmarks/latent_attribution.py --model gpt2-zoo --n 32 \
        --out benchmarks/results/latent_attribution_gpt2-zoo.json
    python benchmarks/latent_attribution.py --model smollm2-135m --n 8   # its coders, once trained
    python benchmarks/latent_attribution.py --quick                      # 4 prompts, END only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

import circuitlab as cl
from common import label
from circuitlab.agreement import pearson
from circuitlab.sparse.attribution import LATENT_METHODS
from circuitlab.sparse.bundled import find_coder
from circuitlab.sparse.splice import site_layer

VARIANTS = {"relp": [{"attention": "attnlrp"}], "ig": [{"variant": "activations", "steps": 8}]}
"""Further option settings run after an estimator's defaults."""
ESTIMATORS = [(m, kw) for m in LATENT_METHODS if m != "exact" for kw in [{}] + VARIANTS.get(m, [])]
KINDS = ("resid", "transcoder")
"""Coder folders ``*_<kind>_L<layer>`` (see circuitlab.sparse.bundled.find_coder)."""


def coders_of(model_name: str, kind: str, n_layers: int, layers=None) -> list:
    """The model's coders of ``kind`` at each of ``layers`` (all by default) where one exists."""
    out = []
    for layer in (range(n_layers) if layers is None else layers):
        c = find_coder(model_name, kind, layer)
        if c is not None and site_layer(c.hook_out) == layer:  # find_coder falls back to another layer
            out.append(c)
    return out


def _round(x, nd=3):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def machine() -> dict:
    """What the seconds were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "cuda": gpu}


def run_kind(model, task, coders, kind: str, positions, log) -> list[dict]:
    """One row for exact patching, then one per estimator, on every latent of ``coders``."""
    layers = [site_layer(c.hook_out) for c in coders]
    head = {"task": task.name, "coders": kind, "layers": layers, "positions": positions}
    exact = cl.patch(model, task, "latents", method="exact", coders=coders, positions=positions)
    active = int((exact.flat != 0).sum())
    rows = [{**head, "method": "exact", "nodes": len(exact.flat), "nonzero_nodes": active,
             "fwd_equiv": exact.cost.forward_passes, "seconds": _round(exact.cost.seconds, 2)}]
    log(f"{task.name} {kind} L{layers} exact: {len(exact.flat)} nodes ({active} nonzero), {exact.cost.seconds:.1f}s")
    for method, kw in ESTIMATORS:
        est = cl.patch(model, task, "latents", method=method, coders=coders, positions=positions, **kw)
        c = cl.compare(est, exact, k=10)
        err = pearson(est.extras["error"].flatten().double(), exact.extras["error"].flatten().double())
        rows.append({**head, "method": label(method, kw), "pearson": _round(c["pearson"]),
                     "spearman_1pct": _round(c["spearman_1pct"]), "recall@10": _round(c["recall@10"]),
                     "sign_agreement": _round(c["sign_agreement"]), "verifications_to_recall_10":
                     c["verifications_to_recall"], "error_term_pearson": _round(err),
                     "fwd_equiv": est.cost.forward_passes + 2 * est.cost.backward_passes,
                     "seconds": _round(est.cost.seconds, 2)})
        log(f"  {label(method, kw)}: Pearson {c['pearson']:.3f}, Spearman(>1%) {c['spearman_1pct']:.3f}, "
            f"recall@10 {c['recall@10']:.2f}, error terms {err:.3f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2-zoo")
    ap.add_argument("--tasks", default="ioi", help="bundled task names, comma-separated")
    ap.add_argument("--n", type=int, default=32, help="prompts per task")
    ap.add_argument("--kinds", default=",".join(KINDS), help="coder kinds: resid, transcoder")
    ap.add_argument("--layers", default=None, help="layers, e.g. 1+2 (default: every layer with a coder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 prompts, the END position, one layer: proves it runs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = cl.load(a.model)
    layers = [int(x) for x in a.layers.split("+")] if a.layers else None
    if a.quick:
        a.n, layers = 4, layers or [model.n_layers // 2]
    out = Path(a.out or f"benchmarks/results/latent_attribution_{Path(a.model).name}{'_quick' if a.quick else ''}.json")
    t0 = time.perf_counter()
    rows: list[dict] = []
    for tname in a.tasks.split(","):
        task = cl.tasks.bundled(model, tname, n=a.n, seed=0)
        positions = ["END"] if a.quick else list(task.roles)
        for kind in a.kinds.split(","):
            coders = coders_of(a.model, kind, model.n_layers, layers)
            if not coders:
                print(f"{a.model}: no {kind} coders at layers {layers or 'any'}; skipped")
                continue
            rows += run_kind(model, task, coders, kind, positions, print)
    print("| task | coders | method | Pearson | Spearman (>1% nodes) | recall@10 | error terms (Pearson) | "
          "forward-pass equivalents |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['coders']} L{'+'.join(map(str, r['layers']))} | {r['method']} | "
              f"{r.get('pearson', '')} | {r.get('spearman_1pct', '')} | {r.get('recall@10', '')} | "
              f"{r.get('error_term_pearson', '')} | {r['fwd_equiv']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": a.model, "n": a.n, "quick": a.quick, "machine": machine(),
                               "seconds_total": round(time.perf_counter() - t0, 1), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
