"""Fast checks of the zoo corpus and tokenizer (no model, no training)."""

from __future__ import annotations

import re

import pytest

from circuitlab.zoo import corpus, list_models, model_dir, world
from circuitlab.zoo.corpus import BOS
from circuitlab.zoo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def train_docs():
    return corpus.training_documents(seed=123, n=4000)


def _all_examples(split: str) -> list[dict]:
    exs = corpus.ioi(64, seed=1, split=split) + corpus.ioi(64, seed=1, split=split,
                                                            corrupt="swap")
    exs += corpus.induction(32, seed=1, split=split)
    exs += corpus.greater_than(64, seed=1, split=split)
    for rel in corpus.RELATIONS:
        exs += corpus.facts(rel, split=split)
    return exs


# Words sampled per example, by category; masking them turns a prompt into its template.
_SLOTS = {w: "<N>" for w in world.NAMES} | {w: "<P>" for w in world.PLACES}
_SLOTS |= {w: "<O>" for w in world.OBJECTS} | {w: "<Y>" for w in world.YEAR_TOKENS}
_SLOTS |= {c.name: "<C>" for c in world.COUNTRIES} | {c.capital: "<CAP>" for c in world.COUNTRIES}
_SLOTS |= {c.language: "<L>" for c in world.COUNTRIES} | {w: "<CT>" for w in world.CONTINENTS}


def _skeleton(text: str) -> str:
    return " ".join(_SLOTS.get(w, w) for w in text.split(" "))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_clean_corrupt_equal_length_and_single_token_answers(tok, split):
    for ex in _all_examples(split):
        clean = tok(ex["clean"], add_special_tokens=False).input_ids
        bad = tok(ex["corrupt"], add_special_tokens=False).input_ids
        assert len(clean) == len(bad), ex
        assert clean[0] == tok.bos_token_id and clean.count(tok.bos_token_id) == 1
        assert ex["clean"] != ex["corrupt"]
        for key in ("answer", "wrong"):
            ids = tok(ex[key], add_special_tokens=False).input_ids
            assert len(ids) == 1 and ids[0] != tok.unk_token_id, (key, ex)
        assert ex["answer"] != ex["wrong"]


def test_heldout_prompts_never_in_training_text(train_docs):
    masked_docs = "\n".join(_skeleton(d) for d in train_docs)
    train_prompts = {e["clean"] for e in _all_examples("train")}
    for ex in _all_examples("heldout"):
        assert ex["clean"] not in train_prompts
        if "words" in ex:  # induction: disjoint by hash of the sequence
            continue
        body = _skeleton(ex["clean"][len(BOS) + 1:])
        assert body not in masked_docs, f"held-out phrasing occurs in training: {body}"


def test_training_induction_never_uses_heldout_sequences(train_docs):
    import random
    rng = random.Random(0)
    for _ in range(2000):
        words = corpus.induction_sentence(rng).split(" ")[:-1]
        period = words.index(words[0], 1)  # words within one repeat are distinct
        assert words == words[:period] * (len(words) // period)
        assert not corpus._is_heldout_seq(words[:period])
    for ex in corpus.induction(100, split="heldout"):
        assert corpus._is_heldout_seq(ex["words"])


def test_heldout_made_of_trained_tokens(train_docs):
    seen = {w for d in train_docs for w in d.split(" ")}
    for ex in _all_examples("heldout"):
        for w in (ex["clean"] + ex["answer"]).split(" "):
            if w:
                assert w in seen, f"{w!r} of a held-out prompt never occurs in training"


def test_ioi_roles_and_balance(tok):
    exs = corpus.ioi(40, seed=3, split="train") + corpus.ioi(12, seed=3, split="heldout")
    for ex in exs:
        ids = tok(ex["clean"], add_special_tokens=False).input_ids
        words = ex["clean"].split(" ")
        assert len(ids) == len(words)
        r = ex["roles"]
        assert words[r["S1"]] == ex["s"] and words[r["S2"]] == ex["s"]
        assert words[r["IO"]] == ex["io"] == ex["answer"].strip()
        assert r["END"] == len(ids) - 1 and words[r["END"]] == "to"
        assert r["S1"] < r["S2"] and r["IO"] < r["S2"]
        assert (r["IO"] < r["S1"]) == (ex["order"] == "ABBA")
        assert ids[r["S1"]] == ids[r["S2"]] == tok.convert_tokens_to_ids(ex["s"])
    orders = [e["order"] for e in exs]
    assert orders.count("ABBA") == orders.count("BABA")
    assert len({e["template"] for e in corpus.ioi(16, split="train")}) >= 6
    assert len({e["template"] for e in corpus.ioi(16, split="heldout")}) >= 2
    swap = corpus.ioi(4, seed=3, corrupt="swap")
    assert all(e["corrupt"].split(" ")[e["roles"]["S2"]] == e["io"] for e in swap)


def test_generators_are_deterministic():
    assert corpus.ioi(10, seed=5) == corpus.ioi(10, seed=5)
    assert corpus.ioi(10, seed=5) != corpus.ioi(10, seed=6)
    assert corpus.training_documents(7, 20) == corpus.training_documents(7, 20)
    assert corpus.greater_than(10, seed=2) == corpus.greater_than(10, seed=2)


def test_greater_than_fields(tok):
    for ex in corpus.greater_than(50, split="heldout"):
        words = ex["clean"].split(" ")
        assert words[-1] == ex["century"] and f"{ex['start_yy']:02d}" in words
        assert 2 <= ex["start_yy"] <= 97
    for doc in corpus.training_documents(9, 300):
        for m in re.finditer(r"(1\d) (\d\d) (?:to the year|and ended in the year|and it "
                             r"was over by) \1 (\d\d)", doc):
            assert int(m.group(3)) > int(m.group(2))


def test_facts_cover_every_country_in_training(train_docs):
    text = "\n".join(train_docs)
    for c in world.COUNTRIES:
        assert f"{c.name} is {c.capital}" in text or f"capital is {c.capital}" in text
    mh = corpus.capitals(split="heldout", hop=2)
    assert {e["multihop_trained"] for e in mh} == {True, False}


def test_tokenizer_conventions(tok, train_docs):
    for w in world.all_words():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert tok(" Mary", add_special_tokens=False).input_ids == tok("Mary").input_ids
    assert len(tok("Mary").input_ids) == 1  # no automatic BOS/EOS
    assert tok.bos_token == tok.eos_token == tok.pad_token == BOS
    for doc in train_docs[:500]:
        ids = tok(doc, add_special_tokens=False).input_ids
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == doc


def test_zoo_registry():
    names = list_models()
    for name in names:
        assert (model_dir(name) / "config.json").exists()
    with pytest.raises(ValueError, match="bundled models"):
        model_dir("no-such-model")


def test_bundled_models_load_offline_and_solve_ioi():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for name in list_models():
        folder = model_dir(name)
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        assert tok("Mary", add_special_tokens=False).input_ids == tok("Mary").input_ids
        assert tok.bos_token_id == 0 and len(tok("Mary").input_ids) == 1
        exs = corpus.ioi(8, seed=11, split="heldout")
        for ex in exs:
            ids = torch.tensor([tok(ex["clean"], add_special_tokens=False).input_ids])
            with torch.no_grad():
                top = model(input_ids=ids).logits[0, -1].argmax().item()
            assert top == tok.convert_tokens_to_ids(ex["io"]), (name, ex["clean"])
