"""``circuitlab demo``: the analysis a researcher would run first, as one HTML report."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm


def run_demo(model: Optional[str] = None, task: str = "ioi", out: str | Path = "circuitlab_demo", n: int = 32) -> Path:
    import circuitlab as cl
    from circuitlab.cli import _load_model, _task
    from circuitlab.viz.report import Report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=4, desc="demo")
    t0 = time.perf_counter()
    m = _load_model(model)
    t = _task(m, task, n, 0)
    steps.update(1)
    report = Report(f"circuitlab demo: {m.name} · {t.name}")
    report.add("Model and task", f"{m!r}. Task {t.name}: {len(t)} prompt pairs, metric {t.metric.name}.",
               [["prompt", "clean", "corrupt", "answer", "wrong"]] +
               [[i, r["clean"], r["corrupt"], r["answer"], r["wrong"]] for i, r in enumerate(t.prompts[:5])])
    summary = {}
    for sites, text in [("resid_pre", "Exact denoising patching of the residual stream at each layer and position: "
                         "where the information that decides the answer sits."),
                        ("heads_all", "Exact denoising patching of each attention head's output (all positions): "
                         "which heads carry the behaviour.")]:
        r = cl.patch(m, t, sites, method="exact", progress=False)
        r.save(out / f"exact_{sites}")
        report.add(f"Exact patching: {sites}", text, r.plot(),
                   [["node", "effect"]] + [[l, v] for l, v in r.top(8)])
        summary[sites] = {"top": r.top(5), "seconds": r.cost.seconds, "baseline": r.baseline}
        steps.update(1)
    path = report.save(out / "report.html")
    (out / "summary.json").write_text(json.dumps({"model": m.name, "task": t.name, "seconds": time.perf_counter() - t0,
                                                  "results": summary}, indent=1))
    steps.update(1)
    steps.close()
    return path
