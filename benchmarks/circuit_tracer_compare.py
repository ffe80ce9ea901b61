"""The same attribution graph built by circuitlab and by circuit-tracer 0.5.0, compared.

circuitlab runs in this process; circuit-tracer runs in its own virtual environment (its
dependencies conflict with circuitlab's: transformers <= 4.57.3) as a subprocess running this file
with ``--worker REQUEST.json``; that side imports only torch, safetensors, yaml and circuit_tracer.
The two exchange files: circuitlab exports the model and transcoders
(``circuitlab.graphs.export_circuit_tracer``), the worker writes its graph to safetensors + JSON.
Both read the same prompt token ids and the same target token, and visit every active feature by
default (``--max-feature-nodes``), so no feature is dropped or merged by a cap.

Compared, like with like (definitions that differ are listed in docs/circuit_tracer.md and
handled here as stated):

* nodes: the active features (layer, position, feature) of each, per layer; their activations;
* edges: the adjacency over the common nodes, by source kind (feature, error, token): max
  absolute difference, that difference relative to the largest edge, the relative Frobenius
  error and the correlation. circuit-tracer zeroes the error vectors at position 0 (the MLP
  output at BOS is left unattributed); circuitlab keeps them as error nodes. The comparison
  zeroes circuitlab's position-0 error columns ("aligned") and reports their share separately;
* pruning at the same node / edge thresholds (each tool's own pruning on its own graph);
* replacement and completeness (circuitlab's aligned graph against circuit-tracer's
  ``compute_graph_scores``; circuitlab's own, unaligned scores beside them);
* wall time of building the graph (the ``attribute`` call of each, best of ``--repeat``, same
  torch threads); not measured with ``--quick`` (a correctness run on a loaded machine).

Setup (circuit-tracer 0.5.0 needs nnsight 0.6: nnsight 0.8, which pip picks, lacks the module it
imports):

    python3.11 -m venv runs/peers/circuit-tracer
    runs/peers/circuit-tracer/bin/pip install torch==2.13.0 circuit-tracer==0.5.0
    runs/peers/circuit-tracer/bin/pip install -c runs/peers/torch-pin.txt nnsight==0.6.3

Run (correctness on the zoo Llama, then timed on a quiet machine; SmolLM2 once its transcoders
are trained into ~/.cache/circuitlab/coders/smollm2-135m):

    python benchmarks/circuit_tracer_compare.py --model llama-zoo --quick
    python benchmarks/circuit_tracer_compare.py --model llama-zoo --out benchmarks/results/circuit_tracer_llamazoo.json
    python benchmarks/circuit_tracer_compare.py --model smollm2-135m --prompt "The capital of France is" \\
        --target " Paris" --out benchmarks/results/circuit_tracer_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / "runs" / "peers" / "circuit-tracer" / "bin" / "python"

TOLERANCE = {"edge_max_rel": 1e-4, "edge_corr": 0.99999, "activation_max_rel": 1e-4, "score_abs": 1e-4,
             "prob_abs": 1e-5}
"""Agreement required, float32 on both sides: largest |edge difference| over the largest |edge|;
correlation of all common edges; largest |activation difference| over the largest activation;
replacement and completeness; target-token probability."""


# --------------------------------------------------------------------------- circuit-tracer side
def ct_transcoders(folder: str | Path, device: str = "cpu"):
    """circuit-tracer's TranscoderSet from an exported folder, TopK sets included.

    ReLU / JumpReLU sets go through circuit-tracer's own loader (the folder given by its absolute
    path, as its cache); TopK sets, which that loader refuses, are built here with ReLU(TopK(k)),
    circuitlab's TopK activation, as the activation function."""
    import yaml
    from safetensors.torch import load_file
    from torch import nn

    folder = Path(folder).resolve()
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    if cfg.get("activation") != "topk":
        from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

        return load_transcoder_from_hub(str(folder), device=torch.device(device), dtype=torch.float32,
                                        lazy_decoder=False)[0], cfg
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet

    class ReLUTopK(nn.Module):
        def __init__(self, k: int):
            super().__init__()
            self.k = k

        def forward(self, x):
            v, i = x.topk(self.k, dim=-1)
            return torch.zeros_like(x).scatter(-1, i, torch.relu(v))

    layers = {}
    while (folder / f"layer_{len(layers)}.safetensors").exists():
        l = len(layers)
        t = load_file(str(folder / f"layer_{l}.safetensors"))
        k = int(t.pop("activation_function.k"))
        d_sae, d_in = t["W_enc"].shape
        tc = SingleLayerTranscoder(d_in, d_sae, ReLUTopK(k), l, skip_connection="W_skip" in t,
                                   device=torch.device(device), dtype=torch.float32)
        tc.load_state_dict(t)
        layers[l] = tc
    return TranscoderSet(layers, cfg["feature_input_hook"], cfg["feature_output_hook"], scan=cfg["scan"]), cfg


