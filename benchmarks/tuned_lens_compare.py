"""circuitlab's tuned lens against the ``tuned-lens`` package, on the same model and token batches.

Both lenses are trained on the same batches (circuitlab's ``training_batches`` for the source and
seed, written to a file the package's side reads) and scored on the same held-out positions:

* circuitlab: ``train_tuned_lens`` with its default recipe (the paper's: SGD with Nesterov
  momentum, lr 1.0 x (1 - 0.9), weight decay toward the identity, gradient norm clipped to 1,
  linear decay), residuals read through circuitlab's engine;
* tuned-lens: the package's ``TunedLens`` (its translators, initialisation and unembedding) on the
  Hugging Face model's ``hidden_states``, trained step for step as the package's own training
  loop does (its default optimizer and scheduler from ``tuned_lens.scripts.ingredients``,
  per-layer KL to the final distribution, gradient clipping, ``normalize_`` where the package
  has it). The package's command-line trainer reads and chunks its own dataset, so the loop is
  run here to feed it circuitlab's batches.

Reported per layer (rows ``resid_pre`` 0..L-1; the last row is the model's output): mean
KL(final || lens) for the logit lens, circuitlab's tuned lens and the package's; top-1 agreement
between the two tuned lenses; KL(package || circuitlab) between their distributions; and a cross-
check that circuitlab's lens scored through the package's unembedding matches circuitlab's own
``lens_depth``.

The package runs in its own environment (it pins older libraries)::

    python -m venv runs/peers/tuned-lens
    runs/peers/tuned-lens/bin/pip install tuned-lens torch==2.13.0

    python benchmarks/tuned_lens_compare.py --quick                       # gpt2-zoo, checks it runs
    python benchmarks/tuned_lens_compare.py                                # gpt2-zoo, 262144 tokens
    python benchmarks/tuned_lens_compare.py --model smollm2-135m --data corpus:english \\
        --tokens 2000000 --ctx-len 128 --eval-docs 256                     # after fetching both

Writes benchmarks/results/tuned_lens_<model>.json (or --out) and prints a markdown table.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / "runs" / "peers" / "tuned-lens" / "bin" / "python"


# --------------------------------------------------------------------------- the package's side
# (runs under the peer environment's python: no circuitlab import here)

def _peer_optimizer(params, num_steps: int):
    """The package's default optimizer and scheduler (its ingredients), or the same by hand."""
    try:
        from tuned_lens.scripts.ingredients import Optimizer

        cfg = Optimizer()
        opt = cfg.create_optim(params)
        return opt, cfg.create_scheduler(opt, num_steps), "tuned_lens.scripts.ingredients.Optimizer defaults"
    except Exception as e:  # noqa: BLE001 - report which recipe ran
        opt = torch.optim.SGD(params, lr=1.0 * (1 - 0.9), momentum=0.9, nesterov=True, weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / num_steps))
        return opt, sched, f"SGD(nesterov, lr 0.1, momentum 0.9, wd 1e-3) by hand ({type(e).__name__}: {e})"


