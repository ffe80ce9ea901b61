"""Linear probes: planted linear labels vs random labels, control-task selectivity, splits and
seeds, bad input, and a country probe on the zoo GPT-2."""

import pytest
import torch

from circuitlab.methods.probes import (ProbeConfig, control_labels, layer_curve, probe_dataset, probe_layers,
                                       selectivity, split_indices, train_probe, ProbeDataset)

CFG = ProbeConfig(max_iter=50, weight_decays=(1e-3, 1e-1))  # small problems: a short fit is enough


def _planted(n=300, d=16, k=3, seed=0):
    """Labels planted along k random directions with a margin: linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    centres = torch.randn(k, d, generator=g)
    x = torch.randn(n, d, generator=g) + 4 * centres[y]
    return x * 3 + 5, y.tolist()  # offset and scale: the probe must standardise


def test_planted_linear_label_is_found_and_random_labels_are_not():
    x, y = _planted()
    p = train_probe(x, y, CFG)
    assert p.accuracy["test"] >= 0.98 and p.accuracy["train"] >= 0.98
    got = p.predict(x[p.split["test"]])
    assert sum(a == y[int(i)] for a, i in zip(got, p.split["test"])) / len(got) == p.accuracy["test"]
    # the returned weights act on raw activations
    pred = [p.classes[int(c)] for c in (x @ p.weight + p.bias).argmax(-1)]
    assert pred == p.predict(x) and sum(a == b for a, b in zip(pred, y)) >= 0.98 * len(y)

    rnd = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    q = train_probe(x, rnd, CFG)
    assert q.accuracy["test"] < 0.55  # chance is 1/3; 60 test examples
    assert set(q.val_accuracy_by_decay) == set(CFG.weight_decays)


def test_string_labels_and_classes():
    x, y = _planted(k=2)
    names = ["yes" if v else "no" for v in y]
    p = train_probe(x, names, CFG)
    assert sorted(p.classes) == ["no", "yes"] and p.accuracy["test"] >= 0.95
    assert p.weight.shape == (16, 2) and p.bias.shape == (2,)


def _typed(n_types=20, per_type=15, d=32, seed=0):
    """Each example is its type's embedding plus noise: identity is linearly decodable."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_types, d, generator=g)
    types = [t for t in range(n_types) for _ in range(per_type)]
    x = emb[types] + 0.1 * torch.randn(len(types), d, generator=g)
    return x, types


def test_control_labels_fixed_per_type_with_real_classes():
    types = ["a", "b", "a", "c", "d", "b", "e", "f"]
    labels = [0, 1, 0, 1, 0, 1, 2, 2]
    ctrl = control_labels(types, labels, seed=3)
    assert ctrl[0] == ctrl[2] and ctrl[1] == ctrl[5]
    per_type = {t: c for t, c in zip(types, ctrl)}
    assert sorted(per_type.values()) == sorted({t: l for t, l in zip(types, labels)}.values())
    assert control_labels(types, labels, seed=3) == ctrl


def test_selectivity_near_zero_when_label_is_a_function_of_identity():
    x, types = _typed()
    s = selectivity(x, [t % 4 for t in types], types, CFG)
    assert s.real.accuracy["test"] >= 0.95 and s.control.accuracy["test"] >= 0.95
    assert abs(s.selectivity) < 0.1


