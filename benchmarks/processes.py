"""Several processes against one: the torchrun sweep and data-parallel sparse-coder training.

Each job runs twice on the same machine: once as one process with all the threads, once under
``torchrun --nproc_per_node N`` with the threads split between the processes (gloo on CPU). The
sweep's values must be the same (max |difference| is recorded and asserted below 1e-4); for
training, both runs see the same tokens and the held-out FVU of each is recorded. On a machine with
as many cores as processes this measures the cost of going distributed (process start-up,
gradient all-reduce, sharded gathering), which is what a cluster user pays per node.

    python benchmarks/processes.py                 # gpt2-zoo: exact head sweep (64 IOI prompts) and training
    python benchmarks/processes.py --quick         # 16 prompts, 65k training tokens

Writes benchmarks/results/processes.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_TOML = """[run]
out = "{out}"
model = "gpt2-zoo"
ctx_len = 64
shard_tokens = 16384
docs_per_batch = 128
eval_docs = 256
density_html = false
threads = {threads}

[train]
total_tokens = {tokens}
batch_size = 4096

[[coder]]
name = "resid_L2"
kind = "sae"
arch = "topk"
layer = 2
k = 32
expansion = 8
"""


LAUNCHER = """import json, os, sys
from circuitlab.cli import main
sys.argv = ["circuitlab"] + json.loads(os.environ["CIRCUITLAB_BENCH_ARGS"])
sys.exit(main())
"""


def launch(args: list[str], procs: int, threads: int, cwd: Path) -> float:
    """Wall time of ``circuitlab ARGS`` as one process, or under torchrun with ``procs`` processes
    (each with ``threads`` threads and its own empty training-state cache). The arguments travel in
    an environment variable: torchrun's own parser would take ``--n`` for an abbreviation of its
    options."""
    script = cwd / "launch_circuitlab.py"
    script.write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CIRCUITLAB_BENCH_ARGS=json.dumps(args),
               CIRCUITLAB_CACHE=str(cwd / f"state-{procs}-{time.time()}"))
    if procs == 1:
        cmd = [sys.executable, str(script)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", str(script)]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def sweep_values(folder: Path):
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"the sweep wrote no safetensors file in {folder}")
    return load_file(str(files[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads in all (split between the processes)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "processes.json"))
    a = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="cl-multiproc-"))
    n = 16 if a.quick else 64
    tokens = 65_536 if a.quick else 262_144
    per = max(1, a.threads // a.procs)
    out = {"command": "python benchmarks/processes.py" + (" --quick" if a.quick else ""),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": a.threads, "torch": torch.__version__},
           "procs": a.procs}

    sweep = ["sweep", "--model", "gpt2-zoo", "--task", "ioi", "--sites", "heads", "--method", "exact",
             "--n", str(n), "--batch-size", "8"]
    t1 = launch([*sweep, "--out", str(work / "sweep1")], 1, a.threads, work)
    tn = launch([*sweep, "--out", str(work / "sweepN")], a.procs, per, work)
    v1, vn = sweep_values(work / "sweep1"), sweep_values(work / "sweepN")
    diff = max(float((v1[k] - vn[k]).abs().max()) for k in v1 if v1[k].is_floating_point())
    assert diff < 1e-4, f"the sweep's values differ between 1 and {a.procs} processes by {diff:.2e}"
    out["sweep"] = {"what": f"exact patching of every head at every position, {n} IOI prompts, batches of 8",
                    "one_process_s": t1, "procs_s": tn, "speedup": t1 / tn, "max_abs_diff": diff}
    print(f"sweep: 1 process {t1:.1f} s, {a.procs} processes {tn:.1f} s ({t1 / tn:.2f}x)", flush=True)

    res = {}
    for procs in (1, a.procs):
        folder = work / f"train{procs}"
        toml = work / f"train{procs}.toml"
        toml.write_text(TRAIN_TOML.format(out=folder, tokens=tokens, threads=a.threads if procs == 1 else per))
        res[procs] = {"seconds": launch(["train", str(toml)], procs, a.threads if procs == 1 else per, work)}
        metrics = json.loads((folder / "resid_L2" / "metrics.json").read_text())
        res[procs]["heldout_fvu"] = metrics.get("fvu")
    out["train"] = {"what": f"TopK SAE (8x, k=32) on gpt2-zoo layer 2, {tokens} tokens, gathering included",
                    "one_process_s": res[1]["seconds"], "procs_s": res[a.procs]["seconds"],
                    "speedup": res[1]["seconds"] / res[a.procs]["seconds"],
                    "fvu_one_process": res[1]["heldout_fvu"], "fvu_procs": res[a.procs]["heldout_fvu"]}
    print(f"train: 1 process {res[1]['seconds']:.1f} s, {a.procs} processes {res[a.procs]['seconds']:.1f} s "
          f"({out['train']['speedup']:.2f}x); FVU {res[1]['heldout_fvu']} vs {res[a.procs]['heldout_fvu']}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
