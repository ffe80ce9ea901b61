"""``circuitlab features flow|multidim``: how a model's coders relate across layers (feature flow) and
which groups of latents form multi-dimensional features; each writes a JSON file and an offline
HTML page."""

from __future__ import annotations

import json
import math
from pathlib import Path

FEATURES_EPILOG = """examples:
  circuitlab features flow --model gpt2-zoo                       # bundled residual SAEs + transcoders
  circuitlab features flow --model gpt2-zoo --trace R2:17 --steer 8 --out runs/flow
  circuitlab features flow --model smollm2-135m --kinds resid,transcoder --docs 128
  circuitlab features multidim --model gpt2-zoo --layer 2 --out runs/multidim
  circuitlab features multidim --model smollm2-135m --layer 8 \\
      --words Monday,Tuesday,Wednesday,Thursday,Friday,Saturday,Sunday
Coders are found as `circuitlab graph` finds them (the package's, then the user cache); --coders
names folders instead. Outputs: DIR/flow.json + flow.html, DIR/multidim.json + multidim.html.
"""

KINDS = ("resid", "transcoder")
"""Coder folder kinds found by name (``*_resid_L<n>``, ``*_transcoder_L<n>``)."""


def add_parser(subparsers, formatter_class) -> None:
    f = subparsers.add_parser("features", help="feature flow across layers' coders; multi-dimensional features",
                              epilog=FEATURES_EPILOG, formatter_class=formatter_class)
    sub = f.add_subparsers(dest="features_cmd", required=True)

    fl = sub.add_parser("flow", help="match features of consecutive coders by cosine; flow graph page",
                        epilog=FEATURES_EPILOG, formatter_class=formatter_class)
    _common(fl)
    fl.add_argument("--coders", nargs="+", default=None,
                    help="coder folders (default: the model's residual SAEs and transcoders)")
    fl.add_argument("--kinds", default="resid,transcoder",
                    help="which of the model's coders to use when --coders is not given (default resid,transcoder)")
    fl.add_argument("--threshold", type=float, default=0.5, help="cosine at or above which latents match (default 0.5)")
    fl.add_argument("--top-k", type=int, default=3, help="matches kept per latent (default 3)")
    fl.add_argument("--space", default="decoder", help="decoder | encoder | decoder-encoder (default decoder)")
    fl.add_argument("--trace", action="append", default=None, metavar="R2:17",
                    help="a feature to draw (stage label or coder folder name, colon, latent); repeatable; "
                         "default: the 4 longest, most similar flows ending in the last coder")
    fl.add_argument("--skip-activations", action="store_true",
                    help="do not compare the cosine matches with activation correlations on held-out text")
    fl.add_argument("--steer", type=float, default=None, metavar="STRENGTH",
                    help="also measure flow-guided steering of the traced features at this total strength")
    fl.set_defaults(fn=run_flow)

    md = sub.add_parser("multidim", help="cluster decoder directions; irreducible multi-dimensional features",
                        epilog=FEATURES_EPILOG, formatter_class=formatter_class)
    _common(md)
    md.add_argument("--coder", default=None, help="residual SAE folder (default: the model's at --layer)")
    md.add_argument("--layer", type=int, default=None, help="layer of the model's residual SAE (default: middle)")
    md.add_argument("--words", default=None,
                    help="comma-separated words in cyclic order (e.g. the days of the week): is there a circle?")
    md.add_argument("--templates", default=None,
                    help="'|'-separated contexts ending in {word} for --words (default: a few neutral ones)")
    md.add_argument("--max-size", type=int, default=25, help="latents per cluster at most, about (default 25)")
    md.add_argument("--min-cosine", type=float, default=None,
                    help="cosine below which latents are unrelated (default 3/sqrt(d_model))")
    md.add_argument("--top", type=int, default=12, help="clusters drawn on the page (default 12)")
    md.set_defaults(fn=run_multidim)


def _common(p) -> None:
    p.add_argument("--model", default=None, help="zoo name, fetched name, folder or hub id (default: gpt2-zoo)")
    p.add_argument("--data", default=None, help="data source of the held-out text (default zoo; see `circuitlab data`)")
    p.add_argument("--docs", type=int, default=256, help="held-out documents (default 256)")
    p.add_argument("--ctx-len", type=int, default=64, help="tokens per document (default 64)")
    p.add_argument("--out", default=None, help="output folder (default ./features/<command>-<model>)")


