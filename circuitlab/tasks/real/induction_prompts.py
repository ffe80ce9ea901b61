"""Induction on repeated random tokens (Olsson et al. 2022): a sequence of random word tokens
from the model's own vocabulary, then its repeat; after the first repeat every next token is
predictable by copying.

Tokens are "ordinary words": a leading space and 3-12 ASCII letters, single tokens that
re-encode to themselves, so the text round-trips to exactly the drawn ids.
"""

from __future__ import annotations

import re
import weakref

from circuitlab.tasks.real.common import rng
from circuitlab.tasks.tokenize import encode

_WORD = re.compile(r" [A-Za-z]{3,12}")


def word_pool(tokenizer, limit: int | None = None) -> list[int]:
    """Ids (below ``limit``) of ordinary word tokens in ``tokenizer``, in id order."""
    return list(_pool(tokenizer, limit))


_POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _pool(tokenizer, limit: int | None) -> tuple[int, ...]:
    """Scanning a 50k vocabulary takes a second; done once per tokenizer and limit."""
    per_tok = _POOLS.setdefault(tokenizer, {})
    if limit not in per_tok:
        size = len(tokenizer) if limit is None else min(len(tokenizer), limit)
        texts = tokenizer.batch_decode([[i] for i in range(size)])
        special = set(tokenizer.all_special_ids)
        cand = [i for i, t in enumerate(texts) if i not in special and _WORD.fullmatch(t)]
        per_tok[limit] = tuple(i for i in cand if encode(tokenizer, texts[i], bos=False) == [i])
    return per_tok[limit]


def records(tokenizer, n: int, seed: int = 0, half_len: int = 12, limit: int | None = None) -> list[dict]:
    """``n`` records ``w1..wL w1..w(L-1)`` -> ``" wL"``; ``corrupt`` puts fresh tokens in the
    first repeat (nothing to copy), ``wrong`` is a pool token absent from both. Extras
    ``ids`` (the L drawn ids), ``half_len``, ``first``/``second`` (where each repeat starts)."""
    pool = word_pool(tokenizer, limit)
    if half_len < 2 or 3 * half_len + 1 > len(pool):
        raise ValueError(f"half_len must be in [2, {(len(pool) - 1) // 3}] for this vocabulary "
                         f"({len(pool)} ordinary word tokens)")
    gen = rng("induction", seed)
    out = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        drawn = gen.sample(pool, 2 * half_len + 1)
        ids, fresh = drawn[:half_len], drawn[half_len:]
        clean_ids, bad_ids = ids + ids[:-1], fresh[:half_len] + ids[:-1]
        clean, bad = tokenizer.decode(clean_ids), tokenizer.decode(bad_ids)
        if encode(tokenizer, clean, bos=False) != clean_ids or encode(tokenizer, bad, bos=False) != bad_ids:
            continue  # a neighbouring pair merged; draw again
        out.append({"clean": clean, "corrupt": bad, "answer": tokenizer.decode([ids[-1]]),
                    "wrong": tokenizer.decode([fresh[-1]]), "ids": ids, "half_len": half_len,
                    "first": 1, "second": 1 + half_len})
    if len(out) < n:
        raise ValueError("random word sequences keep merging into other tokens when written out; "
                         "this tokenizer does not suit the induction task (use from_pairs)")
    return out
