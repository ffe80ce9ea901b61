"""Concept hypotheses and probe prompts (probe prompting, docs/methods.md section 3, step 3).

A concept is a label (one token, e.g. ``France``), a category (entity / relationship /
attribute) and probes: short prompts mentioning it in varied contexts. The reference asks an
LLM for them; here they come offline, for the model at hand (``default_concepts``):

- zoo models: from the zoo world (countries, capitals, languages) and the zoo's own training
  templates, so probes are in distribution (``world_concepts``, ``swapped_prompts``);
- any other model: from the real-language lexicon of ``circuitlab.tasks.real`` (countries,
  capitals, languages, landmarks) in plain English (``real_concepts``, ``real_swaps``), for
  factual-recall prompts such as "The capital of France is" -> " Paris" or "The Eiffel Tower is
  located in the city of" -> " Paris";
- or from the user (``Concept(label, category, probes=[...])``, ``user_concepts``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

CATEGORIES = ("entity", "relationship", "attribute")


@dataclass
class Concept:
    """One concept hypothesis with its probe prompts."""

    label: str
    """The concept's word as it appears in text (one token), e.g. ``France``."""
    category: str = "entity"
    """entity, relationship or attribute."""
    description: str = ""
    probes: list[str] = field(default_factory=list)
    """Prompts that mention ``label`` (zoo models' start with ``<bos>``; the model's tokenizer
    adds BOS to the others)."""

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"concept category must be one of {CATEGORIES}, got {self.category!r}")


def _fill(template: str, c) -> str:
    return "<bos> " + template.format(country=c.name, capital=c.capital, language=c.language,
                                      continent=c.continent)


def _find_country(prompt: str):
    from circuitlab.zoo.world import COUNTRIES

    words = set(prompt.replace(",", " ").split())
    for c in COUNTRIES:
        if c.name in words or c.language in words:
            return c
    return None


def world_concepts(prompt: str, answer: Optional[str] = None, n_probes: int = 6, seed: int = 0) -> list[Concept]:
    """Concepts for a zoo factual-recall prompt (``<bos> The capital of France is`` -> Paris):
    the subject entity, the relation, and the answer, each with probes built from the zoo's
    training templates (phrasings the model was trained on). [] when the prompt has no
    country or language of the zoo world."""
    from circuitlab.zoo import templates as T
    from circuitlab.zoo.world import COUNTRIES

    c = _find_country(prompt)
    if c is None:
        return []
    rng = random.Random(seed)
    others = [o for o in COUNTRIES if o != c]
    words = prompt.split()
    relation = next((r for r in ("capital", "language", "continent") if r in words), None)
    if relation is None and "speak" in words:
        relation = "language"
    relation = relation or "capital"
    by_country = [t for rel in ("language", "continent", "capital") for t in T.FACT_TRAIN[rel] + T.FACT_EXTRA_TRAIN
                  if "{country}" in t and "{capital}" not in t]  # mention the entity, not the answer
    by_country = list(dict.fromkeys(by_country))
    out = []
    subject_is_language = c.language in words and c.name not in words
    if subject_is_language:
        lang_t = [t for rel in T.FACT_TRAIN for t in T.FACT_TRAIN[rel] if "{language}" in t]
        lang_t += list(T.FACT_EXTRA_TRAIN[:1])
        out.append(Concept(c.language, "entity", f"the language {c.language}",
                           [_fill(t, c) for t in rng.sample(lang_t, min(n_probes, len(lang_t)))]))
    else:
        out.append(Concept(c.name, "entity", f"the country {c.name}",
                           [_fill(t, c) for t in rng.sample(by_country, min(n_probes, len(by_country)))]))
    rel_t = list(T.FACT_TRAIN[relation])
    rel_probes = [_fill(rng.choice(rel_t), o) for o in rng.sample(others, n_probes)]
    out.append(Concept(relation, "relationship", f"the relation '{relation}'", rel_probes))
    attr = {"continent": "continent", "language": "language"}.get(relation, "capital")
    ans = answer.strip() if answer else getattr(c, attr)
    ans_t = [t for t in list(T.FACT_EXTRA_TRAIN) + [f for f in T.FILLER if "{CAP}" in f] + list(T.FACT_TRAIN["capital"])
             if ("{capital}" in t or "{CAP}" in t)]
    ans_t.sort(key=lambda t: ("{country}" in t or "{CTRY}" in t, rng.random()))  # answer alone first
    probes = []
    for t in ans_t[:n_probes]:
        if "{CAP}" in t:
            t = t.replace("{N}", rng.choice(["Mary", "John", "Anna"])).replace("{N2}", "Tom")
            t = t.replace("{CAP}", "{capital}")
            t = t.replace("{CTRY}", "{country}")
        probes.append(_fill(t, c))
    if ans == c.capital:
        out.append(Concept(ans, "attribute", f"the city {ans}", probes))
    return out