def _version(md, name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def peer_main(args) -> None:
    """Train the package's lens on the batch file and score every lens on the held-out batches."""
    import importlib.metadata as md

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from tuned_lens.nn.lenses import LogitLens, TunedLens

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = load_file(args.batches)
    n_train = sum(1 for k in batches if k.startswith("train_tokens_"))
    n_eval = sum(1 for k in batches if k.startswith("eval_tokens_"))
    dev = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model_folder, torch_dtype=torch.float32).to(dev)
    model.eval()
    model.requires_grad_(False)
    lens = TunedLens.from_model(model).to(dev)
    logit_lens = LogitLens.from_model(model).to(dev)
    L = len(lens)
    params = [p for p in lens.parameters() if p.requires_grad]
    opt, sched, recipe = _peer_optimizer(params, n_train)
    t0 = time.time()
    for s in range(n_train):
        toks = batches[f"train_tokens_{s}"].to(dev)
        mask = batches[f"train_mask_{s}"].to(dev)
        with torch.no_grad():
            out = model(toks, output_hidden_states=True)
        target = out.logits[mask].float().log_softmax(-1)
        for i in range(L):
            logq = lens(out.hidden_states[i][mask], idx=i).float().log_softmax(-1)
            loss = (target.exp() * (target - logq)).sum(-1).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        if hasattr(lens, "normalize_"):
            lens.normalize_()
    train_s = time.time() - t0

    ours = load_file(str(Path(args.circuitlab_lens) / "lens.safetensors"))
    W, b = ours["weight"].to(dev), ours["bias"].to(dev)
    sums = {k: torch.zeros(L + 1, dtype=torch.float64) for k in
            ("kl_logit", "kl_circuitlab", "kl_package", "kl_package_to_circuitlab", "top1_agree",
             "top1_circuitlab_final", "top1_package_final")}
    n = 0
    with torch.no_grad():
        for s in range(n_eval):
            toks = batches[f"eval_tokens_{s}"].to(dev)
            mask = batches[f"eval_mask_{s}"].to(dev)
            out = model(toks, output_hidden_states=True)
            final = out.logits[mask].float().log_softmax(-1)
            top_final = final.argmax(-1)
            for i in range(L + 1):
                h = out.hidden_states[i][mask] if i < L else None
                if i < L:
                    plain = logit_lens(h, idx=i).float().log_softmax(-1)
                    pkg = lens(h, idx=i).float().log_softmax(-1)
                    cl_logits = lens.unembed(h.float() @ W[i].T + b[i])
                    ours_lp = cl_logits.float().log_softmax(-1)
                else:  # the output row: the model itself for the logit lens and the package
                    plain = pkg = final
                    ours_lp = final  # replaced below by circuitlab's own last-row number
                kl = lambda p, q: (p.exp() * (p - q)).sum(-1).sum()  # noqa: E731
                sums["kl_logit"][i] += float(kl(final, plain))
                sums["kl_circuitlab"][i] += float(kl(final, ours_lp))
                sums["kl_package"][i] += float(kl(final, pkg))
                sums["kl_package_to_circuitlab"][i] += float(kl(pkg, ours_lp))
                sums["top1_agree"][i] += float((pkg.argmax(-1) == ours_lp.argmax(-1)).sum())
                sums["top1_circuitlab_final"][i] += float((ours_lp.argmax(-1) == top_final).sum())
                sums["top1_package_final"][i] += float((pkg.argmax(-1) == top_final).sum())
            n += int(mask.sum())
    res = {k: [float(x) / n for x in v] for k, v in sums.items()}
    res.update({"positions": n, "train_steps": n_train, "train_seconds": train_s, "recipe": recipe,
                "package_version": _version(md, "tuned-lens"), "transformers": md.version("transformers"),
                "torch": torch.__version__, "normalize_": hasattr(lens, "normalize_"), "translators": L})
    Path(args.out).write_text(json.dumps(res))


# --------------------------------------------------------------------------- circuitlab's side

