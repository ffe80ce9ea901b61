"""Sparse-coder training throughput: circuitlab vs SAE Lens vs EleutherAI sparsify.

Same activations (saved once to safetensors and read by every library), same TopK setup
(k=32, 8x expansion, batch 4096 tokens, fp32, 2 threads), equal token budgets; reports
tokens/s over each library's training steps (circuitlab's final checkpoint write is timed
separately, as the peers' drivers write none), held-out FVU (variance around the mean), the
fraction of latents that never fire on the held-out tokens (an FVU bought with fewer live
latents is no like-for-like win) and circuitlab's fraction of this machine's dense fp32 matmul
throughput. The peers run in their own virtual environment, created here (CPU torch 2.13.0
first, then ``sae-lens`` and ``eai-sparsify``), never as our dependencies:

    python benchmarks/sparse_training.py --d 128 128 768 --steps 40 200 40 --repeats 3
    CIRCUITLAB_BENCH_VENV=/path/to/venv python benchmarks/sparse_training.py   # reuse a venv

Drivers: SAE Lens through its own ``TopKTrainingSAE`` and ``SAETrainer``; sparsify through
its ``SparseCoder`` with its own loss (FVU + AuxK) and its default optimizer (schedule-free
Signum), with the decoder-norm steps its trainer does (its trainer itself needs a model).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

K, EXPANSION, BATCH = 32, 8, 4096
VENV = Path(os.environ.get("CIRCUITLAB_BENCH_VENV", "/tmp/circuitlab_bench_venv"))

PEER = textwrap.dedent("""
    import json, sys, time, torch
    from safetensors.torch import load_file
    torch.set_num_threads(int(sys.argv[3]))
    lib, path, _, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t = load_file(path); train, held = t["train"], t["held"]
    d = train.shape[1]; n = 8 * d; B = 4096; K = 32
    def fvu(y, yh): return float((y - yh).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    def silent(idx, acts): return 1 - len(idx[acts > 0].unique()) / n   # latents never firing on held-out
    if lib == "sae_lens":
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=K, normalize_activations="none"))
        lr = 2e-4 / (n / 2**14) ** 0.5
        cfg = SAETrainerConfig(total_training_samples=steps * B, train_batch_size_samples=B,
                               lr=lr, lr_end=lr, device="cpu")
        def data():
            i = 0
            while True:
                yield train[(i * B) % len(train):(i * B) % len(train) + B]; i += 1
        tr = SAETrainer(cfg, sae, data())
        t0 = time.perf_counter(); tr.fit(); dt = time.perf_counter() - t0
        with torch.no_grad():
            f = sae.encode(held)
            yh = sae.decode(f)
            top = f.topk(K, dim=-1)
            dead = silent(top.indices, top.values)
    else:
        from sparsify.sparse_coder import SparseCoder
        from sparsify.config import SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
        from schedulefree import ScheduleFreeWrapper
        sae = SparseCoder(d, SparseCoderConfig(expansion_factor=8, k=K))
        opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (n / 2**14) ** 0.5)]), momentum=0.95)
        opt.train()
        since = torch.zeros(n, dtype=torch.long)
        sae.b_dec.data = train[:B].mean(0)
        t0 = time.perf_counter()
        for s in range(steps):
            x = train[(s * B) % len(train):(s * B) % len(train) + B]
            out = sae(x, dead_mask=since > 10_000_000)
            loss = out.fvu + 1 / 32 * out.auxk_loss   # sparsify's loss (auxk_alpha as in its docs)
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step(); opt.zero_grad()
            sae.set_decoder_norm_to_unit_norm()
            with torch.no_grad():
                fired = torch.zeros(n, dtype=torch.bool); fired[out.latent_indices.flatten()] = True
                since += B; since[fired] = 0
        dt = time.perf_counter() - t0
        opt.eval()
        with torch.no_grad():
            out = sae(held)
            yh = out.sae_out
            dead = silent(out.latent_indices, out.latent_acts)
    print(json.dumps({"tokens_per_s": steps * B / dt, "heldout_fvu": fvu(held, yh), "heldout_silent": dead,
                      "seconds": dt}))
