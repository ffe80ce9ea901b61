"""One model, many threads: API calls give the sequential results; train mode does not leak in."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import circuitlab as cl
from circuitlab.engine.hooks import count_hooks, model_lock


@pytest.fixture(scope="module")
def zoo():
    model = cl.load("gpt2-zoo")
    return model, cl.tasks.bundled(model, "ioi", n=4, seed=0)


CALLS = [dict(sites="resid_pre", method="exact", positions=["END"], progress=False),
         dict(sites="heads", method="atp"),
         dict(sites="mlp_out", method="exact", positions=["END"], progress=False),
         dict(sites="heads", method="atp", direction="noising")]


def test_concurrent_patch_calls_equal_the_sequential_results(zoo):
    model, task = zoo
    hooks_before = count_hooks(model.bridge)  # the bridge's own, permanent hooks
    expected = [cl.patch(model, task, **kw).values for kw in CALLS]
    jobs = [CALLS[i % len(CALLS)] for i in range(12)]
    start = threading.Barrier(len(jobs))

    def run(kw):
        start.wait()  # all threads enter the model at once
        return cl.patch(model, task, **kw).values

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(run, jobs))
    for i, v in enumerate(got):
        ref = expected[i % len(CALLS)]
        assert torch.allclose(v, ref, atol=1e-6, rtol=0), (jobs[i], float((v - ref).abs().max()))
    assert count_hooks(model.bridge) == hooks_before  # every call removed its hooks


def test_lock_is_per_model_shared_by_model_and_bridge_and_reentrant(zoo, gpt2):
    model, _ = zoo
    lock = model_lock(model)
    assert model_lock(model.bridge) is lock and model_lock(gpt2) is not lock
    with lock, lock:  # re-entrant: engine calls nest inside API calls
        other = []
        t = threading.Thread(target=lambda: other.append(model_lock(model).acquire(timeout=0.2)))
        t.start()
        t.join()
        assert other == [False]  # another thread waits while this one holds the model
        assert model_lock(gpt2).acquire(timeout=0.2)  # a different model is free
        model_lock(gpt2).release()


def test_model_left_in_train_mode_is_patched_in_eval_mode_and_restored(tiny_dir, ioi_pairs):
    model = cl.load(str(tiny_dir("gpt2")), device="cpu")  # a private copy: its dropout is turned up
    for m in model.bridge.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    task = cl.tasks.from_pairs(model, ioi_pairs)
    reference = cl.patch(model, task, "resid_pre", method="exact", progress=False)
    model.bridge.train()
    flags = [m.training for m in model.bridge.modules()]
    assert all(flags)
    torch.manual_seed(0)
    in_train = cl.patch(model, task, "resid_pre", method="exact", progress=False)
    assert torch.allclose(in_train.values, reference.values, atol=1e-6), \
        float((in_train.values - reference.values).abs().max())
    assert in_train.baseline == pytest.approx(reference.baseline, abs=1e-6)
    atp_train = cl.patch(model, task, "resid_pre", method="atp")
    model.bridge.eval()
    atp_eval = cl.patch(model, task, "resid_pre", method="atp")
    assert torch.allclose(atp_train.values, atp_eval.values, atol=1e-6)
    model.bridge.train()
    cl.dla(model, task)
    assert [m.training for m in model.bridge.modules()] == flags  # the caller's mode is restored
    assert all(m.training for m in model.bridge.original_model.modules())
