"""Checks of user input made before any model work starts.

Why: a misspelt option or an out-of-range position should stop a run at once with a message
that names the bad value and the fix, not run the wrong computation (an unknown keyword swallowed
by a method) or fail deep inside torch after minutes of work.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable, Iterable, Optional

COMMON_OPTIONS = ("progress",)
"""Options ``cl.patch`` accepts for every method so one call works across methods; passed on only
to methods that declare them (elsewhere there is no progress bar to show)."""


def declared_options(fn: Callable, exclude: Iterable[str]) -> list[str]:
    """The keyword options ``fn`` declares (its ``**`` catch-all, if any, does not count)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    skip = set(exclude)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds and n not in skip]


def suggest(name: str, valid: Iterable[str]) -> str:
    """A hint naming the closest of ``valid`` (if any is close), then all of them."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    listed = f"valid: {', '.join(valid) if valid else '(none)'}"
    return f"; did you mean {close[0]!r}? {listed}" if close else f"; {listed}"


def check_options(fn: Callable, options: dict, method: str, exclude: Iterable[str]) -> None:
    """Reject keyword ``options`` that ``fn`` (the implementation of ``method``) does not declare
    (for functions outside the method registries, whose options are their keyword arguments)."""
    valid = declared_options(fn, exclude)
    valid += [o for o in COMMON_OPTIONS if o not in valid]
    for name in options:
        if name not in valid:
            raise ValueError(f"unknown option {name!r} for method {method!r}{suggest(name, valid)}")


def check_choice(what: str, value, valid: Iterable[str]) -> None:
    """``value`` must be one of ``valid``."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}{suggest(str(value), valid)}")


def check_positive_int(what: str, value) -> None:
    """``value`` must be an int >= 1 (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number >= 1, not {value!r}")


def model_context(model) -> Optional[int]:
    """The longest sequence ``model`` takes (its adapter's ``context_length``), or None if unknown
    (also for a stand-in without an adapter, e.g. a tokenizer-only stub)."""
    adapter = getattr(model, "adapter", None)
    return adapter.context_length if adapter is not None else None


def check_context(model, task) -> None:
    """Every prompt of ``task`` must fit in ``model``'s context."""
    n_ctx = model_context(model)
    if n_ctx is None or len(task) == 0:
        return
    lengths = task.lengths.cpu()
    i = int(lengths.argmax())
    if int(lengths[i]) > n_ctx:
        raise ValueError(f"prompt {i} of task {task.name!r} is {int(lengths[i])} tokens but the model takes at "
                         f"most {n_ctx}; shorten the prompt or use a model with a longer context")
