"""Tokenizing prompts the same way everywhere: BOS first, no other special tokens."""

from __future__ import annotations


def bos_id(tokenizer) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start prompts with")


def pad_id(tokenizer) -> int:
    tid = tokenizer.pad_token_id
    return int(tid) if tid is not None else bos_id(tokenizer)


def encode(tokenizer, text: str, bos: bool = True) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front (a leading BOS in the text is kept)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if bos:
        b = bos_id(tokenizer)
        if not ids or ids[0] != b:
            ids = [b] + ids
    return ids


def single_token(tokenizer, text: str) -> int:
    """The id of ``text`` when it is exactly one token; otherwise a clear error."""
    ids = encode(tokenizer, text, bos=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(
            f"answer {text!r} is {len(ids)} tokens {pieces}, not one; choose a single-token "
            "answer (with or without its leading space) or use a multi-position metric"
        )
    return int(ids[0])
