"""Every HTML page circuitlab writes, rendered with hostile labels, prompts and token strings.

A page is safe when the hostile text shows up only escaped: parsing the page finds no element
or attribute the text would have injected, the same number of <script> elements as a page
built from plain text, and the data inlined for the click handler reads back as exactly the
hostile strings. Pages load no script from the network.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import torch

from circuitlab.graphs.graph import Graph

HOSTILE = [
    "</script><script>window.__pwned=1;document.title='pwned'</script>",
    "<img src=x onerror=window.__pwned=2>",
    "\"double\" and 'single' quotes",
    "--><!-- comment break",
    "line\u2028separator\u2029paragraph",
    "<!--<script>",
    "&amp; &lt;b&gt; already escaped",
]
PLAIN = [f"plain{i}" for i in range(len(HOSTILE))]
INJECTED = ["<script>window.__pwned", "<img src=x", "<!--<script>"]


class Tags(HTMLParser):
    """Start tags, their attributes, and the text of every <script> element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(page: str) -> Tags:
    t = Tags()
    t.feed(page)
    t.close()
    return t


def assert_safe(page: str, plain_page: str | None = None) -> Tags:
    """No injected markup survives; with a plain twin, the element structure is the same."""
    t = parse(page)
    for tag, attrs in t.tags:
        assert tag != "img", "an <img> from the data became an element"
        assert not any(a.startswith("on") for a in attrs), f"<{tag}> got an event handler {attrs}"
    for s in t.scripts:
        assert "\u2028" not in s and "\u2029" not in s and "<!--" not in s
        assert not s.lstrip().startswith("window.__pwned"), "the hostile script became a script element"
    body = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)  # outside scripts: only escaped text
    for bad in INJECTED:
        assert bad not in body, f"unescaped {bad!r} in the markup"
    if plain_page is not None:
        p = parse(plain_page)
        assert [tag for tag, _ in t.tags] == [tag for tag, _ in p.tags]
    assert_offline(t)
    return t


def assert_offline(t: Tags, folder: Path | None = None) -> None:
    for tag, attrs in t.tags:
        src = attrs.get("src") or ""
        if tag == "script" and src:
            assert not re.match(r"^(https?:)?//", src), f"script loaded from the network: {src}"
            if folder is not None:
                assert (folder / src).is_file(), f"{src} is not beside the page"


def page_file(path: Path, plain: Path | None = None) -> Tags:
    t = assert_safe(path.read_text(encoding="utf-8"), plain.read_text(encoding="utf-8") if plain else None)
    assert_offline(t, path.parent)
    return t


# ---------------------------------------------------------------------------- graphs

def make_graph(words: list[str]) -> Graph:
    """A two-layer graph over three positions with two features, by hand: every string hostile."""
    T, L, K = 3, 2, 1
    active = torch.tensor([[0, 1, 5], [1, 2, 7]])
    n_feat = 2
    N = n_feat + L * T + T + K
    A = torch.zeros(N, N)
    tok0 = n_feat + L * T
    logit = tok0 + T
    A[0, tok0 + 1] = 1.0  # token 1 -> feature 0 -> feature 1 -> logit
    A[1, 0] = 0.8
    A[logit, 1] = 1.5
    A[logit, tok0 + 2] = 0.2
    g = Graph(prompt=words[0], tokens=torch.tensor([0, 1, 2]), token_strs=[words[1], words[2], words[3]], n_layers=L,
              active_features=active, activations=torch.tensor([1.0, 2.0]), selected=torch.tensor([0, 1]),
              logit_tokens=torch.tensor([3]), logit_strs=[words[4]], logit_probs=torch.tensor([0.9]),
              adjacency=A, bias=torch.zeros(N), preact=torch.zeros(N), scan=words[5], model_name=words[6])
    g.meta["labels"] = {g.node_id(0): words[0], g.node_id(1): words[1]}
    return g


def graph_page_of(words):
    from circuitlab.graphs.page import graph_page
    from circuitlab.graphs.prune import prune, scores

    g = make_graph(words)
    pr = prune(g)
    sc = [scores(g)]
    sc[0].graph = words[2]
    return g, graph_page(g, pruned=pr, supernodes=[(words[0], [0]), (words[1], [1])],
                         top_tokens={g.node_id(0): [words[3], words[4]]}, scores=sc)


def inlined_data(page: str) -> dict:
    """The click handler's data, as the browser's JSON.parse reads it."""
    t = parse(page)
    k = [i for i, (tag, a) in enumerate(t.tags) if tag == "script" and a.get("id") == "graph-data"]
    assert len(k) == 1, "the click handler's data is missing"
    n = sum(1 for tag, _ in t.tags[:k[0]] if tag == "script")
    return json.loads(t.scripts[n])