def swapped_prompts(prompt: str, n: int = 5, seed: int = 0) -> list[tuple[str, str]]:
    """(entity swapped in, prompt) pairs: the prompt's country (or language) replaced by others'
    (Dallas -> Oakland). [] outside the zoo world."""
    from circuitlab.zoo.world import COUNTRIES

    c = _find_country(prompt)
    if c is None:
        return []
    rng = random.Random(seed)
    others = rng.sample([o for o in COUNTRIES if o != c], n)
    words = prompt.split(" ")
    out = []
    for o in others:
        sw = [o.name if w == c.name else o.language if w == c.language else w for w in words]
        out.append((o.name, " ".join(sw)))
    return out


def user_concepts(spec: Sequence[dict]) -> list[Concept]:
    """Concepts from dicts ``{label, category, description?, probes}`` (e.g. a JSON file)."""
    out = []
    for d in spec:
        if "label" not in d or not d.get("probes"):
            raise ValueError(f"a concept needs a label and probes, got {d}")
        out.append(Concept(str(d["label"]), d.get("category", "entity"), d.get("description", ""),
                           [str(p) for p in d["probes"]]))
    return out


# ------------------------------------------------------------------------------ real language
# Concepts for pretrained models: facts from circuitlab.tasks.real.lexicon, probes in plain
# English. The concept's word sits after a space in every probe, never first, so it is the same
# token as in the seed prompt (a sentence-initial word is often another token).

RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "capital": ("capital",),
    "language": ("language", "speak", "spoken"),
    "landmark": ("located", "found"),
}
"""Words naming each relation of ``circuitlab.tasks.real.fact_prompts`` in a prompt; the one in
the prompt (else the first) labels the relationship concept."""

ENTITY_PROBES: dict[str, tuple[str, ...]] = {
    "country": (
        "Last summer we travelled across {X} by train.",
        "The people of {X} are known for their food.",
        "She was born in {X} and moved abroad at twenty.",
        "The government of {X} announced new taxes today.",
        "Many tourists visit {X} every year.",
        "The economy of {X} has grown quickly.",
        "He grew up in a small village in {X}.",
        "The national team of {X} won the match.",
    ),
    "landmark": (
        "We took a photo in front of {X} at sunset.",
        "Every year millions of people visit {X}.",
        "The history of {X} goes back a long way.",
        "Our guide told us the story of {X}.",
        "At night {X} is lit up for visitors.",
        "There was a long queue outside {X} this morning.",
        "She bought a postcard of {X} for her mother.",
        "A documentary about {X} was shown on television.",
    ),
}
"""Probes mentioning the subject ``{X}`` without its answer, by kind of subject."""

RELATION_PROBES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {Y} is {O}.", "We flew to {O}, the capital of {Y}.",
                "Which city is the capital of {Y}?", "The capital city of {Y} is",
                "Everyone knows that the capital of {Y} is {O}.", "A map shows the capital of {Y}."),
    "language": ("The official language of {Y} is {O}.", "Which language do people use in {Y}?",
                 "The main language of {Y} is", "Children in {Y} learn the {O} language at school.",
                 "The language spoken in {Y} is {O}.", "A language is spoken in {Y}."),
    "speak": ("In {Y}, most people speak {O}.", "What do people speak in {Y}?",
              "Most families in {Y} speak {O} at home.", "Do they speak {O} in {Y}?",
              "In {Y}, people speak", "Visitors to {Y} often speak a little {O}."),
    "spoken": ("The language spoken in {Y} is {O}.", "{O} is spoken in {Y}.", "What is spoken in {Y}?",
               "Which language is spoken in {Y}?", "In {Y}, {O} is spoken by most people.",
               "The language mostly spoken in {Y} is"),
    "located": ("{Y} is located in {O}.", "Where is {Y} located?", "The museum is located near {Y}.",
                "{Y} is located in the city of", "Our hotel was located close to {Y}.",
                "We asked where {Y} is located."),
    "found": ("{Y} can be found in {O}.", "Where can {Y} be found?", "{Y} can be found in the city of",
              "You will find {Y} in {O}.", "Tourists have found {Y} easily.",
              "The guidebook says {Y} is found in {O}."),
}
"""Probes of the relation, filled with other facts of it (``{Y}`` subject, ``{O}`` object): each
holds its relation word (the key), none names the seed prompt's subject."""

