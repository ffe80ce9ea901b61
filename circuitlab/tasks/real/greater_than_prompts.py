"""Greater-than on real language (Hanna et al. 2023, "How does GPT-2 compute greater-than?"):
"The war lasted from the year 1732 to the year 17" -> a year after 32.

Two ways a tokenizer can write years, detected per tokenizer (:func:`year_format`):

- ``"two_digit"`` (GPT-2's BPE): " 1732" is " 17" + "32". The metric is the paper's probability
  difference over the two-digit year tokens: sum p(years > YY) - sum p(years < YY). Start years
  are those YY where " 17YY" tokenizes as " 17" + "YY" and the years YY-1, YY+1 exist.
- ``"digit"`` (tokenizers that split numbers one digit per token, e.g. SmolLM2's): no two-digit
  year token exists and the next token is the decade digit. The metric becomes
  sum p(digits above YY's decade digit) - sum p(digits below it); the start year's own decade
  is ambiguous (1733..1739 are later, 1730..1732 earlier) and weighs 0. Start years are 10..89
  so a larger and a smaller decade both exist and the "01" corruption changes the decade.

The corrupted prompt starts in year "01" (Hanna et al.), after which every year is later.
``answer``/``wrong`` (for logit differences and accuracy) are the next and previous year
(two-digit) or decade digit (digit).
"""

from __future__ import annotations

from typing import Optional

from circuitlab.tasks.real import lexicon as L
from circuitlab.tasks.real.common import check_known, require, rng, single_token_words


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` (no BOS); an unknown token makes the list empty (no match)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [] if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids else ids


YEAR_FORMATS = ("auto", "two_digit", "digit")


def year_tokens(tokenizer, century: str) -> dict[int, int]:
    """{YY: token id} for the two-digit years that follow " {century}" as one token."""
    prefix = _ids(tokenizer, f" {century}")
    out = {}
    for yy in range(100):
        ids = _ids(tokenizer, f" {century}{yy:02d}")
        if prefix and len(ids) == len(prefix) + 1 and ids[: len(prefix)] == prefix:
            out[yy] = ids[-1]
    return out


def digit_tokens(tokenizer, century: str) -> Optional[dict[int, int]]:
    """{digit: token id} when " {century}YY" is " {century}" then one token per digit, else None."""
    prefix = _ids(tokenizer, f" {century}")
    digits = {}
    for d in range(10):
        ids = _ids(tokenizer, str(d))
        if len(ids) != 1:
            return None
        digits[d] = ids[0]
    for yy in (10, 37, 89, 90):
        ids = _ids(tokenizer, f" {century}{yy:02d}")
        if not prefix or ids != prefix + [digits[yy // 10], digits[yy % 10]]:
            return None
    return digits


def year_format(tokenizer, centuries=L.GT_CENTURIES) -> str:
    """"two_digit" when most two-digit years are single tokens after the century, "digit" when
    numbers split into digits, else a ValueError saying why the task cannot be built."""
    if all(len(year_tokens(tokenizer, c)) >= 50 for c in centuries):
        return "two_digit"
    if all(digit_tokens(tokenizer, c) is not None for c in centuries):
        return "digit"
    raise ValueError(
        "greater-than needs years that tokenize as century + two-digit year (GPT-2 style) or as "
        "one token per digit; this tokenizer does neither for the centuries "
        f"{', '.join(centuries)}. Build the task from your own records with from_pairs"
    )


def records(tokenizer, n: int, seed: int = 0, fmt: str = "auto") -> list[dict]:
    """``n`` records; extras ``start_yy``, ``century``, ``noun``, ``year_format`` and the
    ``answer_id`` / ``wrong_id`` tokens (see :func:`signed_tokens` for the metric's tokens)."""
    if fmt not in YEAR_FORMATS:
        raise ValueError(f"year format must be one of {YEAR_FORMATS}, not {fmt!r}")
    fmt = year_format(tokenizer) if fmt == "auto" else fmt
    nouns = single_token_words(tokenizer, L.GT_NOUNS)
    require(nouns, 1, "greater-than nouns", tokenizer)
    gen = rng("greater_than", seed)
    out = []
    for _ in range(n):
        noun, century = gen.choice(nouns), gen.choice(L.GT_CENTURIES)
        if fmt == "two_digit":
            years = year_tokens(tokenizer, century)
            starts = [y for y in range(2, 99) if {y - 1, y, y + 1, 1} <= years.keys()]
            require(starts, 1, f"two-digit years after {century}", tokenizer)
            yy = gen.choice(starts)
            answer, wrong = years[yy + 1], years[yy - 1]
        else:
            digits = _digits_or_raise(tokenizer, century)
            yy = gen.randint(10, 89)
            answer, wrong = digits[yy // 10 + 1], digits[yy // 10 - 1]
        clean = L.GT_TEMPLATE.format(noun=noun, century=century, yy=f"{yy:02d}")
        bad = L.GT_TEMPLATE.format(noun=noun, century=century, yy="01")
        out.append({"clean": clean, "corrupt": bad, "answer": tokenizer.decode([answer]),
                    "wrong": tokenizer.decode([wrong]), "answer_id": answer, "wrong_id": wrong,
                    "start_yy": yy, "century": century, "noun": noun, "year_format": fmt})
    check_known(tokenizer, [r[k] for r in out for k in ("clean", "corrupt")])
    return out


def signed_tokens(tokenizer, record: dict) -> dict[int, int]:
    """{token id: +1 (a later year) or -1 (an earlier year)} for one record: two-digit year
    tokens, or decade digits with the start year's own decade left out (see module docstring)."""
    yy, century = record["start_yy"], record["century"]
    if record["year_format"] == "two_digit":
        return {t: (1 if y > yy else -1) for y, t in year_tokens(tokenizer, century).items() if y != yy}
    t = yy // 10
    return {tok: (1 if d > t else -1) for d, tok in _digits_or_raise(tokenizer, century).items() if d != t}


def _digits_or_raise(tokenizer, century: str) -> dict[int, int]:
    digits = digit_tokens(tokenizer, century)
    if digits is None:
        raise ValueError(f"years after {century} do not split one token per digit in this tokenizer; "
                         "use year format 'two_digit' or 'auto'")
    return digits