# ------------------------------------------------------------------ shared helpers

def _clean(obj):
    """JSON-safe copy: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _write_json(path: Path, data) -> None:
    from circuitlab.io import atomic_write

    text = json.dumps(_clean(data), indent=1)
    atomic_write(path, lambda p: Path(p).write_text(text))


def _out(a, what: str, model_name: str) -> Path:
    from circuitlab.cli.checks import check_out_arg

    out = check_out_arg(a.out) if a.out else Path("features") / f"{what}-{Path(model_name).name}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _docs(a):
    from circuitlab.cli.eval import _data_source
    from circuitlab.sparse.evaluate import heldout_documents

    return heldout_documents(a.docs, data=_data_source(a.data), ctx_len=a.ctx_len)


def _table(rows: list[dict], cols: list[str]) -> str:
    from circuitlab.webpage import text

    def cell(v):
        if isinstance(v, float):
            return "n/a" if not math.isfinite(v) else f"{v:.3f}"
        return text(v)

    head = "".join(f"<th>{text(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table border=1 cellpadding=4 style='border-collapse:collapse'><tr>{head}</tr>{body}</table>"


# ------------------------------------------------------------------ flow

def _flow_coders(a, model_name: str) -> dict:
    from circuitlab.cli.checks import parse_names
    from circuitlab.sparse.bundled import search_folders
    from circuitlab.sparse.files import CFG_FILE, load_coder

    if a.coders:
        paths = [Path(p) for p in a.coders]
        for p in paths:
            if not (p / CFG_FILE).is_file():
                raise ValueError(f"--coders {p}: not a coder folder (no {CFG_FILE})")
    else:
        kinds = parse_names("kinds", a.kinds, KINDS)
        paths = []
        for root in search_folders(model_name):
            paths = sorted(p for p in root.iterdir() if p.is_dir() and (p / CFG_FILE).exists()
                           and any(f"_{k}_L" in p.name for k in kinds))
            if paths:
                break
        if not paths:
            raise ValueError(f"no {a.kinds} coders found for {model_name}; train them (saes/configs) or pass "
                             "--coders FOLDER ...")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"two coder folders share a name ({names}); give folders with distinct names")
    return {p.name: load_coder(p) for p in paths}


def _parse_trace(spec: str, graph) -> tuple[str, int]:
    name, _, latent = spec.rpartition(":")
    if not name or not latent.isdigit():
        raise ValueError(f"--trace {spec!r}: give STAGE:LATENT, e.g. R2:17 or gpt2-zoo_resid_L2:17")
    by_label = {s.label: n for n, s in graph.stages.items()}
    if name in by_label:
        name = by_label[name]
    if name not in graph.stages:
        raise ValueError(f"--trace {spec!r}: no stage {name!r}; stages: "
                         f"{', '.join(f'{s.label} ({n})' for n, s in graph.stages.items())}")
    return name, int(latent)


def _default_traces(graph, n: int = 4) -> list[tuple[str, int]]:
    """Features of the last chain stage whose backward chain of best matches is longest, ties
    broken by the weakest link's cosine."""
    last = graph.chain[-1]
    t = graph.config.threshold
    resid_links = [ln for ln in graph.back if ln.source in graph.chain]
    scored = []
    for u in range(graph.sizes[last]):
        cur, length, weakest = u, 0, 1.0
        for ln in reversed(resid_links):
            s = float(ln.matches.score[cur, 0])
            if s < t:
                break
            weakest = min(weakest, s)
            length += 1
            cur = int(ln.matches.index[cur, 0])
        scored.append((length, weakest, u))
    scored.sort(reverse=True)
    return [(last, u) for _, _, u in scored[:n]]


