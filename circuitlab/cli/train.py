"""``circuitlab train CONFIG.toml`` and ``circuitlab eval PATH``: the sparse-coder commands."""

from __future__ import annotations

from pathlib import Path

TRAIN_EPILOG = """examples:
  circuitlab train saes/configs/gpt2-zoo-resid.toml
  circuitlab train --show-config > my.toml       # every field, documented, with defaults
  circuitlab train my.toml --restart             # discard saved state (see OUT/train_state.json)
  circuitlab train my.toml --resume              # continue saved state after raising total_tokens
  torchrun --nproc_per_node 2 -m circuitlab.cli train my.toml   # data parallel (gloo on CPU)
"""

EVAL_EPILOG = """examples:
  circuitlab eval runs/sparse/sae_topkk32_L2            # writes ./eval/sae_topkk32_L2/
  circuitlab eval path/to/sae_lens_sae --model gpt2-zoo --docs 256 --out my_eval
The coder folder is only read: metrics.json and density.html go to --out.
"""


def cmd_train(a) -> None:
    from circuitlab.sparse import config
    from circuitlab.sparse.run import train_file

    if a.show_config:
        print(config.example_toml(), end="")
        return
    if not a.config:
        raise ValueError("give a CONFIG.toml (or --show-config for a documented template)")
    tf = config.load(a.config)
    if a.out:
        tf.run.out = a.out
    results = train_file(tf, resume_mode="restart" if a.restart else "resume" if a.resume else "auto")
    for name, m in results.items():
        keys = ("l0", "fvu", "ce_recovered", "dead_fraction", "train_tokens_per_s")
        print(name + ": " + ", ".join(f"{k}={m[k]:.4g}" for k in keys if isinstance(m.get(k), (int, float))))
    if results:
        print(f"wrote {tf.run.out}/ (history.json per coder, loss_curve.html; resumable state: "
              f"{Path(tf.run.out) / 'train_state.json'})")


def cmd_eval(a) -> None:
    import circuitlab as cl
    from circuitlab.sparse.evaluate import density_histogram, eval_output, evaluate, resolve_model, save_metrics
    from circuitlab.sparse.files import load_coder
    from circuitlab.webpage import write_figure

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
    m = evaluate(models, coder, n_docs=a.docs, ctx_len=a.ctx_len)
    dens = m.pop("_density")
    save_metrics(m, metrics_file)
    write_figure(density_histogram(dens, path.resolve().name), density_file)
    for k, v in m.items():
        print(f"{k:>22}: {v:.6g}" if isinstance(v, float) else f"{k:>22}: {v}")
    print(f"wrote {metrics_file} and {density_file.name}")


def add_parser(subparsers, formatter_class) -> None:
    p = subparsers.add_parser("train", help="train sparse coders (SAE, transcoder, crosscoder) from a TOML file",
                              epilog=TRAIN_EPILOG, formatter_class=formatter_class)
    p.add_argument("config", nargs="?", help="TOML file ([run], [train], [[coder]] sections)")
    p.add_argument("--out", help="override run.out")
    p.add_argument("--show-config", action="store_true", help="print a template with every field documented")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue saved training state whose settings differ only in safe ways "
                            "(learning rate, schedule, total_tokens raised); by default a saved state is "
                            "resumed only when its configuration is identical")
    again.add_argument("--restart", action="store_true",
                       help="discard any saved training state for these coders and train from scratch")
    p.set_defaults(fn=cmd_train)
    e = subparsers.add_parser("eval", help="evaluate a coder folder: L0, FVU, CE recovered, KL, dead/dense",
                              epilog=EVAL_EPILOG, formatter_class=formatter_class)
    e.add_argument("path", help="coder folder (cfg.json + sae_weights.safetensors)")
    e.add_argument("--model", help="model to splice into (default: the one in cfg.json)")
    e.add_argument("--docs", type=int, default=1024,
                   help="held-out documents (default 1024, ~38k tokens: dead fractions need that many)")
    e.add_argument("--ctx-len", type=int, default=64, help="tokens per document (default 64)")
    e.add_argument("--out", help="output folder for metrics.json and density.html (default ./eval/<coder folder "
                                 "name>; never the coder folder itself); a path ending in .json names the metrics file")
    e.set_defaults(fn=cmd_eval)

