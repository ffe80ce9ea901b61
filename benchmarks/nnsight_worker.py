"""Exact activation patching written the way nnsight's documentation does it (nnsight 0.8.1).

Run by benchmarks/patching_peers.py with the Python of nnsight's own virtual environment, so
this file imports neither circuitlab nor TransformerLens. It reads a JSON spec (model folder,
sweeps, a safetensors file of clean/corrupt tokens, answer positions and answer/wrong ids), runs
each sweep under no_grad with batched invokes (one trace per layer, or per layer and position;
one invoke per patch, every invoke on the corrupted prompts), and writes the mean logit
difference of each patch to a safetensors file, with wall times in a JSON file beside it.

    python benchmarks/nnsight_worker.py SPEC.json
"""

from __future__ import annotations

import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file


def modules(model):
    """(blocks, attention output projection of a block, MLP of a block) for GPT-2 and Llama."""
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.h, (lambda b: b.attn.c_proj), (lambda b: b.mlp)
    return model.model.layers, (lambda b: b.self_attn.o_proj), (lambda b: b.mlp)


def main(spec_path: str) -> None:
    from nnsight import TransformersModel

    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(spec["threads"])
    t = load_file(spec["tensors"])
    clean, corrupt, pos = t["clean"], t["corrupt"], t["answer_pos"]
    ans, wrong = t["answer_ids"], t["wrong_ids"]
    rows = torch.arange(clean.shape[0])
    n_pos = clean.shape[1]
    model = TransformersModel(spec["model_folder"], task="text-generation", dispatch=True, dtype=torch.float32)
    blocks, o_proj, mlp = modules(model)
    n_heads, d_head = spec["n_heads"], spec["d_head"]

    def logit_diff(logits):
        last = logits[rows, pos]
        return (last[rows, ans] - last[rows, wrong]).mean()

    out, seconds = {}, {}
    with torch.no_grad():
        t0 = time.perf_counter()
        cache = {"resid_pre": [], "z": [], "mlp_out": []}
        with model.trace(clean):  # the clean run's values, saved once, in the order the model computes them
            for l in range(len(blocks)):
                cache["resid_pre"].append(blocks[l].input.save())
                cache["z"].append(o_proj(blocks[l]).input.save())
                cache["mlp_out"].append(mlp(blocks[l]).output.save())
        cache_s = time.perf_counter() - t0
        for sweep in spec["sweeps"]:
            name, layers = sweep["name"], sweep["layers"]
            t0 = time.perf_counter()
            if name in ("resid_pre", "mlp_out"):
                vals = torch.zeros(len(layers), n_pos)
                for i, l in enumerate(layers):
                    src = cache[name][l]
                    diffs = []  # filled inside the trace (a name bound there would not escape it)
                    with model.trace() as tracer:
                        for p in range(n_pos):
                            with tracer.invoke(corrupt):
                                if name == "resid_pre":
                                    blocks[l].input[:, p] = src[:, p]
                                else:
                                    mlp(blocks[l]).output[:, p] = src[:, p]
                                diffs.append(logit_diff(model.lm_head.output).save())
                    vals[i] = torch.stack([torch.as_tensor(d) for d in diffs])
            elif name == "heads_all":
                vals = torch.zeros(len(layers), n_heads)
                for i, l in enumerate(layers):
                    src = cache["z"][l]
                    diffs = []  # filled inside the trace (a name bound there would not escape it)
                    with model.trace() as tracer:
                        for h in range(n_heads):
                            sl = slice(h * d_head, (h + 1) * d_head)
                            with tracer.invoke(corrupt):
                                o_proj(blocks[l]).input[:, :, sl] = src[:, :, sl]
                                diffs.append(logit_diff(model.lm_head.output).save())
                    vals[i] = torch.stack([torch.as_tensor(d) for d in diffs])
            elif name == "heads":
                vals = torch.zeros(len(layers), n_pos, n_heads)
                for i, l in enumerate(layers):
                    src = cache["z"][l]
                    for p in range(n_pos):
                        diffs = []
                        with model.trace() as tracer:
                            for h in range(n_heads):
                                sl = slice(h * d_head, (h + 1) * d_head)
                                with tracer.invoke(corrupt):
                                    o_proj(blocks[l]).input[:, p, sl] = src[:, p, sl]
                                    diffs.append(logit_diff(model.lm_head.output).save())
                        vals[i, p] = torch.stack([torch.as_tensor(d) for d in diffs])
            else:
                raise ValueError(f"unknown sweep {name!r}")
            seconds[name] = time.perf_counter() - t0
            out[name] = vals.contiguous()
            print(f"nnsight {name}: {seconds[name]:.2f} s", flush=True)
    save_file(out, spec["out_tensors"])
    with open(spec["out_json"], "w") as f:
        json.dump({"seconds": seconds, "clean_cache_s": cache_s, "nnsight": __import__("nnsight").__version__,
                   "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