def worker(request: Path) -> None:
    """Build circuit-tracer's graph as ``request`` asks; write ``out``.safetensors / .json."""
    from importlib.metadata import version

    from safetensors.torch import save_file

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    r = json.loads(request.read_text())
    torch.set_num_threads(r["threads"])
    tcs, cfg = ct_transcoders(r["transcoders"])
    t0 = time.perf_counter()
    model = ReplacementModel.from_pretrained_and_transcoders(r["model"], tcs, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    load_s = time.perf_counter() - t0
    tokens = torch.tensor(r["tokens"], dtype=torch.long)
    seen = model.ensure_tokenized(tokens).cpu()
    if seen.tolist() != r["tokens"]:
        raise SystemExit(f"circuit-tracer changed the prompt tokens {r['tokens']} to {seen.tolist()}: start the "
                         "prompt with a special token (BOS) so both tools read the same sequence")
    target = torch.tensor(r["target"], dtype=torch.long) if r["target"] is not None else None
    times = []
    for _ in range(max(1, r["repeat"])):
        t0 = time.perf_counter()
        g = attribute(tokens, model, attribution_targets=target, max_feature_nodes=r["max_feature_nodes"],
                      batch_size=r["batch_size"], max_n_logits=r["max_logits"], desired_logit_prob=r["logit_prob"])
        times.append(time.perf_counter() - t0)
    pr = prune_graph(g, r["node_threshold"], r["edge_threshold"])
    rep, comp = compute_graph_scores(g)
    out = Path(r["out"])
    t = {"adjacency": g.adjacency_matrix.float(), "active_features": g.active_features,
         "activations": g.activation_values.float(), "selected": g.selected_features, "logit_tokens": g.logit_token_ids,
         "logit_probs": g.logit_probabilities.float(), "node_mask": pr.node_mask, "edge_mask": pr.edge_mask}
    save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(out.with_suffix(".safetensors")))
    out.with_suffix(".json").write_text(json.dumps({
        "replacement": rep, "completeness": comp, "seconds": times, "load_seconds": load_s,
        "config": {k: v for k, v in cfg.items() if k != "model_name"},
        "versions": {p: version(p) for p in ("circuit-tracer", "nnsight", "transformers", "torch")}}, indent=1))


# --------------------------------------------------------------------------- comparison
def _stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Agreement of two equally shaped tensors (a: circuitlab, b: circuit-tracer)."""
    a, b = a.double().flatten(), b.double().flatten()
    d = (a - b).abs()
    scale = torch.maximum(a.abs().max(), b.abs().max()) if a.numel() else torch.tensor(0.0)
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1] if a.numel() > 1 and a.std() > 0 and b.std() > 0 \
        else torch.tensor(float("nan"))
    return {"n": int(a.numel()), "nonzero": int(((a != 0) | (b != 0)).sum()), "max_abs": float(a.abs().max()) if
            a.numel() else 0.0, "max_abs_diff": float(d.max()) if a.numel() else 0.0,
            "max_rel": float(d.max() / scale) if a.numel() and scale > 0 else 0.0,
            "rel_fro": float(d.norm() / b.norm()) if b.norm() > 0 else float(d.norm()), "corr": float(corr)}


def aligned(graph):
    """circuitlab's graph with its position-0 error columns zeroed: circuit-tracer's definition
    (error vectors at the zeroed BOS position are set to zero, not attributed)."""
    g = graph.subgraph(range(graph.n_features))
    for l in range(g.n_layers):
        g.adjacency[:, g.error_index(l, 0)] = 0
    return g


def node_map(g, ct: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(circuitlab node indices, circuit-tracer node indices) of the nodes both graphs hold."""
    ct_af, ct_sel = ct["active_features"], ct["selected"]
    cl_key = {tuple(int(v) for v in g.active_features[int(a)]): i for i, a in enumerate(g.selected)}
    ct_key = [tuple(int(v) for v in ct_af[int(a)]) for a in ct_sel]
    pairs = [(cl_key[k], j) for j, k in enumerate(ct_key) if k in cl_key]
    nf_ct = len(ct_key)
    L, T = g.n_layers, g.n_pos
    pairs += [(g.error_start + i, nf_ct + i) for i in range(L * T + T)]  # errors, then tokens: same layout
    cl_logit = {int(t): g.logit_start + j for j, t in enumerate(g.logit_tokens)}
    pairs += [(cl_logit[int(t)], nf_ct + L * T + T + j) for j, t in enumerate(ct["logit_tokens"])
              if int(t) in cl_logit]
    a, b = zip(*pairs)
    return torch.tensor(a), torch.tensor(b)


