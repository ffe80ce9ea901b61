"""Exact activation patching on real model shapes: circuitlab, TransformerLens and nnsight side by side.

For each model, the same sweeps over the same prompts with the same metric (mean logit
difference answer - wrong at each prompt's answer position, denoising: corrupted run, clean
values patched in):

* ``resid_pre``  [layer, pos]        the residual stream entering each block
* ``heads_all``  [layer, head]       each head's output (z) at every position at once
* ``heads``      [layer, pos, head]  each head's output at one position (on ``--head-layers``)
* ``mlp_out``    [layer, pos]        each MLP's output

circuitlab runs ``cl.patch``; TransformerLens 4.3 its ``patching`` module (``get_act_patch_*``) on
the same bridge; nnsight 0.8.1, in its own virtual environment (benchmarks/nnsight_worker.py),
the way its documentation batches interventions: one trace per layer (per layer and position
for ``heads``), one invoke per patch. Values must agree (max |difference| is recorded and
asserted below 1e-3). Beside the wall times, the benchmark counts the FLOPs each library's sweep
runs (torch's FlopCounterMode on a separate, untimed run of circuitlab's sweep; one counted
forward pass times the number of full passes for the peers) and divides by the wall time, next
to the matmul peak measured on this machine in the same run, so the distance to the limit shows.
Each library gets one untimed warm-up pass (nnsight: its clean-run trace) so that first-call
set-up is not counted.

    python benchmarks/patching_peers.py                       # GPT-2-small-shaped random model + SmolLM2-135M
    python benchmarks/patching_peers.py --models gpt2-small-random --quick   # minutes: 3 layers, 4 prompts

Models: ``gpt2-small-random`` (12 layers, d_model 768, vocabulary 50257, random weights, 8 prompts
of 16 random tokens: needs nothing fetched) and ``smollm2-135m`` (30 layers, real weights,
8 IOI prompts; `circuitlab models fetch smollm2-135m`). nnsight's environment:
``python -m venv runs/peers/nnsight && runs/peers/nnsight/bin/pip install torch==2.13.0
nnsight==0.8.1`` (``--nnsight-python`` points elsewhere; without it the nnsight column is left out).
Writes benchmarks/results/patching_peers.json (or ``--out``). Time it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from common import gpt2_small_random, random_task

ROOT = Path(__file__).resolve().parents[1]
NNSIGHT_PYTHON = ROOT / "runs" / "peers" / "nnsight" / "bin" / "python"
SWEEPS = ("resid_pre", "heads_all", "heads", "mlp_out")
TL_FUNCTIONS = {"resid_pre": "get_act_patch_resid_pre", "heads_all": "get_act_patch_attn_head_out_all_pos",
                "heads": "get_act_patch_attn_head_out_by_pos", "mlp_out": "get_act_patch_mlp_out"}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def spread(n_layers: int, k: int) -> list[int]:
    """k layers spread over depth (first, last-but-one and between): restart savings depend on the layer."""
    if k >= n_layers:
        return list(range(n_layers))
    return sorted({round(i * (n_layers - 2) / (k - 1)) for i in range(k)})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine (torch.mm)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b)[1] for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


def count_flops(fn) -> tuple[object, float]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        out = fn()
    return out, float(fc.get_total_flops())


def load(name: str, n_prompts: int):
    """(circuitlab model, task with a plain logit-difference metric, HF folder for nnsight)."""
    import dataclasses

    import circuitlab as cl
    from circuitlab.tasks import metrics as M

    if name == "gpt2-small-random":
        folder = gpt2_small_random(ROOT / "runs" / "bench-models" / "gpt2-small-random")
        model = cl.load(str(folder), device="cpu")
        task = random_task(model, n_prompts=n_prompts)
    else:
        from circuitlab.models import fetch

        if not fetch.is_fetched(name):
            raise SystemExit(f"{name} is not fetched: circuitlab models fetch {name}")
        folder = fetch.model_folder(name)
        model = cl.load(name, device="cpu")
        task = cl.tasks.ioi(model, n=n_prompts)
    metric = M.logit_diff(task.answer_pos, task.answer_ids, task.wrong_ids)
    return model, dataclasses.replace(task, metric=metric), folder


def tl_sweep(model, task, sweep: str, layers: list[int]) -> torch.Tensor:
    """TransformerLens' own patching function; for a subset of layers, its per-index loop on those."""
    from transformer_lens import patching

    b = model.bridge
    _, cache = b.run_with_cache(task.clean_tokens)
    rows = torch.arange(len(task))
    pos = task.answer_pos

    def metric(logits):
        last = logits[rows, pos]
        return (last[rows, task.answer_ids] - last[rows, task.wrong_ids]).mean()

    if layers == list(range(model.n_layers)):
        return getattr(patching, TL_FUNCTIONS[sweep])(b, task.corrupt_tokens, cache, metric)
    # the same per-index loop as TransformerLens' generic_activation_patch, on the chosen layers only
    hook = {"resid_pre": "blocks.{}.hook_resid_pre", "mlp_out": "blocks.{}.hook_mlp_out",
            "heads": "blocks.{}.attn.hook_z", "heads_all": "blocks.{}.attn.hook_z"}[sweep]
    n_pos, n_heads = task.clean_tokens.shape[1], model.n_heads
    shape = {"resid_pre": (n_pos,), "mlp_out": (n_pos,), "heads": (n_pos, n_heads), "heads_all": (n_heads,)}[sweep]
    out = torch.zeros(len(layers), *shape)
    for i, layer in enumerate(layers):
        name = hook.format(layer)
        for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)).tolist():
            def patch(x, hook, idx=idx):
                if sweep == "heads_all":
                    x[:, :, idx[0]] = cache[hook.name][:, :, idx[0]]
                else:
                    x[(slice(None), *idx)] = cache[hook.name][(slice(None), *idx)]
                return x

            out[(i, *idx)] = metric(b.run_with_hooks(task.corrupt_tokens, fwd_hooks=[(name, patch)]))
    return out


