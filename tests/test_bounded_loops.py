"""Data loops end: when no token survives the filters, training stops with a clear error."""

import contextlib
import signal

import pytest
import torch

from circuitlab.sparse import store
from circuitlab.sparse.store import ActivationSource, Exclusion, Rows, ShardLoader, ShardPlan, SourceSpec, make_shard

MAX_EMPTY_BATCHES = getattr(store, "MAX_EMPTY_BATCHES", 8)

HOOK = "blocks.0.hook_resid_post"


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts the loop after ``seconds``."""
    def boom(*_):
        raise TimeoutError(f"still running after {seconds} s (the loop has no bound)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _docs(seed, n):
    words = "when Mary then John went to the store , John gave a drink to Mary".split()
    g = torch.Generator().manual_seed(seed)
    return [" ".join(words[i] for i in torch.randint(len(words), (10,), generator=g).tolist()) for _ in range(n)]


@pytest.fixture
def calls():
    return []


def _counting(calls):
    def fn(seed, n):
        calls.append(seed)
        return _docs(seed, n)
    return fn


def test_all_nan_activations_stop_with_a_clear_error(tiny_dir, calls):
    import circuitlab as cl

    model = cl.load(str(tiny_dir("gpt2")), device="cpu")  # a private copy: its weights get poisoned
    with torch.no_grad():
        for p in model.bridge.original_model.parameters():
            if p.dim() == 2:
                p.fill_(float("nan"))
    src = ActivationSource([model], SourceSpec((HOOK,)), Exclusion(True, (), None), ctx_len=16)
    with deadline(30), pytest.raises(ValueError, match=r"in a row added no activation row.*NaN/inf activations"):
        make_shard(src, ShardPlan(0, 64, 4), 0, docs_fn=_counting(calls))
    assert len(calls) == MAX_EMPTY_BATCHES
    # the default norm filter calibrates on the same activations: it names the cause too
    with deadline(30), pytest.raises(ValueError, match=r"no usable token.*NaN/inf activations"):
        src.calibrate(_docs(1, 4), 10.0)


def test_norm_filter_that_drops_everything_stops_with_a_clear_error(gpt2, calls):
    src = ActivationSource([gpt2], SourceSpec((HOOK,)), Exclusion(True, (), None), ctx_len=16)
    src.exclusion.norm_above = src.calibrate(_docs(1, 8), 0.01)  # 1% of the median norm: nothing passes
    with deadline(30), pytest.raises(ValueError, match=r"in a row added no activation row.*above the norm cut-off"):
        make_shard(src, ShardPlan(0, 64, 4), 0, docs_fn=_counting(calls))
    assert len(calls) == MAX_EMPTY_BATCHES
    # a healthy filter fills the shard
    src.exclusion.norm_above = src.calibrate(_docs(1, 8), 10.0)
    assert len(make_shard(src, ShardPlan(0, 64, 4), 0, docs_fn=_docs)) == 64


def test_loader_whose_shards_are_smaller_than_a_batch_stops():
    def shard(i):
        x = torch.randn(10, 4)
        z = torch.zeros(10, dtype=torch.int32)
        return Rows(x, None, z, z, z)

    loader = ShardLoader(shard, 3, 32, buffer_shards=1)
    with deadline(10), pytest.raises(ValueError, match="holds 32 rows"):
        loader.next()
