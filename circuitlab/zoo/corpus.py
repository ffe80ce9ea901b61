"""Deterministic generators of the zoo's synthetic corpus and analysis prompts.

Why one source for both: the same generator that writes a training sentence writes the
clean/corrupt prompt used to analyse the circuit, so analysis prompts are guaranteed to be
in-distribution (or, with ``split="heldout"``, guaranteed to be phrasings never trained on).

Conventions (shared with ``tokenizer.py``):

- Text is space-separated single-token words; punctuation is its own word (``" , "``,
  ``" ."``). Hence token index == index in ``text.split(" ")``.
- Every prompt (``clean`` / ``corrupt``) starts with the BOS token written as text:
  ``"<bos> When Mary and ..."``. The tokenizer never adds BOS itself, so tokenizing a prompt
  gives BOS at index 0 exactly once.
- ``answer`` / ``wrong`` carry a leading space (``" Mary"``) and are one token each.
- ``clean`` and ``corrupt`` have the same number of tokens.
- ``roles`` (IOI) are token positions in the tokenized clean prompt, BOS at index 0.
- ``split="train"`` yields training phrasings; ``split="heldout"`` yields phrasings (or
  induction sequences) that :func:`training_documents` never produces.

Each generator takes ``seed`` and returns the same list for the same arguments.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from . import templates as T
from .world import (ADJECTIVES, COUNTRIES, EVENT_NOUNS, GIVE_VERBS, MOTION_VERBS, NAMES,
                    OBJECTS, OTHER_VERBS, PLACES, RANDOM_WORDS, Country)

Split = Literal["train", "heldout"]
Example = dict[str, Any]
BOS = "<bos>"
"""The BOS token as text; prompts start with ``BOS + " "``."""

CENTURIES: tuple[str, ...] = tuple(str(c) for c in range(11, 20))
"""Century tokens for greater-than (years 1102..1997)."""
START_YY: tuple[int, int] = (2, 97)
"""Inclusive range of greater-than start years (two-digit part)."""


def _check_split(split: str) -> None:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def _fill(template: str, **slots: str) -> str:
    return template.format(**slots)


def _prompt(text: str) -> str:
    return f"{BOS} {text}"


# --------------------------------------------------------------------------- IOI
def _ioi_one(rng: random.Random, template: str, tid: int, order: str,
             corrupt: str) -> Example:
    io, s, c = rng.sample(NAMES, 3)
    place, obj, verb = rng.choice(PLACES), rng.choice(OBJECTS), rng.choice(GIVE_VERBS)
    a, b = (io, s) if order == "ABBA" else (s, io)
    clean = _prompt(_fill(template, A=a, B=b, S=s, P=place, O=obj, V=verb))
    if corrupt == "abc":
        bad = _prompt(_fill(template, A=a, B=b, S=c, P=place, O=obj, V=verb))
    elif corrupt == "swap":
        bad = _prompt(_fill(template, A=a, B=b, S=io, P=place, O=obj, V=verb))
    else:
        raise ValueError(f"IOI corrupt must be 'abc' or 'swap', got {corrupt!r}")
    toks = clean.split(" ")
    s_pos = [i for i, t in enumerate(toks) if t == s]
    roles = {"S1": s_pos[0], "IO": toks.index(io), "S2": s_pos[1], "END": len(toks) - 1}
    return {"clean": clean, "corrupt": bad, "answer": f" {io}", "wrong": f" {s}",
            "roles": roles, "io": io, "s": s, "c": c, "order": order, "template": tid,
            "corruption": corrupt}


def ioi(n: int, seed: int = 0, split: Split = "train", corrupt: str = "abc") -> list[Example]:
    """Indirect-object-identification prompts, ABBA and BABA balanced.

    ``corrupt="abc"`` replaces the second subject mention (S2) by a third name C;
    ``corrupt="swap"`` replaces S2 by the IO name (so the corrupt answer is the subject).
    Templates cycle so each appears equally often; orders alternate.
    Extras: ``roles`` {S1, IO, S2, END} token positions (BOS at 0), ``io``, ``s``, ``c``,
    ``order``, ``template`` (index into the split's template list).
    """
    _check_split(split)
    temps = T.IOI_TRAIN if split == "train" else T.IOI_HELDOUT
    rng = random.Random(zlib.crc32(f"ioi/{split}/{seed}".encode()))
    out = []
    for i in range(n):
        tid = (i // 2) % len(temps)
        out.append(_ioi_one(rng, temps[tid], tid, "ABBA" if i % 2 == 0 else "BABA", corrupt))
    return out


# --------------------------------------------------------------------- induction
def _is_heldout_seq(words: list[str] | tuple[str, ...]) -> bool:
    """Hash split: 1 in 8 random sequences is reserved for held-out evaluation."""
    return zlib.crc32(" ".join(words).encode()) % 8 == 0


def _random_seq(rng: random.Random, length: int, split: Split) -> list[str]:
    while True:
        words = rng.sample(RANDOM_WORDS, length)
        if _is_heldout_seq(words) == (split == "heldout"):
            return words


def induction(n: int, seed: int = 0, split: Split = "train",
              half_len: int = 12) -> list[Example]:
    """Repeated random-word sequences: ``<bos> w1..wL w1..w(L-1)`` -> answer ``" wL"``.

    Words are drawn without replacement from the dedicated ``RANDOM_WORDS`` pool; held-out
    and training sequences are disjoint by a hash of the first repeat. ``corrupt`` replaces
    the first repeat by fresh words (nothing to copy); ``wrong`` is a pool word absent
    from both. Extras: ``words`` (the L words), ``half_len``, ``first`` and ``second``
    (token positions where each repeat starts). Token-level metric: in the full
    repetition, positions ``second .. second+L-2`` should predict the next word.
    """
    _check_split(split)
    if not 2 <= half_len <= len(RANDOM_WORDS) // 3:
        raise ValueError(f"half_len must be in [2, {len(RANDOM_WORDS) // 3}]")
    rng = random.Random(zlib.crc32(f"induction/{split}/{seed}".encode()))
    out = []
    for _ in range(n):
        words = _random_seq(rng, half_len, split)
        rest = [w for w in RANDOM_WORDS if w not in words]
        fresh = rng.sample(rest, half_len + 1)
        clean = _prompt(" ".join(words + words[:-1]))
        bad = _prompt(" ".join(fresh[:half_len] + words[:-1]))
        out.append({"clean": clean, "corrupt": bad, "answer": f" {words[-1]}",
                    "wrong": f" {fresh[-1]}", "words": words, "half_len": half_len,
                    "first": 1, "second": 1 + half_len})
    return out


INDUCTION_REPEATS: tuple[tuple[int, float], ...] = ((2, 0.4), (3, 0.35), (4, 0.25))
"""(repeats, probability) of training repetitions. More than two repeats make copying a
token from context right more often than wrong; with two, the first half (sampled without
replacement, so never copyable) cancels the second and small models stall on a plateau."""


def induction_sentence(rng: random.Random, min_len: int = 3, max_len: int = 16) -> str:
    """A training repetition ``w1..wL w1..wL [w1..wL ...] .`` (never a held-out sequence)."""
    words = _random_seq(rng, rng.randint(min_len, max_len), "train")
    reps = rng.choices([r for r, _ in INDUCTION_REPEATS],
                       weights=[p for _, p in INDUCTION_REPEATS])[0]
    return " ".join(words * reps) + " ."


# ------------------------------------------------------------------ greater-than
def _gt_combos(split: Split) -> list[tuple[int, str, str]]:
    frames_tr = list(enumerate(T.GT_FRAMES_TRAIN))
    frames_ho = [(len(T.GT_FRAMES_TRAIN) + i, f) for i, f in enumerate(T.GT_FRAMES_HELDOUT)]
    if split == "train":
        return [(i, f, n) for i, f in frames_tr for n in T.GT_NOUNS_TRAIN]
    return ([(i, f, n) for i, f in frames_tr for n in T.GT_NOUNS_HELDOUT]
            + [(i, f, n) for i, f in frames_ho for n in T.GT_NOUNS_TRAIN + T.GT_NOUNS_HELDOUT])


def greater_than(n: int, seed: int = 0, split: Split = "train") -> list[Example]:
    """``<bos> The war lasted from the year 17 32 to the year 17`` -> a year above 32.

    Years are two tokens (century, two-digit year). ``corrupt`` uses start year ``01``
    (Hanna et al.), so every year is valid there. ``answer`` is the year just above the
    start and ``wrong`` the one just below; the real metric is probability mass on years
    above ``start_yy`` minus mass on years below it. Held-out = noun/frame combinations
    never trained on. Extras: ``start_yy`` (int), ``century`` (str), ``noun``,
    ``template`` (frame index; >= len(GT_FRAMES_TRAIN) means a held-out frame).
    """
    _check_split(split)
    combos = _gt_combos(split)
    rng = random.Random(zlib.crc32(f"gt/{split}/{seed}".encode()))
    out = []
    for i in range(n):
        fid, frame, noun = combos[i % len(combos)] if i < len(combos) else rng.choice(combos)
        cent = rng.choice(CENTURIES)
        yy = rng.randint(*START_YY)
        clean = _prompt(_fill(frame, N=noun, C=cent, Y=f"{yy:02d}"))
        bad = _prompt(_fill(frame, N=noun, C=cent, Y="01"))
        out.append({"clean": clean, "corrupt": bad, "answer": f" {yy + 1:02d}",
                    "wrong": f" {yy - 1:02d}", "start_yy": yy, "century": cent,
                    "noun": noun, "template": fid})
    return out


def greater_than_sentence(rng: random.Random) -> str:
    """A training sentence with a uniformly drawn end year above the start year."""
    fid, frame, noun = rng.choice(_gt_combos("train"))
    cent, yy = rng.choice(CENTURIES), rng.randint(*START_YY)
    end = rng.randint(yy + 1, 99)
    return f"{_fill(frame, N=noun, C=cent, Y=f'{yy:02d}')} {end:02d} ."


# ---------------------------------------------------------------- factual recall
RELATIONS: tuple[str, ...] = ("capital", "language", "continent", "multihop")
"""Fact relations; ``multihop`` is language -> country -> capital."""
MULTIHOP_TRAIN_EVERY: int = 4
"""Countries with index % 4 == 3 never get multi-hop sentences in training."""


def _answer_field(relation: str) -> str:
    return {"capital": "capital", "language": "language", "continent": "continent",
            "multihop": "capital"}[relation]


def _fact_text(template: str, c: Country) -> str:
    return _fill(template, country=c.name, capital=c.capital, language=c.language,
                 continent=c.continent)


def multihop_trained(country: Country) -> bool:
    """Whether multi-hop sentences about ``country`` appear in training text."""
    return COUNTRIES.index(country) % MULTIHOP_TRAIN_EVERY != MULTIHOP_TRAIN_EVERY - 1


def facts(relation: str = "capital", n: int | None = None, seed: int = 0,
          split: Split = "train") -> list[Example]:
    """Factual-recall prompts: ``<bos> The capital of France is`` -> ``" Paris"``.

    ``relation`` is one of :data:`RELATIONS`. ``n=None`` returns every (country, template)
    pair once, in a fixed order; an int draws ``n`` pairs at random. The corrupt prompt
    swaps the subject entity (country, or language for multi-hop) for another country's;
    ``wrong`` is that country's answer (always different from ``answer``). Held-out = the
    held-out phrasings, over all countries. Extras: ``relation``, ``country``,
    ``corrupt_country``, ``template``, ``multihop_trained`` (multi-hop facts for this
    country occur in training; single-hop facts always do).
    """
    _check_split(split)
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    temps = (T.FACT_TRAIN if split == "train" else T.FACT_HELDOUT)[relation]
    field = _answer_field(relation)
    rng = random.Random(zlib.crc32(f"facts/{relation}/{split}/{seed}".encode()))
    pairs = [(c, t) for t in range(len(temps)) for c in COUNTRIES]
    if n is not None:
        pairs = [rng.choice(pairs) for _ in range(n)]
    out = []
    for c, tid in pairs:
        others = [o for o in COUNTRIES if getattr(o, field) != getattr(c, field)]
        o = rng.choice(others)
        head, _ = temps[tid].rsplit(" ", 1)
        out.append({"clean": _prompt(_fact_text(head, c)),
                    "corrupt": _prompt(_fact_text(head, o)),
                    "answer": f" {getattr(c, field)}", "wrong": f" {getattr(o, field)}",
                    "relation": relation, "country": c.name, "corrupt_country": o.name,
                    "template": tid, "multihop_trained": multihop_trained(c)})
    return out


def capitals(n: int | None = None, seed: int = 0, split: Split = "train",
             hop: int = 1) -> list[Example]:
    """Capital recall; ``hop=1``: via the country, ``hop=2``: via its language."""
    if hop not in (1, 2):
        raise ValueError(f"hop must be 1 or 2, got {hop}")
    return facts("capital" if hop == 1 else "multihop", n=n, seed=seed, split=split)


def fact_sentence(rng: random.Random, weights: dict[str, float]) -> str:
    """One training fact sentence; multi-hop only for :func:`multihop_trained` countries."""
    rel = rng.choices(list(weights), weights=list(weights.values()))[0]
    if rel == "extra":
        return _fact_text(rng.choice(T.FACT_EXTRA_TRAIN), rng.choice(COUNTRIES)) + " ."
    pool = COUNTRIES if rel != "multihop" else [c for c in COUNTRIES if multihop_trained(c)]
    return _fact_text(rng.choice(T.FACT_TRAIN[rel]), rng.choice(pool)) + " ."


# ------------------------------------------------------------------------ filler
def filler_sentence(rng: random.Random, templates: tuple[str, ...] = T.FILLER) -> str:
    """A simple grammatical sentence over the world's nouns and verbs."""
    n1, n2 = rng.sample(NAMES, 2)
    p1, p2 = rng.sample(PLACES, 2)
    c = rng.choice(COUNTRIES)
    o1, o2 = rng.sample(OBJECTS, 2)
    slots = {"N": n1, "N2": n2, "P": p1, "P2": p2, "O": o1, "O2": o2,
             "GV": rng.choice(GIVE_VERBS), "MV": rng.choice(MOTION_VERBS),
             "OV": rng.choice(OTHER_VERBS), "ADJ": rng.choice(ADJECTIVES),
             "EV": rng.choice(EVENT_NOUNS), "PR": rng.choice(("he", "she", "they")),
             "CAP": c.capital, "CTRY": c.name}
    return _fill(rng.choice(templates), **slots) + " ."


def name_copy_sentence(rng: random.Random) -> str:
    """A sentence that mentions a name again (see ``templates.NAME_COPY``)."""
    return filler_sentence(rng, T.NAME_COPY)


def ioi_sentence(rng: random.Random) -> str:
    """A training IOI sentence (prompt + indirect object + ``.``)."""
    tid = rng.randrange(len(T.IOI_TRAIN))
    ex = _ioi_one(rng, T.IOI_TRAIN[tid], tid, rng.choice(("ABBA", "BABA")), "abc")
    return ex["clean"][len(BOS) + 1:] + ex["answer"] + " ."


# ------------------------------------------------------------------------ mixing
@dataclass
class Mix:
    """Sentence-kind proportions of the training corpus (normalised on use)."""

    ioi: float = 0.28
    """Indirect-object sentences."""
    greater_than: float = 0.16
    """Year-span sentences with a later end year."""
    facts: float = 0.18
    """Country facts (see ``fact_weights``)."""
    induction: float = 0.20
    """Repeated random-word sequences."""
    filler: float = 0.08
    """Grammar filler sentences."""
    name_copy: float = 0.10
    """Sentences that repeat a name (bootstrap name copying)."""
    fact_weights: tuple[tuple[str, float], ...] = (
        ("capital", 0.35), ("language", 0.2), ("continent", 0.12), ("multihop", 0.23),
        ("extra", 0.10))
    """Relation proportions inside ``facts``; ``extra`` = reversed statements."""
    min_sentences: int = 1
    """Fewest sentences per document."""
    max_sentences: int = 4
    """Most sentences per document."""


def training_documents(seed: int, n: int, mix: Mix | None = None) -> list[str]:
    """``n`` training documents: ``"<bos> s1 . s2 . ..."``, one mix draw per sentence.

    Deterministic in ``seed``; never contains a held-out phrasing or induction sequence.
    """
    mix = mix or Mix()
    rng = random.Random(seed)
    kinds = ["ioi", "greater_than", "facts", "induction", "filler", "name_copy"]
    weights = [getattr(mix, k) for k in kinds]
    fw = dict(mix.fact_weights)
    make = {"ioi": ioi_sentence, "greater_than": greater_than_sentence,
            "facts": lambda r: fact_sentence(r, fw), "induction": induction_sentence,
            "filler": filler_sentence, "name_copy": name_copy_sentence}
    docs = []
    for _ in range(n):
        k = rng.randint(mix.min_sentences, mix.max_sentences)
        sents = [make[kind](rng) for kind in rng.choices(kinds, weights=weights, k=k)]
        docs.append(_prompt(" ".join(sents)))
    return docs
