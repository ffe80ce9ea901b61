"""The demo report, opened in a real headless browser."""

import time


import circuitlab as cl
from browser import console_errors, driver, screenshot
from circuitlab.viz.report import Report


def test_report_renders_every_figure(gpt2, ioi_pairs, tmp_path):
    task = cl.tasks.from_pairs(gpt2, ioi_pairs)
    report = Report("browser check")
    report.add("patching", "exact patching", cl.patch(gpt2, task, "resid_pre", progress=False).plot(),
               cl.patch(gpt2, task, "heads", progress=False).plot())
    report.add("dla", "dla", cl.dla(gpt2, task, by="head").plot(), [["a", "b"], [1, 2.5]])
    path = report.save(tmp_path / "report.html")
    d = driver()
    try:
        d.get(path.resolve().as_uri())
        time.sleep(1.0)
        n_plots = d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length")
        n_divs = d.execute_script("return document.querySelectorAll('.js-plotly-plot').length")
        assert n_divs == 3 and n_plots >= 3
        assert console_errors(d) == []
        screenshot(d, "report_small.png")
    finally:
        d.quit()
