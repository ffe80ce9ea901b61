"""The README's tour runs as written, and its headline figures are the ones in the results files.

Each figure of the headline table is formatted here from the results file that row links, so a
rerun benchmark and the README cannot drift apart silently."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
RESULTS = ROOT / "benchmarks" / "results"


def _results(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _row(start: str) -> str:
    rows = [line for line in _section("Headline results").splitlines() if line.startswith(f"| {start}")]
    assert len(rows) == 1, f"one headline row should start with {start!r}, found {len(rows)}"
    return rows[0]


def _sparse(d_in: int, steps: int) -> tuple[dict, dict, dict]:
    run = next(r for r in _results("sparse_training.json")["repeats_3"] if (r["d_in"], r["steps"]) == (d_in, steps))
    return run["circuitlab"], run["sparsify"], run["sae_lens"]


def _expected() -> dict[str, list[str]]:
    """Headline row (its first words) -> the figures it must quote, formatted from the results files."""
    pp = _results("patching_peers.json")["models"]
    sm, g2 = pp["smollm2-135m"]["sweeps"], pp["gpt2-small-random"]["sweeps"]
    eap = _results("circuits_gpt2zoo.json")["timing"]
    rows = _results("faithfulness_smollm2.json")["rows"]
    q = {r["method"]: r for r in rows if (r["task"], r["sites"]) == ("ioi", "q")}
    graph = _results("graphs_gpt2zoo.json")["summary"]["scores"]["full"]
    (c768, sp768, sl768), (c128, sp128, sl128) = _sparse(768, 40), _sparse(128, 200)
    return {
        "exact patching, SmolLM2-135M": [
            f"{sm['heads_all']['circuitlab_s']:.1f} s / {sm['resid_pre']['circuitlab_s']:.1f} s",
            f"TransformerLens 4.3 `patching` {sm['heads_all']['transformer_lens_s']:.1f} s / "
            f"{sm['resid_pre']['transformer_lens_s']:.1f} s",
            f"nnsight 0.8.1 {sm['heads_all']['nnsight_s']:.1f} s / {sm['resid_pre']['nnsight_s']:.1f} s",
            f"**{sm['heads_all']['vs_transformer_lens']:.1f}x / {sm['resid_pre']['vs_transformer_lens']:.1f}x** "
            f"TransformerLens, **{sm['heads_all']['vs_nnsight']:.1f}x / {sm['resid_pre']['vs_nnsight']:.1f}x** nnsight",
            f"{sm['heads_all']['circuitlab_fraction_of_peak']:.0%} / "
            f"{sm['resid_pre']['circuitlab_fraction_of_peak']:.0%}"],
        "same, GPT-2-small-shaped": [
            f"{g2['heads']['circuitlab_s']:.1f} s / {g2['resid_pre']['circuitlab_s']:.1f} s",
            f"{g2['heads']['transformer_lens_s']:.1f} s / {g2['resid_pre']['transformer_lens_s']:.1f} s",
            f"{g2['heads']['nnsight_s']:.1f} s / {g2['resid_pre']['nnsight_s']:.1f} s",
            f"**{g2['heads']['vs_transformer_lens']:.1f}x / {g2['resid_pre']['vs_transformer_lens']:.1f}x**",
            f"**{g2['heads']['vs_nnsight']:.1f}x / {g2['resid_pre']['vs_nnsight']:.1f}x**"],
        "all-edge attribution": [f"{eap['circuitlab_eap_s']:.2f} s", f"{eap['transformer_lens_s']:.2f} s",
                                 f"**{eap['speedup']:.1f}x**"],
        "AtP\\* against exact patching": [f"Pearson {q['atp*']['pearson']:.3f}, recall@10 {q['atp*']['recall@10']:.1f}",
                                          f"{q['atp']['pearson']:.3f}, {q['atp']['recall@10']:.1f}"],
        "TopK SAE training, d_in 768": [f"{c768['tokens_per_s']:,.0f} tokens/s", f"FVU {c768['heldout_fvu']:.3f}",
                                        f"{sp768['tokens_per_s']:,.0f} (FVU {sp768['heldout_fvu']:.3f})",
                                        f"{sl768['tokens_per_s']:,.0f} (FVU {sl768['heldout_fvu']:.3f})",
                                        f"**{c768['tokens_per_s'] / sp768['tokens_per_s']:.2f}x**"],
        "same, d_in 128": [f"{c128['tokens_per_s']:,.0f} tokens/s", f"FVU {c128['heldout_fvu']:.3f}",
                           f"{sp128['tokens_per_s']:,.0f} ({sp128['heldout_fvu']:.3f})",
                           f"{sl128['tokens_per_s']:,.0f} ({sl128['heldout_fvu']:.3f})",
                           f"**{c128['tokens_per_s'] / sp128['tokens_per_s']:.2f}x**"],
        "attribution graph": [f"completeness {graph['completeness']:.3f}, replacement {graph['replacement']:.3f}"],
    }


@pytest.mark.parametrize("start", list(_expected()))
def test_headline_figures_come_from_results(start):
    row = _row(start)
    for figure in _expected()[start]:
        assert figure in row, f"README headline row {start!r} should quote {figure!r} (from its results file)"


def test_headline_rows_name_existing_results_and_scripts():
    rows = [line for line in _section("Headline results").splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(_expected()) + 1  # plus the header
    for row in rows[1:]:
        for link in re.findall(r"\((benchmarks/results/[^)]+)\)", row):
            assert (ROOT / link).is_file(), link
        for script in re.findall(r"python (benchmarks/\w+\.py)", row):
            assert (ROOT / script).is_file(), script


def test_readme_is_short():
    assert len(README.splitlines()) <= 150


def test_readme_links_exist():
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_tour_runs(tmp_path, monkeypatch):
    """The tour's Python block, as written, on the bundled gpt2-zoo."""
    from circuitlab.zoo import list_models

    if "gpt2-zoo" not in list_models():
        pytest.fail("the bundled gpt2-zoo model is missing; the tour needs it")
    code = re.search(r"```python\n(.*?)```", _section("A short tour"), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["curve"].smallest is not None and scope["exact"].top(1)[0][0] == "L0.H1@END"


def test_real_model_graph_figures_come_from_results():
    """The real-model graph section quotes its results files (benchmarks/graphs.py, the
    circuit-tracer comparison and the coders' set evaluation)."""
    sec = _section("Attribution graphs on a real model")
    g = _results("graphs_smollm2-135m.json")["summary"]
    full, pruned = g["scores"]["full"], g["scores"]["pruned"]
    coh = g["coherence"]
    probe, cos, li = coh["probe prompting"], coh["cosine clustering"], coh["layer+influence clustering"]
    v = _results("graphs_smollm2-135m.json")["verify"]
    ct = _results("circuit_tracer_smollm2.json")
    ev = _results("smollm2-135m_coders_eval.json")["replacement"]
    figures = [f"completeness {full['completeness']:.3f}, replacement {full['replacement']:.3f}",
               f"{pruned['completeness']:.3f}, {pruned['replacement']:.3f}",
               f"{round(pruned['n_features'])} features",
               f"{v['edges']:,} edges in {v['graphs']} graphs", f"{v['max_relative_error']:.1e}".replace("e-0", "e-"),
               f"peak-token consistency {probe['peak_consistency']:.3f} vs cosine {cos['peak_consistency']:.3f} "
               f"({cos['peak_ratio_probe_over_this']:.2f}x)",
               f"layer+influence {li['peak_consistency']:.3f} ({li['peak_ratio_probe_over_this']:.2f}x)",
               f"activation similarity {probe['activation_similarity']:.3f} vs {cos['activation_similarity']:.3f} "
               f"({cos['similarity_ratio_probe_over_this']:.2f}x)",
               f"{ct['nodes']['common']:,} active features",
               f"{ct['time']['circuitlab_s']:.1f} s against {ct['time']['circuit_tracer_s']:.1f} s",
               f"**{ct['time']['circuit_tracer_over_circuitlab']:.2f}x**", f"{ev['ce_recovered']:.3f} of the CE loss"]
    for figure in figures:
        assert figure in sec, f"the real-model graph section should quote {figure!r} (from its results file)"
    assert ct["nodes"]["same_set"] and ct["edges"]["by_source"]["feature"]["max_rel"] < 1e-6
