"""Quality gates of the shipped coders (circuitlab/sparse/pretrained/): FVU <= 0.15,
CE-loss recovered >= 0.85, dead latents <= 10%. Skipped while none are shipped."""

import json
from pathlib import Path

import pytest

import circuitlab.sparse as sparse

PRETRAINED = Path(sparse.__file__).parent / "pretrained"
FOLDERS = sorted(p.parent for p in PRETRAINED.glob("*/*/cfg.json")) if PRETRAINED.exists() else []
GATES = {"fvu": (0.15, "max"), "ce_recovered": (0.85, "min"), "dead_fraction": (0.10, "max")}
MIN_EVAL_TOKENS = 50_000
KNOWN_MISSES = {
    # (coder, gate): why -- also listed in saes/README.md; retrain with more tokens to clear them
}


@pytest.mark.skipif(not FOLDERS, reason="no pretrained coders shipped yet (train with saes/configs/*.toml)")
@pytest.mark.parametrize("folder", FOLDERS, ids=[f"{p.parent.name}/{p.name}" for p in FOLDERS])
def test_shipped_coder_meets_quality_gates(folder):
    from circuitlab.sparse.files import load_coder

    load_coder(folder)  # loads from the installed package
    m = json.loads((folder / "metrics.json").read_text())
    # A latent firing once in 20k tokens looks dead on a few thousand: count on enough tokens.
    assert m["tokens"] >= MIN_EVAL_TOKENS, (
        f"{folder.name}: evaluated on {m['tokens']} tokens; re-evaluate on >= {MIN_EVAL_TOKENS} "
        "(circuitlab eval FOLDER --docs 2048)")
    for key, (limit, kind) in GATES.items():
        if key not in m or m[key] is None:
            continue  # crosscoders across checkpoints have no single model to splice into
        if key == "ce_recovered" and m.get("ce_zero_ablation", 1e9) - m.get("ce_clean", 0) < 0.01:
            # Zero-ablating this site does not raise the loss (gpt2-zoo's layer-1 MLP), so CE-loss
            # recovered divides by ~0 and says nothing; the KL to the clean model is the gate here.
            assert m["kl_coder"] <= 0.05, f"{folder.name}: KL {m['kl_coder']:.4f} with the coder spliced in"
            continue
        ok = m[key] <= limit if kind == "max" else m[key] >= limit
        if (folder.name, key) in KNOWN_MISSES:
            assert not ok, f"{folder.name}: {key} now meets its gate; remove it from KNOWN_MISSES"
            continue
        assert ok, f"{folder.name}: {key} = {m[key]:.4f} misses the gate ({kind} {limit})"
