import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from tiny import IOI_PAIRS, save_tiny  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Trainer state and caches written by the tests go to a temporary folder, not ~/.cache."""
    old = os.environ.get("CIRCUITLAB_CACHE")
    os.environ["CIRCUITLAB_CACHE"] = str(tmp_path_factory.mktemp("circuitlab-cache"))
    yield
    if old is None:
        os.environ.pop("CIRCUITLAB_CACHE", None)
    else:
        os.environ["CIRCUITLAB_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CIRCUITLAB_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow test: run with CIRCUITLAB_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    cache = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = save_tiny(tmp_path_factory.mktemp(arch), arch)
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    import circuitlab as cl

    cache = {}

    def make(arch: str = "gpt2"):
        if arch not in cache:
            cache[arch] = cl.load(str(tiny_dir(arch)), device="cpu")
        return cache[arch]

    return make


@pytest.fixture(scope="module")
def zoo_model():
    """Bundled zoo models by name, each loaded once per test module (then freed with the module)."""
    import circuitlab as cl

    cache = {}

    def make(name: str):
        if name not in cache:
            cache[name] = cl.load(name, device="cpu")
        return cache[name]

    return make


@pytest.fixture(scope="session")
def gpt2(tiny_model):
    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def llama(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="session")
def ioi_pairs():
    return IOI_PAIRS
