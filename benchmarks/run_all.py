"""Every benchmark, one after another, in one command.

    python benchmarks/run_all.py --quick         # each benchmark's short form, into runs/bench-quick/
    python benchmarks/run_all.py                 # the full forms: rewrite benchmarks/results/ (hours)
    python benchmarks/run_all.py --only patching_peers,cdt --quick
    python benchmarks/run_all.py --list

The full forms are the commands whose results files the READMEs quote; the quick forms run the
same code on fewer prompts, layers or tokens and write beside each other in a scratch folder, to
check that everything runs and to see the ratios roughly. Benchmarks that need something absent
(a fetched model, its trained coders, a peer's virtual environment) are skipped with the reason;
the run ends with a table of what ran, how long it took and where it wrote. Benchmarks run one at a
time: two timed jobs at once would slow each other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "runs" / "peers"


@dataclass(frozen=True)
class Bench:
    """One benchmark script and the arguments of its two forms."""

    name: str
    script: str
    full: tuple[str, ...]
    """Arguments of the full form (they name the results file it rewrites)."""
    quick: tuple[str, ...]
    """Arguments of the short form; ``{out}`` is the scratch folder."""
    needs_models: tuple[str, ...] = ()
    quick_needs_models: tuple[str, ...] | None = None
    """Models the short form needs, when fewer than the full form's (None: the same)."""
    needs_peers: tuple[str, ...] = field(default=())
    """Virtual environments under runs/peers/ (each peer's own dependencies)."""
    needs_coders: tuple[str, ...] = ()
    """Models whose trained transcoders the benchmark reads."""


BENCHMARKS = [
    Bench("patching_peers", "patching_peers.py", (),
          ("--models", "gpt2-small-random", "--quick", "--out", "{out}/patching_peers.json"),
          needs_models=("smollm2-135m",), quick_needs_models=(), needs_peers=("nnsight",)),
    Bench("atp_star_cost", "atp_star_cost.py", (),
          ("--models", "gpt2-zoo", "--tasks", "ioi", "--n", "4", "--out", "{out}/atp_star_cost.json"),
          needs_models=("smollm2-135m",), quick_needs_models=()),
    Bench("exact_patching", "exact_patching.py", ("--quick", "--out", "benchmarks/results/exact_patching_quick.json"),
          ("--quick", "--out", "{out}/exact_patching_quick.json")),
    Bench("faithfulness_zoo", "attribution_faithfulness.py",
          ("--n", "64", "--out", "benchmarks/results/faithfulness.json"),
          ("--n", "8", "--models", "gpt2-zoo", "--out", "{out}/faithfulness.json")),
    Bench("faithfulness_smollm2", "real_faithfulness.py",
          ("--model", "smollm2-135m", "--n", "8", "--out", "benchmarks/results/faithfulness_smollm2.json"),
          ("--model", "smollm2-135m", "--n", "2", "--tasks", "ioi", "--out", "{out}/faithfulness_smollm2.json"),
          needs_models=("smollm2-135m",)),
    Bench("circuits", "circuits.py", ("--out", "benchmarks/results/circuits_gpt2zoo.json"),
          ("--n", "8", "--steps", "2", "--bootstrap", "10", "--out", "{out}/circuits.json")),
    Bench("cdt_zoo", "cdt.py", ("--model", "gpt2-zoo"), ("--quick", "--out", "{out}/cdt_gpt2-zoo.json")),
    Bench("cdt_smollm2", "cdt.py", ("--model", "smollm2-135m", "--n", "8", "--sites", "heads_all,mlp_out",
                                    "--max-exact-edges", "600"),
          ("--model", "smollm2-135m", "--quick", "--out", "{out}/cdt_smollm2.json"), needs_models=("smollm2-135m",)),
    Bench("latent_attribution", "latent_attribution.py",
          ("--model", "gpt2-zoo", "--n", "32", "--out", "benchmarks/results/latent_attribution_gpt2-zoo.json"),
          ("--quick", "--out", "{out}/latent_attribution.json")),
    Bench("graphs_zoo", "graphs.py", ("--model", "gpt2-zoo", "--n", "5"),
          ("--model", "gpt2-zoo", "--quick", "--out", "{out}/graphs_gpt2zoo.json")),
    Bench("graphs_smollm2", "graphs.py", ("--model", "smollm2-135m", "--entities", "2", "--ioi", "1"),
          ("--model", "smollm2-135m", "--quick", "--out", "{out}/graphs_smollm2.json"),
          needs_models=("smollm2-135m",), needs_coders=("smollm2-135m",)),
    Bench("circuit_tracer", "circuit_tracer_compare.py",
          ("--model", "llama-zoo", "--out", "benchmarks/results/circuit_tracer_llamazoo.json"),
          ("--model", "llama-zoo", "--quick", "--out", "{out}/circuit_tracer_llamazoo.json"),
          needs_peers=("circuit-tracer",)),
    Bench("sparse_training", "sparse_training.py",
          ("--d", "128", "128", "768", "--steps", "40", "200", "40", "--repeats", "3",
           "--json", "benchmarks/results/sparse_training.json"),
          ("--d", "128", "--steps", "20", "--repeats", "1", "--json", "{out}/sparse_training.json"),
          needs_peers=("saelens", "sparsify")),
    Bench("sparse_recovery", "sparse_recovery.py",
          ("--archs", "topk", "batchtopk", "relu", "jumprelu", "--json", "benchmarks/results/sparse_recovery.json"),
          ("--archs", "topk", "--tokens", "65536", "--json", "{out}/sparse_recovery.json")),
    Bench("tuned_lens", "tuned_lens_compare.py", ("--out", "benchmarks/results/tuned_lens_gpt2-zoo.json"),
          ("--quick", "--out", "{out}/tuned_lens.json"), needs_peers=("tuned-lens",)),
    Bench("processes", "processes.py", (), ("--quick", "--out", "{out}/processes.json")),
    Bench("task_accuracy", "task_accuracy.py", ("--out", "benchmarks/results/task_accuracy_smollm2-135m.json"),
          ("--n", "4", "--out", "{out}/task_accuracy.json"), needs_models=("smollm2-135m",)),
]


