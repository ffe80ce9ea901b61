"""Real-language tasks (circuitlab.tasks.real) against ground truth computed here.

Fast tests use byte-level BPE tokenizers trained in the test on the tasks' own words (GPT-2's
pre-tokenizer, leading-space word tokens), in two flavours: years as " 17" + "32" (GPT-2) and
one token per digit (SmolLM2). Slow tests run SmolLM2-135M when its folder is present.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import circuitlab as cl
from circuitlab.tasks import real
from circuitlab.tasks.real import fact_prompts as F
from circuitlab.tasks.real import greater_than_prompts as GT
from circuitlab.tasks.real import induction_prompts as IND
from circuitlab.tasks.real import ioi_prompts as IOI
from circuitlab.tasks.real import lexicon as L
from circuitlab.tasks.real.common import single_token_words
from circuitlab.tasks.tokenize import encode, single_token, word_token

SMOL = Path("/root/.cache/circuitlab/models/smollm2-135m")
LEFT_OUT_NAMES = ("Prince", "Crew", "River")
"""Names the test tokenizers never learn as words: tasks must not use them."""


def _words() -> list[str]:
    words = set()
    temps = L.IOI_TEMPLATES + (L.GT_TEMPLATE,) + tuple(t for v in F.TEMPLATES.values() for t in v)
    for t in temps:
        words.update(t.replace("{", " ").replace("}", " ").replace(",", " ").replace(".", " ").split())
    for seq in (L.IOI_NAMES, L.IOI_PLACES, L.IOI_OBJECTS, L.GT_NOUNS):
        words.update(seq)
    for country, capital, language in L.COUNTRIES:
        words.update(country.split() + [capital] + ([language] if language else []))
    for landmark, city in L.LANDMARKS:
        words.update(landmark.split() + [city])
    words.update("lorem ipsum dolor amet consectetur adipiscing elit sed tempor incididunt labore "
                 "magna aliqua enim minim veniam quis nostrud exercitation ullamco laboris".split())
    return sorted(words - set(LEFT_OUT_NAMES) - {"X", "noun", "century", "yy", "N1", "N2", "S"})


def _bpe(two_digit_years: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=20000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = _words()
    tok.train_from_iterator([" ".join(words), "\n".join(words)], trainer)  # with and without a space
    if two_digit_years:  # GPT-2's split of " 1732": " 17" + "32"
        spec = json.loads(tok.to_str())
        vocab, digits = spec["model"]["vocab"], "0123456789"
        extra = [["Ġ", "1"]] + [["Ġ1", c] for c in "1234567"] + [[a, b] for a in digits for b in digits]
        for a, b in extra:
            vocab.setdefault(a + b, len(vocab))
        spec["model"]["merges"] = extra + spec["model"]["merges"]
        tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def bpe():
    return _bpe(two_digit_years=True)


@pytest.fixture(scope="module")
def bpe_digits():
    return _bpe(two_digit_years=False)


def _stub(tok):
    """What from_pairs needs of a model, for tests of prompts alone."""
    return SimpleNamespace(tokenizer=tok, device=torch.device("cpu"), d_vocab=len(tok), name="stub")


def test_tokenizers_are_like_the_real_ones(bpe, bpe_digits):
    for tok in (bpe, bpe_digits):
        assert word_token(tok, "Mary") is not None and word_token(tok, "Prince") is None
        assert tok.convert_ids_to_tokens(encode(tok, "Then, Mary went", bos=False))[-2:] == ["ĠMary", "Ġwent"]
    assert bpe.convert_ids_to_tokens(encode(bpe, " 1732", bos=False)) == ["Ġ17", "32"]
    assert bpe_digits.convert_ids_to_tokens(encode(bpe_digits, " 1732", bos=False)) == ["Ġ", "1", "7", "3", "2"]


# ------------------------------------------------------------------------------------ IOI
def _diff(tok, a: str, b: str) -> list[int]:
    x, y = encode(tok, a), encode(tok, b)
    assert len(x) == len(y)
    return [i for i, (p, q) in enumerate(zip(x, y)) if p != q]


def test_ioi_roles_point_at_the_names(bpe):
    recs = IOI.records(bpe, 2 * len(L.IOI_TEMPLATES), seed=3)
    assert {r["template"] for r in recs} == set(range(len(L.IOI_TEMPLATES)))
    assert {r["order"] for r in recs} == {"ABBA", "BABA"}
    for r in recs:
        ids = encode(bpe, r["clean"])
        io, s = word_token(bpe, r["io"]), word_token(bpe, r["s"])
        assert ids[r["roles"]["IO"]] == io and ids[r["roles"]["S1"]] == s and ids[r["roles"]["S2"]] == s
        assert ids.count(io) == 1 and ids.count(s) == 2
        assert (r["roles"]["IO"] < r["roles"]["S1"]) == (r["order"] == "ABBA") and r["roles"]["S2"] > r["roles"]["S1"]
        assert r["answer"] == " " + r["io"] and r["wrong"] == " " + r["s"]
        assert r["io"] not in LEFT_OUT_NAMES and r["s"] not in LEFT_OUT_NAMES


@pytest.mark.parametrize("corrupt", IOI.CORRUPTIONS)
def test_ioi_corruption_changes_exactly_its_slots(bpe, corrupt):
    for r in IOI.records(bpe, 32, seed=1, corrupt=corrupt):
        roles, bad = r["roles"], encode(bpe, r["corrupt"])
        changed = _diff(bpe, r["clean"], r["corrupt"])
        if corrupt == "abc":  # three fresh, distinct names in all three name slots
            assert changed == sorted([roles["IO"], roles["S1"], roles["S2"]])
            fresh = {bad[roles[k]] for k in ("IO", "S1", "S2")}
            assert len(fresh) == 3 and not fresh & {word_token(bpe, r["io"]), word_token(bpe, r["s"])}
        elif corrupt == "s2":
            names = (word_token(bpe, r["io"]), word_token(bpe, r["s"]))
            assert changed == [roles["S2"]] and bad[roles["S2"]] not in names
        else:
            assert changed == [roles["S2"]] and bad[roles["S2"]] == word_token(bpe, r["io"])


def test_ioi_task_aligns_roles_across_templates(bpe):
    task = real.ioi(_stub(bpe), n=20, seed=0)
    for i, r in enumerate(task.prompts):
        assert task.clean_tokens[i, task.roles["IO"][i]] == task.answer_ids[i]
        assert task.clean_tokens[i, task.roles["S2"][i]] == task.wrong_ids[i]
        assert task.roles["END"][i] == len(encode(bpe, r["clean"])) - 1
    with pytest.raises(ValueError, match="IOI corrupt must be one of"):
        real.ioi(_stub(bpe), n=2, corrupt="flip")


def test_ioi_too_few_names_is_a_clear_error(tiny_model):
    """The tiny word-level vocabulary has four names."""

    with pytest.raises(ValueError, match="IOI names are single tokens"):
        IOI.records(tiny_model("gpt2").tokenizer, 4)


# --------------------------------------------------------------------------- greater-than
def _year_of(tok, tid: int) -> str:
    return tok.decode([tid])


@pytest.mark.parametrize("flavour", ["two_digit", "digit"])
def test_greater_than_years_and_signs(bpe, bpe_digits, flavour):
    tok = bpe if flavour == "two_digit" else bpe_digits
    assert GT.year_format(tok) == flavour
    task = real.greater_than(_stub(tok), n=24, seed=2)
    for i, r in enumerate(task.prompts):
        yy = r["start_yy"]
        assert r["clean"].endswith(f"from the year {r['century']}{yy:02d} to the year {r['century']}")
        assert r["corrupt"] == r["clean"].replace(f"{r['century']}{yy:02d}", f"{r['century']}01", 1)
        changed = _diff(tok, r["clean"], r["corrupt"])
        if flavour == "two_digit":
            assert len(changed) == 1
        else:  # the two digit tokens "YY" vs "01" (a units digit of 1 stays the same)
            assert changed[0] >= 1 and changed[-1] - changed[0] <= 1
        signs = GT.signed_tokens(tok, r)
        if flavour == "two_digit":  # brute force: every two-digit token, compared as a number
            truth = {t: (1 if int(s) > yy else -1) for t in range(len(tok)) if len(s := _year_of(tok, t)) == 2
                     and s.isdigit() and int(s) != yy}
            assert int(_year_of(tok, r["answer_id"])) == yy + 1 and int(_year_of(tok, r["wrong_id"])) == yy - 1
        else:  # the decade digit: later decades +1, earlier -1, the start year's own decade left out
            assert 10 <= yy <= 89
            truth = {t: (1 if int(s) > yy // 10 else -1) for t in range(len(tok)) if len(s := _year_of(tok, t)) == 1
                     and s.isdigit() and int(s) != yy // 10}
        assert signs == truth
        for tid, want in ((r["answer_id"], 1.0), (r["wrong_id"], -1.0)):
            logits = torch.full((1, 1, len(tok)), -1e4)
            logits[0, 0, tid] = 0.0
            # all mass on the answer -> +1, all on the wrong token -> -1
            assert float(task.subset([i]).metric.per_prompt(logits, torch.tensor([0]))) == pytest.approx(want)


def test_word_level_vocabularies_get_clear_errors(tiny_model):
    """The tiny word-level vocabulary has no digits and lacks template words: clear errors, no <unk>."""
    tok = tiny_model("gpt2").tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="tokenize as century"):
            GT.year_format(tok)
        with pytest.raises(ValueError, match=r"no token for \['The'\]"):
            F.counterfact_records(tok, 2)


# ------------------------------------------------------------------------------ facts
@pytest.mark.parametrize("relation", F.RELATIONS)
def test_factual_records(bpe, relation):
    table = dict(F.facts(relation))
    for r in F.records(bpe, 40, seed=0, relation=relation):
        assert r["answer"] == " " + table[r["subject"]] and r["wrong"] == " " + table[r["corrupt_subject"]]
        assert r["answer"] != r["wrong"]
        single_token(bpe, r["answer"]), single_token(bpe, r["wrong"])
        changed = _diff(bpe, r["clean"], r["corrupt"])  # only the subject's tokens differ
        sub = encode(bpe, " " + r["subject"], bos=False)
        assert changed and max(changed) - min(changed) < len(sub) + 1


def test_capitals_list_is_long():
    assert len(F.facts("capital")) >= 80 and len(F.facts("language")) >= 60 and len(F.facts("landmark")) >= 50


@pytest.mark.parametrize("target", F.TARGETS)
def test_counterfact_records(bpe, target):
    capitals = dict(F.facts("capital"))
    for r in F.counterfact_records(bpe, 24, seed=0, target=target):
        true, fake = r["true"], r["counterfactual"]
        assert capitals[r["subject"]] == true and fake != true
        head = F.prompt("capital", r["template"], r["subject"])
        assert r["clean"] == f"{head} {fake}. {head}" and r["corrupt"] == f"{head} {true}. {head}"
        pos = _diff(bpe, r["clean"], r["corrupt"])
        assert len(pos) == 1 and encode(bpe, r["clean"])[pos[0]] == word_token(bpe, fake)
        expect = (f" {fake}", f" {true}") if target == "context" else (f" {true}", f" {fake}")
        assert (r["answer"], r["wrong"]) == expect
    with pytest.raises(ValueError, match="target must be one of"):
        F.counterfact_records(bpe, 2, target="prior")


# --------------------------------------------------------------------------- induction
def test_induction_repeats_word_tokens(bpe):
    pool = IND.word_pool(bpe)
    assert pool and all(bpe.decode([t]).startswith(" ") and bpe.decode([t])[1:].isalpha() for t in pool)
    task = real.induction(_stub(bpe), n=6, seed=0, half_len=5)
    for i, r in enumerate(task.prompts):
        ids = r["ids"]
        assert task.clean_tokens[i, 1:].tolist() == ids + ids[:-1]
        corrupt = task.corrupt_tokens[i]
        assert corrupt[6:].tolist() == ids[:-1] and not set(corrupt[1:6].tolist()) & set(ids)
        assert int(task.answer_ids[i]) == ids[-1]
    assert task.metric.name == "loss" and task.metric.positions[0].tolist() == [6, 7, 8, 9]


# ------------------------------------------------------------------- unknown words, dispatch
def test_unknown_words_and_identical_answers(tiny_model):
    tok = tiny_model("gpt2").tokenizer
    with pytest.warns(UserWarning, match=r"\['Zelda'\] map to the unknown token"):
        encode(tok, "when Zelda went")
    with pytest.raises(ValueError, match="unknown token"):
        single_token(tok, " Zelda")
    rec = [{"clean": "when Mary went", "corrupt": "when John went", "answer": " Mary", "wrong": " Mary"}]
    with pytest.warns(UserWarning, match="answer == wrong"):
        cl.tasks.from_pairs(_stub(tok), rec)


def test_zoo_models_keep_the_zoo_world():
    from circuitlab.zoo import corpus

    zoo = cl.load("gpt2-zoo", device="cpu", check=False)
    for fn, recs in ((cl.tasks.ioi, corpus.ioi(8, seed=1, split="heldout")),
                     (cl.tasks.capitals, corpus.capitals(8, seed=1, split="heldout"))):
        task, ref = fn(zoo, n=8, seed=1), cl.tasks.from_pairs(zoo, recs)
        assert torch.equal(task.clean_tokens, ref.clean_tokens) and torch.equal(task.corrupt_tokens, ref.corrupt_tokens)
    gt = cl.tasks.bundled(zoo, "greater_than", n=4, seed=0)
    assert gt.prompts == corpus.greater_than(4, seed=0, split="heldout")
    # the same weights under another name still count as the zoo
    assert cl.tasks.bundled(SimpleNamespace(**{**vars(_stub(zoo.tokenizer)), "d_vocab": zoo.d_vocab}),
                            "induction", n=2).prompts == corpus.induction(2, split="heldout")


def test_real_tasks_run_on_a_tiny_bpe_model(tmp_path, bpe):
    """A random Llama with the BPE tokenizer: every bundled name builds a real-language task, and
    greater-than's metric equals the probability difference computed from the full logits."""
    from transformers import AutoModelForCausalLM
    from tiny import make_config

    from circuitlab.engine.forward import metric_per_prompt

    cfg = make_config("llama")
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = len(bpe), 0, 0, 0
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path, safe_serialization=True)
    bpe.save_pretrained(tmp_path)
    spec = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**spec, "tokenizer_class": "PreTrainedTokenizerFast"}))
    model = cl.load(str(tmp_path), device="cpu")
    assert model.name not in cl.zoo.list_models()
    from circuitlab.tasks.bundled import BUNDLED

    for name in BUNDLED:
        kw = {"half_len": 6} if name == "induction" else {}
        task = cl.tasks.bundled(model, name, n=4, seed=0, **kw)
        v = metric_per_prompt(model, task.clean_tokens, task.metric)
        assert v.shape == (4,) and torch.isfinite(v).all(), name
    assert "went to the" in cl.tasks.ioi(model, n=2).prompts[0]["clean"]
    task = cl.tasks.greater_than(model, n=3, seed=1)
    with torch.no_grad():
        logits = model.bridge(task.clean_tokens)
    for i, r in enumerate(task.prompts):
        p = logits[i, task.answer_pos[i]].softmax(-1)
        truth = sum(s * float(p[t]) for t, s in GT.signed_tokens(model.tokenizer, r).items())
        got = float(metric_per_prompt(model, task.clean_tokens, task.metric)[i])
        assert got == pytest.approx(truth, abs=1e-5)
    with pytest.raises(ValueError, match="unknown bundled task"):
        cl.tasks.bundled(model, "ioi2")


