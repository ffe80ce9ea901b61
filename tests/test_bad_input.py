"""Bad input to the Python API stops at once with a ValueError naming the value and the fix:
never a swallowed keyword, a silent zero from a pad, or a deep torch error."""

import functools
import re
import json

import pytest

import circuitlab as cl
from circuitlab.sweep import sweep


@pytest.fixture(scope="module")
def task(gpt2, ioi_pairs):
    return cl.tasks.from_pairs(gpt2, ioi_pairs)


@pytest.fixture
def no_runs(monkeypatch):
    """Counts calls of every registered node method; a rejected request must make none."""
    import dataclasses

    from circuitlab.methods.registry import NODE_METHODS

    calls = []

    def counted(real):
        @functools.wraps(real)
        def run(*a, **k):
            calls.append(real.__name__)
            return real(*a, **k)
        return run

    for name, m in NODE_METHODS.items():
        several = counted(m.several) if m.several is not None else None
        monkeypatch.setitem(NODE_METHODS._methods, name, dataclasses.replace(m, fn=counted(m.fn), several=several))
    return calls


def test_counted_methods_do_count(gpt2, task, no_runs):
    cl.patch(gpt2, task, "resid_pre", method="atp", layers=[0])
    cl.patch(gpt2, task, ["resid_pre", "mlp_out"], method="atp*", layers=[0], graddrop=False)
    assert no_runs == ["atp", "atp_star_sites"]


@pytest.mark.parametrize("method, options, bad, hint", [
    ("ig", {"step": 2}, "step", "steps"),
    ("ig", {"steps": 2, "varaint": "activations"}, "varaint", "variant"),
    ("exact", {"progres": False}, "progres", "progress"),
    ("atp*", {"grad_drop": False}, "grad_drop", "graddrop"),
    ("relp", {"attenton": "attnlrp"}, "attenton", "attention"),
])
def test_unknown_option_names_the_nearest_valid_one(gpt2, task, no_runs, method, options, bad, hint):
    expect = f"unknown option '{bad}' for method '{method}'; did you mean '{hint}'"
    with pytest.raises(ValueError, match=re.escape(expect)) as e:
        cl.patch(gpt2, task, "resid_pre", method=method, **options)
    assert "valid:" in str(e.value) and "layers" in str(e.value)
    assert no_runs == []


def test_unknown_option_without_close_match_lists_valid(gpt2, task, no_runs):
    with pytest.raises(ValueError, match=r"unknown option 'zzz' for method 'atp'; valid: layers, progress$"):
        cl.patch(gpt2, task, "resid_pre", method="atp", zzz=1)


def test_declared_options_still_work(gpt2, task):
    r = cl.patch(gpt2, task, "resid_pre", method="ig", steps=2, variant="activations", layers=[0])
    assert r.meta.get("variant", "activations") == "activations" and r.values.shape[0] == 1


@pytest.mark.parametrize("method, options", [("exact", {"progress": False}), ("atp*", {"graddrop": True}),
                                             ("atp", {"layer": [0]})])
def test_site_list_checks_every_family_before_the_first_runs(gpt2, task, no_runs, method, options):
    sites = ["resid_pre", "mpl_out"] if "layer" not in options else ["resid_pre", "mlp_out"]
    with pytest.raises(ValueError, match="did you mean"):
        cl.patch(gpt2, task, sites, method=method, **options)
    assert no_runs == []


def test_latents_options_are_checked(gpt2, task):
    with pytest.raises(ValueError, match="unknown option 'unit' for method 'atp'; did you mean 'units'"):
        cl.patch(gpt2, task, "latents", method="atp", coders=[], unit=[1])


def test_unknown_method_and_direction(gpt2, task, no_runs):
    with pytest.raises(ValueError, match="unknown method 'extact'; did you mean 'exact'"):
        cl.patch(gpt2, task, "resid_pre", method="extact")
    with pytest.raises(ValueError, match="unknown direction 'denoise'; did you mean 'denoising'"):
        cl.patch(gpt2, task, "resid_pre", direction="denoise")
    assert no_runs == []


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_compare_rejects_bad_k(gpt2, task, k):
    r = cl.patch(gpt2, task, "resid_pre", method="atp", layers=[0])
    with pytest.raises(ValueError, match="k .* must be a whole number >= 1"):
        cl.compare(r, r, k=k)


def test_compare_k_larger_than_nodes_is_clamped(gpt2, task):
    r = cl.patch(gpt2, task, "resid_pre", method="atp", layers=[0])
    c = cl.compare(r, r, k=10_000)
    assert c["k"] == len(r.flat) and c[f"recall@{len(r.flat)}"] == 1.0


@pytest.mark.parametrize("role", [-1, 99, 14])
def test_role_outside_a_prompt_is_rejected_naming_the_prompt(gpt2, ioi_pairs, role):
    pairs = [dict(p, roles=dict(p["roles"])) for p in ioi_pairs]
    pairs[2]["roles"]["S2"] = role  # prompt 2 is 14 tokens long (0..13): 14 is its first pad
    with pytest.raises(ValueError, match=rf"role 'S2' is token {role} in prompt 2 .*has 14 tokens"):
        cl.tasks.from_pairs(gpt2, pairs)


