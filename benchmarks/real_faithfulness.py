"""Every estimator against exact patching on a real pretrained model, at role positions.

For each task and site family: AtP, AtP*, RelP (LN rule, and AttnLRP) and integrated gradients
(both variants) against exact activation patching (denoising), with Pearson, Spearman over the
nodes whose exact effect exceeds 1% of the largest, recall@10, sign agreement on those nodes and
cost-to-recall of the true top 10 (verifications in the estimate's order / 10). Costs are in
forward-pass equivalents (a backward pass counted as two forwards) beside wall time.

The real models are dequantized 4-bit GGUF weights (``circuitlab models fetch``), not the
published bf16 checkpoints.

    python benchmarks/real_faithfulness.py --model smollm2-135m --n 8 \
        --out benchmarks/results/faithfulness_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import circuitlab as cl
from common import label
from circuitlab.methods.registry import NODE_METHODS

FAMILIES = ["attn_out", "mlp_out", "resid_pre", "heads", "q", "k", "v"]
VARIANTS = {"relp": [{"attention": "attnlrp"}], "ig": [{"variant": "activations", "steps": 8}]}
"""Further option settings run after an estimator's defaults."""
ESTIMATORS = [(m, kw) for m in NODE_METHODS if m != "exact" for kw in [{}] + VARIANTS.get(m, [])]


def _round(x, nd=3):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def run_task(model, task, families, estimators, log, rows: list) -> list[dict]:
    """Append one row per (family, estimator) to ``rows`` as each is measured."""
    positions = list(task.roles)
    for fam in families:
        exact = cl.patch(model, task, fam, method="exact", positions=positions, progress=False)
        rows.append({"task": task.name, "sites": fam, "method": "exact", "nodes": len(exact.flat),
                     "fwd_equiv": exact.cost.forward_passes, "seconds": _round(exact.cost.seconds, 2)})
        log(f"{task.name} {fam} exact: {exact.cost.seconds:.1f}s, {len(exact.flat)} nodes")
        for method, kw in estimators:
            try:
                est = cl.patch(model, task, fam, method=method, positions=positions, **kw)
            except (ValueError, NotImplementedError) as e:
                rows.append({"task": task.name, "sites": fam, "method": label(method, kw), "error": str(e)})
                log(f"  {label(method, kw)}: refused ({e})")
                continue
            c = cl.compare(est, exact, k=10)
            row = {"task": task.name, "sites": fam, "method": label(method, kw),
                   "pearson": _round(c["pearson"]), "spearman_1pct": _round(c["spearman_1pct"]),
                   "recall@10": _round(c["recall@10"], 2), "sign_agreement": _round(c["sign_agreement"]),
                   "cost_to_recall": _round(c["verifications_to_recall"] / c["k"], 2),
                   "fwd_equiv": est.cost.forward_passes + 2 * est.cost.backward_passes,
                   "seconds": _round(est.cost.seconds, 2)}
            rows.append(row)
            log(f"  {row['method']}: pearson {row['pearson']} spearman>1% {row['spearman_1pct']} "
                f"recall@10 {row['recall@10']} sign {row['sign_agreement']}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="ioi,greater_than,capitals")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--methods", default="atp,atp*,relp,ig", help="estimators to run (relp and ig run both variants)")
    ap.add_argument("--ig-variants", default="inputs,activations",
                    help="IG variants to run (activations costs steps x layers passes per family)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", metavar="RESULTS_JSON", default=None,
                    help="print the README tables of a results file (one per task) and exit")
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in --out (re-measured ones are replaced) and record this run beside them",
    )
    a = ap.parse_args()
    if a.table:
        print(readme_tables(json.loads(Path(a.table).read_text())["rows"]))
        return
    torch.set_num_threads(a.threads)
    model = cl.load(a.model)
    rows, tasks, runs, kept, extra = [], {}, [], [], {}
    if a.append and a.out and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        if old.get("model") != a.model or old.get("n") != a.n:
            raise SystemExit(f"{a.out} holds model {old.get('model')} with n={old.get('n')}; "
                             f"--append needs the same --model and --n (or a new --out)")
        tasks, runs, kept = old.get("tasks", {}), old.get("runs", []), old.get("rows", [])
        extra = {k: v for k, v in old.items() if k == "note"}
    runs = runs + ["python " + " ".join(sys.argv)]
    t0 = time.perf_counter()

    def save(done: bool) -> None:  # after every measurement, so a long run can be read as it goes
        fresh = {(r["task"], r["sites"], r["method"]) for r in rows}
        merged = [r for r in kept if (r["task"], r["sites"], r["method"]) not in fresh] + rows
        out = {"model": a.model, "n": a.n, "direction": "denoising", "complete": done,
               "weights": "dequantized 4-bit GGUF weights, not the published bf16 checkpoint",
               "tasks": tasks, "runs": runs, "rows": merged,
               "seconds_this_run": round(time.perf_counter() - t0, 1), **extra}
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")

    def log(line: str) -> None:
        print(line, flush=True)
        save(False)

    for tname in a.tasks.split(","):
        task = cl.tasks.bundled(model, tname, n=a.n, seed=0)
        tasks[task.name] = {"roles": list(task.roles), "prompts": len(task),
                            "example": task.prompts[0] if task.prompts else None}
        chosen = [(m, kw) for m, kw in ESTIMATORS if m in a.methods.split(",")
                  and (m != "ig" or kw.get("variant", "inputs") in a.ig_variants.split(","))]
        run_task(model, task, a.families.split(","), chosen, log, rows)
    save(True)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| task | sites | method | Pearson | Spearman (>1%) | recall@10 | sign | cost-to-recall | fwd-equiv |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["method"] == "exact" or "error" in r:
            continue
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in (
            "task", "sites", "method", "pearson", "spearman_1pct", "recall@10", "sign_agreement",
            "cost_to_recall", "fwd_equiv")) + " |")
    return "\n".join(lines)


SITES_ORDER = ["heads", "q", "k", "v", "attn_out", "mlp_out", "resid_pre"]


def readme_tables(rows: list[dict]) -> str:
    """One markdown table per task: a row per site family, a column per estimator, each cell
    "Pearson / Spearman(>1%) / recall@10 / sign", the header carrying each estimator's cost."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        methods = [m for m in dict.fromkeys(r["method"] for r in mine) if m != "exact"]
        cost = {m: sorted({r["fwd_equiv"] for r in mine if r["method"] == m and "error" not in r})
                for m in dict.fromkeys(r["method"] for r in mine)}
        span = lambda c: str(c[0]) if len(c) == 1 else f"{c[0]}-{c[-1]}"  # noqa: E731
        out.append(f"{task} (exact: {span(cost['exact'])} forward-pass equivalents)\n")
        out.append("| sites | " + " | ".join(f"{m} ({span(cost[m])})" for m in methods) + " |")
        out.append("|---" * (len(methods) + 1) + "|")
        fams = sorted(dict.fromkeys(r["sites"] for r in mine),
                      key=lambda f: SITES_ORDER.index(f) if f in SITES_ORDER else 99)
        for fam in fams:
            cells = []
            for m in methods:
                r = next((r for r in mine if r["sites"] == fam and r["method"] == m), None)
                cells.append("not run" if r is None else "refused" if "error" in r else " / ".join(
                    "-" if r[k] is None else f"{r[k]:.{nd}f}" for k, nd in
                    (("pearson", 3), ("spearman_1pct", 3), ("recall@10", 1), ("sign_agreement", 2))))
            out.append(f"| {fam} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