def peer_passes(sweep: str, n_layers: int, n_pos: int, n_heads: int) -> int:
    """Full forward passes (over the whole prompt batch) a per-index sweep runs."""
    return n_layers * {"resid_pre": n_pos, "mlp_out": n_pos, "heads": n_pos * n_heads, "heads_all": n_heads}[sweep]


def run_nnsight(python: Path, folder: Path, model, task, plan: dict, threads: int) -> dict:
    from safetensors.torch import load_file, save_file

    work = Path(tempfile.mkdtemp(prefix="cl-nnsight-"))
    save_file({"clean": task.clean_tokens.contiguous(), "corrupt": task.corrupt_tokens.contiguous(),
               "answer_pos": task.answer_pos.contiguous(), "answer_ids": task.answer_ids.contiguous(),
               "wrong_ids": task.wrong_ids.contiguous()}, str(work / "tokens.safetensors"))
    spec = {"threads": threads, "tensors": str(work / "tokens.safetensors"), "model_folder": str(folder),
            "n_heads": model.n_heads, "d_head": model.d_head,
            "sweeps": [{"name": s, "layers": layers} for s, layers in plan.items()],
            "out_tensors": str(work / "out.safetensors"), "out_json": str(work / "out.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    subprocess.run([str(python), str(ROOT / "benchmarks" / "nnsight_worker.py"), str(work / "spec.json")], check=True)
    return {"values": load_file(str(work / "out.safetensors")), **json.loads((work / "out.json").read_text())}


def bench_model(name: str, a, peak: float) -> dict:
    import circuitlab as cl

    model, task, folder = load(name, a.prompts)
    L, n_pos, H = model.n_layers, task.clean_tokens.shape[1], model.n_heads
    few = spread(L, 3)
    plan = {s: (few if a.quick or s == "heads" else list(range(L))) for s in SWEEPS}
    if a.head_layers:
        plan["heads"] = [int(x) for x in a.head_layers.split(",")]
    print(f"{name}: {L} layers, {len(task)} prompts x {n_pos} positions; layers {plan}", flush=True)
    _, fwd_flops = count_flops(lambda: model.bridge(task.corrupt_tokens))
    with torch.no_grad():  # warm-up of both in-process libraries (first-call set-up is not timed)
        model.bridge.run_with_cache(task.clean_tokens)
        cl.patch(model, task, "resid_pre", layers=[L - 1], progress=False)
    nn = None
    if a.nnsight_python and Path(a.nnsight_python).exists():
        nn = run_nnsight(Path(a.nnsight_python), folder, model, task, plan, a.threads)
    rows = {}
    for sweep in SWEEPS:
        layers = plan[sweep]
        with torch.no_grad():
            ref, t_tl = timed(lambda: tl_sweep(model, task, sweep, layers))
        r, t_cl = timed(lambda: cl.patch(model, task, sweep, layers=layers, progress=False))
        _, cl_flops = count_flops(lambda: cl.patch(model, task, sweep, layers=layers, progress=False))
        ours = r.patched.reshape(ref.shape).float()
        passes = peer_passes(sweep, len(layers), n_pos, H)
        row = {"layers": layers, "patches": r.values.numel(), "circuitlab_s": t_cl, "transformer_lens_s": t_tl,
               "vs_transformer_lens": t_tl / t_cl, "max_abs_diff_transformer_lens": float((ours - ref).abs().max()),
               "circuitlab_gflop": cl_flops / 1e9, "circuitlab_gflops_per_s": cl_flops / t_cl / 1e9,
               "circuitlab_fraction_of_peak": cl_flops / t_cl / 1e9 / peak,
               "peer_gflop": passes * fwd_flops / 1e9,
               "transformer_lens_fraction_of_peak": passes * fwd_flops / t_tl / 1e9 / peak,
               "circuitlab_passes": r.cost.forward_passes, "skipped_noop_patches": r.meta.get("skipped_noop_patches"),
               "peer_full_passes": passes}
        if nn is not None:
            t_nn = nn["seconds"][sweep]
            row.update({"nnsight_s": t_nn, "vs_nnsight": t_nn / t_cl,
                        "max_abs_diff_nnsight": float((ours - nn["values"][sweep].reshape(ref.shape)).abs().max()),
                        "nnsight_fraction_of_peak": passes * fwd_flops / t_nn / 1e9 / peak})
        for k in ("max_abs_diff_transformer_lens", "max_abs_diff_nnsight"):
            if k in row:
                assert row[k] < 1e-3, f"{name} {sweep}: values disagree ({k} = {row[k]:.2e})"
        rows[sweep] = row
        print(f"  {sweep:9s} circuitlab {t_cl:7.2f}s ({row['circuitlab_fraction_of_peak']:.0%} of peak)  "
              f"TL {t_tl:7.2f}s = {row['vs_transformer_lens']:.1f}x"
              + (f"  nnsight {row['nnsight_s']:7.2f}s = {row['vs_nnsight']:.1f}x" if nn else "")
              + f"  max|diff| {row['max_abs_diff_transformer_lens']:.1e}", flush=True)
    return {"layers": L, "d_model": model.d_model, "prompts": len(task), "positions": n_pos, "heads": H,
            "forward_gflop": fwd_flops / 1e9, "nnsight": None if nn is None else nn["nnsight"],
            "nnsight_clean_cache_s": None if nn is None else nn["clean_cache_s"], "sweeps": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2-small-random,smollm2-135m")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--head-layers", default=None, help="layers of the heads-by-position sweep (default: 3 spread)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 layers per sweep and 4 prompts")
    ap.add_argument("--nnsight-python", default=str(NNSIGHT_PYTHON))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "patching_peers.json"))
    a = ap.parse_args()
    if a.quick:
        a.prompts = min(a.prompts, 4)
    torch.set_num_threads(a.threads)
    from importlib.metadata import version

    peak = matmul_peak(a.threads)
    print(f"matmul peak {peak:.0f} GFLOP/s on {a.threads} threads", flush=True)
    out = {"command": "python benchmarks/patching_peers.py" + (" --quick" if a.quick else ""),
           "machine": {"cpu": cpu_name(), "threads": a.threads,
                       "torch": torch.__version__, "transformer_lens": version("transformer-lens"),
                       "matmul_peak_gflops": peak},
           "models": {}}
    for name in a.models.split(","):
        out["models"][name] = bench_model(name, a, peak)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
