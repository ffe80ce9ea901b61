"""What AtP* costs against the exact sweep it estimates, and where its time goes.

For each model, task and node set (at the task's role positions, as the faithfulness benchmarks
use), in one run on one machine: the batched exact sweep over the node set; AtP; AtP* without
GradDrop (its values: AtP with the QK fix); AtP* with GradDrop computed from the residual
stream's gradients (the default); and GradDrop done the brute-force way, one full backward pass
per layer with that layer's outputs gated (the previous implementation, kept as the reference).
Beside wall times: the FLOPs each run performs (torch's FlopCounterMode, on a separate untimed
run), so the ratio between an estimator and the exact sweep can be read as work, not only time.

    python benchmarks/atp_star_cost.py                               # gpt2-zoo and SmolLM2-135M
    python benchmarks/atp_star_cost.py --models gpt2-zoo --n 8       # minutes

Writes benchmarks/results/atp_star_cost.json (or --out). Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"exact": ("exact", {}), "atp": ("atp", {}), "atp* values only": ("atp*", {"graddrop": False}),
        "atp*": ("atp*", {}), "atp* (gated GradDrop)": ("atp*", {})}


def run_once(model, task, sites, name):
    import circuitlab as cl
    from circuitlab.methods import atp_star

    method, kw = RUNS[name]
    places = atp_star._places
    if name == "atp* (gated GradDrop)":
        atp_star._places = lambda model: {}  # no known places: every layer gated, full backward passes
    if method == "exact":
        kw = {"progress": False}
    try:
        return cl.patch(model, task, sites, method=method, positions=list(task.roles), **kw)
    finally:
        atp_star._places = places


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-zoo,smollm2-135m")
    ap.add_argument("--tasks", default="ioi,capitals")
    ap.add_argument("--sites", default="heads,mlp_out")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "atp_star_cost.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import circuitlab as cl
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name in a.models.split(","):
        model = cl.load(name, device="cpu")
        for task_name in a.tasks.split(","):
            task = cl.tasks.bundled(model, task_name, n=a.n)
            run_once(model, task, "resid_pre", "atp")  # warm-up
            for sites in a.sites.split(","):
                ref = last = None
                for label in RUNS:
                    t = time.perf_counter()
                    r = run_once(model, task, sites, label)
                    seconds = time.perf_counter() - t
                    with FlopCounterMode(display=False) as fc:
                        run_once(model, task, sites, label)
                    row = {"model": name, "task": task_name, "prompts": len(task), "positions": list(task.roles),
                           "sites": sites, "nodes": r.values.numel(), "method": label, "seconds": seconds,
                           "gflop": fc.get_total_flops() / 1e9}
                    if label == "exact":
                        ref = row
                    else:
                        row["exact_over_this_s"] = ref["seconds"] / seconds
                        row["exact_over_this_flop"] = ref["gflop"] / row["gflop"]
                    if "rank_score" in r.extras and label == "atp* (gated GradDrop)":
                        row["rank_score_max_diff_vs_default"] = float(
                            (r.extras["rank_score"] - last.extras["rank_score"]).abs().max())
                    last = r
                    rows.append(row)
                    print(f"{name:13s} {task_name:9s} {sites:8s} {label:22s} {seconds:7.2f} s  "
                          f"{row['gflop']:8.1f} GFLOP" + (f"  exact/this {row['exact_over_this_s']:.1f}x time, "
                                                          f"{row['exact_over_this_flop']:.1f}x FLOPs"
                                                          if label != "exact" else ""), flush=True)
    Path(a.out).write_text(json.dumps({"command": "python benchmarks/atp_star_cost.py", "threads": a.threads,
                                       "torch": torch.__version__, "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