ANSWER_PROBES: dict[str, tuple[str, ...]] = {
    "city": ("I flew to {O} last week.", "The streets of {O} were crowded.", "She lives in {O} with her family.",
             "We booked a hotel in {O} for three nights.", "The train to {O} leaves at noon.",
             "He has always loved the old town of {O}.", "They met in {O} many years ago.",
             "Prices in {O} have risen this year."),
    "language": ("She speaks {O} fluently.", "The book was translated into {O}.",
                 "He is taking {O} lessons twice a week.", "The letter was written in {O}.",
                 "My grandmother only spoke {O} at home.", "They sang a song in {O}.",
                 "Learning {O} takes patience.", "The film has {O} subtitles."),
}
"""Probes mentioning the answer ``{O}`` alone, by kind of answer."""


@dataclass(frozen=True)
class Fact:
    """A factual-recall prompt understood: which relation, subject and answer it asks about."""

    relation: str
    """'capital', 'language' or 'landmark' (``circuitlab.tasks.real.fact_prompts.RELATIONS``)."""
    subject: str
    """As the lexicon writes it, e.g. ``France``, ``the Eiffel Tower``."""
    answer: Optional[str]
    """The answer without its leading space (the target when given, else the lexicon's)."""
    keyword: str
    """The word naming the relation (``RELATION_WORDS``)."""
    span: tuple[int, int]
    """Character span of the subject in the prompt."""


def _subjects() -> dict[str, tuple[str, Optional[str]]]:
    from circuitlab.tasks.real import fact_prompts as F

    out: dict[str, tuple[str, Optional[str]]] = {}
    for rel in ("landmark", "capital"):
        for s, o in F.facts(rel):
            out.setdefault(s, (rel, o))
    return out


def _find(text: str, phrase: str) -> Optional[tuple[int, int]]:
    """Span of ``phrase`` as whole words in ``text`` (its first letter in either case)."""
    import re

    first = f"[{re.escape(phrase[0].lower())}{re.escape(phrase[0].upper())}]"
    m = re.search(rf"(?<!\w){first}{re.escape(phrase[1:])}(?!\w)", text)
    return m.span() if m else None


def find_fact(prompt: str, answer: Optional[str] = None) -> Optional[Fact]:
    """The lexicon fact a real-language prompt asks for ("The capital of France is" -> capital,
    France, Paris), or None when it names no subject of ``circuitlab.tasks.real.lexicon``. The
    longest subject named wins. A country needs a word of its relation ("capital"; "language",
    "speak", "spoken") or an ``answer`` the lexicon gives for it, so a name that is also a
    country (Jordan, Georgia) in another prompt is no fact."""
    from circuitlab.tasks.real import fact_prompts as F

    found = [(s, span) for s in _subjects() if (span := _find(prompt, s)) is not None]
    if not found:
        return None
    subject, span = max(found, key=lambda x: (len(x[0]), -x[1][0]))
    words = {w.strip(".,;:!?'\"").lower() for w in prompt.split()}
    relation = _subjects()[subject][0]
    want = answer.strip() if answer else None
    if relation == "capital":
        by_rel = {rel: dict(F.facts(rel)).get(subject) for rel in ("capital", "language")}
        if words & set(RELATION_WORDS["language"]):
            relation = "language"
        elif "capital" not in words:
            hits = [rel for rel, o in by_rel.items() if want is not None and o == want]
            if not hits:
                return None
            relation = hits[0]
    keyword = next((w for w in RELATION_WORDS[relation] if w in words), RELATION_WORDS[relation][0])
    if want is None:
        want = dict(F.facts(relation)).get(subject)
    return Fact(relation, subject, want, keyword, span)


