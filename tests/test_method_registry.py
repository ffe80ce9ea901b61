"""The method registries: what the API, CLI and checks iterate; a new method is one function, one
options dataclass and one decorator. Results of different kinds are not compared."""

from dataclasses import dataclass

import pytest
import torch

import circuitlab as cl
from circuitlab import circuits as cc
from circuitlab.methods.registry import EDGE_METHODS, NODE_METHODS, NodeOptions, Registry, parse_specs
from circuitlab.result import DirectEffects, HeadScores, NodeValues, Result


@pytest.fixture(scope="module")
def task(gpt2, ioi_pairs):
    return cl.tasks.from_pairs(gpt2, ioi_pairs)


def test_registries_list_every_method_in_order():
    assert list(NODE_METHODS) == ["exact", "atp", "atp*", "relp", "ig", "cdt"]
    assert list(EDGE_METHODS) == ["eap", "eap-ig", "path", "cdt"]
    assert cl.api.METHODS is NODE_METHODS and cc.METHODS is EDGE_METHODS
    assert NODE_METHODS["ig"].option_names == ["layers", "steps", "variant", "rule", "baseline"]
    assert NODE_METHODS["atp*"].several is not None


@pytest.fixture
def scratch_registry(monkeypatch):
    """NODE_METHODS with its entries copied, so a method registered by a test goes away after it."""
    list(NODE_METHODS)  # load the built-in methods first
    monkeypatch.setattr(NODE_METHODS, "_methods", dict(NODE_METHODS._methods))
    return NODE_METHODS


def test_a_new_method_is_one_function_and_one_options_dataclass(gpt2, task, scratch_registry):
    from circuitlab.methods.atp import atp

    @dataclass
    class ScaledOptions(NodeOptions):
        factor: float = 0.5
        """What AtP's values are multiplied by."""

    @scratch_registry.register("scaled-atp", ScaledOptions)
    def scaled_atp(model, task, sites, direction, positions, layers=None, factor=0.5):
        r = atp(model, task, sites, direction, positions, layers)
        r.values = r.values * factor
        return r

    assert "scaled-atp" in NODE_METHODS and list(NODE_METHODS)[-1] == "scaled-atp"
    ref = cl.patch(gpt2, task, "resid_pre", method="atp", layers=[1])
    got = cl.patch(gpt2, task, "resid_pre", method="scaled-atp", layers=[1], factor=3.0)
    assert torch.allclose(got.values, 3.0 * ref.values)
    with pytest.raises(ValueError, match="unknown option 'facter' for method 'scaled-atp'; did you mean 'factor'"):
        cl.patch(gpt2, task, "resid_pre", method="scaled-atp", facter=3.0)
    specs = parse_specs("scaled-atp:factor=2.5,layers=0+1", NODE_METHODS)
    assert specs == [("scaled-atp", {"factor": 2.5, "layers": [0, 1]})]


@dataclass
class _Opts(NodeOptions):
    steps: int = 4
    """Steps."""


@pytest.mark.parametrize("fn, match", [
    (lambda model, task, sites, direction, positions, layers=None, steps=5: None,
     "defaults steps=5 but _Opts defaults it to 4"),
    (lambda model, task, sites, direction, positions, layers=None: None,
     r"takes options \['layers'\] but _Opts declares"),
    (lambda model, task, sites, direction, positions, layers=None, steps=4, **_: None, r"takes \*args/\*\*kwargs"),
    (lambda model, task, direction, sites, positions, layers=None, steps=4: None, "must start with arguments"),
])
def test_registration_refuses_a_function_that_disagrees_with_its_options(fn, match):
    reg = Registry("node", ("model", "task", "sites", "direction", "positions"), [])
    with pytest.raises(TypeError, match=match):
        reg.register("x", _Opts)(fn)


def test_every_registered_function_takes_exactly_its_declared_options():
    import inspect

    for reg in (NODE_METHODS, EDGE_METHODS):
        for m in reg.values():
            params = list(inspect.signature(m.fn).parameters)[len(reg.arguments):]
            assert params == m.option_names or sorted(params) == sorted(m.option_names), m.name


def test_ig_step_typo_names_steps(gpt2, task):
    with pytest.raises(ValueError, match="unknown option 'step' for method 'ig'; did you mean 'steps'"):
        cl.patch(gpt2, task, "resid_pre", method="ig", step=2)


def test_edge_methods_check_their_options(tiny_model, ioi_pairs):
    m = tiny_model("gpt2")
    task = cl.tasks.from_pairs(m, ioi_pairs)
    with pytest.raises(ValueError, match="unknown option 'step' for method 'eap-ig'; did you mean 'steps'"):
        cc.edges(m, task, "eap-ig", step=2)
    with pytest.raises(ValueError, match="unknown method 'eapig'; did you mean 'eap-ig'"):
        cc.edges(m, task, "eapig")
    a, b = cc.edges(m, task, "eap-ig", steps=2), cc.eap_ig(m, task, steps=2)
    assert torch.equal(a.values, b.values) and a.meta["steps"] == 2