def test_graph_page_escapes_labels_tokens_and_supernodes():
    g, page = graph_page_of(HOSTILE)
    _, plain = graph_page_of(PLAIN)
    assert_safe(page, plain)
    data = inlined_data(page)  # the data still round-trips: JSON.parse sees the exact strings
    assert data["labels"][:2] == [HOSTILE[0], HOSTILE[1]]
    assert [x["label"] for x in data["groups"]] == [HOSTILE[0], HOSTILE[1]]
    assert data["ids"][0] == g.node_id(0)
    assert "<h2>" + "&lt;/script&gt;" in page  # the prompt heading shows the text, escaped


def test_graph_page_file_is_self_contained(tmp_path):
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.prune import prune

    g = make_graph(HOSTILE)
    path = write_page(g, tmp_path / "graph.html", pruned=prune(g), supernodes=[(HOSTILE[0], [0])])
    t = page_file(path)
    assert not any(a.get("src") for tag, a in t.tags if tag == "script")  # plotly.js inlined


def test_probe_command_with_hostile_concept_label(gpt2, tiny_dir, tmp_path):
    from circuitlab.cli import main
    from circuitlab.graphs.fit import FitConfig, fit_transcoders
    from circuitlab.graphs.transcoders import save_transcoders

    train = ["the capital of France is Paris", "the capital of Spain is Madrid", "Mary went to Paris"]
    tc_dir = save_transcoders(fit_transcoders(gpt2, train, FitConfig(n_features=32, steps=60)), tmp_path / "tc")
    pages = {}
    for name, label in (("hostile", HOSTILE[0]), ("plain", "France")):
        concepts = [{"label": label, "category": "entity", "probes": ["France is in", "Mary went to France"]},
                    {"label": HOSTILE[1] if name == "hostile" else "capital", "category": "relationship",
                     "probes": ["the capital of Spain is", "a capital"]}]
        (tmp_path / f"{name}.json").write_text(json.dumps(concepts))
        out = tmp_path / name
        assert main(["probe", "--model", str(tiny_dir("gpt2")), "--transcoders", str(tc_dir), "--prompt",
                     "the capital of France is", "--concepts", str(tmp_path / f"{name}.json"),
                     "--max-feature-nodes", "40", "--out", str(out)]) == 0
        pages[name] = out / "probe.html"
    page_file(pages["hostile"])
    data = inlined_data(pages["hostile"].read_text(encoding="utf-8"))
    labels = {g["label"] for g in data["groups"]}
    # the hostile concept labels arrive intact (escaped in the page, exact in its data); any other
    # supernode is the prediction's own "Say ..." node, whichever ones the quick transcoders produce
    assert labels & {HOSTILE[0], HOSTILE[1]}
    assert all(label in HOSTILE[:2] or label.startswith("Say ") for label in labels)


# ---------------------------------------------------------------------------- reports

def hostile_result(words):
    from circuitlab.result import Result

    return Result(torch.tensor([0.5, -1.0, 2.0]), words[:3], ("node",), words[3], words[4], "denoising", words[5], 0.0)


def report_of(words):
    from circuitlab.viz.report import Report

    rep = Report(words[0])
    rep.add(words[1], words[2], hostile_result(words).plot(), [[words[3], "v"], [words[4], 1.5]], words[5])
    return rep.html()


def test_report_escapes_headings_text_tables_and_plain_string_items():
    page = report_of(HOSTILE)
    assert_safe(page, report_of(PLAIN))
    assert "<p>" + "&lt;!--&lt;script&gt;" in page  # a plain string item is text, not markup


def test_report_keeps_markup_built_by_circuitlab():
    from circuitlab.sparse.dashboard import Context, LatentCard, card_html
    from circuitlab.viz.report import Report

    card = LatentCard(3, 0.1, 2.0, [Context(HOSTILE[:3], 1, 2.0)], [(HOSTILE[1], 1.0)], [(HOSTILE[0], -1.0)])
    rep = Report("cards")
    rep.add("latents", "top contexts", card_html(card))
    page = rep.html()
    assert_safe(page)
    assert '<b style="background:#f9c74f">' in page and "<table>" in page


def test_sweep_report_with_hostile_task_file(gpt2, tiny_dir, tmp_path, ioi_pairs):
    """`circuitlab sweep` on a task file whose name and prompts are hostile."""
    from circuitlab.cli import main

    task = tmp_path / "<img src=x onerror=alert(1)>.jsonl"
    task.write_text("".join(json.dumps(p) + "\n" for p in ioi_pairs[:4]))
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(tiny_dir("gpt2")), "--task", str(task), "--method", "atp", "--sites",
                 "heads", "--out", str(out)]) == 0
    page_file(out / "report.html")


# ---------------------------------------------------------------------------- dashboards, circuits, evals

def dashboard_of(words, path):
    from circuitlab.sparse.dashboard import Context, LatentCard, save_dashboard

    cards = [LatentCard(i, 0.01, 3.0, [Context(list(words[:4]), 2, 3.0)], [(w, 1.0) for w in words[:3]],
                        [(w, -1.0) for w in words[3:6]]) for i in range(2)]
    save_dashboard(cards, path, title=words[6])
    return path


