"""The benchmark suite's plumbing: every command run_all.py issues is one its script accepts, and the
peer sweeps of benchmarks/patching_peers.py patch what circuitlab patches (same values).

Timing is never asserted; these check that the side-by-side figures compare like with like."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from tiny import save_tiny

ROOT = Path(__file__).parent.parent
BENCH = ROOT / "benchmarks"
NNSIGHT_PYTHON = ROOT / "runs" / "peers" / "nnsight" / "bin" / "python"


def _module(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_run_all_commands_use_flags_their_scripts_accept():
    run_all = _module("run_all")
    names = [b.name for b in run_all.BENCHMARKS]
    assert len(names) == len(set(names))
    for b in run_all.BENCHMARKS:
        source = (BENCH / b.script).read_text()
        accepted = set(re.findall(r'add_argument\(\s*"(--[\w-]+)"', source))
        for form in (b.full, b.quick):
            for flag in (x for x in form if x.startswith("--")):
                assert flag in accepted, f"{b.name}: {b.script} has no {flag} option"


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    import dataclasses

    import circuitlab as cl
    from circuitlab.tasks import metrics as M

    folder = save_tiny(tmp_path_factory.mktemp("gpt2"), "gpt2")
    model = cl.load(str(folder), device="cpu")
    common = _module("common")
    task = common.random_task(model, n_prompts=3, n_tokens=8, vocab=model.d_vocab)
    task = dataclasses.replace(task, metric=M.logit_diff(task.answer_pos, task.answer_ids, task.wrong_ids))
    return model, task, folder


@pytest.mark.parametrize("sweep", ["resid_pre", "heads_all", "heads", "mlp_out"])
@pytest.mark.parametrize("layers", [None, [1]])
def test_transformer_lens_sweep_matches_circuitlab(tiny_task, sweep, layers):
    """Both the TransformerLens function (all layers) and the same per-index loop on a subset
    of layers give circuitlab's values."""
    import circuitlab as cl

    model, task, _ = tiny_task
    pp = _module("patching_peers")
    layers = layers or list(range(model.n_layers))
    with torch.no_grad():
        ref = pp.tl_sweep(model, task, sweep, layers)
    ours = cl.patch(model, task, sweep, layers=layers, progress=False).patched.reshape(ref.shape)
    torch.testing.assert_close(ours.float(), ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not NNSIGHT_PYTHON.exists(), reason="no nnsight environment at runs/peers/nnsight")
def test_nnsight_worker_matches_circuitlab(tiny_task):
    import circuitlab as cl

    model, task, folder = tiny_task
    pp = _module("patching_peers")
    plan = {s: list(range(model.n_layers)) for s in pp.SWEEPS}
    nn = pp.run_nnsight(NNSIGHT_PYTHON, folder, model, task, plan, threads=1)
    for sweep in pp.SWEEPS:
        ours = cl.patch(model, task, sweep, progress=False).patched
        torch.testing.assert_close(ours.float().reshape(nn["values"][sweep].shape), nn["values"][sweep],
                                   atol=1e-4, rtol=1e-4)
