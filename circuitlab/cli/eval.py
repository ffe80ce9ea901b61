"""``circuitlab eval PATH``: score a sparse-coder folder (L0, FVU, CE recovered, KL, dead/dense latents)
on held-out documents of a data source, without writing into the coder folder. A folder of coder
folders (a model's per-layer transcoders) is scored as a set: one activation pass for all of them,
and the replacement model (every transcoder spliced at once)."""

from __future__ import annotations

from pathlib import Path

EVAL_EPILOG = """examples:
  circuitlab eval runs/sparse/sae_topkk32_L2            # writes ./eval/sae_topkk32_L2/
  circuitlab eval path/to/sae_lens_sae --model gpt2-zoo --docs 256 --out my_eval
  circuitlab eval runs/sparse/sae_topkk32_L2 --data text:held_out.txt --docs 256
  circuitlab eval ~/.cache/circuitlab/coders/smollm2-135m --data corpus:english --docs 256 --ce-docs 32 --ctx-len 128
The coder folder is only read: metrics.json and density.html (for a set: set_metrics.json and
set_metrics.html, FVU and CE recovered by layer) go to --out.
"""


def add_parser(subparsers, formatter_class) -> None:
    e = subparsers.add_parser("eval", help="evaluate a coder folder: L0, FVU, CE recovered, KL, dead/dense",
                              epilog=EVAL_EPILOG, formatter_class=formatter_class)
    e.add_argument("path", help="coder folder (cfg.json + sae_weights.safetensors)")
    e.add_argument("--model", help="model to splice into (default: the one in cfg.json)")
    e.add_argument("--data", default=None,
                   help="data source whose held-out documents are used (zoo, text:PATH, jsonl:PATH[:FIELD], "
                        "tokens:PATH, hf:NAME...); default zoo")
    e.add_argument("--docs", type=int, default=1024,
                   help="held-out documents (default 1024, ~38k tokens: dead fractions need that many)")
    e.add_argument("--ctx-len", type=int, default=64, help="tokens per document (default 64)")
    e.add_argument("--ce-docs", type=int, default=32,
                   help="for a folder of coders: documents for the spliced-CE measurements (default 32; each "
                        "coder costs two forward passes over them)")
    e.add_argument("--out", help="output folder for metrics.json and density.html (default ./eval/<coder folder "
                                 "name>; never the coder folder itself); a path ending in .json names the metrics "
                                 "file")
    e.set_defaults(fn=run)


def _data_source(spec: str | None) -> str:
    """The ``--data`` source name, checked (kind, file present) before any model loads."""
    from circuitlab.data import DEFAULT, check

    if spec is None:
        return DEFAULT
    try:
        check(spec)
    except (ValueError, OSError) as e:
        raise ValueError(f"--data {spec!r}: {e}") from e
    return spec


def run(a) -> None:
    import circuitlab as cl
    from circuitlab.sparse.evaluate import density_histogram, eval_output, evaluate, resolve_model, save_metrics
    from circuitlab.sparse.files import load_coder
    from circuitlab.webpage import write_figure

    data = _data_source(a.data)
    path = Path(a.path).expanduser()
    if path.is_dir() and not (path / "cfg.json").exists() and any(path.glob("*/cfg.json")):
        return run_set(a, path, data)
    coder = load_coder(path)
    metrics_file, density_file = eval_output(path, a.out)
    names = [a.model] if a.model else list(dict.fromkeys(coder.cfg.models))
    if not names or not names[0]:
        raise ValueError("the coder's cfg.json names no model; pass --model NAME_OR_PATH")
    models = []
    for n in names:
        try:
            models.append(cl.load(resolve_model(n)))
        except OSError as e:
            raise ValueError(f"could not load model {n!r} (named by {'--model' if a.model else path / 'cfg.json'}): "
                             f"{e}; pass --model NAME_OR_PATH") from e
    m = evaluate(models, coder, n_docs=a.docs, ctx_len=a.ctx_len, data=data)
    dens = m.pop("_density")
    save_metrics(m, metrics_file)
    write_figure(density_histogram(dens, path.resolve().name), density_file)
    for k, v in m.items():
        print(f"{k:>22}: {v:.6g}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(f"wrote {metrics_file} and {density_file.name}")


def run_set(a, folder: Path, data: str) -> None:
    """Evaluate every coder folder inside ``folder`` together (see circuitlab.sparse.evaluate_set)."""
    import json

    import circuitlab as cl
    from circuitlab.io import atomic_write
    from circuitlab.sparse.evaluate import resolve_model
    from circuitlab.sparse.evaluate_set import evaluate_set, set_figure
    from circuitlab.sparse.files import load_coder
    from circuitlab.webpage import write_figure

    coders = {p.parent.name: load_coder(p.parent) for p in sorted(folder.glob("*/cfg.json"))}
    names = {m for c in coders.values() for m in c.cfg.models if m}
    if not a.model and len(names) != 1:
        raise ValueError(f"the coders of {folder} name {len(names)} models ({', '.join(sorted(names)) or 'none'}); "
                         "pass --model NAME_OR_PATH")
    model = cl.load(resolve_model(a.model or names.pop()))
    out = Path(a.out) if a.out else Path("eval") / folder.resolve().name
    m = evaluate_set(model, coders, n_docs=a.docs, ce_docs=a.ce_docs, ctx_len=a.ctx_len, data=data)
    atomic_write(out / "set_metrics.json", lambda t: Path(t).write_text(json.dumps(m, indent=1)))
    write_figure(set_figure(m, folder.resolve().name), out / "set_metrics.html")
    for n, row in m["coders"].items():
        print(f"{n:>36}: FVU {row['fvu']:.3f}  L0 {row['l0']:.1f}  CE recovered {row['ce_recovered']:.3f}  "
              f"dead {row['dead_fraction']:.3f}")
    if m["replacement"]:
        r = m["replacement"]
        print(f"replacement ({len(r['coders'])} transcoders at once): CE {r['ce_coder']:.3f} "
              f"(clean {r['ce_clean']:.3f}, all zero-ablated {r['ce_zero_ablation']:.3f}), "
              f"CE recovered {r['ce_recovered']:.3f}")
    print(f"wrote {out / 'set_metrics.json'} and set_metrics.html")
