"""``circuitlab zoo``: list the bundled models, or reproduce one from its config."""

from __future__ import annotations

EXAMPLES = "examples:\n  circuitlab zoo list\n  circuitlab zoo train gpt2-zoo"


def add_parser(sub, fmt) -> None:
    z = sub.add_parser("zoo", help="bundled models: list, train", epilog=EXAMPLES, formatter_class=fmt)
    zs = z.add_subparsers(dest="zoo_cmd", required=True)
    zs.add_parser("list", help="list bundled models")
    zt = zs.add_parser("train", help="reproduce a bundled model from its config (resumable)")
    zt.add_argument("name")
    zt.add_argument("--out", default=None, help="output folder (default: the package's zoo folder)")
    zt.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    zt.add_argument("--max-minutes", type=float, default=None)
    z.set_defaults(fn=run)


def run(a) -> None:
    from circuitlab.zoo import list_models

    if a.zoo_cmd == "list":
        for name in list_models():
            print(name)
    elif a.zoo_cmd == "train":
        from circuitlab.zoo.train import train_zoo_model

        train_zoo_model(a.name, out_dir=a.out, resume=not a.restart, max_minutes=a.max_minutes)
