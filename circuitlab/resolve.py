"""From the names a user types to objects: a model by name and a task by spec.

Why one module: every command, the demo and the example scripts accept the same ``--model`` and
``--task`` strings, so they must resolve them the same way (a bundled task name wins over a
same-named file or folder in the working folder; a path-like argument is a JSONL file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

TASK_FILE_SUFFIXES = (".jsonl", ".json")
"""Endings that mark a task argument as a file of {clean, corrupt, answer, wrong} records."""


def looks_like_file(spec: str) -> bool:
    """True for a task argument spelt like a path (a JSONL/JSON ending or a folder separator)."""
    return Path(spec).suffix in TASK_FILE_SUFFIXES or "/" in spec or "\\" in spec


def load_model(name: Optional[str] = None):
    """The model ``name`` (fetched name, zoo name, folder or hub id); None: the bundled GPT-2
    zoo model if installed, else the first zoo model."""
    import circuitlab as cl
    from circuitlab.zoo import list_models

    if name is None:
        zoo = list_models()
        if not zoo:
            raise SystemExit("no bundled zoo model is installed; pass --model PATH_OR_HUB_ID")
        name = "gpt2-zoo" if "gpt2-zoo" in zoo else zoo[0]
    return cl.load(name)


def load_task(model, spec: str, n: int, seed: int):
    """The task ``spec`` names: a bundled task (``n`` prompts drawn with ``seed``) or a JSONL file.

    A bundled name wins over a same-named file or folder (``--out ioi`` makes one); an argument
    that looks like a path or names an existing file is read as JSONL."""
    import circuitlab as cl
    from circuitlab.tasks.bundled import BUNDLED

    if not looks_like_file(spec) and (spec in BUNDLED or not Path(spec).is_file()):
        return cl.tasks.bundled(model, spec, n=n, seed=seed)
    return cl.tasks.from_pairs(model, spec, name=Path(spec).stem)
