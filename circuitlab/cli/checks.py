"""Argument checks shared by the commands, run before any model loads so bad input fails fast."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable

from circuitlab.resolve import looks_like_file


def parse_names(what: str, text: str, valid: Iterable[str]) -> list[str]:
    """A comma-separated list, every entry checked against ``valid`` before anything runs."""
    from circuitlab.validate import check_choice

    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise ValueError(f"--{what} {text!r} has an empty entry; give comma-separated names like "
                         f"{','.join(list(valid)[:2])}")
    for n in names:
        check_choice(what.rstrip("s") if what != "sites" else "sites", n, valid)
    return list(dict.fromkeys(names))


def check_task_arg(spec: str) -> None:
    """A task argument that looks like a file must be a readable file (checked before model loading)."""
    from circuitlab.tasks.bundled import BUNDLED

    if looks_like_file(spec) or (spec not in BUNDLED and Path(spec).exists()):
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"--task {spec!r}: no such file (give a JSONL of {{clean, corrupt, answer, wrong}} "
                             f"records or a bundled task: {', '.join(BUNDLED)})")
        if not path.is_file():
            raise ValueError(f"--task {spec!r} is not a file; give a JSONL file or a bundled task: "
                             f"{', '.join(BUNDLED)}")
    elif spec not in BUNDLED:
        from circuitlab.validate import suggest

        raise ValueError(f"--task {spec!r} is neither a bundled task nor a file{suggest(spec, BUNDLED)} "
                         "(or give a JSONL path)")


def check_out_arg(out: str) -> Path:
    """The output folder may exist (files in it are replaced) but must not be a file."""
    path = Path(out)
    if not out.strip():
        raise ValueError("--out is empty; give an output folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out!r} is a file, not a folder; choose another output folder")
    return path


def parse_positions(text: str | None) -> list[int | str] | None:
    """``--positions S1,IO,S2,END`` (role names) or ``0,5,END`` (token indices too); None: all."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"--positions {text!r} has an empty entry; give comma-separated role names or token "
                         "indices like S1,IO,S2,END or 0,5")
    out: list[int | str] = []
    for t in items:
        if t.lstrip("-").isdigit():
            if int(t) < 0:
                raise ValueError(f"--positions: {t} is negative; give token indices >= 0 or role names")
            out.append(int(t))
        elif t.isidentifier():
            out.append(t)
        else:
            raise ValueError(f"--positions: {t!r} is neither a token index nor a role name (like S1, IO, END)")
    return list(dict.fromkeys(out))


POSITIVE_ARGS = ("n", "batch_size", "steps", "docs", "ctx_len", "top", "max_feature_nodes", "max_minutes")
"""Numeric options of any command that must be > 0 (checked before a command starts)."""
NON_NEGATIVE_ARGS = ("bootstrap", "seed")
"""Numeric options that must be >= 0."""
FRACTION_ARGS = ("threshold", "node_threshold", "edge_threshold")
"""Fractions that must lie in (0, 1]."""
TEXT_ARGS = ("prompt",)
"""Text options that must not be blank."""


def check_args(args: argparse.Namespace) -> None:
    """Range checks shared by every command's options, by option name, before anything runs."""
    for dest in POSITIVE_ARGS + NON_NEGATIVE_ARGS + FRACTION_ARGS + TEXT_ARGS:
        v = getattr(args, dest, None)
        if v is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in TEXT_ARGS:
            if not str(v).strip():
                raise ValueError(f"{flag} is blank; give some text")
        elif dest in FRACTION_ARGS:
            if not 0 < v <= 1:
                raise ValueError(f"{flag} must be a fraction in (0, 1], not {v}")
        elif dest in NON_NEGATIVE_ARGS:
            if not v >= 0:
                raise ValueError(f"{flag} must be >= 0, not {v}")
        elif not v > 0:
            raise ValueError(f"{flag} must be > 0, not {v}")
