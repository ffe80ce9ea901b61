"""Range checks for training settings, run where a config is built.

Why here and not where the values are used: a bad value (k = 0, a negative batch size, a
learning rate of 0) otherwise surfaces as a torch traceback deep inside a training run, or is
silently accepted and wastes one. Each check names the field, the value and the valid range.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Optional


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def fail(where: str, name: str, value: Any, valid: str) -> None:
    raise ValueError(f"{where}: {name} = {value!r} is invalid; {name} must be {valid}")


def integer(where: str, name: str, value: Any, lo: int, hi: Optional[int] = None) -> None:
    """An int in [lo, hi] (hi None: no upper bound)."""
    valid = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        fail(where, name, value, valid)


def number(where: str, name: str, value: Any, lo: float, hi: Optional[float] = None,
           lo_open: bool = False, hi_open: bool = False) -> None:
    """A finite number in the interval; ``*_open`` excludes the bound."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    valid = (f"a number {'>' if lo_open else '>='} {lo:g}" if hi is None
             else f"a number in {left}{lo:g}, {hi:g}{right}")
    ok = _is_num(value)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        fail(where, name, value, valid)


def choice(where: str, name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{where}: unknown {name} {value!r}; {name} must be one of "
                         + ", ".join(repr(o) for o in options))


def folder_name(where: str, name: str, value: Any) -> None:
    """A single path component: no separators, not absolute, not '.' or '..' (a coder name
    becomes a folder under the output folder and must stay inside it)."""
    ok = isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value \
        and not PurePosixPath(value).is_absolute() and not PureWindowsPath(value).drive and "\0" not in value
    if not ok:
        fail(where, name, value, "a plain folder name (no '/', '\\', '..' or absolute path): the coder is "
                                 "written to <out>/<name>")
