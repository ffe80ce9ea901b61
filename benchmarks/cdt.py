"""CD-T against exact patching and EAP: node and edge score agreement, and wall times.

On one model and task (default: gpt2-zoo, bundled IOI), in the same direction (denoising):

* nodes (heads over all positions, heads by position, MLP outputs by position): exact patching
  (the reference), AtP, and CD-T propagated with the paper's rules, propagated with biases kept
  irrelevant, and first-order (mode=linear); Pearson, Spearman, Spearman over nodes above 1% of
  the largest effect, top-10 recall, sign agreement;
* edges: exact edge patching (every edge, or on large graphs the union of the top edges of each
  estimate plus random ones), EAP and CD-T edges: the same statistics over the patched edges;
* wall time of every run, with the machine it ran on.

    python benchmarks/cdt.py                          # gpt2-zoo, 32 prompts
    python benchmarks/cdt.py --model smollm2-135m --n 8 --sites heads_all,mlp_out --max-exact-edges 600
    python benchmarks/cdt.py --quick --out /tmp/cdt.json   # 4 prompts, heads, 60 edges: checks it runs

Writes benchmarks/results/cdt_<model>.json (or --out) and prints a markdown table. Wall times are
only comparable within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

NODE_SITES = ("heads_all", "heads", "mlp_out")
NODE_METHODS = {
    "atp": ("atp", {}),
    "cdt": ("cdt", {}),
    "cdt bias=irrelevant": ("cdt", {"bias": "irrelevant"}),
    "cdt linear": ("cdt", {"mode": "linear"}),
}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def agreement(est: torch.Tensor, ref: torch.Tensor, k: int = 10) -> dict:
    """The statistics of circuitlab.compare, on flat value tensors."""
    from circuitlab.agreement import pearson, rank

    e, r = est.flatten().double(), ref.flatten().double()
    big = r.abs() > 0.01 * r.abs().max()
    k = min(k, len(r))
    top_e = set(e.abs().argsort(descending=True)[:k].tolist())
    top_r = set(r.abs().argsort(descending=True)[:k].tolist())
    return {"pearson": pearson(e, r), "spearman": pearson(rank(e), rank(r)),
            "spearman_1pct": pearson(rank(e[big]), rank(r[big])) if int(big.sum()) > 2 else float("nan"),
            f"recall@{k}": len(top_e & top_r) / k,
            "sign_agreement": float((torch.sign(e[big]) == torch.sign(r[big])).double().mean()),
            "n": len(r)}


def nodes(model, task, sites) -> list[dict]:
    import circuitlab as cl

    rows = []
    for s in sites:
        exact, t_exact = timed(lambda: cl.patch(model, task, s, progress=False))
        rows.append({"level": "node", "sites": s, "method": "exact", "seconds": t_exact, "n": exact.values.numel()})
        for label, (method, options) in NODE_METHODS.items():
            est, t = timed(lambda: cl.patch(model, task, s, method=method, **options))
            rows.append({"level": "node", "sites": s, "method": label, "seconds": t,
                         **agreement(est.values, exact.values)})
            print(f"  {s:10s} {label:20s} spearman {rows[-1]['spearman']:.3f}  {t:.1f}s", flush=True)
    return rows


def edges(model, task, max_exact: int, seed: int = 0) -> list[dict]:
    from circuitlab import circuits as cc

    eap, t_eap = timed(lambda: cc.edges(model, task, method="eap"))
    cdt, t_cdt = timed(lambda: cc.edges(model, task, method="cdt"))
    labels, _ = eap.labels_values()
    if len(labels) <= max_exact:
        chosen = None
    else:  # the top edges of each estimate and as many random ones
        k = max_exact // 3
        pool = [l for l, _ in eap.top(k)] + [l for l, _ in cdt.top(k)]
        pool += random.Random(seed).sample(labels, k)
        chosen = list(dict.fromkeys(pool))
    path, t_path = timed(lambda: cc.edge_patching(model, task, edges=chosen))
    where = {l: i for i, l in enumerate(labels)}
    idx = [where[l] for l in chosen] if chosen is not None else list(range(len(labels)))
    ref = path.labels_values()[1][idx]
    rows = [{"level": "edge", "sites": "all edges" if chosen is None else f"{len(idx)} of {len(labels)} edges",
             "method": "exact (path)", "seconds": t_path, "n": len(idx)}]
    for label, est, t in (("eap", eap, t_eap), ("cdt", cdt, t_cdt)):
        rows.append({"level": "edge", "sites": rows[0]["sites"], "method": label, "seconds": t,
                     **agreement(est.labels_values()[1][idx], ref)})
        print(f"  edges      {label:20s} spearman {rows[-1]['spearman']:.3f}  {t:.1f}s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = "| level | sites | method | Pearson | Spearman | Spearman (>1%) | top-10 recall | sign | seconds |"
    out = [head, "|" + "---|" * 9]
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "ref" for k in ("pearson", "spearman", "spearman_1pct",
                                                                 "recall@10", "sign_agreement")]
        out.append(f"| {r['level']} | {r['sites']} | {r['method']} | " + " | ".join(cells) + f" | {r['seconds']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-zoo")
    ap.add_argument("--task", default="ioi", help="bundled task name")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-exact-edges", type=int, default=1500,
                    help="exact-patch every edge up to this many, else the top and random edges (this many)")
    ap.add_argument("--sites", default=",".join(NODE_SITES),
                    help="node sites, comma-separated (default all three; CD-T's per-position walks grow with "
                         "layers x positions x heads, so on a 30-layer model 'heads' alone takes about an hour)")
    ap.add_argument("--quick", action="store_true", help="4 prompts, heads over all positions, 60 exact edges")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/cdt_<model>.json)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import circuitlab as cl
    from circuitlab.io import atomic_write

    model = cl.load(a.model, device=a.device)
    n = 4 if a.quick else a.n
    task = cl.tasks.bundled(model, a.task, n=n)
    t0 = time.perf_counter()
    print(f"{a.model}, {a.task}, {n} prompts", flush=True)
    rows = nodes(model, task, ("heads_all",) if a.quick else tuple(a.sites.split(",")))
    rows += edges(model, task, 60 if a.quick else a.max_exact_edges)
    dev = model.device
    res = {"model": a.model, "task": a.task, "prompts": n, "quick": a.quick, "sites": a.sites, "rows": rows,
           "seconds_total": time.perf_counter() - t0, "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "cpu": platform.processor() or platform.machine(), "threads": a.threads, "torch": torch.__version__}
    print(table(rows))
    out = Path(a.out or Path(__file__).parent / "results" / f"cdt_{a.model.replace('/', '_')}.json")
    text = json.dumps(res, indent=1, default=float)
    atomic_write(out, lambda p: Path(p).write_text(text))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
