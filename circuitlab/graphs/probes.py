"""Concept hypotheses and probe prompts (probe prompting, docs/methods.md section 3, step 3).

A concept is a label (one token, e.g. ``France``), a category (entity / relationship /
attribute) and probes: short prompts mentioning it in varied contexts. The reference asks an
LLM for them; here they come offline from the zoo world (countries, capitals, languages) and
the zoo's own training templates, so probes are in distribution for the zoo models, or from the
user (``Concept(label, category, probes=[...])``).
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
    """Prompts (starting with ``<bos>`` for zoo models) that mention ``label``."""

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
