"""The IOI circuit of a real pretrained model: EAP-IG edges, the smallest faithful circuit, and
what its heads are.

EAP-IG scores every edge between components (embeddings, each head's q/k/v input, MLPs,
logits); the faithfulness curve ablates everything outside the top-n edges (resample ablation)
and finds the smallest n whose circuit keeps >= 80% of the clean-minus-corrupt metric. The heads
with the largest summed |score| over the circuit's edges are then scored with the head detectors
(previous-token, duplicate-token, induction, copying). The model's weights are dequantized
4-bit GGUF weights.

    python benchmarks/real_circuit.py --model smollm2-135m --n 8 --steps 4 --bootstrap 100 \
        --out benchmarks/results/circuit_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import circuitlab as cl
from circuitlab import circuits as cc


def _heads_in(edges) -> set[str]:
    """Head names ('L3.H5') that appear at either end of the circuit's edges."""
    import re

    heads = set()
    for e in edges:
        heads.update(m.group(0) for m in re.finditer(r"L\d+\.H\d+", str(e)))
    return heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="EAP-IG steps")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--top-heads", type=int, default=15, help="heads classified, by their weight in the circuit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = cl.load(a.model)
    task = cl.tasks.bundled(model, a.task, n=a.n, seed=0)
    t0 = time.perf_counter()
    scores = cc.eap_ig(model, task, steps=a.steps)
    t_scores = time.perf_counter() - t0
    t0 = time.perf_counter()
    curve = cc.faithfulness_curve(model, task, scores, bootstrap=a.bootstrap)
    t_curve = time.perf_counter() - t0
    smallest = curve.smallest
    edges = sorted(curve.smallest_circuit.items) if curve.smallest_circuit else []
    heads = sorted(_heads_in(edges))
    # Each head's weight in the circuit: the summed |EAP-IG score| of its circuit edges (in or out).
    weight, in_circuit = {h: 0.0 for h in heads}, set(edges)
    for label, value in scores.edges():
        if label in in_circuit:
            for h in _heads_in([label]):
                weight[h] += abs(value)
    ranked = sorted(weight, key=weight.get, reverse=True)
    from circuitlab.methods.head_detectors import head_scores

    hs = head_scores(model)
    kinds = hs.meta["kinds"]
    classified = {}
    for h in ranked[:a.top_heads]:
        layer, head = (int(x[1:]) for x in h.split("."))
        s = {k: round(float(hs.values[i, layer, head]), 3) for i, k in enumerate(kinds)}
        classified[h] = {"edge_weight": round(weight[h], 3), **s}
    out = {"model": a.model, "task": task.name, "prompts": len(task), "eap_ig_steps": a.steps,
           "weights": "dequantized 4-bit GGUF weights, not the published bf16 checkpoint",
           "edges_total": curve.total, "full_and_empty_metric": curve.meta,
           "smallest_circuit_edges": smallest, "threshold": 0.8,
           "curve": {"sizes": curve.sizes, "F": curve.faithfulness, "lo": curve.lo, "hi": curve.hi},
           "circuit_edges": edges, "heads_in_circuit": len(heads), "top_heads": classified,
           "seconds": {"eap_ig": round(t_scores, 1), "faithfulness_curve": round(t_curve, 1)}}
    print(json.dumps({k: v for k, v in out.items() if k not in ("curve", "circuit_edges")}, indent=1))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
