"""Graph JSON export (Neuronpedia / circuit-tracer schema 1) and the interactive page in headless chromium."""

from __future__ import annotations

import json
import time

import pytest

from circuitlab.graphs.attribute import GraphConfig, attribute
from circuitlab.graphs.export import check_schema, to_neuronpedia, write_neuronpedia
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.page import page_nodes, write_page
from circuitlab.graphs.prune import prune, scores

PROMPTS = ["when Mary and John went to the store , John gave a drink to",
           "then Tom and Anna went to the park , Anna gave a book to"]


@pytest.fixture(scope="module")
def graph(gpt2):
    tcs = fit_transcoders(gpt2, PROMPTS, FitConfig(n_features=48, steps=120))
    return attribute(gpt2, tcs, "when Mary and John went to the store , John gave",
                     cfg=GraphConfig(max_feature_nodes=60, batch_size=30))


def test_neuronpedia_json(graph, tmp_path):
    pr = prune(graph)
    feats = pr.kept_features(graph)
    sn = [["first", graph.node_id(feats[0]), graph.node_id(feats[1])]]
    path = write_neuronpedia(graph, tmp_path, "tiny-graph", pruned=pr, supernodes=sn)
    data = json.loads(path.read_text())
    check_schema(data)
    assert data["metadata"]["schema_version"] == 1 and data["metadata"]["slug"] == "tiny-graph"
    kinds = {n["feature_type"] for n in data["nodes"]}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    ids = {n["node_id"] for n in data["nodes"]}
    L, T = graph.n_layers, graph.n_pos
    for p in range(T):  # every token is kept
        assert f"E_{int(graph.tokens[p])}_{p}" in ids
    for j in range(graph.n_logits):
        assert f"{L + 1}_{int(graph.logit_tokens[j])}_{T - 1}" in ids
    for n in data["nodes"]:
        if n["feature_type"] == "cross layer transcoder":
            layer, feat, pos = (int(v) for v in n["node_id"].split("_"))
            assert graph.find_feature(layer, pos, feat) is not None and n["layer"] == str(layer)
        if n["feature_type"] == "mlp reconstruction error":
            assert n["node_id"].startswith("0_") and n["feature"] == -1
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    assert data["qParams"]["supernodes"] == sn
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["tiny-graph"]
    with pytest.raises(ValueError):
        to_neuronpedia(graph, "x", pruned=pr, max_nodes=3)


def test_page_in_browser(graph, tmp_path):
    from browser import console_errors, driver, screenshot

    pr = prune(graph)
    nodes, edges = page_nodes(graph, pr)
    feats = [i for i in nodes if graph.kind(i) == "feature"]
    tops = {graph.node_id(i): ["Mary", "John"] for i in feats}
    path = write_page(graph, tmp_path / "graph.html", pruned=pr, supernodes=[("group A", feats[:2])], top_tokens=tops,
                      scores=[scores(graph)])
    text = path.read_text()
    assert "<script src=" not in text.replace("<script src=\"data:", "")  # self-contained
    d = driver()
    try:
        d.get(path.resolve().as_uri())
        for _ in range(50):
            if d.execute_script("return document.getElementById('graph').getAttribute('data-ready')") == "1":
                break
            time.sleep(0.1)
        n = d.execute_script("return document.getElementById('graph').data[2].x.length")
        assert n == len(nodes)
        assert (
            d.execute_script("return document.getElementById('graph').data.length") == 4
        )  # edges, path, nodes, 1 group
        # click the highest-influence feature node on screen
        target = max(feats, key=lambda i: float(pr.node_influence[i]))
        k = nodes.index(target)
        traces = d.find_elements("css selector", "#graph .scatterlayer .trace")  # empty traces are not drawn
        counts = [len(t.find_elements("css selector", ".points path")) for t in traces]
        pts = traces[counts.index(len(nodes))].find_elements("css selector", ".points path")
        assert len(pts) == len(nodes)
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(d).move_to_element(pts[k]).click().perform()
        time.sleep(0.5)
        clicked = d.execute_script("return document.getElementById('graph').getAttribute('data-clicked')")
        assert clicked is not None, "the click did not reach the node"
        k = nodes.index(next(i for i in nodes if graph.node_id(i) == clicked))
        script = "return document.getElementById('graph').getAttribute('data-highlighted')"
        on = set(json.loads(d.execute_script(script)))
        # expected: the node, its ancestors and its descendants through kept edges
        up, down = {}, {}
        for s, t, _ in edges:
            down.setdefault(s, []).append(t)
            up.setdefault(t, []).append(s)

        def reach(v, nbr):
            seen, stack = {v}, [v]
            while stack:
                for u in nbr.get(stack.pop(), []):
                    if u not in seen:
                        seen.add(u)
                        stack.append(u)
            return seen

        want = {graph.node_id(i) for i in reach(nodes[k], up) | reach(nodes[k], down)}
        assert on == want and len(on) > 1
        n_hl = d.execute_script("return document.getElementById('graph').data[1].x.length")
        assert n_hl > 0  # highlighted edges drawn
        assert d.execute_script("return window.circuitlab.clicked") == clicked
        assert console_errors(d) == []
        screenshot(d, "graph_page.png")
    finally:
        d.quit()
