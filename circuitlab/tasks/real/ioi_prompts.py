"""Indirect object identification on real language (Wang et al. 2022, "Interpretability in
the Wild"): "When Mary and John went to the store, John gave a drink to" -> " Mary".

Names are the paper's, kept where the model's tokenizer encodes them as one token with a
leading space, so clean and corrupted prompts align token by token. Roles name the token
positions S1 (first subject mention), IO, S2 (second subject mention) and END (last token).
"""

from __future__ import annotations

from circuitlab.tasks.real import lexicon as L
from circuitlab.tasks.real.common import check_known, require, rng, single_token_words, slot_positions

CORRUPTIONS = ("abc", "s2", "swap")
"""How the corrupted prompt differs from the clean one:

- ``"abc"``: Wang et al.'s p_ABC: the three name slots (IO, S1, S2) hold three fresh distinct
  names, so the sentence keeps its shape but no name is repeated.
- ``"s2"``: only the second subject mention S2 becomes a third name C (the "ABC" of much
  follow-up work, and the zoo's ``"abc"``).
- ``"swap"``: S2 becomes the IO name, so the corrupted prompt's answer is the subject.
"""


def records(tokenizer, n: int, seed: int = 0, corrupt: str = "abc") -> list[dict]:
    """``n`` clean/corrupt IOI records, templates cycling, ABBA and BABA alternating.

    Extras: ``roles`` {S1, IO, S2}, ``io``, ``s``, ``order``, ``template``, ``corruption``,
    ``corrupt_names`` (the names in the corrupted prompt's N1, N2, S slots)."""
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"IOI corrupt must be one of {CORRUPTIONS}, not {corrupt!r}")
    names = single_token_words(tokenizer, L.IOI_NAMES)
    require(names, 6, "IOI names", tokenizer)
    places = single_token_words(tokenizer, L.IOI_PLACES)
    objects = single_token_words(tokenizer, L.IOI_OBJECTS)
    require(places, 1, "IOI places", tokenizer)
    require(objects, 1, "IOI objects", tokenizer)
    gen = rng("ioi", seed)
    out = []
    for i in range(n):
        tid = (i // 2) % len(L.IOI_TEMPLATES)
        template = L.IOI_TEMPLATES[tid]
        order = "ABBA" if i % 2 == 0 else "BABA"
        io, s, a, b, c = gen.sample(names, 5)
        slots = {"PLACE": gen.choice(places), "OBJECT": gen.choice(objects)}
        n1, n2 = (io, s) if order == "ABBA" else (s, io)
        clean_slots = dict(slots, N1=n1, N2=n2, S=s)
        if corrupt == "abc":
            bad_names = (a, b, c)
        elif corrupt == "s2":
            bad_names = (n1, n2, c)
        else:
            bad_names = (n1, n2, io)
        bad_slots = dict(slots, N1=bad_names[0], N2=bad_names[1], S=bad_names[2])
        io_field, s1_field = ("N1", "N2") if order == "ABBA" else ("N2", "N1")
        check_known(tokenizer, [template.format(**clean_slots)])
        roles = slot_positions(tokenizer, template, clean_slots, {"IO": io_field, "S1": s1_field, "S2": "S"})
        out.append({"clean": template.format(**clean_slots), "corrupt": template.format(**bad_slots),
                    "answer": f" {io}", "wrong": f" {s}", "roles": roles, "io": io, "s": s,
                    "order": order, "template": tid, "corruption": corrupt,
                    "corrupt_names": list(bad_names)})
    return out