def run_flow(a) -> None:
    from circuitlab.resolve import load_model
    from circuitlab.sparse.flow import SHARED_INIT, FlowConfig, compare_with_activations, flow_graph, \
        flow_steering, steering_response
    from circuitlab.webpage import figure_html, page, text, write_html

    cfg = FlowConfig(threshold=a.threshold, top_k=a.top_k, space=a.space)
    model = load_model(a.model)
    coders = _flow_coders(a, model.name)
    graph = flow_graph(coders, cfg)
    traces = [_parse_trace(s, graph) for s in a.trace] if a.trace else _default_traces(graph)
    out = _out(a, "flow", model.name)
    flows = [graph.trace(n, u) for n, u in traces]
    result = graph.to_dict()
    result["model"] = model.name
    result["flows"] = [f.to_dict() for f in flows]
    compare = []
    if not a.skip_activations:
        compare = compare_with_activations(model, coders, graph, _docs(a), a.ctx_len)
        result["activation_agreement"] = compare
    steering = []
    if a.steer is not None:
        docs = _docs(a)
        for f in flows:
            path = f.path()
            if len(path) < 2:
                continue
            first = flow_steering(f, coders, a.steer, split=True, stages=[path[0][0]], device=model.device)
            along = flow_steering(f, coders, a.steer, split=True, device=model.device)
            r1 = steering_response(model, coders, path, docs, first, a.ctx_len)
            r2 = steering_response(model, coders, path, docs, along, a.ctx_len)
            steering.append({"flow": f.label(f.start), "path": [f.label(n) for n in path],
                             "first_layer_only": r1, "along_flow": r2})
        result["steering"] = {"strength": a.steer, "split": True, "flows": steering}
    _write_json(out / "flow.json", result)

    parts = [f"<h1>Feature flow: {text(model.name)}</h1>",
             f"<p>{len(graph.chain)} chain coders ({', '.join(text(graph.stages[n].label) for n in graph.chain)}), "
             f"{len(graph.stages) - len(graph.chain)} module coders; cosine of {text(cfg.space)} directions "
             f">= {cfg.threshold:g} is a match.</p>",
             figure_html(graph.counts_figure(), "file"), figure_html(graph.sankey(), False)]
    alike = [ln for ln in graph.back if ln.same_index() > SHARED_INIT]
    if alike:
        parts.insert(2, "<p style='color:#b00'><b>Warning:</b> " + ", ".join(
            f"{text(graph.stages[ln.source].label)} -&gt; {text(graph.stages[ln.target].label)}: "
            f"{ln.same_index():.0%}" for ln in alike) + " of the best matches keep their latent's own index: "
            "these coders look initialised alike, and their cosine matches reflect the shared initial decoder "
            "more than shared features. Train coders with different seeds.</p>")
    if compare:
        parts.append("<h2>Cosine matches against activation correlation on held-out text</h2>"
                     "<p>top1: share of the later coder's live latents whose cosine match is also their "
                     "best-correlated latent; corr_of_*: mean activation correlation of the cosine match and of "
                     "the best-correlated latent.</p>")
        parts.append(_table(compare, ["source", "target", "tokens", "latents", "top1", "in_topk", "confident",
                                      "confident_top1", "corr_of_cosine_match", "corr_of_best_match"]))
    parts.append("<h2>Traced flows</h2>")
    for f in flows:
        parts.append(figure_html(f.figure(), False))
    if steering:
        parts.append(f"<h2>Flow-guided steering (total strength {a.steer:g})</h2><p>Mean rise of each path "
                     "latent's activation over held-out tokens: the whole strength at the first layer, or split "
                     "evenly along the flow.</p>")
        rows = [{"flow": s["flow"], "latent": lab, "first layer only": x, "along the flow": y}
                for s in steering for lab, x, y in zip(s["path"], s["first_layer_only"], s["along_flow"])]
        parts.append(_table(rows, ["flow", "latent", "first layer only", "along the flow"]))
    write_html(out / "flow.html", page(f"feature flow {model.name}", "\n".join(parts)), plotly_file=True)
    for name, c in graph.counts().items():
        print(f"{graph.stages[name].label:>4} {name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    for r in compare:
        print(f"{graph.stages[r['target']].label} <- {graph.stages[r['source']].label}: cosine match = activation "
              f"match for {r['top1']:.1%} of {r['latents']} live latents (chance ~{1 / graph.sizes[r['source']]:.2%})")
    print(f"wrote {out}/flow.json and flow.html")


# ------------------------------------------------------------------ multi-dimensional features

def _resid_coder(a, model_name: str):
    from circuitlab.sparse.bundled import find_coder
    from circuitlab.sparse.files import CFG_FILE, load_coder

    if a.coder:
        if not (Path(a.coder) / CFG_FILE).is_file():
            raise ValueError(f"--coder {a.coder}: not a coder folder (no {CFG_FILE})")
        return load_coder(a.coder), Path(a.coder).name
    coder = find_coder(model_name, "resid", a.layer)
    if coder is None:
        raise ValueError(f"no residual SAE found for {model_name}" + (f" at layer {a.layer}" if a.layer is not None
                                                                     else "") + "; pass --coder FOLDER")
    return coder, f"{Path(model_name).name} resid SAE at {coder.hook_in}"


def run_multidim(a) -> None:
    from circuitlab.resolve import load_model
    from circuitlab.sparse.multidim import WORD_TEMPLATES, ClusterConfig, cluster_decoder, multidim_features, \
        word_circle
    from circuitlab.webpage import figure_html, page, text, write_html

    ccfg = ClusterConfig(max_size=a.max_size, min_cosine=a.min_cosine)
    words = [w.strip() for w in a.words.split(",")] if a.words else None
    if words is not None and not all(words):
        raise ValueError(f"--words {a.words!r} has an empty entry; give comma-separated words")
    templates = [t for t in a.templates.split("|")] if a.templates else list(WORD_TEMPLATES)
    model = load_model(a.model)
    coder, what = _resid_coder(a, model.name)
    out = _out(a, "multidim", model.name)
    if words is not None:
        wc = word_circle(model, coder, words, templates, cluster_config=ccfg)
        _write_json(out / "multidim.json", {"model": model.name, "coder": what, "templates": templates,
                                            **wc.to_dict()})
        body = (f"<h1>{text(', '.join(words))}</h1><p>{text(what)}; the cluster of latents the words use most "
                f"and the raw activations' top two principal components.</p>" + figure_html(wc.figure(), "file")
                + "<h2>Candidate clusters</h2>"
                + _table(wc.clusters, ["latents", "share", "cyclic_adjacency", "radius_cv", "is_circle"]))
        write_html(out / "multidim.html", page("words on a circle?", body), plotly_file=True)
        s = wc.score
        print(f"latents {wc.latents}: {'a circle' if s.is_circle else 'no circle'} (cyclic adjacency "
              f"{s.cyclic_adjacency:.2f}, radius cv {s.radius_cv:.2f}, largest gap {s.largest_gap:.2f}); raw "
              f"activations: {'a circle' if wc.raw_score.is_circle else 'no circle'} (adjacency "
              f"{wc.raw_score.cyclic_adjacency:.2f})")
        print(f"wrote {out}/multidim.json and multidim.html")
        return
    clusters = cluster_decoder(coder, config=ccfg)
    views = multidim_features(model, coder, _docs(a), clusters, ctx_len=a.ctx_len)
    _write_json(out / "multidim.json", {"model": model.name, "coder": what, "clusters": len(clusters),
                                        "cluster_sizes": [len(c) for c in clusters],
                                        "measured": [v.to_dict() for v in views]})
    parts = [f"<h1>Multi-dimensional features: {text(what)}</h1>",
             f"<p>{len(clusters)} clusters of decoder directions; {len(views)} with two or more latents and enough "
             f"active tokens; {sum(v.irreducible for v in views)} irreducible by the separability / mixture "
             "test.</p>",
             _table([v.to_dict() | {"latents": v.latents[:12]} for v in views[:50]],
                    ["latents", "tokens", "decoder_rank", "separability", "mixture", "irreducible"])]
    for i, v in enumerate(views[:a.top]):
        parts.append(figure_html(v.figure(), "file" if i == 0 else False))
    write_html(out / "multidim.html", page(f"multi-dimensional features {model.name}", "\n".join(parts)),
               plotly_file=True)
    print(f"{len(clusters)} clusters, {len(views)} measured, {sum(v.irreducible for v in views)} irreducible")
    print(f"wrote {out}/multidim.json and multidim.html")
