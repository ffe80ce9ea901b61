"""``circuitlab demo``: the analysis a researcher would run first, as one HTML report.

The report itself is built by :mod:`circuitlab.cli.demo.report`, with a section from the sparse
coders (:mod:`.sparse`) and one from the attribution graphs (:mod:`.graphs`).
"""

from __future__ import annotations

from circuitlab.cli.checks import check_out_arg, check_task_arg

EXAMPLES = """examples:
  circuitlab demo
  circuitlab demo --model smollm2-135m --n 16
  circuitlab demo --model gpt2-zoo --task capitals --out my_report"""


def add_parser(sub, fmt) -> None:
    d = sub.add_parser("demo", help="full analysis of a model -> HTML report", epilog=EXAMPLES, formatter_class=fmt)
    d.add_argument("--model", default=None, help="fetched model, zoo name, HF folder or hub id (default: smollm2-135m "
                   "when fetched, else the bundled GPT-2)")
    d.add_argument("--task", default=None, help="bundled task (ioi, capitals, greater_than, induction) or JSONL "
                   "(default: ioi and capitals)")
    d.add_argument("--out", default="circuitlab_demo", help="output folder")
    d.add_argument("--n", type=int, default=32, help="prompts per task")
    d.set_defaults(fn=run)


def run(a) -> None:
    from circuitlab.cli.demo.report import run_demo
    from circuitlab.validate import check_positive_int

    check_positive_int("--n", a.n)
    if a.task is not None:
        check_task_arg(a.task)
    check_out_arg(a.out)

    path = run_demo(model=a.model, task=a.task, out=a.out, n=a.n)
    print(f"report: {path}")
