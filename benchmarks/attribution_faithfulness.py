"""Faithfulness and cost of the fast estimators against exact patching, on the zoo models.

For each model (gpt2-zoo, llama-zoo) and task (IOI, capitals), with N prompts: Pearson, and
Spearman over nodes whose exact effect exceeds 1% of the largest, of AtP, AtP*, RelP and IG with
exact patching per site family; cost in forward-pass equivalents and wall time, exact's beside
them; AtP*'s cost-to-recall of the true top-10 heads-by-position nodes; and the wall-time ratio
of one AtP* pass over {resid_pre, attn_out, mlp_out by [layer, pos]; heads by [layer, pos, head]}
against the batched exact sweep over the same nodes.

    python benchmarks/attribution_faithfulness.py --n 64 --out benchmarks/results/faithfulness.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import circuitlab as cl
from circuitlab.methods.registry import NODE_METHODS

FAMILIES = ["resid_pre", "attn_out", "mlp_out", "heads", "q", "k"]
METHODS = [m for m in NODE_METHODS if m != "exact"]  # every estimator, against exact patching


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt2-zoo,llama-zoo")
    ap.add_argument("--tasks", default="ioi,capitals")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows, extra = [], {}
    for mname in a.models.split(","):
        model = cl.load(mname)
        for tname in a.tasks.split(","):
            task = cl.tasks.bundled(model, tname, n=a.n, seed=0)
            key = f"{mname}/{tname}"
            t_exact_total = 0.0
            for fam in FAMILIES:
                exact = cl.patch(model, task, fam, method="exact", progress=False)
                if fam in ("resid_pre", "attn_out", "mlp_out", "heads"):
                    t_exact_total += exact.cost.seconds
                rows.append([key, fam, "exact", "", "", exact.cost.forward_passes, round(exact.cost.seconds, 2)])
                for meth in METHODS:
                    if meth == "relp" and fam in ("q", "k"):
                        kw = {"attention": "attnlrp"}
                    else:
                        kw = {}
                    est = cl.patch(model, task, fam, method=meth, **kw)
                    c = cl.compare(est, exact, k=10)
                    fwd_eq = est.cost.forward_passes + est.cost.backward_passes * 2  # a backward ~ 2 forwards
                    rows.append([key, fam, meth + (" (attnlrp)" if kw else ""), round(c["pearson"], 3),
                                 round(c["spearman_1pct"], 3), fwd_eq, round(est.cost.seconds, 2)])
                    if fam == "heads" and meth == "atp*":
                        extra[f"{key} heads cost-to-recall top-10"] = {
                            "verifications": c["verifications_to_recall"],
                            "perfect": 10,
                            "ratio": c["verifications_to_recall"] / 10,
                        }
            node_set = ["resid_pre", "attn_out", "mlp_out", "heads"]
            times = {}
            for graddrop in (False, True):  # one shared pass over the whole node set; median of 3
                runs = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    cl.patch(model, task, node_set, method="atp*", graddrop=graddrop)
                    runs.append(time.perf_counter() - t0)
                times[graddrop] = sorted(runs)[1]
            extra[f"{key} node-set wall time exact/atp*"] = {
                "exact_s": t_exact_total, "atp_star_s": times[False], "ratio": t_exact_total / times[False],
                "atp_star_with_graddrop_s": times[True], "ratio_with_graddrop": t_exact_total / times[True]}
    print("| model/task | sites | method | Pearson | Spearman (>1% nodes) | forward-pass equivalents | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    for k, v in extra.items():
        print(f"{k}: {v}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"rows": rows, "extra": extra}, indent=1))


if __name__ == "__main__":
    main()