def token_label(tokenizer, word: str) -> str:
    """The concept label for ``word`` as probe prompting compares it with peak tokens: the word
    itself when ``" " + word`` is one token, else the text of its last token (``Louvre`` split
    as `` Lou`` + ``vre`` gives ``vre``, the position where the entity is read)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer encodes {word!r} as no tokens")
    last = tokenizer.decode([ids[-1]]).strip()
    return last or word


def _pick(rng: random.Random, items: Sequence, n: int) -> list:
    return rng.sample(list(items), min(n, len(items)))


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def real_concepts(tokenizer, prompt: str, answer: Optional[str] = None, n_probes: int = 6,
                  seed: int = 0) -> list[Concept]:
    """Concepts for a real factual-recall prompt ("The capital of France is" -> " Paris"): the
    subject entity, the relation and the answer, each with ``n_probes`` plain-English probes in
    varied contexts (entity probes never name the answer; relation probes use other subjects of
    the relation; answer probes name the answer alone). Labels are single tokens of
    ``tokenizer`` (``token_label``). [] when the prompt names no lexicon subject."""
    from circuitlab.tasks.real import fact_prompts as F
    from circuitlab.tasks.real.common import known

    fact = find_fact(prompt, answer)
    if fact is None:
        return []
    rng = random.Random(seed)
    kind = "landmark" if fact.relation == "landmark" else "country"
    out = [Concept(token_label(tokenizer, fact.subject), "entity", f"the {kind} {fact.subject}",
                   [t.format(X=fact.subject) for t in _pick(rng, ENTITY_PROBES[kind], n_probes)])]
    others = [(s, o) for s, o in F.facts(fact.relation)
              if s != fact.subject and o != fact.answer and fact.subject not in s and known(tokenizer, s)]
    rel_t = RELATION_PROBES[fact.keyword]
    picks = _pick(rng, others, n_probes)
    rel_probes = [_sentence(rel_t[i % len(rel_t)].format(Y=s, O=o)) for i, (s, o) in enumerate(picks)]
    out.append(Concept(token_label(tokenizer, fact.keyword), "relationship",
                       f"the relation '{fact.keyword}' ({fact.relation})", rel_probes))
    if fact.answer:
        what = "language" if fact.relation == "language" else "city"
        label = token_label(tokenizer, fact.answer)
        if label not in {c.label for c in out}:
            out.append(Concept(label, "attribute", f"the {what} {fact.answer}",
                               [t.format(O=fact.answer) for t in _pick(rng, ANSWER_PROBES[what], n_probes)]))
    return out


def real_swaps(tokenizer, prompt: str, n: int = 5, seed: int = 0) -> list[tuple[str, str]]:
    """(subject swapped in, prompt) pairs: the prompt's lexicon subject replaced by other subjects
    of the same relation with another answer (France -> Spain), those keeping the prompt's token
    count first. [] when the prompt names no lexicon subject."""
    from circuitlab.tasks.real import fact_prompts as F
    from circuitlab.tasks.real.common import known

    fact = find_fact(prompt)
    if fact is None:
        return []
    a, b = fact.span
    start_upper = prompt[a].isupper()

    def put(s: str) -> str:
        s = s[0].upper() + s[1:] if start_upper else s
        return prompt[:a] + s + prompt[b:]

    length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    cands = [s for s, o in F.facts(fact.relation) if s != fact.subject and o != fact.answer and known(tokenizer, s)]
    cands = list(dict.fromkeys(cands))
    rng = random.Random(seed)
    rng.shuffle(cands)
    cands.sort(key=lambda s: len(tokenizer(put(s), add_special_tokens=False)["input_ids"]) != length)
    return [(s, put(s)) for s in cands[:n]]


def is_zoo_model(model) -> bool:
    """Whether ``model`` speaks the zoo's synthetic language (then its concepts come from the zoo
    world; otherwise from the real-language lexicon)."""
    from circuitlab.tasks.bundled import is_zoo

    return is_zoo(model)


def default_concepts(model, prompt: str, answer: Optional[str] = None, n_probes: int = 6,
                     seed: int = 0) -> list[Concept]:
    """``world_concepts`` on a zoo model, ``real_concepts`` with its tokenizer on any other."""
    if is_zoo_model(model):
        return world_concepts(prompt, answer, n_probes, seed)
    return real_concepts(model.tokenizer, prompt, answer, n_probes, seed)


def default_swaps(model, prompt: str, n: int = 5, seed: int = 0) -> list[tuple[str, str]]:
    """``swapped_prompts`` on a zoo model, ``real_swaps`` with its tokenizer on any other."""
    if is_zoo_model(model):
        return swapped_prompts(prompt, n, seed)
    return real_swaps(model.tokenizer, prompt, n, seed)