def test_dashboard_escapes_tokens_and_bundles_plotly(tmp_path):
    page = dashboard_of(HOSTILE, tmp_path / "h" / "latents.html")
    plain = dashboard_of(PLAIN, tmp_path / "p" / "latents.html")
    t = page_file(page, plain)
    assert any(a.get("src") == "plotly.min.js" for tag, a in t.tags if tag == "script")
    assert (page.parent / "plotly.min.js").stat().st_size > 1_000_000


def test_circuit_pages_work_offline(tmp_path):
    from circuitlab.circuits.circuit import Circuit
    from circuitlab.circuits.viz import circuit_figure, write_figure

    c = Circuit("edges", {"embed->L0.H1", "L0.H1->L1.H0.q", "L1.H0->logits"})
    fig = circuit_figure(c, 2, 2, title=HOSTILE[0])
    path = write_figure(fig, tmp_path / "circuit.html")
    t = page_file(path)
    assert [a.get("src") for tag, a in t.tags if tag == "script" and a.get("src")] == ["plotly.min.js"]
    assert "&lt;/script&gt;" in path.read_text()  # the <title> shows the figure title, escaped


def test_circuit_command_pages_work_offline(tiny_dir, tmp_path, ioi_pairs):
    from circuitlab.cli import main

    task = tmp_path / "pairs.jsonl"
    task.write_text("".join(json.dumps(p) + "\n" for p in ioi_pairs[:4]))
    out = tmp_path / "c"
    assert main(["circuit", "--model", str(tiny_dir("gpt2")), "--task", str(task), "--method", "eap",
                 "--bootstrap", "10", "--out", str(out)]) == 0
    for name in ("faithfulness.html", "circuit.html", "report.html"):
        page_file(out / name)


def test_loss_curve_page_works_offline(tmp_path):
    from circuitlab.zoo.card import _write_plotly

    folder = tmp_path / "<img src=x onerror=alert(1)>"
    folder.mkdir()
    _write_plotly(folder, [[0, 0, 5.0], [1, 1000, 3.0], [2, 2000, 2.0]])
    page_file(folder / "loss_curve.html")


def test_script_json_escapes_and_round_trips():
    from circuitlab.webpage import script_json

    obj = {"labels": HOSTILE, "n": [1, 2.5, None]}
    s = script_json(obj)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in s
    assert json.loads(s) == obj


# ---------------------------------------------------------------------------- in a real browser

def test_hostile_pages_run_no_injected_script_in_chromium(tmp_path):
    """Graph/probe page, report and dashboard with hostile strings, opened in headless chromium:
    the page's own scripts run (plots drawn, click handler ready) and no injected one does."""
    import time

    from browser import console_errors, driver
    from circuitlab.graphs.page import write_page
    from circuitlab.graphs.prune import prune
    from circuitlab.viz.report import Report

    g = make_graph(HOSTILE)
    graph_html = write_page(g, tmp_path / "probe.html", pruned=prune(g),
                            supernodes=[(HOSTILE[0], [0]), (HOSTILE[1], [1])], top_tokens={g.node_id(0): HOSTILE[:2]})
    rep = Report(HOSTILE[0])
    rep.add(HOSTILE[1], HOSTILE[0], hostile_result(HOSTILE).plot(), [[HOSTILE[0], HOSTILE[1]], [HOSTILE[2], 1.0]],
            HOSTILE[5])
    report_html = rep.save(tmp_path / "report.html")
    dash_html = dashboard_of(HOSTILE, tmp_path / "dash" / "latents.html")
    d = driver()
    try:
        for path, n_plots in ((graph_html, 1), (report_html, 1), (dash_html, 2)):
            d.get(path.resolve().as_uri())
            for _ in range(50):
                if d.execute_script("return document.querySelectorAll('.js-plotly-plot .main-svg').length") >= n_plots:
                    break
                time.sleep(0.1)
            assert d.execute_script("return window.__pwned === undefined"), f"an injected script ran in {path.name}"
            assert d.title != "pwned"
            assert d.execute_script("return document.querySelectorAll('img').length") == 0
            assert d.execute_script("return document.querySelectorAll('.js-plotly-plot').length") == n_plots, path.name
            assert console_errors(d) == [], path.name
        d.get(graph_html.resolve().as_uri())
        for _ in range(50):
            if d.execute_script("return document.getElementById('graph').getAttribute('data-ready')") == "1":
                break
            time.sleep(0.1)
        d.execute_script(f"window.circuitlabHighlight({json.dumps(g.node_id(0))})")
        assert d.execute_script("return window.circuitlab.clicked") == g.node_id(0)
        shown = d.execute_script("return document.getElementById('selection').textContent")
        assert HOSTILE[0] in shown  # the label is shown as text, exactly
        assert d.execute_script("return window.__pwned === undefined")
    finally:
        d.quit()
