"""Probe prompting on real language: lexicon concepts and swaps for a BPE tokenizer, zoo vs real
picked from the model, and graph + probe prompting end to end on a tiny random Llama speaking
real English (a byte-level BPE trained here on the lexicon's words); the benchmark's smoke run.
SmolLM2-135M with its trained transcoders runs under the slow marker."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from circuitlab.graphs import probes as P
from circuitlab.graphs.attribute import GraphConfig
from circuitlab.graphs.fit import FitConfig, fit_transcoders
from circuitlab.graphs.probing import ProbeConfig, probe_prompting
from circuitlab.graphs.transcoders import save_transcoders
from circuitlab.graphs.verify import intervention_effects, target_nodes
from circuitlab.tasks.real import fact_prompts as F
from circuitlab.tasks.real import lexicon as L

SPLIT = "Colosseum"
"""A subject the test tokenizer never learns as a word: it splits into several tokens."""
ROOT = Path(__file__).resolve().parents[1]


def _words() -> list[str]:
    texts = [t for ts in (*P.ENTITY_PROBES.values(), *P.RELATION_PROBES.values(), *P.ANSWER_PROBES.values())
             for t in ts]
    texts += [t for ts in F.TEMPLATES.values() for t in ts] + list(L.IOI_TEMPLATES)
    words = set()
    for t in texts:
        words.update(re.sub(r"\{\w+\}|[,.?!]", " ", t).split())
    for country, capital, language in L.COUNTRIES:
        words.update(country.split() + [capital] + ([language] if language else []))
    for landmark, city in L.LANDMARKS:
        words.update(landmark.split() + [city])
    words.update(L.IOI_NAMES + L.IOI_PLACES + L.IOI_OBJECTS)
    words.update(w[0].upper() + w[1:] for w in list(words))
    return sorted(words - {SPLIT})


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=6000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = _words()
    tok.train_from_iterator([" ".join(words), "\n".join(words)], trainer)  # words with and without a space
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def _tokens(tok, text: str) -> list[str]:
    return [tok.decode([i]).strip() for i in tok(text, add_special_tokens=False)["input_ids"]]


def test_real_concepts_for_a_capital_prompt(bpe):
    cs = P.real_concepts(bpe, "The capital of France is", " Paris", n_probes=5)
    assert [(c.label, c.category) for c in cs] == [("France", "entity"), ("capital", "relationship"),
                                                  ("Paris", "attribute")]
    for c in cs:
        assert len(c.probes) == 5 and len(set(c.probes)) == 5
        for p in c.probes:  # the label is a token of every probe (after a space, as in the seed prompt)
            assert c.label in _tokens(bpe, p), (c.label, p)
    entity, relation, answer = cs
    assert not any("Paris" in p for p in entity.probes)  # entity probes never give the answer away
    assert not any("France" in p for p in relation.probes + answer.probes)
    capitals = dict(F.facts("capital"))
    for p in relation.probes:  # other countries of the relation, with their own capitals
        named = [s for s in capitals if re.search(rf"\b{re.escape(s)}\b", p)]
        cities = {c for c in capitals.values() if re.search(rf"\b{c}\b", p)}
        assert named and cities <= {capitals[s] for s in named}
    assert P.real_concepts(bpe, "The capital of France is", n_probes=3)[2].label == "Paris"  # lexicon answer


def test_real_concepts_for_other_relations(bpe):
    cs = P.real_concepts(bpe, "In Japan, most people speak")
    assert [c.label for c in cs] == ["Japan", "speak", "Japanese"]
    assert all("speak" in _tokens(bpe, p) for p in cs[1].probes)
    langs = dict(F.facts("language"))
    assert not any(f" {langs['Japan']}" in p for p in cs[1].probes)  # swapped-in facts have other answers
    cs = P.real_concepts(bpe, "The official language of the Netherlands is", " Dutch")
    assert [c.label for c in cs] == ["Netherlands", "language", "Dutch"]
    cs = P.real_concepts(bpe, f"The {SPLIT} is located in the city of", " Rome")
    entity = cs[0]
    pieces = _tokens(bpe, " " + SPLIT)
    assert len(pieces) > 1 and entity.label == pieces[-1] != SPLIT  # a split name: its last token
    assert entity.description == f"the landmark the {SPLIT}"
    assert all(entity.label in _tokens(bpe, p) and "Rome" not in p for p in entity.probes)
    assert [c.label for c in cs[1:]] == ["located", "Rome"]
    assert P.find_fact("The capital of Northern Ireland is").subject == "Northern Ireland"  # longest name wins
    assert P.find_fact("The capital of Northern Ireland is").answer == "Belfast"
    for prompt in ("When Jordan and Mary went to the store, Mary gave a drink to", "The capital of Atlantis is",
                   "Georgia went home"):
        assert P.find_fact(prompt) is None and P.real_concepts(bpe, prompt) == []
    assert P.find_fact("Jordan is home to", " Amman").relation == "capital"  # the answer names the relation


def test_real_swaps(bpe):
    prompt = "The capital of France is"
    n = len(bpe(prompt)["input_ids"])
    sw = P.real_swaps(bpe, prompt, 4)
    capitals = dict(F.facts("capital"))
    assert len(sw) == 4 and len({s for s, _ in sw}) == 4
    for s, p in sw:
        assert p == f"The capital of {s} is" and s != "France" and capitals[s] != "Paris"
        assert len(bpe(p)["input_ids"]) == n  # same token count where the lexicon allows
    sw = P.real_swaps(bpe, "The Eiffel Tower is located in the city of", 3)
    cities = dict(F.facts("landmark"))
    for s, p in sw:
        assert p.startswith("The " if s.startswith("the ") else s[0]) and cities[s] != "Paris"
        assert p.endswith(" is located in the city of")
    assert P.real_swaps(bpe, "nothing here", 3) == []


def test_zoo_or_real_from_the_model(bpe):
    zoo = SimpleNamespace(name="gpt2-zoo", tokenizer=None)
    prompt = "<bos> The capital of France is"
    assert [c.probes for c in P.default_concepts(zoo, prompt, " Paris")] == \
        [c.probes for c in P.world_concepts(prompt, " Paris")]
    assert P.default_swaps(zoo, prompt, 3) == P.swapped_prompts(prompt, 3)
    real = SimpleNamespace(name="some-model", tokenizer=bpe)
    assert [c.label for c in P.default_concepts(real, "The capital of France is", " Paris")] == \
        ["France", "capital", "Paris"]
    assert P.default_swaps(real, "The capital of France is", 2) == P.real_swaps(bpe, "The capital of France is", 2)


@pytest.fixture(scope="module")
def llama_real(bpe, tmp_path_factory):
    """A tiny random Llama (3 layers) with the BPE tokenizer, saved and loaded like any model."""
    import circuitlab as cl
    import transformers as tf

    folder = tmp_path_factory.mktemp("llama-real")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(bpe), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=bpe.bos_token_id, eos_token_id=bpe.eos_token_id,
                         pad_token_id=bpe.pad_token_id)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder, safe_serialization=True)
    bpe.save_pretrained(folder)
    return folder, cl.load(str(folder), device="cpu")


LOOSE = {"node_threshold": 0.95, "edge_threshold": 0.99}
"""Pruning thresholds for the tiny random model: at the defaults its few influential features are
mostly merged away (its tokens' direct paths carry most of the influence)."""
TRAIN = ["The capital of France is Paris.", "The capital of Spain is Madrid.", "In Japan, most people speak Japanese.",
         "The Eiffel Tower is located in the city of Paris.", "She lives in Paris with her family.",
         "Many tourists visit Italy every year.", "The official language of Germany is German."]


@pytest.fixture(scope="module")
def real_tcs(llama_real, tmp_path_factory):
    """Quick transcoders for the tiny Llama, fitted once, and the folder they are saved in."""
    tcs = fit_transcoders(llama_real[1], TRAIN, FitConfig(n_features=48, steps=120))
    return tcs, save_transcoders(tcs, tmp_path_factory.mktemp("tc"))


def test_graph_and_probe_prompting_on_a_real_language_llama(llama_real, real_tcs):
    _, model = llama_real
    tcs = real_tcs[0]
    prompt = "The capital of France is"
    r = probe_prompting(model, tcs, prompt, " Paris", cfg=ProbeConfig(
        graph=GraphConfig(max_feature_nodes=60, batch_size=30), n_swaps=3, n_probes=4, **LOOSE))
    g = r.graph
    assert r.concepts == ["France", "capital", "Paris"] and g.logit_strs == [" Paris"]
    # the graph's invariants: edges + bias = each target's pre-activation; edges = interventions
    rows = target_nodes(g)
    A = g.adjacency[rows]
    err = (A.sum(1) + g.bias[rows] - g.preact[rows]).abs()
    assert (err <= 1e-3 + 1e-4 * (A.abs().sum(1) + g.bias[rows].abs())).all()
    sources = list(range(0, g.n_features, 4)) + list(range(g.error_start, g.logit_start, 3))
    measured, predicted = intervention_effects(model, tcs, g, sources)
    assert predicted.abs().max() > 0.01
    assert torch.allclose(measured, predicted, atol=1e-3, rtol=1e-4), (measured - predicted).abs().max()
    members = [u for sn in r.supernodes for u in sn.features]
    assert members and len(members) == len(set(members)) and set(members) <= set(r.features)
    for name in ("full", "pruned", "probe_subgraph"):
        assert 0 <= r.scores[name]["replacement"] <= 1 and 0 <= r.scores[name]["completeness"] <= 1
    assert set(r.coherence) == {"probe prompting", "cosine clustering", "layer+influence clustering"}
    assert r.transfer["n_swaps"] == 3 and 0 <= r.transfer["overall"] <= 1
    json.dumps(r.to_dict())
    with pytest.raises(ValueError, match="no concepts"):
        probe_prompting(model, tcs, "When Mary and John went to the store", graph=g)


def test_probe_command_needs_no_concepts_file_on_a_real_model(llama_real, real_tcs, tmp_path, capsys):
    from circuitlab.cli import main

    folder, tc = llama_real[0], real_tcs[1]
    out = tmp_path / "p"
    assert main(["probe", "--model", str(folder), "--transcoders", str(tc), "--prompt", "The capital of France is",
                 "--target", " Paris", "--max-feature-nodes", "60", "--node-threshold", "0.95",
                 "--edge-threshold", "0.99", "--out", str(out)]) == 0
    res = json.loads((out / "probe.json").read_text())
    assert res["concepts"] == ["France", "capital", "Paris"] and res["transfer"]["n_swaps"] == 5
    assert "| probe prompting |" in capsys.readouterr().out


def _bench():
    spec = importlib.util.spec_from_file_location("bench_graphs", ROOT / "benchmarks" / "graphs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_quick_run_on_a_real_language_model(llama_real, real_tcs, tmp_path):
    folder, tc = llama_real[0], real_tcs[1]
    out = tmp_path / "graphs.json"
    bench = _bench()
    assert bench.main(["--model", str(folder), "--transcoders", str(tc), "--quick", "--threads", "1",
                       "--node-threshold", "0.95", "--edge-threshold", "0.99", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [p["relation"] for p in res["prompts"]] == ["capital", "language", "landmark"]
    assert len(res["graph_only"]["prompts"]) == 1  # an IOI prompt, graph only
    for p in res["prompts"] + res["graph_only"]["prompts"]:
        v = p["verify"]  # edges checked by intervention agree with the graph
        assert v["edges"] > 0 and v["max_abs_error"] <= 1e-3 + 1e-4 * v["max_abs_edge"]
    s = res["summary"]
    assert set(s["coherence"]) == {"probe prompting", "cosine clustering", "layer+influence clustering"}
    assert all(0 <= s["scores"][w]["completeness"] <= 1 for w in ("full", "pruned", "probe_subgraph"))
    assert set(res["by_relation"]) | set(p["relation"] for p in res["prompts"] if "probe_error" in p) == \
        {"capital", "language", "landmark"}
    assert res["meta"]["machine"]["cores"] >= 1 and not math.isnan(s["seconds_per_graph"])
    assert bench.slug("gpt2-zoo") == "gpt2zoo" and bench.slug("smollm2-135m") == "smollm2-135m"


@pytest.mark.slow
def test_smollm2_probe_prompting_with_trained_transcoders():
    """SmolLM2-135M with its 30 trained transcoders (``circuitlab train saes/configs/smollm2-135m.toml``)."""
    import circuitlab as cl
    from circuitlab.graphs.transcoders import find_transcoders, load_transcoders
    from circuitlab.models import fetch

    if not fetch.is_fetched("smollm2-135m"):
        pytest.skip("SmolLM2-135M is not fetched (circuitlab models fetch smollm2-135m)")
    folder = find_transcoders("smollm2-135m")
    if folder is None:
        pytest.skip("no trained SmolLM2 transcoders (circuitlab train saes/configs/smollm2-135m.toml)")
    model = cl.load("smollm2-135m", device="cpu")
    tcs = load_transcoders(folder)
    r = probe_prompting(model, tcs, "The capital of France is", " Paris",
                        cfg=ProbeConfig(graph=GraphConfig(max_feature_nodes=300)))
    assert r.concepts == ["France", "capital", "Paris"] and r.graph.n_layers == 30
    assert r.scores["full"]["completeness"] > 0.5
    g = r.graph
    sources = list(range(0, g.n_features, max(1, g.n_features // 8)))[:8]
    measured, predicted = intervention_effects(model, tcs, g, sources)
    assert (measured - predicted).abs().max() <= 1e-3 + 1e-3 * predicted.abs().max()
