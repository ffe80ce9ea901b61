"""Text sources: the documents sparse coders are trained, evaluated and shown on.

Why this shape: a source answers two questions, deterministically. ``documents(seed, n)`` gives
training documents (a shard is a pure function of the run's seed and its index, whatever the
source), ``heldout(n)`` gives evaluation documents that training never sees.

- The zoo corpus generates documents from a seed (the behaviour before sources were pluggable:
  the same seed gives the same documents). Held-out documents come from a seed of their own
  (``HELDOUT_SEED``), a separate generator stream; the zoo's small grammars can still produce a
  sentence that also occurs in training.
- A finite source (a file or a dataset) is split by content: a document whose CRC-32 is
  divisible by ``HELDOUT_EVERY`` is held out, so 1 in 8 documents on average, and copies of a
  document always fall on the same side. Training documents are put in one fixed shuffled order;
  ``documents(seed, n)`` reads ``n`` consecutive ones from an offset drawn from ``seed`` (a file
  smaller than the run is read more than once).
"""

from __future__ import annotations

import random
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence, Union

import torch

from circuitlab.data import text, tokens
from circuitlab.data.hub import hf_documents
from circuitlab.data.spec import DEFAULT, check

Document = Union[str, torch.Tensor]
"""A text, or a 1-D tensor of token ids (from a token file)."""

HELDOUT_SEED = 987_654_321
"""Seed of held-out documents (the zoo's evaluation stream; training uses small seeds)."""
HELDOUT_EVERY = 8
"""A finite source holds out the documents whose CRC-32 is divisible by this."""


class Source(Protocol):
    """What training, evaluation and dashboards read documents from."""

    name: str

    def documents(self, seed: int, n: int) -> list[Document]:
        """``n`` training documents, a pure function of ``seed``."""
        ...

    def heldout(self, n: int, seed: int = HELDOUT_SEED) -> list[Document]:
        """Up to ``n`` evaluation documents, none of them a training document."""
        ...


class ZooSource:
    """The zoo's synthetic corpus (circuitlab.zoo.corpus.training_documents)."""

    name = "zoo"

    def documents(self, seed: int, n: int) -> list[Document]:
        from circuitlab.zoo.corpus import training_documents

        return training_documents(seed, n)

    def heldout(self, n: int, seed: int = HELDOUT_SEED) -> list[Document]:
        return self.documents(seed, n)


def _content(doc: Document) -> bytes:
    return doc.encode("utf-8") if isinstance(doc, str) else doc.to(torch.int64).numpy().tobytes()


def is_heldout(doc: Document) -> bool:
    """Whether a finite source reserves ``doc`` for evaluation."""
    return zlib.crc32(_content(doc)) % HELDOUT_EVERY == 0


class DocumentSet:
    """A finite list of documents, split by content into training and held-out ones."""

    def __init__(self, name: str, docs: Sequence[Document]):
        self.name = name
        self.docs = docs
        train, held, crcs = [], [], bytearray()
        for i, d in enumerate(docs):
            crc = zlib.crc32(_content(d))
            (held if crc % HELDOUT_EVERY == 0 else train).append(i)
            crcs += crc.to_bytes(4, "little")
        random.Random(0).shuffle(train)
        self.train, self.held = train, held
        # changes when any document does; recorded beside activations built from the source
        self.fingerprint = f"{len(docs)}-{zlib.crc32(crcs):08x}"

    def documents(self, seed: int, n: int) -> list[Document]:
        if not self.train:
            raise ValueError(f"data source {self.name!r} has no training documents ({len(self.held)} document(s), "
                             f"all held out for evaluation); add documents to it")
        start = random.Random(seed).randrange(len(self.train))
        return [self.docs[self.train[(start + k) % len(self.train)]] for k in range(n)]

    def heldout(self, n: int, seed: int = HELDOUT_SEED) -> list[Document]:
        if not self.held:
            raise ValueError(f"data source {self.name!r} has no held-out documents (1 in {HELDOUT_EVERY} "
                             f"documents on average, chosen by a hash of their content, is kept for evaluation; "
                             f"this source has {len(self.train)}); add documents, or evaluate on a larger source")
        order = sorted(self.held)
        random.Random(seed).shuffle(order)
        if n > len(order):
            warnings.warn(f"data source {self.name!r} holds {len(order)} held-out documents; evaluating on those "
                          f"({n} asked for)", stacklevel=2)
        return [self.docs[i] for i in order[:n]]


def _stamp(path: str) -> tuple[int, int]:
    st = Path(path).expanduser().stat()
    return st.st_mtime_ns, st.st_size


@lru_cache(maxsize=4)
def _open(spec: str, ctx_len: int, stamp: tuple) -> DocumentSet:
    d = check(spec)
    if d.kind == "text":
        docs: Sequence[Document] = text.text_documents(d.path)
    elif d.kind == "jsonl":
        docs = text.jsonl_documents(d.path, d.field or "text")
    elif d.kind == "tokens":
        docs = tokens.token_documents(d.path, d.field, ctx_len)
    else:
        docs = hf_documents(d.path, d.config, d.split, d.field or "text")
    if len(docs) == 0:
        raise ValueError(f"data source {spec!r} holds no documents")
    return DocumentSet(spec, docs)


def open_source(spec: str = DEFAULT, ctx_len: int = 64) -> Source:
    """The source a name describes (see :mod:`circuitlab.data.spec`). Files are read once and
    kept while unchanged; ``ctx_len`` cuts a 1-D token stream into documents."""
    d = check(spec)
    if d.kind == "zoo":
        return ZooSource()
    stamp = _stamp(d.path) if d.kind != "hf" else ()
    return _open(spec, ctx_len if d.kind == "tokens" else 0, stamp)


def fingerprint(spec: str, ctx_len: int = 64) -> str:
    """What identifies the documents of ``spec`` ("" for the zoo, whose documents follow from seeds)."""
    src = open_source(spec, ctx_len)
    return src.fingerprint if isinstance(src, DocumentSet) else ""


def documents(spec: str, seed: int, n: int, ctx_len: int = 64) -> list[Document]:
    """``n`` training documents of source ``spec`` for ``seed``."""
    return open_source(spec, ctx_len).documents(seed, n)


def heldout(spec: str, n: int, seed: int = HELDOUT_SEED, ctx_len: int = 64) -> list[Document]:
    """Up to ``n`` evaluation documents of source ``spec``, disjoint from its training documents."""
    return open_source(spec, ctx_len).heldout(n, seed)
