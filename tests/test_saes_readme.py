"""saes/README's eval table quotes the supervised-dictionary scores in its results files."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
TABLE = (ROOT / "saes" / "README.md").read_text()
RESULTS = ROOT / "benchmarks" / "results"


def _scores() -> dict[str, dict]:
    out = {}
    for model in ("gpt2-zoo", "llama-zoo"):
        for r in json.loads((RESULTS / f"supervised_{model}.json").read_text())["results"]:
            if r["coder"] != "supervised":
                out[r["coder"]] = r["summary"]
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


@pytest.mark.parametrize("coder,summary", sorted(_scores().items()))
def test_supervised_columns_come_from_results(coder, summary):
    rows = [line for line in TABLE.splitlines() if re.match(rf"\| {re.escape(coder)} \|", line)]
    assert len(rows) == 1, f"saes/README should have one table row for {coder}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[-4:] == [_fmt(summary["suff"]), _fmt(summary["s@8"]), _fmt(summary["io@8"]),
                          f"{_fmt(summary['f1_io'])} / {_fmt(summary['f1_s'])}"]


def test_every_shipped_single_site_coder_is_scored():
    shipped = {p.parent.name for p in (ROOT / "circuitlab" / "sparse" / "pretrained").glob("*/*/cfg.json")
               if "crosscoder" not in p.parent.name}
    assert shipped <= set(_scores()), f"not scored: {sorted(shipped - set(_scores()))}"


def test_smollm2_supervised_figures_come_from_results():
    results = json.loads((RESULTS / "supervised_smollm2-135m.json").read_text())["results"]
    coder = {r["coder"]: r["summary"] for r in results if r["coder"] != "supervised"}
    ref = next(r["summary"] for r in results if r["coder"] == "supervised" and r["hook"].startswith("blocks.24."))
    a, b, c = (coder[f"smollm2-135m_resid_L{layer}"] for layer in (8, 16, 24))
    text = " ".join(TABLE.split())
    figures = [f"{_fmt(a['f1_io'])} / {_fmt(a['f1_s'])} for the IO / subject name at layer 8",
               f"{_fmt(b['f1_io'])} / {_fmt(b['f1_s'])} at layer 16", f"keeps {_fmt(ref['sup_suff'])} of the logit",
               f"switches {ref['io_sup']:.0%} of the answers", f"keeps only {_fmt(c['suff'])}",
               f"reproduces {c['s@8']:.0%} of a subject swap's effect", f"edit: {ref['s_sup']:.0%}",
               f"F1 {_fmt(c['f1_io'])} and {_fmt(c['f1_s'])} against {_fmt(ref['f1_io'])} and {_fmt(ref['f1_s'])}"]
    for figure in figures:
        assert figure in text, f"saes/README should quote {figure!r} (from supervised_smollm2-135m.json)"
