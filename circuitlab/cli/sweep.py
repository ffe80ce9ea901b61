"""``circuitlab sweep``: node attribution sweeps -> safetensors/JSON/CSV + an HTML report."""

from __future__ import annotations

from pathlib import Path

from circuitlab.cli.checks import check_out_arg, check_task_arg, parse_names, parse_positions

EXAMPLES = """examples:
  circuitlab sweep --task ioi --sites heads,mlp_out --method exact --out runs/ioi
  torchrun --nproc_per_node 2 -m circuitlab.cli sweep --task ioi --sites heads --method atp* --out runs/ddp
  circuitlab sweep --model gpt2-zoo --task pairs.jsonl --sites resid_pre --method exact,atp* \\
      --out runs/x
  circuitlab sweep --task ioi --sites heads --positions S1,IO,S2,END \\
      --method exact,ig:steps=32,variant=activations --out runs/roles"""


def _method_help() -> str:
    """Each node method with its options, for ``sweep --help``."""
    from circuitlab.api import METHODS

    return "; ".join(f"{m.name} ({', '.join(m.option_names)})" for m in METHODS.values())


def add_parser(sub, fmt) -> None:
    s = sub.add_parser("sweep", help="node attribution sweeps -> safetensors/JSON/CSV + HTML", epilog=EXAMPLES,
                       formatter_class=fmt)
    s.add_argument("--model", default=None)
    s.add_argument("--task", required=True, help="bundled task name or JSONL of {clean, corrupt, answer, wrong}")
    s.add_argument("--sites", default="resid_pre",
                   help="comma-separated: resid_pre, attn_out, mlp_out, heads, heads_all, q, k, v, ...")
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
    s.set_defaults(fn=run)


def _stem(sites: str, name: str, options: dict, direction: str) -> str:
    """Output file stem of one sweep: sites, method (with its options) and direction."""
    from circuitlab.methods.registry import option_text

    opts = "".join(f"_{k}-{option_text(v)}" for k, v in options.items())
    return f"{sites}_{name.replace('*', 'star')}{opts}_{direction}"


def run(a) -> None:
    from circuitlab.api import METHODS, check_sites
    from circuitlab.methods.grid import SITE_SPECS
    from circuitlab.methods.registry import parse_specs, spec_label
    from circuitlab.resolve import load_model, load_task
    from circuitlab.sweep import distributed_info, sweep
    from circuitlab.validate import check_positive_int
    from circuitlab.viz.report import Report

    # every argument is checked before the model loads and the first sweep runs
    check_positive_int("--batch-size", a.batch_size)
    check_positive_int("--n", a.n)
    site_list = parse_names("sites", a.sites, SITE_SPECS)
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
        crow = _agreement(results, site_list, specs)
        report.add("Agreement", "Correlation of each estimate with the reference.", crow)
        _write_table(out / "comparison.csv", crow)
    report.add("Runs", "Cost of each sweep.", rows)
    _write_table(out / "summary.csv", rows)
    report.save(out / "report.html")
    for r in rows:
        print("  ".join(str(c) if not isinstance(c, float) else f"{c:.4g}" for c in r))
    print(f"wrote {out}/")


def _agreement(results: dict, site_list: list[str], specs: dict) -> list[list]:
    """Each method's agreement with the reference (exact when swept, else the first method)."""
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
    return crow


def _write_table(path: Path, rows) -> None:
    import csv

    from circuitlab.io import atomic_write

    def w(p):
        with open(p, "w", newline="") as f:
            csv.writer(f).writerows(rows)

    atomic_write(path, w)