def missing(b: Bench, quick: bool) -> str | None:
    """Why ``b`` cannot run here (None: it can)."""
    from circuitlab.models import fetch

    models = b.quick_needs_models if quick and b.quick_needs_models is not None else b.needs_models
    for m in models:
        if not fetch.is_fetched(m):
            return f"model {m} not fetched (circuitlab models fetch {m})"
    for p in b.needs_peers:
        if not (PEERS / p / "bin" / "python").exists():
            return f"peer environment runs/peers/{p} missing (see the script's docstring)"
    if b.needs_coders:
        from circuitlab.graphs import find_transcoders

        for m in b.needs_coders:
            if find_transcoders(m) is None:
                return f"no trained transcoders for {m}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short forms, into --out-dir")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (see --list)")
    ap.add_argument("--out-dir", default=str(ROOT / "runs" / "bench-quick"), help="where the short forms write")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and their commands, run nothing")
    a = ap.parse_args()
    chosen = BENCHMARKS
    if a.only:
        names = a.only.split(",")
        unknown = sorted(set(names) - {b.name for b in BENCHMARKS})
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; --list shows the names")
        chosen = [b for b in BENCHMARKS if b.name in names]
    out_dir = Path(a.out_dir)
    summary = []
    for b in chosen:
        args = [x.replace("{out}", str(out_dir)) for x in (b.quick if a.quick else b.full)]
        cmd = [sys.executable, str(ROOT / "benchmarks" / b.script), *args]
        shown = "python benchmarks/" + " ".join([b.script, *args])
        if a.list:
            print(f"{b.name:22s} {shown}")
            continue
        why = missing(b, a.quick)
        if why:
            print(f"== {b.name}: skipped, {why}", flush=True)
            summary.append({"name": b.name, "status": "skipped", "why": why, "command": shown})
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"== {b.name}: {shown}", flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        summary.append({"name": b.name, "status": "ok" if rc == 0 else f"failed (exit {rc})",
                        "seconds": round(time.perf_counter() - t, 1), "command": shown})
    if a.list:
        return 0
    print("\n| benchmark | status | seconds | command |\n|---|---|---|---|")
    for s in summary:
        print(f"| {s['name']} | {s['status'] if s['status'] != 'skipped' else 'skipped: ' + s['why']} | "
              f"{s.get('seconds', '-')} | `{s['command']}` |")
    if a.quick:
        (out_dir / "run_all.json").write_text(json.dumps(summary, indent=1))
    return 0 if all(s["status"] in ("ok", "skipped") for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
