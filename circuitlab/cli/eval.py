"""``circuitlab eval PATH``: score a sparse-coder folder (L0, FVU, CE recovered, KL, dead/dense latents)
on held-out documents of a data source, without writing into the coder folder."""

from __future__ import annotations

from pathlib import Path

EVAL_EPILOG = """examples:
  circuitlab eval runs/sparse/sae_topkk32_L2            # writes ./eval/sae_topkk32_L2/
  circuitlab eval path/to/sae_lens_sae --model gpt2-zoo --docs 256 --out my_eval
  circuitlab eval runs/sparse/sae_topkk32_L2 --data text:held_out.txt --docs 256
The coder folder is only read: metrics.json and density.html go to --out.
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
    path = Path(a.path)
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
