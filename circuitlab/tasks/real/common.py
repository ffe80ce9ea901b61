"""Shared pieces of the real-language tasks: per-tokenizer word filtering, slot positions,
seeded generators."""

from __future__ import annotations

import random
import string
import zlib
from typing import Iterable, Sequence

from circuitlab.tasks.tokenize import encode, unknown_words, word_token


def single_token_words(tokenizer, words: Iterable[str]) -> list[str]:
    """The ``words`` that ``tokenizer`` encodes as one known token with a leading space, in order
    and without repeats."""
    out, seen = [], set()
    for w in words:
        if w not in seen and word_token(tokenizer, w) is not None:
            out.append(w)
            seen.add(w)
    return out


def require(words: Sequence, need: int, what: str, tokenizer) -> None:
    """A clear error when a tokenizer leaves too few usable words for a task."""
    if len(words) < need:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"only {len(words)} {what} are single tokens (with a leading space) in the tokenizer "
            f"{name!r}; the task needs at least {need}. Build the task from your own records with "
            "circuitlab.tasks.from_pairs instead"
        )


def rng(task: str, seed: int) -> random.Random:
    """A generator that depends only on the task name and seed (stable across runs)."""
    return random.Random(zlib.crc32(f"real/{task}/{seed}".encode()))


def fill(template: str, **slots: str) -> str:
    return template.format(**slots)


def slot_positions(tokenizer, template: str, slots: dict[str, str], roles: dict[str, str]) -> dict[str, int]:
    """Token positions (BOS at 0) of the slots named in ``roles`` ({role: slot field}) in the
    filled ``template``. Each slot must follow a space in the template and its value must be one
    token with that space; a ValueError says which slot breaks the rule."""
    text = fill(template, **slots)
    ids = encode(tokenizer, text)
    out = {}
    for role, field in roles.items():
        start = _field_offset(template, field, slots)
        if start == 0 or text[start - 1] != " ":
            raise ValueError(f"slot {{{field}}} of template {template!r} must follow a space")
        pos = len(encode(tokenizer, text[: start - 1]))
        want = word_token(tokenizer, slots[field])
        if pos >= len(ids) or want is None or ids[pos] != want:
            raise ValueError(
                f"template {template!r} does not tokenize with {slots[field]!r} as one token at "
                f"slot {{{field}}} in this tokenizer"
            )
        out[role] = pos
    return out


def _field_offset(template: str, field: str, slots: dict[str, str]) -> int:
    """Character offset of the first ``{field}`` in the filled template."""
    offset = 0
    for literal, name, spec, _ in string.Formatter().parse(template):
        offset += len(literal)
        if name is None:
            continue
        if name == field:
            return offset
        offset += len(format(slots[name], spec or ""))
    raise KeyError(f"template has no slot {{{field}}}: {template!r}")


def same_length(tokenizer, a: str, b: str) -> bool:
    return len(encode(tokenizer, a)) == len(encode(tokenizer, b))


def known(tokenizer, text: str) -> bool:
    """Whether no part of ``text`` maps to the unknown token."""
    return not unknown_words(tokenizer, text)


def check_known(tokenizer, texts: Iterable[str]) -> None:
    """A ValueError naming the words of ``texts`` the tokenizer does not know (a word-level
    vocabulary lacking the template's words): prompts never hold a silent <unk>."""
    for text in texts:
        bad = unknown_words(tokenizer, text)
        if bad:
            raise ValueError(
                f"the tokenizer has no token for {sorted(set(bad))} in {text!r}; this task's "
                "templates need a vocabulary covering ordinary English (a BPE tokenizer), or "
                "build your own records with from_pairs"
            )
