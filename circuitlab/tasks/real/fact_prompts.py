"""Factual recall on real entities, and its counterfactual-prefix variant.

Recall: "The capital of France is" -> " Paris". The corrupted prompt names another entity of
the same relation whose prompt has the same token count; ``wrong`` is that entity's object.

Counterfactual prefix (Yu, Merullo & Pavlick 2023, "Characterizing Mechanisms for Factual
Recall in Language Models"): a statement in context contradicts the memorised fact,
"The capital of France is Rome. The capital of France is". ``target="context"`` scores the
in-context object (" Rome") against the memorised one (" Paris"); ``target="memory"`` the
reverse. The corrupted prompt states the true fact instead ("... is Paris. The capital of
France is"): dropping the statement would change the token count, and position-wise patching
needs clean and corrupted prompts of equal length.
"""

from __future__ import annotations

from circuitlab.tasks.real import lexicon as L
from circuitlab.tasks.real.common import check_known, known, require, rng, same_length, single_token_words

TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": ("The capital of {X} is", "The capital city of {X} is"),
    "language": ("The official language of {X} is", "In {X}, most people speak"),
    "landmark": ("{X} is located in the city of", "{X} can be found in the city of"),
}
"""Prompt templates per relation; the answer is the next token."""

RELATIONS = tuple(TEMPLATES)
TARGETS = ("context", "memory")


def facts(relation: str) -> list[tuple[str, str]]:
    """(subject, object) pairs of ``relation``."""
    if relation == "capital":
        return [(c, cap) for c, cap, _ in L.COUNTRIES]
    if relation == "language":
        return [(c, lang) for c, _, lang in L.COUNTRIES if lang is not None]
    if relation == "landmark":
        return list(L.LANDMARKS)
    raise ValueError(f"relation must be one of {RELATIONS}, not {relation!r}")


def prompt(relation: str, template: int, subject: str) -> str:
    text = TEMPLATES[relation][template].format(X=subject)
    return text[0].upper() + text[1:]


def usable_facts(tokenizer, relation: str) -> list[tuple[str, str]]:
    """The facts whose object is one token with a leading space in ``tokenizer`` and whose
    subject the tokenizer knows (no part of it maps to the unknown token)."""
    pairs = facts(relation)
    ok = set(single_token_words(tokenizer, [o for _, o in pairs]))
    return [(s, o) for s, o in pairs if o in ok and known(tokenizer, s)]


def records(tokenizer, n: int, seed: int = 0, relation: str = "capital") -> list[dict]:
    """``n`` recall records drawn at random over (fact, template); extras ``relation``,
    ``subject``, ``corrupt_subject``, ``template``."""
    pairs = usable_facts(tokenizer, relation)
    require(pairs, 2, f"{relation} answers", tokenizer)
    check_known(tokenizer, [prompt(relation, t, pairs[0][0]) for t in range(len(TEMPLATES[relation]))])
    gen = rng(f"facts/{relation}", seed)
    lengths = {(t, s): len(tokenizer(prompt(relation, t, s), add_special_tokens=False)["input_ids"])
               for t in range(len(TEMPLATES[relation])) for s, _ in pairs}
    choices = []  # (template, fact, partners with the same prompt length and another object)
    for t in range(len(TEMPLATES[relation])):
        for s, o in pairs:
            partners = [(s2, o2) for s2, o2 in pairs if o2 != o and lengths[t, s2] == lengths[t, s]]
            if partners:
                choices.append((t, (s, o), partners))
    require(choices, 1, f"{relation} facts with an equal-length partner", tokenizer)
    out = []
    for _ in range(n):
        t, (s, o), partners = gen.choice(choices)
        s2, o2 = gen.choice(partners)
        out.append({"clean": prompt(relation, t, s), "corrupt": prompt(relation, t, s2),
                    "answer": f" {o}", "wrong": f" {o2}", "relation": relation, "subject": s,
                    "corrupt_subject": s2, "template": t})
    check_known(tokenizer, [r[k] for r in out for k in ("clean", "corrupt")])
    return out


def counterfact_records(tokenizer, n: int, seed: int = 0, relation: str = "capital",
                        target: str = "context") -> list[dict]:
    """``n`` counterfactual-prefix records (see the module docstring); extras ``relation``,
    ``subject``, ``true``, ``counterfactual``, ``target``, ``template``."""
    if target not in TARGETS:
        raise ValueError(f"counterfact target must be one of {TARGETS}, not {target!r}")
    pairs = usable_facts(tokenizer, relation)
    objects = sorted({o for _, o in pairs})
    require(objects, 2, f"distinct {relation} answers", tokenizer)
    check_known(tokenizer, [prompt(relation, t, pairs[0][0]) for t in range(len(TEMPLATES[relation]))])
    gen = rng(f"counterfact/{relation}", seed)  # both targets score the same prompts
    out = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        t = gen.randrange(len(TEMPLATES[relation]))
        s, true = gen.choice(pairs)
        fake = gen.choice([o for o in objects if o != true])
        head = prompt(relation, t, s)
        clean, bad = f"{head} {fake}. {head}", f"{head} {true}. {head}"
        if not same_length(tokenizer, clean, bad):
            continue
        answer, wrong = (fake, true) if target == "context" else (true, fake)
        out.append({"clean": clean, "corrupt": bad, "answer": f" {answer}", "wrong": f" {wrong}",
                    "relation": relation, "subject": s, "true": true, "counterfactual": fake,
                    "target": target, "template": t})
    if len(out) < n:
        raise ValueError(f"{relation} statements change token count when the answer is swapped in "
                         "this tokenizer; build the task with from_pairs")
    check_known(tokenizer, [r[k] for r in out for k in ("clean", "corrupt")])
    return out