def machine() -> dict:
    """Facts about where the numbers were measured."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python":
            platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def model_folder(name: str) -> Path:
    """The Hugging Face folder ``cl.load(name)`` reads (zoo model, fetched model or a path)."""
    from circuitlab.models import fetch
    from circuitlab.zoo import list_models, model_dir

    if name in fetch.REAL_MODELS:
        if not fetch.is_fetched(name):
            raise fetch.not_fetched_error(name)
        return Path(fetch.model_folder(name))
    if name in list_models():
        return Path(model_dir(name))
    p = Path(name).expanduser()
    if (p / "config.json").exists():
        return p
    raise SystemExit(f"{name!r} is not a zoo model, a fetched model or a Hugging Face folder")


def run(a) -> dict:
    import circuitlab as cl
    from safetensors.torch import save_file

    from circuitlab.methods.tuned_lens import (TunedLens, TunedLensConfig, heldout_batches, lens_depth,
                                               train_tuned_lens, training_batches)

    torch.set_num_threads(a.threads)
    peer = Path(a.peer_python)
    if not peer.exists():
        raise SystemExit(f"no tuned-lens environment at {peer}: create it as the module docstring shows, or pass "
                         "--peer-python")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = cl.load(a.model, device=device)
    cfg = TunedLensConfig(tokens=a.tokens, ctx_len=a.ctx_len, batch_docs=a.batch_docs, seed=a.seed)
    cfg.check()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="cl-tuned-lens-"))
    work.mkdir(parents=True, exist_ok=True)
    ours_s = None
    if (work / "batches.safetensors").exists() and (work / "circuitlab_lens" / "lens.json").exists():
        print(f"reusing the batches and circuitlab's lens in {work}")
        lens = TunedLens.load(work / "circuitlab_lens", model)
        if lens.config != cfg:
            raise SystemExit(f"{work} holds a lens trained with {lens.config}, not {cfg}; use another --workdir")
    else:
        tensors = {}
        for s, (t, m) in enumerate(training_batches(model, a.data, cfg)):
            tensors[f"train_tokens_{s}"], tensors[f"train_mask_{s}"] = t, m
        for s, (t, m) in enumerate(heldout_batches(model, a.data, a.eval_docs, a.ctx_len, a.batch_docs)):
            tensors[f"eval_tokens_{s}"], tensors[f"eval_mask_{s}"] = t, m
        save_file(tensors, str(work / "batches.safetensors"))
        t0 = time.time()
        lens = train_tuned_lens(model, a.data, cfg, progress=True)
        ours_s = time.time() - t0
        lens.save(work / "circuitlab_lens")
    depth = lens_depth(model, lens, a.data, n_docs=a.eval_docs, ctx_len=a.ctx_len, batch_docs=a.batch_docs)
    del model

    cmd = [str(peer), str(Path(__file__).resolve()), "--peer-worker", "--model-folder", str(model_folder(a.model)),
           "--batches", str(work / "batches.safetensors"), "--circuitlab-lens", str(work / "circuitlab_lens"),
           "--device", device, "--threads", str(a.threads), "--out", str(work / "peer.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the tuned-lens side failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    peer_res = json.loads((work / "peer.json").read_text())
    L = lens.n_layers
    peer_res["kl_circuitlab"][L] = float(depth.tuned_kl[L])  # circuitlab's last-row translator, as trained
    cross = max(abs(a_ - b_) for a_, b_ in zip(peer_res["kl_circuitlab"][:L], depth.tuned_kl[:L].tolist()))
    cross_logit = max(abs(a_ - b_) for a_, b_ in zip(peer_res["kl_logit"], depth.logit_kl.tolist()))
    rows = []
    for i, label in enumerate(depth.layers):
        rows.append({"layer": label, "kl_logit_lens": peer_res["kl_logit"][i],
                     "kl_circuitlab": peer_res["kl_circuitlab"][i], "kl_package": peer_res["kl_package"][i],
                     "top1_agreement": peer_res["top1_agree"][i],
                     "kl_package_to_circuitlab": peer_res["kl_package_to_circuitlab"][i],
                     "top1_vs_final_circuitlab": peer_res["top1_circuitlab_final"][i],
                     "top1_vs_final_package": peer_res["top1_package_final"][i]})
    return {"model": a.model, "data": a.data, "tokens": cfg.tokens, "ctx_len": cfg.ctx_len,
            "batch_docs": cfg.batch_docs, "seed": cfg.seed, "eval_docs": a.eval_docs,
            "positions": peer_res["positions"], "train_steps": peer_res["train_steps"],
            "circuitlab_config": lens.stats | {"config": vars(cfg)},
            "package": {k: peer_res[k] for k in ("package_version", "transformers", "torch", "recipe", "normalize_",
                                                 "translators")},
            "cross_check": {"max_abs_diff_circuitlab_kl": cross, "max_abs_diff_logit_kl": cross_logit,
                            "what": "circuitlab's lens and the logit lens scored by the package's unembedding on "
                                    "HF hidden states vs circuitlab's own lens_depth on engine captures"},
            "wall_seconds": {"circuitlab_train": ours_s, "package_train": peer_res["train_seconds"]},
            "rows": rows, "machine": machine()}


def table(res: dict) -> str:
    out = ["| layer | KL logit lens | KL circuitlab tuned | KL tuned-lens pkg | top-1 agreement | KL(pkg ‖ cl) |",
           "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        out.append(f"| {r['layer']} | {r['kl_logit_lens']:.4f} | {r['kl_circuitlab']:.4f} | {r['kl_package']:.4f} "
                   f"| {r['top1_agreement']:.3f} | {r['kl_package_to_circuitlab']:.4f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt2-zoo")
    p.add_argument("--data", default="zoo")
    p.add_argument("--tokens", type=int, default=262_144)
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--batch-docs", type=int, default=32)
    p.add_argument("--eval-docs", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2048 tokens, 16 held-out documents: checks it runs")
    p.add_argument("--peer-python", default=str(PEER_PYTHON))
    p.add_argument("--out", default=None)
    p.add_argument("--workdir", default=None,
                   help="folder for the batches and circuitlab's lens; reused when it already holds them")
    # the package's side (run by this script under --peer-python)
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-folder", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)
    p.add_argument("--circuitlab-lens", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.peer_worker:
        return peer_main(a)
    sys.path.insert(0, str(ROOT))
    if a.quick:
        a.tokens, a.eval_docs, a.batch_docs = 2048, 16, 8
    res = run(a)
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"tuned_lens_{Path(a.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    print(f"cross-check (package unembedding vs circuitlab): {res['cross_check']['max_abs_diff_circuitlab_kl']:.2e}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