def test_task_lengths_are_what_the_tests_assume(task):
    assert task.lengths.tolist() == [15, 15, 14]


@pytest.mark.parametrize("positions, match", [
    ([14], r"position 14 is token 14 in prompt 2 .*has 14 tokens"),  # a pad in the shorter prompt
    ([99], "position 99 is token 99 in prompt 0"),
    ([-1], "position -1 is token -1 in prompt 0"),
    (["S3"], "has no role 'S3'"),
    ([1.5], "neither a token index nor a role name"),
    ("END", "positions must be a list"),
])
def test_positions_outside_prompts_are_rejected(gpt2, task, no_runs, positions, match):
    for method in ("exact", "atp"):
        with pytest.raises(ValueError, match=match):
            cl.patch(gpt2, task, "resid_pre", method=method, positions=positions)
    with pytest.raises(ValueError, match=match):
        sweep(gpt2, task, "resid_pre", "atp", positions=positions, progress=False)
    assert no_runs == []


def test_positions_inside_every_prompt_run(gpt2, task):
    r = cl.patch(gpt2, task, "resid_pre", method="atp", positions=[0, 13, "END", "S2"])
    assert r.values.shape[1] == 4


def test_prompt_longer_than_the_context_is_a_clear_error(gpt2, ioi_pairs):
    long = " ".join(["Mary went to the store"] * 20)
    pairs = list(ioi_pairs) + [{"clean": long, "corrupt": long.replace("Mary", "John"), "answer": " Mary",
                                "wrong": " John"}]
    with pytest.raises(ValueError, match=r"record 3 is \d+ tokens but the model takes at most 64"):
        cl.tasks.from_pairs(gpt2, [{k: v for k, v in p.items() if k != "roles"} for p in pairs])


def test_context_is_checked_for_tasks_built_elsewhere(gpt2, task):
    import torch

    from circuitlab.validate import model_context

    assert model_context(gpt2) == 64
    big = task.subset([0])
    big.lengths = torch.tensor([65])
    with pytest.raises(ValueError, match="prompt 0 of task .* is 65 tokens but the model takes at most 64"):
        cl.patch(gpt2, big, "resid_pre", method="atp")


@pytest.mark.parametrize("fn", ["dla", "logit_lens"])
def test_tokens_must_be_clean_or_corrupt(gpt2, task, fn):
    with pytest.raises(ValueError, match="unknown tokens 'corrupted'; did you mean 'corrupt'"):
        getattr(cl, fn)(gpt2, task, tokens="corrupted")
    assert getattr(cl, fn)(gpt2, task, tokens="corrupt").values.numel() > 0


def test_sweep_checks_before_the_first_batch(gpt2, task, no_runs):
    for kwargs, match in (({"batch_size": 0}, "batch_size must be a whole number >= 1"),
                          ({"batch_size": -3}, "batch_size"),
                          ({"steps": 2}, "unknown option 'steps' for method 'atp'")):
        with pytest.raises(ValueError, match=match):
            sweep(gpt2, task, "resid_pre", "atp", progress=False, **kwargs)
    assert no_runs == []


def test_non_utf8_jsonl_is_a_clear_error(gpt2, ioi_pairs, tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(json.dumps(ioi_pairs[0]).encode() + b"\n" + json.dumps(ioi_pairs[1], ensure_ascii=False)
                  .replace("Mary", "M\u00e9ry").encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=r"latin1.jsonl:2 is not UTF-8 text \(byte 0xe9"):
        cl.tasks.from_pairs(gpt2, f)


def test_bom_prefixed_jsonl_reads_like_plain(gpt2, ioi_pairs, tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_text("\n".join(json.dumps(p) for p in ioi_pairs), encoding="utf-8-sig")
    assert f.read_bytes()[:3] == b"\xef\xbb\xbf"
    a, b = cl.tasks.from_pairs(gpt2, f), cl.tasks.from_pairs(gpt2, ioi_pairs)
    assert a.clean_tokens.equal(b.clean_tokens) and a.roles.keys() == b.roles.keys()


def test_task_file_errors_name_the_file(gpt2, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.jsonl"):
        cl.tasks.from_pairs(gpt2, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="is a folder; give a JSONL file of {clean, corrupt, answer, wrong} records"):
        cl.tasks.from_pairs(gpt2, tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"clean": "when Mary went"}\n{broken\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        cl.tasks.from_pairs(gpt2, tmp_path / "bad.jsonl")


@pytest.mark.parametrize("record, match", [
    ([1, 2], "record 0 is a list, not an object"),
    ({"clean": 3, "corrupt": "a", "answer": " a", "wrong": " b"}, r"\['clean'\] must be strings"),
])
def test_malformed_records(gpt2, record, match):
    with pytest.raises(ValueError, match=match):
        cl.tasks.from_pairs(gpt2, [record])
