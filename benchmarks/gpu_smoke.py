"""One command for a first run on a GPU machine: does everything that runs on CPU run on CUDA, with
the same results?

Loads a zoo model on CPU and on CUDA, runs an exact sweep and AtP* on both and compares them,
then trains a short TopK sparse coder on the same random activations on both devices and
compares the losses. Every check that cannot run says so and why; none is skipped silently. On
a machine without CUDA the CPU halves still run (so this script itself is tested anywhere) and
the comparisons are reported as skipped.

    python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time

import torch

import circuitlab as cl


def devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def skipped(what: str, why: str) -> None:
    print(f"SKIPPED {what}: {why}")


def model_check() -> bool:
    """Exact heads sweep and AtP* on the zoo model, CPU vs CUDA."""
    from circuitlab.zoo import list_models

    zoo = list_models()
    if not zoo:
        skipped("model check", "no bundled zoo model is installed")
        return True
    name = "gpt2-zoo" if "gpt2-zoo" in zoo else zoo[0]
    res = {}
    for dev in devices():
        m = cl.load(name, device=dev)
        task = cl.tasks.ioi(m, n=32)
        t = time.perf_counter()
        ex = cl.patch(m, task, "heads", progress=False)
        if dev == "cuda":
            torch.cuda.synchronize()
        res[dev] = (ex, cl.patch(m, task, "heads", method="atp*"), time.perf_counter() - t)
        print(f"{dev}: exact heads sweep + AtP* on {name} in {res[dev][2]:.2f}s, chunk {ex.meta['chunk_size']}")
    if "cuda" not in res:
        skipped("model CPU-vs-CUDA comparison", "no CUDA device")
        return True
    ok = True
    for i, what in enumerate(("exact", "atp*")):
        diff = float((res["cpu"][i].values - res["cuda"][i].values).abs().max())
        scale = float(res["cpu"][i].values.abs().max())
        good = diff <= 1e-3 * max(scale, 1e-6) + 1e-5
        ok &= good
        print(f"{what}: max |cpu - cuda| = {diff:.2e} (scale {scale:.2e}) {'OK' if good else 'MISMATCH'}")
    return ok


def train_topk(dev: str, steps: int = 40) -> list[dict]:
    """A short TopK training on sparse random activations (the same rows on every device)."""
    from circuitlab.sparse.base import config_class, make_coder
    from circuitlab.sparse.store import ShardLoader
    from circuitlab.sparse.synthetic import ToyData
    from circuitlab.sparse.trainer import TrainConfig, Trainer

    data = ToyData(d=32, n_features=96, shard_tokens=1024, seed=0)

    def shard(i: int):
        r = data.shard(i)
        return dataclasses.replace(r, x=r.x.to(dev), y=None if r.y is None else r.y.to(dev))

    coder = make_coder(config_class("topk")(d_in=32, d_sae=128, k=4, aux_k=16, seed=1)).to(dev)
    batch = 256
    cfg = TrainConfig(total_tokens=batch * steps, batch_size=batch, lr=3e-3, progress=False,
                      checkpoint_every=0, log_every=1)
    with tempfile.TemporaryDirectory() as out:
        t = Trainer({"topk": coder}, ShardLoader(shard, 4, batch, seed=3), cfg, out)
        t.run(sample=shard(0))
    return t.history


def coder_check() -> bool:
    """TopK training on CPU and CUDA: the first step's loss agrees closely (same data, same
    initial weights) and the final FVU agrees loosely (top-k ties may break differently)."""
    hist = {}
    ok = True
    for dev in devices():
        t = time.perf_counter()
        try:
            hist[dev] = train_topk(dev)
        except Exception as e:  # a failure here is a finding, reported, never hidden
            print(f"coder training on {dev}: FAILED ({type(e).__name__}: {e})")
            ok = False
            continue
        h = hist[dev]
        first, last = h[0]["topk.loss"], h[-1]["topk.fvu"]
        good = all(torch.isfinite(torch.tensor(r["topk.loss"])) for r in h) and last < h[0]["topk.fvu"]
        ok &= good
        print(f"{dev}: TopK {len(h)} steps in {time.perf_counter() - t:.2f}s, first loss {first:.4g}, "
              f"FVU {h[0]['topk.fvu']:.3f} -> {last:.3f} {'OK' if good else 'DID NOT LEARN'}")
    if "cuda" not in devices():
        skipped("coder CPU-vs-CUDA comparison", "no CUDA device")
        return ok
    if len(hist) < 2:
        skipped("coder CPU-vs-CUDA comparison", "training failed on one device (see above)")
        return False
    a, b = hist["cpu"], hist["cuda"]
    d_first = abs(a[0]["topk.loss"] - b[0]["topk.loss"]) / max(abs(a[0]["topk.loss"]), 1e-9)
    d_fvu = abs(a[-1]["topk.fvu"] - b[-1]["topk.fvu"])
    good = d_first <= 1e-3 and d_fvu <= 0.05
    print(f"coder: first-step loss rel. diff {d_first:.1e}, final FVU diff {d_fvu:.3f} "
          f"{'OK' if good else 'MISMATCH'}")
    return ok and good


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: running the CPU halves only; every CPU-vs-CUDA comparison is skipped")
    ok = model_check()
    ok &= coder_check()
    print("GPU smoke:", "PASS" if ok else "FAIL", "" if torch.cuda.is_available() else "(CPU only)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