def compare(g, ct: dict, ct_meta: dict, node_threshold: float, edge_threshold: float) -> dict:
    """Every comparison in the module docstring, as a dict (``agree`` against ``TOLERANCE``)."""
    from circuitlab.graphs.prune import prune, scores

    L = g.n_layers
    cl_set = {tuple(int(v) for v in r) for r in g.active_features}
    ct_set = {tuple(int(v) for v in r) for r in ct["active_features"]}
    per_layer = [{"layer": l, "circuitlab": sum(1 for k in cl_set if k[0] == l),
                  "circuit_tracer": sum(1 for k in ct_set if k[0] == l),
                  "only_circuitlab": sum(1 for k in cl_set - ct_set if k[0] == l),
                  "only_circuit_tracer": sum(1 for k in ct_set - cl_set if k[0] == l)} for l in range(L)]
    cl_act = {tuple(int(v) for v in r): float(a) for r, a in zip(g.active_features, g.activations)}
    ct_act = {tuple(int(v) for v in r): float(a) for r, a in zip(ct["active_features"], ct["activations"])}
    common = sorted(cl_set & ct_set)
    acts = _stats(torch.tensor([cl_act[k] for k in common]), torch.tensor([ct_act[k] for k in common]))
    nodes = {"circuitlab": len(cl_set), "circuit_tracer": len(ct_set), "common": len(common),
             "same_set": cl_set == ct_set, "per_layer": per_layer, "activations": acts,
             "feature_nodes": {"circuitlab": g.n_features, "circuit_tracer": int(ct["selected"].numel())}}

    ga = aligned(g)
    ci, ti = node_map(g, ct)
    A_cl, A_ct = ga.adjacency[ci][:, ci], ct["adjacency"][ti][:, ti]
    kinds = [g.kind(int(i)) for i in ci]
    nodes["feature_nodes"]["common"] = kinds.count("feature")
    by_kind = {}
    for kind in ("feature", "error", "token"):
        cols = torch.tensor([k == kind for k in kinds])
        by_kind[kind] = _stats(A_cl[:, cols], A_ct[:, cols])
    bos_cols = torch.tensor([g.error_index(l, 0) for l in range(L)])
    bos_share = float(g.adjacency[:, bos_cols].abs().sum() / g.adjacency.abs().sum().clamp_min(1e-30))
    edges = {"all": _stats(A_cl, A_ct), "by_source": by_kind,
             "bos_error_columns": {"share_of_abs_edge_mass_in_circuitlab": bos_share,
                                   "note": "zeroed in the aligned graph (circuit-tracer zeroes BOS error vectors)"}}

    cl_probs = {int(t): float(p) for t, p in zip(g.logit_tokens, g.logit_probs)}
    logits = {"circuitlab": {str(k): v for k, v in cl_probs.items()},
              "circuit_tracer": {str(int(t)): float(p) for t, p in zip(ct["logit_tokens"], ct["logit_probs"])}}
    logits["max_abs_diff"] = max((abs(cl_probs[int(t)] - float(p)) for t, p in zip(ct["logit_tokens"],
                                                                                   ct["logit_probs"])
                                  if int(t) in cl_probs), default=float("nan"))
    logits["same_tokens"] = sorted(cl_probs) == sorted(int(t) for t in ct["logit_tokens"])

    pr = prune(ga, node_threshold, edge_threshold)
    keep_cl, keep_ct = pr.node_mask[ci], ct["node_mask"][ti]
    e_cl, e_ct = pr.edge_mask[ci][:, ci], ct["edge_mask"][ti][:, ti]
    n_feat = torch.tensor([k == "feature" for k in kinds])
    pruning = {"node_threshold": node_threshold, "edge_threshold": edge_threshold,
               "kept_nodes": {"circuitlab": int(pr.node_mask.sum()), "circuit_tracer": int(ct["node_mask"].sum())},
               "kept_features": {"circuitlab": int(keep_cl[n_feat].sum()),
                                 "circuit_tracer": int(keep_ct[n_feat].sum())},
               "nodes_kept_by_one_only": int((keep_cl != keep_ct).sum()),
               "kept_edges": {"circuitlab": int(pr.edge_mask.sum()), "circuit_tracer": int(ct["edge_mask"].sum())},
               "edges_kept_by_one_only": int((e_cl != e_ct).sum()),
               "unaligned_circuitlab_kept_nodes": int(prune(g, node_threshold, edge_threshold).node_mask.sum())}

    s_al, s_raw = scores(ga), scores(g)
    sc = {"circuit_tracer": {"replacement": ct_meta["replacement"], "completeness": ct_meta["completeness"]},
          "circuitlab_aligned": {"replacement": s_al.replacement, "completeness": s_al.completeness},
          "circuitlab_own": {"replacement": s_raw.replacement, "completeness": s_raw.completeness}}
    sc["abs_diff"] = {k: abs(sc["circuitlab_aligned"][k] - sc["circuit_tracer"][k]) for k in ("replacement",
                                                                                              "completeness")}
    tol = TOLERANCE
    checks = {"same_active_features": nodes["same_set"],
              "activations": acts["max_rel"] <= tol["activation_max_rel"],
              "same_logit_targets": logits["same_tokens"], "logit_probs": logits["max_abs_diff"] <= tol["prob_abs"],
              "edges_max_rel": edges["all"]["max_rel"] <= tol["edge_max_rel"],
              "edges_corr": edges["all"]["corr"] >= tol["edge_corr"],
              "scores": max(sc["abs_diff"].values()) <= tol["score_abs"],
              "pruned_nodes": pruning["nodes_kept_by_one_only"] == 0}
    return {"nodes": nodes, "edges": edges, "logits": logits, "pruning": pruning, "scores": sc,
            "tolerance": tol, "checks": checks, "agree": all(checks.values())}


