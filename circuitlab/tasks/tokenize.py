"""Tokenizing prompts the same way everywhere: BOS first, no other special tokens.

Unknown words never pass silently: :func:`encode` warns and :func:`single_token` raises when
text maps to the tokenizer's unknown token (word-level vocabularies have one; byte-level BPE
never produces it).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Optional


def bos_id(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start prompts with")


def pad_id(tokenizer) -> int:
    tid = tokenizer.pad_token_id
    return int(tid) if tid is not None else bos_id(tokenizer)


def encode(tokenizer, text: str, bos: bool = True) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front (a leading BOS in the text is kept).

    Warns when part of ``text`` maps to the unknown token (see :func:`unknown_words`)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bad = unknown_words(tokenizer, text, ids)
    if bad:
        warnings.warn(f"{bad} map to the unknown token {tokenizer.unk_token!r} in {text!r}; the "
                      "model sees no such word (use words in its vocabulary)", stacklevel=2)
    if bos:
        b = bos_id(tokenizer)
        if not ids or ids[0] != b:
            ids = [b] + ids
    return ids


def right_pad(tokenizer, texts, max_len: Optional[int] = None):
    """Token ids of ``texts`` (BOS first, as :func:`encode`), each cut to ``max_len`` and
    right-padded into one [n, longest] long tensor, with the real lengths [n]."""
    import torch

    ids = [encode(tokenizer, t, bos=True)[:max_len] for t in texts]
    lengths = torch.tensor([len(x) for x in ids])
    out = torch.full((len(ids), int(lengths.max())), pad_id(tokenizer), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x)
    return out, lengths


def resolve_positions(position: int, lengths):
    """Per-prompt token index: non-negative as given, negative counted from each prompt's end."""
    import torch

    return lengths + position if position < 0 else torch.full_like(lengths, position)


def unknown_words(tokenizer, text: str, ids: Optional[list[int]] = None) -> list[str]:
    """The pieces of ``text`` that encode to the unknown token ([] when none do). A literal
    unknown-token string written in the text does not count."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return []
    if ids is None:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    n_unk = ids.count(unk)
    if n_unk == 0 or n_unk <= text.count(str(tokenizer.unk_token)):
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk]
        return [s for s in spans if s != tokenizer.unk_token] or [text]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # slow tokenizers: no offsets
        return [text]


def single_token(tokenizer, text: str) -> int:
    """The id of ``text`` when it is exactly one known token; otherwise a clear error."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if unknown_words(tokenizer, text, ids):
        raise ValueError(
            f"{text!r} maps to the unknown token {tokenizer.unk_token!r}: the tokenizer has no such "
            "word; choose an answer in the model's vocabulary"
        )
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"answer {text!r} is {len(ids)} tokens {pieces}, not one; choose a single-token "
            "answer (with or without its leading space) or use a multi-position metric"
        )
    return int(ids[0])


def word_token(tokenizer, word: str) -> Optional[int]:
    """The id of ``" " + word`` when that is one known token whose text round-trips, else None.

    Why: real-model tasks swap words in and out of fixed templates, which keeps prompts aligned
    only for words that are a single token with their leading space."""
    text = " " + word
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1 or unknown_words(tokenizer, text, ids):
        return None
    return int(ids[0])


def is_zoo_tokenizer(tokenizer) -> bool:
    """Whether ``tokenizer`` is the zoo's word-level tokenizer (same vocabulary, same ids):
    bundled tasks then draw prompts from the zoo's synthetic world."""
    zoo = _zoo_vocab()
    try:
        size = len(tokenizer)
    except TypeError:
        return False
    if size != len(zoo):
        return False
    vocab = tokenizer.get_vocab()
    return all(vocab.get(w) == i for i, w in enumerate(zoo))


@lru_cache(maxsize=1)
def _zoo_vocab() -> tuple[str, ...]:
    from circuitlab.zoo.tokenizer import vocabulary

    return tuple(vocabulary())
