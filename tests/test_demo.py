"""`circuitlab demo` end to end on the bundled GPT-2, and its report in a real headless browser."""

import json
import time

import pytest

from browser import console_errors, driver, screenshot
from circuitlab.cli.demo.report import run_demo

SECTIONS = ["Head detectors", "direct logit attribution and logit lens", "exact activation patching",
            "attention of the top heads", "fast estimators against exact patching",
            "sparse-autoencoder latents at the answer position", "attribution graph on transcoders"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(model="gpt2-zoo", out=out, n=12)
    return out


def test_demo_writes_report_and_results(demo_dir):
    html = (demo_dir / "report.html").read_text()
    summary = json.loads((demo_dir / "summary.json").read_text())
    tasks = list(summary["tasks"])
    assert len(tasks) == 2 and tasks[0] == "ioi" and tasks[1].startswith("capitals")
    for task in tasks:
        for section in SECTIONS[1:]:
            assert f"{task}: {section}" in html, f"missing section {task}: {section}"
    assert "Head detectors" in html
    ioi = summary["tasks"]["ioi"]
    assert ioi["logit_diff"] > 1.0  # the trained zoo model solves IOI
    assert abs(ioi["dla_total"] - ioi["logit_diff"]) < 1e-3 * max(1.0, abs(ioi["logit_diff"]))
    methods = {row[0]: row for row in ioi["agreement"]}
    assert {"atp*", "relp", "atp"} <= set(methods)
    assert methods["atp*"][1] > 0.8  # Pearson of AtP* with exact patching over all heads
    assert set(summary["head_kinds"]) == {"previous_token", "duplicate_token", "induction", "copying"}
    for stem in ("exact_resid_pre", "exact_heads_all"):
        assert list(demo_dir.glob(f"ioi_{stem}*")), f"raw result ioi_{stem} not saved"


def test_demo_report_renders_in_browser(demo_dir):
    html = (demo_dir / "report.html").read_text()
    n_figures = html.count('class="plotly-graph-div"')
    assert n_figures >= 2 * 6 + 1
    d = driver()
    try:
        d.get((demo_dir / "report.html").resolve().as_uri())
        rendered = 0
        for _ in range(40):  # plotly renders every figure after load; wait for the last one
            rendered = d.execute_script(
                "return [...document.querySelectorAll('.js-plotly-plot')]"
                ".filter(e => e.querySelector('.main-svg')).length")
            if rendered == n_figures:
                break
            time.sleep(0.25)
        assert rendered == n_figures, f"{rendered} of {n_figures} figures rendered"
        assert console_errors(d) == []
        screenshot(d, "demo_report.png")
    finally:
        d.quit()
