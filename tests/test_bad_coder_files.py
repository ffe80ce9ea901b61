"""Damaged or inconsistent sparse-coder folders are refused with the file named, never a raw
torch or KeyError message; NaN weights are refused instead of loading silently."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from circuitlab.sparse.bundled import PRETRAINED
from circuitlab.sparse.files import CFG_FILE, WEIGHTS_FILE, load_coder


@pytest.fixture
def coder_dir(tmp_path):
    src = next(p for p in sorted(PRETRAINED.rglob(CFG_FILE)) if (p.parent / WEIGHTS_FILE).exists()).parent
    dst = tmp_path / "coder"
    shutil.copytree(src, dst)
    load_coder(dst)  # the copy loads before it is damaged
    return dst


def _edit_weights(folder, fn):
    t = load_file(str(folder / WEIGHTS_FILE))
    fn(t)
    save_file(t, str(folder / WEIGHTS_FILE))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda d: (d / WEIGHTS_FILE).write_bytes(b"not safetensors at all"), "not a readable safetensors"),
        (lambda d: (d / CFG_FILE).write_text("{broken"), "not valid JSON"),
        (lambda d: _edit_weights(d, lambda t: t.pop("b_dec")), "lacks the entry 'b_dec'"),
        (
            lambda d: _edit_weights(d, lambda t: t.__setitem__("W_dec", t["W_dec"][:, :3].contiguous())),
            "do not fit the config",
        ),
        (
            lambda d: _edit_weights(d, lambda t: t["W_enc"].view(-1)[5].fill_(float("nan"))),
            "NaN or infinite values in W_enc",
        ),
    ],
)
def test_damaged_coder_is_refused_naming_the_folder(coder_dir, damage, match):
    damage(coder_dir)
    with pytest.raises(ValueError, match=match) as e:
        load_coder(coder_dir)
    assert str(coder_dir) in str(e.value)
