"""Attribution graphs and probe prompting on any model with per-layer transcoders.

Prompts: on a zoo model, capitals prompts of the zoo world (``--n``); on any other model, real
factual recall from ``circuitlab.tasks.real`` (``--relations`` capital, language, landmark;
``--entities`` subjects each, those the model answers with its top token chosen first), plus
``--ioi`` IOI prompts as graphs only (probe prompting needs a factual concept).

For each prompt: completeness / replacement of the full graph, the pruned graph and the
probe-prompting sub-graph; probe-prompting groups against the two clustering baselines (same
number of groups) on peak-token consistency and activation-pattern similarity; entity-swap
transfer rate by layer; a few edges checked by intervention in the frozen replacement model
(``circuitlab.graphs.verify``: doubling a source changes each target by its edge weight); wall
time to build one graph. Prints markdown tables and writes JSON with the machine's facts.
Reference (Gemma-2-2B, see docs/methods.md sections 2-3): completeness 0.83 / replacement 0.54;
probe groups 2.3x (peak consistency) and 5.8x (activation similarity) better than geometric
clustering.

    python benchmarks/graphs.py --model gpt2-zoo --n 5        # -> benchmarks/results/graphs_gpt2zoo.json
    python benchmarks/graphs.py --model smollm2-135m          # -> benchmarks/results/graphs_smollm2-135m.json
    python benchmarks/graphs.py --model M --transcoders DIR --quick   # a small smoke run, written to the temp folder

Transcoders: ``--transcoders DIR``, else the model's trained ones (``find_transcoders``: the
bundled coders, ``$CIRCUITLAB_CODERS``, ``~/.cache/circuitlab/coders/<model>``). Skips (exit 0,
with the reason) when the model or its transcoders do not exist yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PAPER = {"completeness": 0.83, "replacement": 0.54, "peak_ratio": 2.3, "similarity_ratio": 5.8}
"""Published figures (Gemma-2-2B): graph scores, probe groups over geometric clustering."""

PREFERRED = {
    "capital": ("France", "Germany", "Japan", "Italy", "Spain", "Russia", "China", "Egypt", "Greece", "England"),
    "language": ("France", "Germany", "Japan", "Italy", "Spain", "Russia", "Greece", "Portugal", "Poland", "China"),
    "landmark": ("the Eiffel Tower", "the Colosseum", "Big Ben", "the Kremlin", "the Brandenburg Gate",
                 "the Acropolis", "the Forbidden City", "Buckingham Palace", "the Louvre", "Red Square"),
}
"""Well-known subjects tried first for each relation (the rest of the lexicon follows)."""


@dataclass
class BenchConfig:
    """What one benchmark run covers."""

    relations: tuple[str, ...] = ("capital", "language", "landmark")
    """Real models: relations of circuitlab.tasks.real.fact_prompts."""
    entities: int = 3
    """Real models: subjects per relation."""
    candidates: int = 10
    """Real models: subjects tried per relation (those the model gets right are kept first)."""
    ioi: int = 2
    """Real models: IOI prompts graphed (scores, edge checks and time; no probe prompting)."""
    n: int = 5
    """Zoo models: capitals prompts."""
    max_feature_nodes: int = 1000
    """Feature targets visited per graph."""
    batch_size: int = 32
    """Targets per backward pass."""
    verify: int = 8
    """Sources checked by intervention per graph (top features by influence, plus two error
    nodes and one token)."""
    n_probes: int = 6
    """Probe prompts per concept."""
    n_swaps: int = 5
    """Entity swaps per prompt for the transfer test."""
    node_threshold: float = 0.8
    """Pruning: nodes covering this share of influence."""
    edge_threshold: float = 0.98
    """Pruning: edges covering this share of edge influence."""


def _mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def slug(model_name: str) -> str:
    """Results-file name part: ``gpt2-zoo`` -> ``gpt2zoo`` (the zoo files' names), others as named."""
    name = Path(model_name).name
    return name.replace("-zoo", "zoo")


def top_token(model, prompt: str) -> tuple[int, torch.Tensor]:
    """(top token id, probabilities) at the prompt's last position."""
    from circuitlab.engine.forward import final_logits, run_to_final

    with torch.no_grad():
        resid = run_to_final(model, model.to_tokens(prompt)[None])
        probs = torch.softmax(final_logits(model, resid[:, -1]).float()[0], -1)
    return int(probs.argmax()), probs


def real_records(model, cfg: BenchConfig) -> list[dict]:
    """Factual-recall prompts over ``cfg.relations``: per relation ``cfg.entities`` subjects,
    those whose answer is the model's top token first (``correct`` says which), then the most
    probable answers among the ``cfg.candidates`` tried."""
    from circuitlab.tasks.real import fact_prompts as F

    out = []
    for rel in cfg.relations:
        usable = F.usable_facts(model.tokenizer, rel)
        if not usable:
            raise ValueError(f"no {rel} fact has a single-token answer in this tokenizer; drop it from --relations")
        order = {s: i for i, s in enumerate(PREFERRED.get(rel, ()))}
        seen, facts = set(), []
        for s, o in sorted(usable, key=lambda so: order.get(so[0], len(order))):
            if s not in seen:
                seen.add(s)
                facts.append((s, o))
        tried = []
        for s, o in facts[: cfg.candidates]:
            prompt = F.prompt(rel, 0, s)
            ans = model.token_id(" " + o)
            top, probs = top_token(model, prompt)
            tried.append({"clean": prompt, "answer": " " + o, "relation": rel, "subject": s,
                          "correct": top == ans, "answer_prob": float(probs[ans]),
                          "top_token": model.tokenizer.decode([top])})
        tried.sort(key=lambda r: (not r["correct"], -r["answer_prob"]))
        out += tried[: cfg.entities]
    return out


def check_edges(model, tcs, graph, pruned, n_features: int) -> dict:
    """Edges checked by intervention: the top ``n_features`` kept features by influence, the two
    most influential error nodes and token, each doubled in the frozen replacement model; the
    change of every target against its edge weight."""
    from circuitlab.graphs.verify import intervention_effects

    infl = pruned.node_influence
    feats = sorted(pruned.kept_features(graph), key=lambda i: -float(infl[i]))[:n_features]
    errs = sorted(range(graph.error_start, graph.token_start), key=lambda i: -float(infl[i]))[:2]
    toks = sorted(range(graph.token_start, graph.logit_start), key=lambda i: -float(infl[i]))[:1]
    sources = feats + errs + toks
    measured, predicted = intervention_effects(model, tcs, graph, sources)
    err = (measured - predicted).abs()
    scale = float(predicted.abs().max())
    return {"sources": len(sources), "edges": int(predicted.numel()), "max_abs_error": float(err.max()),
            "max_abs_edge": scale, "relative_error": float(err.max()) / scale if scale > 0 else float("nan"),
            "nonzero_edges": int((predicted.abs() > 1e-6).sum())}


def graph_run(model, tcs, rec: dict, cfg: BenchConfig, probe: bool) -> dict:
    """One prompt: graph, scores, edge checks and (``probe``) probe prompting."""
    from circuitlab.graphs.attribute import GraphConfig, attribute
    from circuitlab.graphs.probing import ProbeConfig, probe_prompting
    from circuitlab.graphs.prune import prune, pruned_graph, scores

    gcfg = GraphConfig(max_feature_nodes=cfg.max_feature_nodes, batch_size=cfg.batch_size)
    t0 = time.perf_counter()
    g = attribute(model, tcs, rec["clean"], rec["answer"], gcfg)
    build = time.perf_counter() - t0
    pr = prune(g, cfg.node_threshold, cfg.edge_threshold)
    out = {k: rec[k] for k in ("clean", "answer", "relation", "subject", "correct", "answer_prob", "top_token")
           if k in rec}
    out.update(seconds_graph=build, n_active=g.meta["n_active"], n_features_visited=g.n_features,
               backward_passes=g.meta["backward_passes"], verify=check_edges(model, tcs, g, pr, cfg.verify))
    if not probe:
        out["scores"] = {"full": scores(g).as_dict(), "pruned": scores(pruned_graph(g, pr), "pruned").as_dict()}
        return out
    pcfg = ProbeConfig(graph=gcfg, n_probes=cfg.n_probes, n_swaps=cfg.n_swaps, node_threshold=cfg.node_threshold,
                       edge_threshold=cfg.edge_threshold)
    try:
        r = probe_prompting(model, tcs, rec["clean"], rec["answer"], cfg=pcfg, graph=g)
    except ValueError as e:  # no concepts or no feature survives pruning: the graph's figures still count
        out["probe_error"] = str(e)
        out["scores"] = {"full": scores(g).as_dict(), "pruned": scores(pruned_graph(g, pr), "pruned").as_dict()}
        return out
    out.update(scores=r.scores, coherence=r.coherence, transfer=r.transfer, classes=r.classes,
               concepts=r.concepts, layers=[l for l, _ in r.features],
               supernodes=[(s.label, len(s.features)) for s in r.supernodes])
    return out


def summarize(per: list[dict], n_layers: int) -> dict:
    """Means over prompts: scores, coherence (with probe / baseline ratios), transfer by layer."""
    s: dict = {"scores": {}, "coherence": {}, "transfer_by_layer": {}}
    for which in ("full", "pruned", "probe_subgraph"):
        s["scores"][which] = {k: _mean([p["scores"][which][k] for p in per])
                              for k in ("completeness", "replacement", "n_features")}
    for method in per[0]["coherence"]:
        s["coherence"][method] = {k: _mean([p["coherence"].get(method, {}).get(k, float("nan")) for p in per])
                                  for k in ("peak_consistency", "activation_similarity", "groups")}
    pp = s["coherence"]["probe prompting"]
    for method, v in s["coherence"].items():
        v["peak_ratio_probe_over_this"] = _ratio(pp["peak_consistency"], v["peak_consistency"])
        v["similarity_ratio_probe_over_this"] = _ratio(pp["activation_similarity"], v["activation_similarity"])
        v["prompts_probe_better_peak"] = sum(
            p["coherence"]["probe prompting"]["peak_consistency"] > p["coherence"].get(method, {}).get(
                "peak_consistency", float("nan")) for p in per)
        v["prompts_probe_better_similarity"] = sum(
            p["coherence"]["probe prompting"]["activation_similarity"] > p["coherence"].get(method, {}).get(
                "activation_similarity", float("nan")) for p in per)
    layers = sorted({l for p in per for l in p["transfer"]["by_layer"]}, key=int)
    s["transfer_by_layer"] = {l: _mean([p["transfer"]["by_layer"].get(l) for p in per]) for l in layers}
    s["transfer_overall"] = _mean([p["transfer"]["overall"] for p in per])
    say = [l for p in per for l, c in zip(p["layers"], p["classes"]) if c == "Say X"]
    s["say_x_mean_layer"] = _mean(say)
    s["n_layers"] = n_layers
    s["seconds_per_graph"] = _mean([p["seconds_graph"] for p in per])
    s["correct_prompts"] = sum(bool(p.get("correct", True)) for p in per)
    return s


def by_relation(per: list[dict], n_layers: int) -> dict:
    """``summarize`` for each relation's prompts."""
    rels = sorted({p.get("relation", "capital") for p in per})
    return {r: summarize([p for p in per if p.get("relation", "capital") == r], n_layers) for r in rels}


def verify_summary(per: list[dict]) -> dict:
    v = [p["verify"] for p in per]
    return {"graphs": len(v), "edges": sum(x["edges"] for x in v), "nonzero_edges": sum(x["nonzero_edges"] for x in v),
            "max_abs_error": max(x["max_abs_error"] for x in v),
            "max_relative_error": max(x["relative_error"] for x in v if not math.isnan(x["relative_error"]))
            if any(not math.isnan(x["relative_error"]) for x in v) else float("nan")}


def run(model, tcs, records, cfg: BenchConfig, graph_only=()) -> dict:
    """The benchmark on ``records`` ({clean, answer, ...}; probe prompting on each) and
    ``graph_only`` records (graphs, scores and edge checks only)."""
    per = [graph_run(model, tcs, rec, cfg, probe=True) for rec in records]
    extra = [graph_run(model, tcs, rec, cfg, probe=False) for rec in graph_only]
    probed = [p for p in per if "coherence" in p]
    if not probed:
        raise ValueError(f"probe prompting failed on every prompt: {[p['probe_error'] for p in per]}")
    res = {"summary": summarize(probed, model.n_layers), "by_relation": by_relation(probed, model.n_layers),
           "verify": verify_summary(per + extra), "paper": PAPER, "prompts": per,
           "probe_errors": {p["clean"]: p["probe_error"] for p in per if "probe_error" in p}}
    if extra:
        res["graph_only"] = {
            "prompts": extra,
            "scores": {w: {k: _mean([p["scores"][w][k] for p in extra]) for k in ("completeness", "replacement",
                                                                                 "n_features")}
                       for w in ("full", "pruned")},
            "seconds_per_graph": _mean([p["seconds_graph"] for p in extra])}
    return res


def table(res: dict) -> str:
    s = res["summary"]
    out = ["| graph | completeness | replacement | features |", "|---|---|---|---|"]
    for k, v in s["scores"].items():
        out.append(f"| {k} | {v['completeness']:.3f} | {v['replacement']:.3f} | {v['n_features']:.0f} |")
    for k, v in res.get("graph_only", {}).get("scores", {}).items():
        out.append(f"| IOI {k} | {v['completeness']:.3f} | {v['replacement']:.3f} | {v['n_features']:.0f} |")
    out += ["", "| grouping | groups | peak-token consistency | activation similarity | probe / this (peak, sim) |",
            "|---|---|---|---|---|"]
    for k, v in s["coherence"].items():
        out.append(f"| {k} | {v['groups']:.1f} | {v['peak_consistency']:.3f} | {v['activation_similarity']:.3f} | "
                   f"{v['peak_ratio_probe_over_this']:.2f}x, {v['similarity_ratio_probe_over_this']:.2f}x |")
    if len(res["by_relation"]) > 1:
        out += ["", "| relation | prompts right | completeness | probe peak | cosine peak | probe sim | cosine sim |",
                "|---|---|---|---|---|---|---|"]
        for rel, r in res["by_relation"].items():
            c, pp = r["coherence"].get("cosine clustering", {}), r["coherence"]["probe prompting"]
            out.append(f"| {rel} | {r['correct_prompts']} | {r['scores']['full']['completeness']:.3f} | "
                       f"{pp['peak_consistency']:.3f} | {c.get('peak_consistency', float('nan')):.3f} | "
                       f"{pp['activation_similarity']:.3f} | {c.get('activation_similarity', float('nan')):.3f} |")
    out += ["", "| layer | entity-swap transfer rate |", "|---|---|"]
    out += [f"| {l} | {v:.2f} |" for l, v in s["transfer_by_layer"].items()]
    v = res["verify"]
    out += ["", f"overall transfer {s['transfer_overall']:.2f}; Say-X mean layer {s['say_x_mean_layer']:.2f} of "
                f"{s['n_layers']}; {s['seconds_per_graph']:.2f} s per graph; edges checked by intervention: "
                f"{v['edges']} in {v['graphs']} graphs, worst |measured - edge| {v['max_abs_error']:.2e} "
                f"({v['max_relative_error']:.2e} of the largest edge)"]
    return "\n".join(out)


def machine() -> dict:
    """Facts about the machine the numbers came from (it may be shared: load average included)."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads":
            torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "system": platform.platform(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2-zoo", help="zoo name, fetched name (smollm2-135m) or HF folder")
    ap.add_argument("--transcoders", default=None, help="folder of per-layer transcoders (default: the trained ones)")
    ap.add_argument("--n", type=int, default=5, help="zoo models: capitals prompts (>= 5)")
    ap.add_argument("--relations", default="capital,language,landmark", help="real models: comma-separated relations")
    ap.add_argument("--entities", type=int, default=3, help="real models: subjects per relation")
    ap.add_argument("--ioi", type=int, default=2, help="real models: IOI prompts graphed without probe prompting")
    ap.add_argument("--max-feature-nodes", type=int, default=1000)
    ap.add_argument("--verify", type=int, default=8, help="feature sources checked by intervention per graph")
    ap.add_argument("--node-threshold", type=float, default=0.8, help="pruning: share of node influence kept")
    ap.add_argument("--edge-threshold", type=float, default=0.98, help="pruning: share of edge influence kept")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one subject per relation, small graphs, output in the temp folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="default benchmarks/results/graphs_<model>.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import circuitlab as cl
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders
    from circuitlab.tasks.bundled import is_zoo
    from circuitlab.zoo import list_models

    if a.model.endswith("-zoo") and a.model not in list_models():
        print(f"skipped: zoo model {a.model} is not trained/exported yet (circuitlab/zoo/models/{a.model} missing; "
              f"`circuitlab zoo train {a.model}`)")
        return 0
    folder = Path(a.transcoders) if a.transcoders else find_transcoders(a.model)
    if folder is None:
        print(f"skipped: no trained transcoders for {a.model} (run `circuitlab train saes/configs/{a.model}.toml`, "
              "or pass --transcoders DIR)")
        return 0
    cfg = BenchConfig(relations=tuple(r.strip() for r in a.relations.split(",") if r.strip()), entities=a.entities,
                      ioi=a.ioi, n=max(a.n, 5), max_feature_nodes=a.max_feature_nodes, verify=a.verify,
                      node_threshold=a.node_threshold, edge_threshold=a.edge_threshold)
    if a.quick:
        cfg = BenchConfig(relations=cfg.relations, entities=1, candidates=2, ioi=min(a.ioi, 1), n=5,
                          max_feature_nodes=48, batch_size=24, verify=3, n_probes=3, n_swaps=2,
                          node_threshold=a.node_threshold, edge_threshold=a.edge_threshold)
    load_avg_start = machine()["load_average"]
    model = cl.load(a.model)
    tcs = load_transcoders(folder)
    t0 = time.perf_counter()
    if is_zoo(model):
        records = cl.tasks.capitals(model, n=cfg.n, seed=0).prompts[: 2 if a.quick else cfg.n]
        graph_only = []
    else:
        records = real_records(model, cfg)
        graph_only = cl.tasks.ioi(model, n=cfg.ioi, seed=0).prompts if cfg.ioi else []
    res = run(model, tcs, records, cfg, graph_only)
    res["meta"] = {"model": a.model, "transcoders": str(folder), "n_prompts": len(records),
                   "n_graph_only": len(graph_only), "config": cfg.__dict__, "quick": a.quick,
                   "seconds_total": time.perf_counter() - t0, "machine": machine(),
                   "load_average_at_start": load_avg_start}
    print(table(res))
    from circuitlab.io import atomic_write

    default = (Path(tempfile.gettempdir()) / f"graphs_{slug(a.model)}_quick.json" if a.quick
               else Path("benchmarks/results") / f"graphs_{slug(a.model)}.json")
    out = Path(a.out) if a.out else default
    text = json.dumps(res, indent=1, default=float)
    atomic_write(out, lambda p: Path(p).write_text(text))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
