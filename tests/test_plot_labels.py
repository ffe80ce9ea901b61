"""Result heatmaps are labelled by the layers and positions the result covers."""

import circuitlab as cl


def test_heatmap_rows_name_the_layers_of_a_layer_subset():
    model = cl.load("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=2)
    r = cl.patch(model, task, "resid_pre", method="atp", layers=[2, 3])
    fig = r.plot()
    heat = fig.data[0]
    assert list(heat.y) == ["L2", "L3"]
    assert list(heat.x)[:2] == ["pos 0", "pos 1"] and len(heat.x) == r.values.shape[1]


def test_heatmap_panels_name_the_layers_of_a_head_result():
    model = cl.load("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=2)
    r = cl.patch(model, task, "heads", method="atp", layers=[1])
    assert r.dims == ("layer", "pos", "head")
    assert [a.text for a in r.plot().layout.annotations] == ["L1"]
