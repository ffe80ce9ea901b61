import json
import os
import subprocess
import sys

import pytest
import torch

import circuitlab as cl
from circuitlab.result import Result
from circuitlab.sweep import sweep


@pytest.fixture(scope="module")
def six_pairs(ioi_pairs):
    out = []
    for k in range(2):
        for p in ioi_pairs:
            out.append(dict(p, clean=p["clean"].replace("store", "park" if k else "store")))
    return out


@pytest.mark.parametrize("method", ["exact", "atp"])
def test_batched_sweep_equals_one_batch(gpt2, six_pairs, method):
    task = cl.tasks.from_pairs(gpt2, six_pairs)
    whole = cl.patch(gpt2, task, "heads", method=method, progress=False)
    merged = sweep(gpt2, task, "heads", method, batch_size=4, progress=False)
    assert torch.allclose(whole.values, merged.values, atol=1e-5)
    assert merged.baseline == pytest.approx(whole.baseline, abs=1e-6)
    assert merged.meta["prompts"] == 6


def test_torchrun_two_processes_matches_one(tiny_dir, six_pairs, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in six_pairs))
    model = str(tiny_dir("gpt2"))
    args = [
        "sweep",
        "--model",
        model,
        "--task",
        str(pairs),
        "--sites",
        "heads",
        "--method",
        "atp,exact",
        "--batch-size",
        "2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    one = subprocess.run([sys.executable, "-m", "circuitlab.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    two = subprocess.run([*torchrun, "-m", "circuitlab.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    for stem in ("heads_exact_denoising", "heads_atp_denoising"):
        a, b = Result.load(tmp_path / "one" / stem), Result.load(tmp_path / "two" / stem)
        assert b.meta["world_size"] == 2 and b.meta["prompts"] == 6
        assert torch.allclose(a.values, b.values, atol=1e-5)
    assert (tmp_path / "two" / "comparison.csv").exists() and (tmp_path / "two" / "report.html").exists()


def test_cli_sweep_by_role_with_method_options(tmp_path):
    """``--positions S1,IO,S2,END`` patches each prompt at its own role positions, and
    ``--method ig:steps=2,variant=activations`` passes typed options: the files hold exactly what
    the Python API gives for the same request."""
    from circuitlab.cli import main

    out = tmp_path / "roles"
    assert main(["sweep", "--model", "gpt2-zoo", "--task", "ioi", "--n", "4", "--sites", "resid_pre",
                 "--positions", "S1,IO,S2,END", "--method", "exact,ig:steps=2,variant=activations",
                 "--out", str(out)]) == 0
    model = cl.load("gpt2-zoo")
    task = cl.tasks.bundled(model, "ioi", n=4, seed=0)
    assert len(set(task.roles["S2"].tolist())) > 1 or len(set(task.lengths.tolist())) > 1  # roles move between prompts
    roles = ["S1", "IO", "S2", "END"]
    exact = Result.load(out / "resid_pre_exact_denoising")
    ig = Result.load(out / "resid_pre_ig_steps-2_variant-activations_denoising")
    want_exact = cl.patch(model, task, "resid_pre", positions=roles, progress=False)
    want_ig = cl.patch(model, task, "resid_pre", method="ig", positions=roles, steps=2, variant="activations")
    assert exact.labels == want_exact.labels and exact.labels[:4] == [f"L0.resid_pre@{r}" for r in roles]
    assert torch.allclose(exact.values, want_exact.values, atol=1e-5)
    assert ig.meta["steps"] == 2 and ig.meta["variant"] == "activations"
    assert torch.allclose(ig.values, want_ig.values, atol=1e-5)
    assert "ig:steps=2,variant=activations" in (out / "comparison.csv").read_text()
