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