# --------------------------------------------------------------------------- driver
def machine() -> dict:
    """Facts about where the numbers were measured."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python":
            platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run(a) -> dict:
    """Export, build both graphs, compare; the result dict."""
    import circuitlab as cl
    from circuitlab.graphs.attribute import GraphConfig, attribute
    from circuitlab.graphs.export_circuit_tracer import export_for_circuit_tracer
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    peer = Path(a.peer_python)
    if not peer.exists():
        raise SystemExit(f"no circuit-tracer environment at {peer}: create it as the module docstring shows, or "
                         "pass --peer-python")
    model = cl.load(a.model, device="cpu")
    folder = a.transcoders or find_transcoders(model.name)
    if folder is None:
        raise SystemExit(f"no transcoders found for {a.model}: pass --transcoders DIR "
                         f"(or train them: circuitlab train saes/configs/{Path(a.model).name}.toml)")
    tcs = load_transcoders(folder)
    work = Path(a.work or ROOT / "runs" / "peers" / "circuit-tracer-work" / Path(a.model).name)
    paths = export_for_circuit_tracer(model, tcs, work)
    tokens = model.to_tokens(a.prompt).cpu()
    target = model.token_id(a.target) if a.target is not None else None
    cfg = GraphConfig(max_feature_nodes=a.max_feature_nodes, batch_size=a.batch_size, max_logits=a.max_logits,
                      logit_prob=a.logit_prob, exclude_bos=True)
    repeat = 1 if a.quick else a.repeat
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        g = attribute(model, tcs, tokens, target, cfg)
        times.append(time.perf_counter() - t0)
    g.prompt = a.prompt
    req = {"model": str(paths["model"].resolve()), "transcoders": str(paths["transcoders"].resolve()),
           "tokens": tokens.tolist(), "target": None if target is None else [int(target)],
           "max_feature_nodes": a.max_feature_nodes, "batch_size": a.batch_size, "max_logits": a.max_logits,
           "logit_prob": a.logit_prob, "node_threshold": a.node_threshold, "edge_threshold": a.edge_threshold,
           "repeat": repeat, "threads": a.threads, "out": str((work / "ct_graph").resolve())}
    (work / "request.json").write_text(json.dumps(req, indent=1))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([str(peer), str(Path(__file__).resolve()), "--worker", str(work / "request.json")],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"circuit-tracer worker failed:\n{proc.stderr[-4000:]}")
    ct = load_file(str(work / "ct_graph.safetensors"))
    ct_meta = json.loads((work / "ct_graph.json").read_text())
    res = compare(g, ct, ct_meta, a.node_threshold, a.edge_threshold)
    res["time"] = None if a.quick else {
        "circuitlab_s": min(times), "circuit_tracer_s": min(ct_meta["seconds"]),
        "circuit_tracer_over_circuitlab": min(ct_meta["seconds"]) / min(times), "repeat": repeat,
        "circuitlab_all_s": times, "circuit_tracer_all_s": ct_meta["seconds"],
        "circuit_tracer_model_load_s": ct_meta["load_seconds"]}
    res["setup"] = {"model": a.model, "transcoders": str(folder), "prompt": a.prompt, "target": a.target,
                    "tokens": tokens.tolist(), "max_feature_nodes": a.max_feature_nodes, "batch_size": a.batch_size,
                    "threads": a.threads, "quick": a.quick, "circuit_tracer_backend": "nnsight",
                    "circuit_tracer": ct_meta["versions"], "transcoder_config": ct_meta["config"],
                    "n_nodes": g.n_nodes, "circuitlab_forward_passes": g.meta.get("forward_passes"),
                    "circuitlab_backward_passes": g.meta.get("backward_passes")}
    res["machine"] = machine()
    return res


def summary(res: dict) -> str:
    """A few lines for the terminal."""
    n, e, s, p = res["nodes"], res["edges"]["all"], res["scores"], res["pruning"]
    lines = [f"active features: circuitlab {n['circuitlab']}, circuit-tracer {n['circuit_tracer']}, "
             f"same set: {n['same_set']}; activations max rel diff {n['activations']['max_rel']:.2e}; feature nodes "
             f"{n['feature_nodes']}",
             f"edges ({e['n']} entries, {e['nonzero']} nonzero): max |diff| {e['max_abs_diff']:.3e} = "
             f"{e['max_rel']:.2e} of the largest edge, rel. Frobenius {e['rel_fro']:.2e}, corr {e['corr']:.8f}",
             f"pruned ({p['node_threshold']}/{p['edge_threshold']}): nodes kept {p['kept_nodes']}, kept by one only "
             f"{p['nodes_kept_by_one_only']}; edges kept {p['kept_edges']}, by one only {p['edges_kept_by_one_only']}",
             f"scores: circuit-tracer {s['circuit_tracer']}, circuitlab aligned {s['circuitlab_aligned']}, "
             f"circuitlab own {s['circuitlab_own']}"]
    if res.get("time"):
        t = res["time"]
        lines.append(f"time: circuitlab {t['circuitlab_s']:.2f}s, circuit-tracer {t['circuit_tracer_s']:.2f}s "
                     f"(circuit-tracer / circuitlab {t['circuit_tracer_over_circuitlab']:.2f}x)")
    lines.append(f"agree within tolerance: {res['agree']} {res['checks']}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llama-zoo", help="circuitlab model name or local Hugging Face folder")
    p.add_argument("--transcoders", default=None, help="per-layer transcoder folder (default: the model's own)")
    p.add_argument("--prompt", default="<bos> The capital of France is")
    p.add_argument("--target", default=" Paris", help="target token; pass '' for the top tokens")
    p.add_argument("--max-feature-nodes", type=int, default=None, help="feature rows visited (default: all active)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-logits", type=int, default=10)
    p.add_argument("--logit-prob", type=float, default=0.95)
    p.add_argument("--node-threshold", type=float, default=0.8)
    p.add_argument("--edge-threshold", type=float, default=0.98)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="timed builds per tool (best kept)")
    p.add_argument("--quick", action="store_true", help="correctness only: one build each, no timing")
    p.add_argument("--peer-python", default=str(PEER_PYTHON))
    p.add_argument("--work", default=None, help="folder for exported files and the exchange")
    p.add_argument("--out", default=None, help="results JSON (not with --quick: no timings from a correctness run)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.target == "":
        a.target = None
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        worker(Path(a.worker))
        return 0
    res = run(a)
    print(summary(res))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=float))
        print(f"wrote {a.out}")
    return 0 if res["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
