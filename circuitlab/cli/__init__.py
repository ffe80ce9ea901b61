"""The ``circuitlab`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from circuitlab.resolve import load_model, load_task, looks_like_file

_load_model, _task = load_model, load_task  # moved; kept until callers are updated


def _names(what: str, text: str, valid) -> list[str]:
    """A comma-separated list, every entry checked against ``valid`` before anything runs."""
    from circuitlab.validate import check_choice

    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise ValueError(f"--{what} {text!r} has an empty entry; give comma-separated names like "
                         f"{','.join(list(valid)[:2])}")
    for n in names:
        check_choice(what.rstrip("s") if what != "sites" else "sites", n, valid)
    return list(dict.fromkeys(names))


def check_task_arg(spec: str) -> None:
    """A task argument that looks like a file must be a readable file (checked before model loading)."""
    from circuitlab.tasks.bundled import BUNDLED

    if looks_like_file(spec) or (spec not in BUNDLED and Path(spec).exists()):
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"--task {spec!r}: no such file (give a JSONL of {{clean, corrupt, answer, wrong}} "
                             f"records or a bundled task: {', '.join(BUNDLED)})")
        if not path.is_file():
            raise ValueError(f"--task {spec!r} is not a file; give a JSONL file or a bundled task: {', '.join(BUNDLED)}")
    elif spec not in BUNDLED:
        from circuitlab.validate import suggest

        raise ValueError(f"--task {spec!r} is neither a bundled task nor a file{suggest(spec, BUNDLED)} "
                         "(or give a JSONL path)")


def check_out_arg(out: str) -> Path:
    """The output folder may exist (files in it are replaced) but must not be a file."""
    path = Path(out)
    if not out.strip():
        raise ValueError("--out is empty; give an output folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder; choose another output folder")
    return path


def parse_positions(text: str | None) -> list[int | str] | None:
    """``--positions S1,IO,S2,END`` (role names) or ``0,5,END`` (token indices too); None: all."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"--positions {text!r} has an empty entry; give comma-separated role names or token "
                         "indices like S1,IO,S2,END or 0,5")
    out: list[int | str] = []
    for t in items:
        if t.lstrip("-").isdigit():
            if int(t) < 0:
                raise ValueError(f"--positions: {t} is negative; give token indices >= 0 or role names")
            out.append(int(t))
        elif t.isidentifier():
            out.append(t)
        else:
            raise ValueError(f"--positions: {t!r} is neither a token index nor a role name (like S1, IO, END)")
    return list(dict.fromkeys(out))


def _stem(sites: str, name: str, options: dict, direction: str) -> str:
    """Output file stem of one sweep: sites, method (with its options) and direction."""
    from circuitlab.methods.registry import option_text

    opts = "".join(f"_{k}-{option_text(v)}" for k, v in options.items())
    return f"{sites}_{name.replace('*', 'star')}{opts}_{direction}"


def cmd_sweep(a) -> None:
    from circuitlab.api import METHODS, check_sites
    from circuitlab.methods.grid import SITE_SPECS
    from circuitlab.methods.registry import parse_specs, spec_label
    from circuitlab.validate import check_positive_int
    from circuitlab.viz.report import Report

    # every argument is checked before the model loads and the first sweep runs
    check_positive_int("--batch-size", a.batch_size)
    check_positive_int("--n", a.n)
    site_list = _names("sites", a.sites, SITE_SPECS)
    specs = {spec_label(n, o): (n, o) for n, o in parse_specs(a.method, METHODS)}  # label -> (method, options)
    positions = parse_positions(a.positions)
    for sites in site_list:
        for name, options in specs.values():
            check_sites(sites, name, options)
    check_task_arg(a.task)
    check_out_arg(a.out)
    model = load_model(a.model)
    task = load_task(model, a.task, a.n, a.seed)
    task.check_positions(positions)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [["sites", "method", "direction", "forward passes", "backward passes", "seconds", "top node", "top value"]]
    report = Report(f"circuitlab sweep: {model.name} · {task.name}")
    results = {}
    from circuitlab.sweep import distributed_info, sweep

    rank, world = distributed_info()
    for sites in site_list:
        for label, (name, options) in specs.items():
            r = sweep(model, task, sites, name, a.direction, a.batch_size, positions, **options)
            if rank != 0:
                continue
            stem = _stem(sites, name, options, a.direction)
            r.save(out / stem)
            r.to_frame().to_csv(out / f"{stem}.csv", index=False)
            top, value = r.top(1)[0]
            rows.append([sites, label, a.direction, r.cost.forward_passes, r.cost.backward_passes,
                         round(r.cost.seconds, 3), top, value])
            report.add(f"{label} on {sites}", f"{r.metric} effect of each node ({a.direction}).", r.plot())
            results[(sites, label)] = r
    if rank != 0:
        return
    if len(specs) > 1:
        from circuitlab.api import compare

        crow = [["sites", "method", "vs", "pearson", "spearman", "top-10 recall"]]
        for sites in site_list:
            ref_label = "exact" if "exact" in specs else next(iter(specs))
            ref = results[(sites, ref_label)]
            for label in specs:
                if label == ref_label:
                    continue
                c = compare(results[(sites, label)], ref)
                crow.append([sites, label, ref_label, c["pearson"], c["spearman"], c["recall@10"]])
        report.add("Agreement", "Correlation of each estimate with the reference.", crow)
        _write_table(out / "comparison.csv", crow)
    report.add("Runs", "Cost of each sweep.", rows)
    _write_table(out / "summary.csv", rows)
    report.save(out / "report.html")
    for r in rows:
        print("  ".join(str(c) if not isinstance(c, float) else f"{c:.4g}" for c in r))
    print(f"wrote {out}/")


