"""Loading in bfloat16 / float16: the load checks allow the dtype's rounding and no more, and
results stay within that rounding of float32's."""

from __future__ import annotations

import shutil

import pytest
import torch

import circuitlab as cl
from circuitlab.models import checks


@pytest.mark.parametrize("name", ["gpt2-zoo", "llama-zoo"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_with_checks_and_shortcuts(name, dtype):
    m = cl.load(name, device="cpu", dtype=dtype)
    assert m.dtype == getattr(torch, dtype)
    assert m.fast_restart and m.fast_positions, repr(m)
    assert "shortcut off" not in repr(m)


@pytest.fixture(scope="module")
def zoo_pair():
    """gpt2-zoo in float32 and bfloat16 with the same small IOI task."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        m = cl.load("gpt2-zoo", device="cpu", dtype=dtype)
        out[dtype] = (m, cl.tasks.ioi(m, n=4, seed=1))
    return out


def test_bf16_patching_close_to_float32(zoo_pair):
    """Exact head patching in bfloat16 agrees with float32 to a few bfloat16 roundings of the
    logit difference (measured: about 3.4 eps * |logit difference|; allowed 8)."""
    (m32, t32), (m16, t16) = zoo_pair["float32"], zoo_pair["bfloat16"]
    assert torch.equal(t32.clean_tokens, t16.clean_tokens)
    r32, r16 = cl.patch(m32, t32, "heads"), cl.patch(m16, t16, "heads")
    tol = 8 * torch.finfo(torch.bfloat16).eps * max(1.0, abs(r32.baseline))
    diff = (r16.values.float() - r32.values.float()).abs().max()
    assert diff <= tol, (float(diff), tol)
    assert abs(r16.baseline - r32.baseline) <= tol
    assert r32.values.abs().max() > 10 * tol  # the comparison is not between near-zeros
    assert r16.values.dtype in (torch.float32, torch.bfloat16)


def test_bf16_dla_sums_within_dtype_rounding(zoo_pair):
    m, task = zoo_pair["bfloat16"]
    r = cl.dla(m, task, by="head")
    tol = 8 * torch.finfo(torch.bfloat16).eps * max(1.0, abs(r.baseline))
    assert abs(r.meta["total"] - r.baseline) <= tol


def test_tolerance_scales_with_dtype():
    t32 = checks.tolerance(torch.float32, 100.0, 64)
    t16 = checks.tolerance(torch.bfloat16, 100.0, 64)
    assert t16 / t32 == pytest.approx(torch.finfo(torch.bfloat16).eps / torch.finfo(torch.float32).eps)
    assert t32 == pytest.approx(64 * torch.finfo(torch.float32).eps * 100)
    assert checks.tolerance(torch.float32, 1000.0, 64) == pytest.approx(10 * t32)


def _poison(folder, value):
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    sd = load_file(str(f))
    name = next(k for k in sorted(sd) if k.endswith("mlp.c_fc.weight"))
    sd[name][0, 0] = value
    save_file(sd, str(f), metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_fail_naming_the_parameter(tmp_path, tiny_dir, value):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir("gpt2"), d)
    name = _poison(d, value)
    with pytest.raises(ValueError, match=r"mlp\.c_fc\.weight.*NaN/inf"):
        cl.load(str(d), device="cpu")
    assert "c_fc" in name


def test_float16_overflowing_weight_fails_naming_the_parameter(tmp_path, tiny_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir("gpt2"), d)
    _poison(d, 1e6)  # fine in float32 and bfloat16, inf in float16
    cl.load(str(d), device="cpu", check=False, dtype="bfloat16")
    with pytest.raises(ValueError, match=r"c_fc\.weight.*float16 stops at 65504"):
        cl.load(str(d), device="cpu", dtype="float16")