def test_selectivity_high_when_label_is_not_about_identity():
    """Types carry no information here; the label is a planted direction of the noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    types = torch.randint(0, 30, (300,), generator=g).tolist()
    labels = (x[:, 0] > 0).long().tolist()
    x[:, 0] += 2 * x[:, 0].sign()  # a margin
    s = selectivity(x, labels, types, CFG)
    assert s.real.accuracy["test"] >= 0.95
    assert s.control.accuracy["test"] <= s.control.chance + 0.1 and s.selectivity > 0.2


def test_split_sizes_and_seed_determinism():
    s = split_indices(50, ProbeConfig(val_frac=0.2, test_frac=0.3, seed=4))
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (25, 10, 15)
    assert sorted(torch.cat(list(s.values())).tolist()) == list(range(50))
    x, y = _planted()
    a, b = train_probe(x, y, CFG), train_probe(x, y, CFG)
    assert all(torch.equal(a.split[k], b.split[k]) for k in a.split)
    torch.testing.assert_close(a.weight, b.weight)
    c = train_probe(x, y, ProbeConfig(max_iter=50, weight_decays=(1e-3, 1e-1), seed=1))
    assert not torch.equal(a.split["test"], c.split["test"])


def test_layer_curve_and_figure_on_synthetic_layers():
    x, types = _typed()
    noise = torch.randn(2, *x.shape, generator=torch.Generator().manual_seed(5))
    acts = torch.stack([noise[0], x, noise[1]])  # only layer 1 carries the types
    data = ProbeDataset(acts, [t % 4 for t in types], [0, 1, 2], "resid_post", -1, types)
    r = layer_curve(data, CFG)
    assert r.test_accuracy[1] >= 0.95 and r.test_accuracy[0] < 0.5 and r.test_accuracy[2] < 0.5
    assert abs(r.selectivity[1]) < 0.1
    fig = r.figure()
    assert [t.name for t in fig.data] == ["test accuracy", "control task accuracy", "selectivity"]
    assert list(fig.data[0].y) == r.test_accuracy


def test_clear_errors():
    x, y = _planted(n=40)
    with pytest.raises(ValueError, match="39 labels for 40"):
        train_probe(x, y[:-1])
    with pytest.raises(ValueError, match="at least two classes"):
        train_probe(x, [1] * 40)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        train_probe(x[None], y)
    with pytest.raises(ValueError, match="fewer than 2 for training"):
        train_probe(x[:3], [0, 1, 0])
    with pytest.raises(ValueError, match="4 labels for 3 types"):
        control_labels(["a", "b", "c"], [0, 1, 0, 1])


# --- zoo GPT-2 ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2z(zoo_model):
    return zoo_model("gpt2-zoo")


def _country_prompts(n_countries=8, per_country=4):
    from circuitlab.zoo.world import COUNTRIES, NAMES, PLACES

    prompts, labels = [], []
    for i, c in enumerate(COUNTRIES[:n_countries]):
        for j in range(per_country):
            name, place = NAMES[(7 * i + 3 * j) % len(NAMES)], PLACES[(i + 5 * j) % len(PLACES)]
            prompts.append(f"<bos> {name} went to the {place} . The capital of {c.name} is")
            labels.append(c.name)
    return prompts, labels


def test_probe_dataset_matches_the_cache(gpt2z):
    from circuitlab.engine.cache import capture

    prompts = ["<bos> The capital of France is", "<bos> Mary went to the park . The capital of Spain is"]
    d = probe_dataset(gpt2z, prompts, ["France", "Spain"], site="attn_out", layers=[1, 3], position=-1)
    assert d.acts.shape == (2, 2, d.acts.shape[-1]) and d.layers == [1, 3] and d.types == prompts
    for i, p in enumerate(prompts):
        cache = capture(gpt2z, gpt2z.to_tokens(p)[None], ["blocks.3.hook_attn_out"])
        torch.testing.assert_close(d.acts[1, i], cache["blocks.3.hook_attn_out"][0, -1].float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="outside prompt"):
        probe_dataset(gpt2z, prompts, ["France", "Spain"], position=-20)
    with pytest.raises(ValueError, match="not a vector site"):
        probe_dataset(gpt2z, prompts, ["France", "Spain"], site="heads")
    with pytest.raises(ValueError, match="1 labels for 2"):
        probe_dataset(gpt2z, prompts, ["France"])


def test_country_is_decodable_at_the_last_token_after_block_0(gpt2z):
    """At " is" the residual before block 0 is the same for every prompt (same token, same
    position): nothing to decode. After attention has run, the country is linearly readable."""
    prompts, labels = _country_prompts()
    r = probe_layers(gpt2z, prompts, labels, site="resid_pre", layers=[0, 2], config=CFG, types=labels)
    assert r.test_accuracy[0] <= 0.35  # 8 classes; constant input: at best the majority class
    assert r.test_accuracy[1] >= 0.9
    # the label is the country word's identity, so the control task is as easy: selectivity ~0
    assert abs(r.selectivity[1]) <= 0.15