def _write_table(path: Path, rows) -> None:
    import csv

    from circuitlab.result import atomic_write

    def w(p):
        with open(p, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    atomic_write(path, w)


def cmd_demo(a) -> None:
    from circuitlab.demo import run_demo
    from circuitlab.validate import check_positive_int

    check_positive_int("--n", a.n)
    if a.task is not None:
        check_task_arg(a.task)
    check_out_arg(a.out)

    path = run_demo(model=a.model, task=a.task, out=a.out, n=a.n)
    print(f"report: {path}")


def cmd_zoo(a) -> None:
    from circuitlab.zoo import list_models

    if a.zoo_cmd == "list":
        for name in list_models():
            print(name)
    elif a.zoo_cmd == "train":
        from circuitlab.zoo.train import train_zoo_model

        train_zoo_model(a.name, out_dir=a.out, resume=not a.restart, max_minutes=a.max_minutes)


EXAMPLES = {
    "demo": "examples:\n  circuitlab demo\n  circuitlab demo --model smollm2-135m --n 16\n  circuitlab demo --model gpt2-zoo --task capitals --out my_report",
    "sweep": "examples:\n  circuitlab sweep --task ioi --sites heads,mlp_out --method exact --out runs/ioi\n"
             "  torchrun --nproc_per_node 2 -m circuitlab.cli sweep --task ioi --sites heads --method atp* --out runs/ddp\n"
             "  circuitlab sweep --model gpt2-zoo --task pairs.jsonl --sites resid_pre --method exact,atp* \\\n"
             "      --out runs/x\n"
             "  circuitlab sweep --task ioi --sites heads --positions S1,IO,S2,END \\\n"
             "      --method exact,ig:steps=32,variant=activations --out runs/roles",
    "zoo": "examples:\n  circuitlab zoo list\n  circuitlab zoo train gpt2-zoo",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) that points at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _method_help() -> str:
    """Each node method with its options, for ``sweep --help``."""
    from circuitlab.api import METHODS

    return "; ".join(f"{m.name} ({', '.join(m.option_names)})" for m in METHODS.values())


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="circuitlab", description="Mechanistic-interpretability workbench.",
                                epilog="run `circuitlab COMMAND --help` for examples", formatter_class=fmt)
    p.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="full analysis of a model -> HTML report", epilog=EXAMPLES["demo"], formatter_class=fmt)
    d.add_argument("--model", default=None, help="fetched model, zoo name, HF folder or hub id (default: smollm2-135m "
                   "when fetched, else the bundled GPT-2)")
    d.add_argument("--task", default=None, help="bundled task (ioi, capitals, greater_than, induction) or JSONL (default: ioi and capitals)")
    d.add_argument("--out", default="circuitlab_demo", help="output folder")
    d.add_argument("--n", type=int, default=32, help="prompts per task")
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("sweep", help="node attribution sweeps -> safetensors/JSON/CSV + HTML", epilog=EXAMPLES["sweep"], formatter_class=fmt)
    s.add_argument("--model", default=None)
    s.add_argument("--task", required=True, help="bundled task name or JSONL of {clean, corrupt, answer, wrong}")
    s.add_argument("--sites", default="resid_pre", help="comma-separated: resid_pre, attn_out, mlp_out, heads, heads_all, q, k, v, ...")
    s.add_argument("--method", default="exact", help="comma-separated methods, each optionally with its options "
                   "(METHOD:NAME=VALUE,NAME=VALUE; lists joined by +, e.g. layers=0+1); several give a comparison "
                   "table. " + _method_help())
    s.add_argument("--positions", default=None, help="comma-separated role names (e.g. S1,IO,S2,END for ioi) or token "
                   "indices to patch at (default: every position)")
    s.add_argument("--direction", default="denoising", choices=["denoising", "noising"])
    s.add_argument("--n", type=int, default=32, help="prompts (bundled tasks)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=16, help="prompts per batch (sweeps stream in batches)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(fn=cmd_sweep)

    z = sub.add_parser("zoo", help="bundled models: list, train", epilog=EXAMPLES["zoo"], formatter_class=fmt)
    zs = z.add_subparsers(dest="zoo_cmd", required=True)
    zs.add_parser("list", help="list bundled models")
    zt = zs.add_parser("train", help="reproduce a bundled model from its config (resumable)")
    zt.add_argument("name")
    zt.add_argument("--out", default=None, help="output folder (default: the package's zoo folder)")
    zt.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    zt.add_argument("--max-minutes", type=float, default=None)
    z.set_defaults(fn=cmd_zoo)
    for mod in PLUGINS:  # subcommands owned by other packages (sparse coders, circuits, graphs)
        importlib.import_module(mod).add_parser(sub, fmt)
    return p


PLUGINS = ("circuitlab.models.cli", "circuitlab.sparse.cli", "circuitlab.circuits.cli", "circuitlab.graphs.cli")
"""Modules with ``add_parser(subparsers, formatter_class)``; each sets ``fn`` on its parsers."""


POSITIVE_ARGS = ("n", "batch_size", "steps", "docs", "ctx_len", "top", "max_feature_nodes", "max_minutes")
"""Numeric options of any command that must be > 0 (checked before a command starts)."""
NON_NEGATIVE_ARGS = ("bootstrap", "seed")
"""Numeric options that must be >= 0."""
FRACTION_ARGS = ("threshold", "node_threshold", "edge_threshold")
"""Fractions that must lie in (0, 1]."""
TEXT_ARGS = ("prompt",)
"""Text options that must not be blank."""


def check_args(args: argparse.Namespace) -> None:
    """Range checks shared by every command's options, by option name, before anything runs."""
    for dest in POSITIVE_ARGS + NON_NEGATIVE_ARGS + FRACTION_ARGS + TEXT_ARGS:
        v = getattr(args, dest, None)
        if v is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in TEXT_ARGS:
            if not str(v).strip():
                raise ValueError(f"{flag} is blank; give some text")
        elif dest in FRACTION_ARGS:
            if not 0 < v <= 1:
                raise ValueError(f"{flag} must be a fraction in (0, 1], not {v}")
        elif dest in NON_NEGATIVE_ARGS:
            if not v >= 0:
                raise ValueError(f"{flag} must be >= 0, not {v}")
        elif not v > 0:
            raise ValueError(f"{flag} must be > 0, not {v}")


def _bad_input() -> tuple[type, ...]:
    """Exceptions that mean the input (arguments, files, configs) is wrong, not circuitlab."""
    import json

    kinds: list[type] = [ValueError, KeyError, OSError, json.JSONDecodeError, UnicodeError]
    try:
        import tomllib

        kinds.append(tomllib.TOMLDecodeError)
    except ImportError:  # Python < 3.11
        pass
    return tuple(kinds)


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    lines = [l.strip() for l in str(msg).splitlines() if l.strip()]
    text = "; ".join(lines) or type(e).__name__
    import json

    if isinstance(e, json.JSONDecodeError) and "JSON" not in text:
        text = f"a JSON input file is malformed: {text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for bad input (one line on stderr naming the value and the fix), 1 for
    anything else; ``--debug`` shows the traceback instead of the one line."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        check_args(args)
        args.fn(args)
    except _bad_input() as e:
        if args.debug:
            raise
        print(f"circuitlab {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if args.debug or not isinstance(e.code, str):
            raise
        print(f"circuitlab {args.cmd}: error: {_one_line(e.code)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"circuitlab {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"circuitlab {args.cmd}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
