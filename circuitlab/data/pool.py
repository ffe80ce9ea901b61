"""A token pool from a source: its most frequent tokens that are whole words.

Why: analyses that need "ordinary words" (random sequences for head detectors, candidate words
for probe concepts) should draw them from the text the model is studied on, not from one
corpus's vocabulary. A word token decodes to two or more letters and is not special; where the
vocabulary marks word starts (a leading space, as in byte-level BPE and SentencePiece), only
word-start tokens count. Frequencies are counted on the source's training documents, each cut to
``ctx_len`` tokens; a file with fewer training documents than asked for is counted once, whole.
"""

from __future__ import annotations

from collections import Counter

from circuitlab.data.source import DocumentSet, open_source
from circuitlab.data.spec import DEFAULT


def word_kind(tokenizer, i: int) -> tuple[bool, bool]:
    """(is a word token, starts a word) for token ``i``: a word decodes to two or more letters
    (after stripping spaces); it starts a word where it decodes with a leading space or its raw
    token carries a byte-level BPE or SentencePiece word-start marker. Specials are not checked."""
    text = tokenizer.decode([i])
    if len(text.strip()) < 2 or not text.strip().isalpha():
        return False, False
    raw = tokenizer.convert_ids_to_tokens(i) or ""
    return True, text[:1] == " " or raw[:1] in ("\u0120", "\u2581")


def token_pool(tokenizer, data: str = DEFAULT, n: int = 200, n_docs: int = 512, seed: int = 0,
               ctx_len: int = 64) -> list[int]:
    """Ids of up to ``n`` word tokens of ``tokenizer``, most frequent first in ``n_docs`` training
    documents of source ``data`` (ties by id). Words: ``tokenizer.decode([i]).strip()``."""
    src = open_source(data, ctx_len)
    if isinstance(src, DocumentSet):
        n_docs = min(n_docs, len(src.train))
    counts: Counter = Counter()
    for doc in src.documents(seed, n_docs):
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"] if isinstance(doc, str) else doc.tolist()
        counts.update(ids[:ctx_len])
    skip = set(tokenizer.all_special_ids) | {tokenizer.unk_token_id}
    kinds = {i: word_kind(tokenizer, i) for i in counts if i not in skip and i < len(tokenizer)}
    words = [i for i, (word, _) in kinds.items() if word]
    starts = [i for i in words if kinds[i][1]]
    pool = sorted(starts or words, key=lambda i: (-counts[i], i))
    if not pool:
        raise ValueError(f"no word token of this tokenizer occurs in {n_docs} documents of {data!r}; "
                         "check that the source holds text in the model's language")
    return pool[:n]