# ------------------------------------------------------------------------- SmolLM2 (slow)
@pytest.fixture(scope="module")
def smol():
    if not (SMOL / "config.json").exists():
        pytest.skip(f"SmolLM2-135M is not converted at {SMOL}")
    return cl.load(str(SMOL), device="cpu")


def _scores(model, task) -> dict:
    """Share of clean prompts with logit(answer) > logit(wrong), and the mean metric on clean
    and corrupted prompts."""
    from circuitlab.engine.forward import metric_per_prompt

    with torch.no_grad():
        logits = model.bridge(task.clean_tokens)
    end = logits[torch.arange(len(task)), task.answer_pos]
    pair = (end.gather(1, task.answer_ids[:, None]) > end.gather(1, task.wrong_ids[:, None])).float().mean()
    return {"pair": float(pair), "clean": float(metric_per_prompt(model, task.clean_tokens, task.metric).mean()),
            "corrupt": float(metric_per_prompt(model, task.corrupt_tokens, task.metric).mean())}


@pytest.mark.slow
def test_smollm2_vocabulary_suits_the_tasks(smol):
    tok = smol.tokenizer
    assert GT.year_format(tok) == "digit"  # SmolLM2 writes numbers one digit per token
    assert len(F.usable_facts(tok, "capital")) >= 40
    assert len(single_token_words(tok, L.IOI_NAMES)) >= 60


@pytest.mark.slow
def test_smollm2_solves_the_real_tasks(smol):
    """Thresholds sit below what benchmarks/task_accuracy.py measured (16 prompts each here)."""
    s = _scores(smol, cl.tasks.ioi(smol, n=16))
    assert s["pair"] >= 0.9 and s["clean"] > 2.5 and abs(s["corrupt"]) < 1.0, s
    s = _scores(smol, cl.tasks.greater_than(smol, n=16))
    assert s["clean"] > 0.3 and s["clean"] - s["corrupt"] > 0.5, s
    s = _scores(smol, cl.tasks.capitals(smol, n=16))
    assert s["pair"] >= 0.9 and s["clean"] > 3 and s["corrupt"] < -3, s
    s = _scores(smol, cl.tasks.counterfact(smol, n=16, target="memory"))
    assert s["clean"] < s["corrupt"], s  # the false statement in context weakens the memorised answer
    s = _scores(smol, cl.tasks.induction(smol, n=8))  # measured 6.5 vs 13.6 after <|im_start|>
    assert s["clean"] < 8.0 and s["corrupt"] - s["clean"] > 4.0, s
