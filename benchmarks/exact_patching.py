"""circuitlab's exact patching sweeps against transformer_lens.patching, in one run.

GPT-2-small-shaped random model (12 layers, d_model 768, 12 heads, vocabulary 50257), 8 prompts
of 16 tokens. Same values (max abs difference) and the wall-time ratio for the resid_pre sweep
and the head-output-by-position sweep; plus the cost of caching one site during a forward pass.

    python benchmarks/exact_patching.py            # full (TransformerLens' head sweep takes minutes)
    python benchmarks/exact_patching.py --quick    # head sweep over layers 1, 5 and 9 only (spread over depth)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import gpt2_small_random, random_task


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformer_lens import patching

    import circuitlab as cl
    from circuitlab.engine.cache import capture

    model = cl.load(str(gpt2_small_random()), device="cpu")
    task = random_task(model)
    b = model.bridge
    metric = lambda logits: task.metric.from_logits(logits)  # noqa: E731
    figures = {}
    with torch.no_grad():
        _, clean_cache = b.run_with_cache(task.clean_tokens)
        layers = [1, 5, 9] if a.quick else None  # spread over depth: restart savings depend on the layer
        for name, tl_fn, sites in [
            ("resid_pre [layer, pos]", patching.get_act_patch_resid_pre, "resid_pre"),
            ("heads by pos [layer, pos, head]", patching.get_act_patch_attn_head_out_by_pos, "heads"),
        ]:
            if sites == "heads" and a.quick:
                ref, t_tl = timed(lambda: _tl_heads_layers(b, task, clean_cache, metric, layers))
            else:
                ref, t_tl = timed(lambda: tl_fn(b, task.corrupt_tokens, clean_cache, metric))
            r, t_cl = timed(
                lambda: cl.patch(model, task, sites, layers=layers if sites == "heads" else None, progress=False)
            )
            diff = float((r.patched - ref).abs().max())
            # the same sweep without skipping patches that write the value already there
            r2, t_all = timed(lambda: cl.patch(model, task, sites, layers=layers if sites == "heads" else None,
                                               progress=False, skip_noops=False))
            figures[name] = {"transformer_lens_s": t_tl, "circuitlab_s": t_cl, "speedup": t_tl / t_cl,
                             "max_abs_diff": diff, "patches": r.values.numel(), "chunk": r.meta["chunk_size"],
                             "passes": r.cost.forward_passes, "skipped_noop_patches": r.meta["skipped_noop_patches"],
                             "circuitlab_no_skip_s": t_all, "speedup_no_skip": t_tl / t_all,
                             "max_abs_diff_no_skip": float((r2.patched - ref).abs().max())}
            print(f"{name}: TL {t_tl:.2f}s  circuitlab {t_cl:.2f}s  speedup {t_tl / t_cl:.2f}x  "
                  f"max|diff| {diff:.2e}  ({r.values.numel()} patches, {r.meta['skipped_noop_patches']} no-ops "
                  f"skipped, {r.cost.forward_passes} passes); without skipping no-ops {t_all:.2f}s, "
                  f"{t_tl / t_all:.2f}x")
        # cache overhead: one cached site vs plain bridge forward vs plain HF forward
        toks = task.clean_tokens
        hf = b.original_model
        for _ in range(2):
            hf(toks), b(toks), capture(model, toks, ["blocks.6.hook_resid_post"])
        _, t_hf = timed(lambda: hf(toks), 5)
        _, t_br = timed(lambda: b(toks), 5)
        noop = [("blocks.6.hook_resid_post", lambda x, hook: None)]
        _, t_cache = timed(lambda: b.run_with_hooks(toks, fwd_hooks=noop), 5)
        _, t_cl = timed(lambda: capture(model, toks, ["blocks.11.hook_resid_post"]), 5)
        figures["cache one site"] = {"hf_forward_s": t_hf, "bridge_forward_s": t_br,
                                     "bridge_with_one_hook_s": t_cache, "circuitlab_capture_last_block_s": t_cl,
                                     "capture_vs_bridge": t_cl / t_br, "capture_vs_hf": t_cl / t_hf}
        print(f"forward: HF {t_hf * 1e3:.1f} ms, bridge {t_br * 1e3:.1f} ms ({t_br / t_hf:.2f}x HF), "
              f"circuitlab capture of the last block's output {t_cl * 1e3:.1f} ms "
              f"({t_cl / t_br:.2f}x bridge, {t_cl / t_hf:.2f}x HF; it skips the unembedding)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(figures, f, indent=1)


def _tl_heads_layers(b, task, cache, metric, layers):
    """TransformerLens' own per-index loop restricted to some layers (same hook and metric)."""

    out = torch.zeros(len(layers), task.clean_tokens.shape[1], b.cfg.n_heads)
    for i, l in enumerate(layers):
        for p in range(task.clean_tokens.shape[1]):
            for h in range(b.cfg.n_heads):
                def hook(z, hook, p=p, h=h):
                    z[:, p, h] = cache[hook.name][:, p, h]
                    return z

                logits = b.run_with_hooks(task.corrupt_tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)])
                out[i, p, h] = metric(logits)
    return out


if __name__ == "__main__":
    main()