def test_parse_specs_types_values_from_the_dataclass():
    specs = parse_specs("exact:max_patches_per_pass=4,skip_noops=false,max_waste=none,atp*:graddrop=0", NODE_METHODS)
    assert specs == [("exact", {"max_patches_per_pass": 4, "skip_noops": False, "max_waste": None}),
                     ("atp*", {"graddrop": False})]
    with pytest.raises(ValueError, match="max_waste='lots' of method 'exact' is not a number"):
        parse_specs("exact:max_waste=lots", NODE_METHODS)
    with pytest.raises(ValueError, match="cannot be set from the command line"):
        parse_specs("eap:graph=full", EDGE_METHODS)


# ------------------------------------------------------------------ result kinds and compare


def test_dla_lens_and_head_scores_have_their_own_types(gpt2, task):
    from circuitlab.methods.head_detectors import head_scores, repeated_tokens

    dla, lens = cl.dla(gpt2, task), cl.logit_lens(gpt2, task)
    heads = head_scores(gpt2, repeated_tokens(gpt2, n=2, length=6))
    assert type(dla) is DirectEffects and dla.by == "head" and dla.tokens == "clean"
    assert type(lens) is DirectEffects and lens.method == "logit_lens"
    assert type(heads) is HeadScores and heads.kinds == ["previous_token", "duplicate_token", "induction", "copying"]
    assert not isinstance(dla, Result) and all(isinstance(r, NodeValues) for r in (dla, lens, heads))
    assert abs(dla.meta["total"] - dla.baseline) < 1e-4  # the components sum to the logit difference


def test_compare_refuses_results_of_different_kinds_naming_the_reason(gpt2, task):
    from circuitlab.methods.head_detectors import head_scores, repeated_tokens

    dla = cl.dla(gpt2, task)
    atp = cl.patch(gpt2, task, "heads_all", method="atp")
    assert dla.labels == atp.labels  # same nodes: only the meaning differs
    with pytest.raises(ValueError, match="cannot compare DLA with patching effects .*DLA scores direct effects on the "
                                         "logit difference"):
        cl.compare(dla, atp)
    with pytest.raises(ValueError, match="cannot compare patching effects .* with DLA"):
        cl.compare(atp, dla)
    with pytest.raises(ValueError, match="cannot compare the logit lens with DLA: the logit lens reads"):
        cl.compare(cl.logit_lens(gpt2, task), dla)
    heads = head_scores(gpt2, repeated_tokens(gpt2, n=2, length=6))
    with pytest.raises(ValueError, match="head-detector scores measure attention"):
        cl.compare(heads, atp)
    noising = cl.patch(gpt2, task, "heads_all", method="atp", direction="noising")
    with pytest.raises(ValueError, match="direction mismatch: denoising vs noising"):
        cl.compare(atp, noising)
    c = cl.compare(cl.dla(gpt2, task, tokens="corrupt"), dla, k=3)  # DLA with DLA is fine
    assert c["n_nodes"] == len(dla.labels) and -1 <= c["pearson"] <= 1
    assert cl.compare(heads, heads, k=2)["pearson"] == pytest.approx(1)


def test_other_result_kinds_save_and_load_as_themselves(gpt2, task, tmp_path):
    dla = cl.dla(gpt2, task, by="layer")
    back = NodeValues.load(dla.save(tmp_path / "dla"))
    assert type(back) is DirectEffects and back.by == "layer" and back.dims == ("layer", "sublayer")
    assert torch.equal(back.values, dla.values) and back.extras.keys() == dla.extras.keys()
    assert type(Result.load(tmp_path / "dla")) is DirectEffects
    r = cl.patch(gpt2, task, "resid_pre", method="atp", layers=[0])
    import json

    assert "type" not in json.loads(r.save(tmp_path / "r").read_text())  # patching results keep their format
    assert type(Result.load(tmp_path / "r")) is Result


def test_plots_title_each_kind_by_what_it_is(gpt2, task):
    assert cl.dla(gpt2, task).plot().layout.title.text.startswith("dla by head")
    assert cl.patch(gpt2, task, "heads_all", method="atp").plot().layout.title.text.startswith("atp · heads_all")


def test_dla_selects_a_node_circuit(gpt2, task):
    dla = cl.dla(gpt2, task)
    circuit = cc.top_n(dla, 2)
    assert circuit.items == frozenset(label for label, _ in dla.top(2))