""")


def ensure_venv() -> Path:
    py = VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import sae_lens, sparsify, schedulefree"],
                                        capture_output=True).returncode == 0
    if not ok:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        # The CPU build: a local wheel where pip finds one, else PyTorch's CPU index.
        if subprocess.run(pip + ["--no-index", "torch==2.13.0"]).returncode != 0:
            subprocess.run(pip + ["torch==2.13.0", "--extra-index-url", "https://download.pytorch.org/whl/cpu"],
                           check=True)
        subprocess.run(pip + ["sae-lens", "eai-sparsify", "schedulefree"], check=True)
    return py


def activations(d: int, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Real residual activations for d=128 when the zoo model exists, else sparse toy data."""
    if d == 128:
        try:
            import circuitlab as cl
            from circuitlab.sparse.store import ActivationSource, Exclusion, SourceSpec, documents

            model = cl.load("gpt2-zoo")
            src = ActivationSource([model], SourceSpec(("blocks.2.hook_resid_post",)), Exclusion(), 64)
            rows, i = [], 0
            while sum(len(r) for r in rows) < n:
                rows.append(src.rows(documents(10_000 + i, 64)).x)
                i += 1
            return torch.cat(rows)[:n].contiguous(), "gpt2-zoo blocks.2.hook_resid_post"
        except Exception:  # zoo not built yet
            pass
    from circuitlab.sparse.synthetic import ToyData

    data = ToyData(d=d, n_features=4 * d, p_active=8 / (4 * d) * 4, shard_tokens=n, seed=seed)
    return data.shard(0).x.contiguous(), f"synthetic sparse features (d={d})"


def ours(train: torch.Tensor, held: torch.Tensor, steps: int) -> dict:
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.store import Rows, ShardLoader
    from circuitlab.sparse.trainer import TrainConfig, Trainer, fvu

    d = train.shape[1]
    z = torch.zeros(len(train), dtype=torch.int32)
    rows = Rows(train, None, z, z, z)
    coder = make_coder(config_class("topk")(d_in=d, d_sae=EXPANSION * d, k=K))
    loader = ShardLoader(lambda i: rows, 1, BATCH, buffer_shards=1)
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer({"c": coder}, loader, TrainConfig(total_tokens=steps * BATCH, batch_size=BATCH, progress=False,
                                                      checkpoint_every=0, init_tokens=BATCH), tmp)
        t.run(sample=rows.index(torch.arange(BATCH)))
        c = t.export("c")
    with torch.no_grad():
        f = fvu(held, c(held))
        silent = float(((c.encode(held) > 0).sum(0) == 0).float().mean())
    # The training steps only, like the peers' timers (their drivers write no checkpoint); the
    # final checkpoint write is reported beside it.
    steps_s = t.elapsed - t.checkpoint_seconds
    return {"tokens_per_s": t.tokens_seen / steps_s, "heldout_fvu": float(f), "heldout_silent": silent,
            "seconds": steps_s, "checkpoint_seconds": t.checkpoint_seconds,
            "tokens_per_s_incl_checkpoint": t.tokens_seen / t.elapsed}


