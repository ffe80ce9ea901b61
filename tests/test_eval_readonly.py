"""`circuitlab eval` only reads the coder folder, writes to --out, and runs from any directory."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from circuitlab.cli import main
from circuitlab.sparse.base import config_class, make_coder
from circuitlab.sparse.files import save_coder

PRETRAINED = Path(__file__).resolve().parent.parent / "circuitlab" / "sparse" / "pretrained" / "gpt2-zoo"
CROSSCODER = PRETRAINED / "gpt2-zoo_crosscoder_checkpoints_L2"
SAE = PRETRAINED / "gpt2-zoo_resid_L2"


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its content hash and mtime."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            rel = str(p.relative_to(folder))
            out[rel] = "dir" if p.is_dir() else f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_mtime_ns}"
    return out


@pytest.fixture
def tiny_coder(tiny_dir, tmp_path):
    model = str(tiny_dir("gpt2"))
    coder = make_coder(config_class("topk")(d_in=64, d_sae=128, k=4, seed=0, hooks_in=("blocks.1.hook_resid_pre",),
                                            models=(model,)))
    return save_coder(coder, tmp_path / "inputs" / "my_coder")


def scripts_offline(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "cdn.plot.ly" not in text and 'src="http' not in text
    assert (page.parent / "plotly.min.js").is_file()


def test_eval_writes_to_default_out_under_cwd_and_leaves_input_untouched(tiny_coder, tmp_path, monkeypatch):
    before = folder_digest(tiny_coder.parent)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["eval", str(tiny_coder), "--docs", "8", "--ctx-len", "24"]) == 0
    assert folder_digest(tiny_coder.parent) == before
    out = work / "eval" / "my_coder"
    m = json.loads((out / "metrics.json").read_text())
    assert m["tokens"] > 0 and "ce_recovered" in m
    scripts_offline(out / "density.html")


def test_eval_explicit_out(tiny_coder, tmp_path, monkeypatch):
    before = folder_digest(tiny_coder.parent)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tiny_coder), "--docs", "8", "--ctx-len", "24", "--out", "runs/e1"]) == 0
    assert json.loads((tmp_path / "runs/e1/metrics.json").read_text())["tokens"] > 0
    assert main(["eval", str(tiny_coder), "--docs", "8", "--ctx-len", "24", "--out", "m.json"]) == 0
    assert (tmp_path / "m.json").is_file() and (tmp_path / "m.density.html").is_file()
    assert folder_digest(tiny_coder.parent) == before


def test_eval_default_out_never_inside_the_input(tiny_coder, monkeypatch, capsys):
    before = folder_digest(tiny_coder.parent)
    monkeypatch.chdir(tiny_coder)
    assert main(["eval", ".", "--docs", "8", "--ctx-len", "24"]) == 2
    assert "--out" in capsys.readouterr().err
    assert folder_digest(tiny_coder.parent) == before


def test_resolve_model_names_bundled_checkpoints(tmp_path, monkeypatch):
    from circuitlab.sparse.evaluate import resolve_model
    from circuitlab.zoo import MODELS_DIR, list_models

    if "gpt2-zoo" not in list_models():
        pytest.skip("zoo model gpt2-zoo is not installed")
    monkeypatch.chdir(tmp_path)
    step = MODELS_DIR / "gpt2-zoo" / "checkpoints" / "step_00500"
    assert resolve_model("circuitlab/zoo/models/gpt2-zoo/checkpoints/step_00500") == str(step)
    assert resolve_model("gpt2-zoo/checkpoints/step_00500") == str(step)
    assert resolve_model("circuitlab/zoo/models/gpt2-zoo") == str(MODELS_DIR / "gpt2-zoo")
    assert resolve_model("gpt2-zoo") == "gpt2-zoo"
    assert resolve_model("openai-community/gpt2") == "openai-community/gpt2"  # hub ids pass through
    with pytest.raises(ValueError, match="not in the installed zoo"):
        resolve_model("gpt2-zoo/checkpoints/step_99999")


@pytest.mark.parametrize("folder", [CROSSCODER, SAE], ids=["crosscoder", "sae"])
def test_shipped_coders_evaluate_from_any_directory_read_only(folder, tmp_path, monkeypatch):
    from circuitlab.zoo import list_models

    if not folder.is_dir() or "gpt2-zoo" not in list_models():
        pytest.skip(f"{folder.name} or the gpt2-zoo model is not installed")
    before = folder_digest(folder)
    monkeypatch.chdir(tmp_path)  # outside the repository
    assert main(["eval", str(folder), "--docs", "4", "--ctx-len", "16"]) == 0
    assert folder_digest(folder) == before, "evaluating a shipped coder changed the package"
    out = tmp_path / "eval" / folder.name
    assert json.loads((out / "metrics.json").read_text())["tokens"] > 0
    scripts_offline(out / "density.html")
