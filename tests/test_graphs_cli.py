"""`circuitlab graph` and `circuitlab probe` end to end on a tiny model with saved transcoders."""

from __future__ import annotations

import json

from circuitlab.cli import main
from circuitlab.graphs.export import check_schema
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.graph import Graph
from circuitlab.graphs.transcoders import save_transcoders

TRAIN = ["the capital of France is Paris", "the capital of Spain is Madrid", "Mary went to Paris",
         "John went to Madrid , then to the park"]


def test_graph_and_probe_commands(gpt2, tiny_dir, tmp_path, capsys):
    tc_dir = save_transcoders(fit_transcoders(gpt2, TRAIN, FitConfig(n_features=32, steps=80)), tmp_path / "tc")
    model = str(tiny_dir("gpt2"))
    out = tmp_path / "g"
    assert main(["graph", "--model", model, "--transcoders", str(tc_dir), "--prompt", "the capital of France is",
                 "--target", "Paris", "--max-feature-nodes", "40", "--out", str(out), "--slug", "tiny"]) == 0
    check_schema(json.loads((out / "tiny.json").read_text()))
    assert (out / "graph.html").exists() and Graph.load(out / "graph").n_features == 40
    assert "pruned" in capsys.readouterr().out
    concepts = [{"label": "France", "category": "entity", "probes": ["France is in", "Mary went to France"]},
                {"label": "capital", "category": "relationship", "probes": ["the capital of Spain is", "a capital"]}]
    (tmp_path / "c.json").write_text(json.dumps(concepts))
    out2 = tmp_path / "p"
    assert main(["probe", "--model", model, "--transcoders", str(tc_dir), "--prompt", "the capital of France is",
                 "--concepts", str(tmp_path / "c.json"), "--swap", "the capital of Spain is",
                 "--max-feature-nodes", "40", "--out", str(out2)]) == 0
    res = json.loads((out2 / "probe.json").read_text())
    assert set(res["coherence"]) == {"probe prompting", "cosine clustering", "layer+influence clustering"}
    graph_json = json.loads((out2 / "probe-graph.json").read_text())
    check_schema(graph_json)
    assert len(graph_json["qParams"]["supernodes"]) >= 1
    assert "| probe prompting |" in capsys.readouterr().out
    # bad input: clean errors, exit 2
    assert main(["graph", "--model", model, "--prompt", "x", "--out", str(tmp_path / "e")]) == 2
    assert main(["graph", "--model", model, "--transcoders", str(tc_dir), "--prompt", "x", "--node-threshold", "2",
                 "--out", str(tmp_path / "e")]) == 2
    assert main(["probe", "--model", model, "--transcoders", str(tmp_path / "nope"), "--prompt", "x",
                 "--out", str(tmp_path / "e")]) == 2


def test_demo_section_only_with_transcoders(gpt2, tmp_path, monkeypatch):
    import circuitlab as cl
    from circuitlab.graphs import transcoders as tmod
    from circuitlab.cli.demo.graphs import demo_section
    from circuitlab.viz.report import Report

    task = cl.tasks.from_pairs(gpt2, [{"clean": "the capital of France is", "corrupt": "the capital of Spain is",
                                       "answer": " Paris", "wrong": " Madrid"}])
    report, summary = Report("t"), {}
    monkeypatch.setattr(tmod, "find_transcoders", lambda name, roots=(): None)
    demo_section(gpt2, task, report, tmp_path, "capitals", summary)
    assert [title for title, *_ in report.sections] == ["capitals: attribution graph (skipped)"]
    assert "circuitlab train" in report.sections[0][1] and summary == {}
    report = Report("t")
    tc_dir = save_transcoders(fit_transcoders(gpt2, TRAIN, FitConfig(n_features=32, steps=60)), tmp_path / "tc")
    monkeypatch.setattr(tmod, "find_transcoders", lambda name, roots=(): tc_dir)
    demo_section(gpt2, task, report, tmp_path, "capitals", summary)
    assert len(report.sections) == 1 and "capitals_graph" in summary
    assert (tmp_path / "capitals_graph.html").exists() and (tmp_path / "capitals_graph.json").exists()
