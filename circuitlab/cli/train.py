"""``circuitlab train CONFIG.toml``: train sparse coders (SAE, transcoder, crosscoder) from a TOML file."""

from __future__ import annotations

from pathlib import Path

TRAIN_EPILOG = """examples:
  circuitlab train saes/configs/gpt2-zoo-resid.toml
  circuitlab train --show-config > my.toml       # every field, documented, with defaults
  circuitlab train my.toml --restart             # discard saved state (see OUT/train_state.json)
  circuitlab train my.toml --resume              # continue saved state after raising total_tokens
  torchrun --nproc_per_node 2 -m circuitlab.cli train my.toml   # data parallel (gloo on CPU)
"""


def run(a) -> None:
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
    p.set_defaults(fn=run)
