"""The architecture registry: every file in sparse/architectures/ registers itself, documents its
config, and saves and loads through files.py's generic code (no per-architecture branch there)."""

import dataclasses
import pkgutil

import torch

from circuitlab.sparse import architectures
from circuitlab.sparse.base import CoderConfig, load_architectures, make_coder
from circuitlab.sparse.config import field_docs
from circuitlab.sparse.files import lens_names, load_coder, load_config, save_coder


def test_every_architecture_file_registers_one_documented_coder():
    archs = load_architectures()
    files = {m.name for m in pkgutil.iter_modules(architectures.__path__)}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in archs.values()} == files
    assert {"relu", "topk", "batchtopk", "jumprelu", "mpsae"} <= set(archs)
    base = {f.name for f in dataclasses.fields(CoderConfig)}
    for name, cls in archs.items():
        assert cls.arch == name and cls.config_cls().arch == name
        docs = field_docs(cls.config_cls)
        own = [f.name for f in dataclasses.fields(cls.config_cls) if f.name not in base]
        assert all(docs.get(f) for f in own), (name, [f for f in own if not docs.get(f)])
    names = lens_names()  # one class per SAE Lens name (a subclass must not inherit its parent's)
    assert names["topk"][0].arch == "topk" and names["matching_pursuit"][0].arch == "mpsae"
    assert names["jumprelu_skip_transcoder"][1:] == (True, True) and names["standard"][1:] == (False, False)


def _randomised(coder):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (0.1 if p.dim() == 1 else 0.0))
        if hasattr(coder, "log_threshold"):
            coder.log_threshold.fill_(-2.0)
        if coder.arch == "batchtopk":
            coder.threshold.fill_(0.05)
    return coder


def test_every_architecture_round_trips_through_files(tmp_path):
    x = torch.randn(9, 16, generator=torch.Generator().manual_seed(0))
    for name, cls in load_architectures().items():
        coder = _randomised(make_coder(cls.config_cls(d_in=16, d_sae=40, hooks_in=("blocks.1.hook_resid_post",))))
        if coder.arch == "mpsae":  # pursuit needs unit atoms
            coder.after_step()
        save_coder(coder, tmp_path / name)
        back = load_coder(tmp_path / name)
        ref = coder.for_inference()
        assert back.arch == (cls.inference_arch or name) == load_config(tmp_path / name).arch
        assert type(back).tied == cls.tied
        with torch.no_grad():
            assert torch.allclose(back.encode(x), ref.encode(x), atol=1e-6), name
            assert torch.allclose(back(x), ref(x), atol=1e-6), name
