"""Documents from local text files: plain text (one document per line) and JSONL.

Why one document per line: it is the JSONL rule too, so a file converts between the two formats
line by line, and prose wrapped at a fixed width still gives whole sentences rather than one
document as long as the file. Empty lines are skipped. A document longer than the run's
``ctx_len`` is truncated; cut long texts into lines, or pre-tokenize them into a token file.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_text(path: str | Path) -> str:
    """The file's text as UTF-8 (a leading byte-order mark is dropped); ValueError naming the line
    of the first byte that is not UTF-8."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; name a file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         "save the file as UTF-8") from None


def read_jsonl(path: str | Path) -> list:
    """One parsed JSON value per non-empty line; ValueError naming the line that is not JSON."""
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON: {e}") from e
    return out


def text_documents(path: str | Path) -> list[str]:
    """The non-empty lines of a text file, each one document."""
    return [line for line in read_text(path).splitlines() if line.strip()]


def jsonl_documents(path: str | Path, field: str = "text") -> list[str]:
    """The ``field`` string of every JSONL record (empty strings skipped)."""
    docs = []
    for n, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec, dict) or field not in rec:
            keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
            raise ValueError(f"{path}: record {n} has no field {field!r} (it has {keys}); name the text field "
                             f"as jsonl:{path}:FIELD")
        if not isinstance(rec[field], str):
            raise ValueError(f"{path}: record {n} field {field!r} is {type(rec[field]).__name__}, not text")
        if rec[field].strip():
            docs.append(rec[field])
    return docs
