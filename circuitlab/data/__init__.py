"""Pluggable text sources: where documents for training, evaluation and dashboards come from.

A source is named by one string: ``zoo`` (the default: the zoo's synthetic corpus),
``text:PATH`` (one document per line), ``jsonl:PATH[:FIELD]``, ``tokens:PATH[:KEY]`` (token ids,
.npy or .safetensors) or ``hf:NAME[@CONFIG][:SPLIT[:FIELD]]`` (a Hugging Face dataset). Modules:
``spec`` (parsing names), ``source`` (training / held-out documents, the split between them),
``text``, ``tokens``, ``hub`` (readers), ``batch`` (documents to token ids), ``pool`` (frequent
word tokens of a source).
"""

from circuitlab.data.batch import pad_documents
from circuitlab.data.pool import token_pool
from circuitlab.data.source import (HELDOUT_EVERY, HELDOUT_SEED, Document, DocumentSet, Source, ZooSource,
                                    documents, fingerprint, heldout, is_heldout, open_source)
from circuitlab.data.spec import DEFAULT, KINDS, DataSpec, check, parse
from circuitlab.data.text import read_jsonl, read_text

__all__ = ["DEFAULT", "HELDOUT_EVERY", "HELDOUT_SEED", "KINDS", "DataSpec", "Document", "DocumentSet", "Source",
           "ZooSource", "check", "documents", "fingerprint", "heldout", "is_heldout", "open_source", "pad_documents",
           "parse", "read_jsonl", "read_text", "token_pool"]