def matmul_peak(d: int, threads: int) -> float:
    """Dense fp32 GFLOP/s of this machine on the encoder-shaped matmul: the faster of torch's
    own GEMM (MKL on x86) and oneDNN's, which circuitlab's TopK step uses on CPU."""
    from circuitlab.sparse.sparse_grad import _onednn_linear

    a, w = torch.randn(BATCH, d), torch.randn(EXPANSION * d, d)
    bias = torch.zeros(EXPANSION * d)
    kernels = [lambda: a @ w.t()]
    if _onednn_linear(a, w.t(), bias) is not None:
        kernels.append(lambda: _onednn_linear(a, w.t(), bias))
    best = 0.0
    for kernel in kernels:
        for _ in range(3):
            kernel()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            kernel()
            n += 1
        best = max(best, 2 * BATCH * d * EXPANSION * d * n / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, nargs="+", default=[128, 768])
    ap.add_argument("--steps", type=int, nargs="+", default=[40],
                    help="optimizer steps per library (same token budget): one value for every --d, or one per --d")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per library, taking turns; the table shows each library's median run")
    ap.add_argument("--json", default="benchmarks/results/sparse_training_latest.json")
    ap.add_argument("--skip-peers", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    py = None if a.skip_peers else ensure_venv()
    results = []
    if len(a.steps) not in (1, len(a.d)):
        ap.error(f"--steps takes one value or one per --d ({len(a.d)}), got {len(a.steps)}")
    for d, steps in zip(a.d, a.steps * len(a.d) if len(a.steps) == 1 else a.steps):
        acts, source = activations(d, steps * BATCH + 8192)
        train, held = acts[:-8192], acts[-8192:]
        row = {"d_in": d, "d_sae": EXPANSION * d, "k": K, "batch": BATCH, "steps": steps, "data": source,
               "repeats": a.repeats}
        runs: dict[str, list[dict]] = {"circuitlab": [], "sae_lens": [], "sparsify": []}
        peaks = []
        with tempfile.TemporaryDirectory() as tmp:
            if py is not None:
                from safetensors.torch import save_file

                save_file({"train": train, "held": held}, f"{tmp}/acts.safetensors")
                (Path(tmp) / "peer.py").write_text(PEER)
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env["OMP_NUM_THREADS"] = str(a.threads)
            # Libraries take turns, repeat after repeat: this machine's speed drifts by tens of
            # percent over minutes, and a drift should not land on one library only.
            for _ in range(a.repeats):
                runs["circuitlab"].append(ours(train, held, steps))
                peaks.append(matmul_peak(d, a.threads))
                for lib in ("sae_lens", "sparsify") if py is not None else ():
                    r = subprocess.run([str(py), f"{tmp}/peer.py", lib, f"{tmp}/acts.safetensors", str(a.threads),
                                        str(steps)], capture_output=True, text=True, env=env)
                    runs[lib].append(json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else
                                     {"error": r.stderr[-500:]})
        for lib, rs in runs.items():
            ok = [r for r in rs if "tokens_per_s" in r]
            if ok:  # the median run by speed (FVU is the same in every repeat: seeded)
                row[lib] = dict(sorted(ok, key=lambda r: r["tokens_per_s"])[len(ok) // 2],
                                tokens_per_s_runs=[r["tokens_per_s"] for r in ok])
            elif rs:
                row[lib] = rs[0]
        peak = statistics.median(peaks)
        # The one dense product a TopK step cannot avoid: the encoder forward (2 d n FLOPs per
        # token). circuitlab's backward pass is sparse (only the k chosen latents), so dense
        # backward FLOPs would not be work it does.
        useful = 2 * d * EXPANSION * d
        row["matmul_gflops"] = peak
        row["circuitlab"]["fraction_of_matmul_peak"] = row["circuitlab"]["tokens_per_s"] * useful / (peak * 1e9)
        results.append(row)
    print("| d_in | steps | library | tokens/s | held-out FVU | latents silent on held-out | speed-up vs faster peer |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        peers = [row[p]["tokens_per_s"] for p in ("sae_lens", "sparsify") if "tokens_per_s" in row.get(p, {})]
        best = max(peers) if peers else None
        for lib in ("circuitlab", "sae_lens", "sparsify"):
            if lib not in row or "tokens_per_s" not in row[lib]:
                continue
            r = row[lib]
            sp = f"{r['tokens_per_s'] / best:.2f}x" if best else "-"
            print(f"| {row['d_in']} | {row['steps']} | {lib} | {r['tokens_per_s']:,.0f} | {r['heldout_fvu']:.4f} | "
                  f"{r.get('heldout_silent', float('nan')):.1%} | {sp} |")
        c = row["circuitlab"]
        print(f"\nd_in {row['d_in']}: circuitlab reaches {c['fraction_of_matmul_peak']:.1%} of the "
              f"{row['matmul_gflops']:.1f} GFLOP/s dense fp32 matmul peak ({row['data']})")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
