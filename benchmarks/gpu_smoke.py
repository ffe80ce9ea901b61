"""One command for the first GPU session: does everything that runs on CPU run on CUDA, with
the same results?

Loads a zoo model on CPU and on CUDA, runs an exact sweep and AtP* on both and compares them,
then times the exact sweep on the GPU; trains a short sparse coder on both devices when the
sparse package is installed.

    python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import sys
import time

import torch

import circuitlab as cl


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run this on a GPU machine)")
        return 0
    from circuitlab.zoo import list_models

    name = "gpt2-zoo" if "gpt2-zoo" in list_models() else list_models()[0]
    ok = True
    res = {}
    for dev in ("cpu", "cuda"):
        m = cl.load(name, device=dev)
        task = cl.tasks.ioi(m, n=32)
        t = time.perf_counter()
        ex = cl.patch(m, task, "heads", progress=False)
        if dev == "cuda":
            torch.cuda.synchronize()
        res[dev] = (ex, cl.patch(m, task, "heads", method="atp*"), time.perf_counter() - t)
        print(f"{dev}: exact heads sweep + AtP* in {res[dev][2]:.2f}s, chunk {ex.meta['chunk_size']}")
    for i, what in enumerate(("exact", "atp*")):
        diff = float((res["cpu"][i].values - res["cuda"][i].values).abs().max())
        scale = float(res["cpu"][i].values.abs().max())
        good = diff <= 1e-3 * max(scale, 1e-6) + 1e-5
        ok &= good
        print(f"{what}: max |cpu - cuda| = {diff:.2e} (scale {scale:.2e}) {'OK' if good else 'MISMATCH'}")
    try:
        from circuitlab.sparse.smoke import gpu_smoke as sparse_smoke  # type: ignore
    except ImportError:
        print("sparse package absent: skipped the sparse-coder check")
    else:
        ok &= bool(sparse_smoke(name))
    print("GPU smoke:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
