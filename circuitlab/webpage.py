"""Safe HTML output: escaping, data inlined in scripts, and plotly.js without a network.

Why one module: labels, prompts, token strings and file contents reach every page circuitlab
writes, and any of them may hold ``</script>``, ``<img onerror=...>`` or quotes. Each page
builds its markup from these helpers, so no page trusts text it did not write itself:

- ``text``: text or an attribute value placed in markup (``& < > " '`` escaped);
- ``script_json``: data placed inside a ``<script>`` element (``< > &`` and the line
  separators U+2028 / U+2029 as ``\\u`` escapes; the result is still valid JSON);
- ``plot_text``: a string shown by plotly (titles, tick labels, hover text), which reads a
  small subset of HTML tags and decodes ``&lt; &gt; &amp;`` back for display;
- ``Html``: markup a page built itself, which ``Report`` inserts as it is (plain ``str``
  items are escaped).

Pages never load scripts from a CDN: plotly.js is inlined (``figure_html(..., "inline")``) or
written once per output folder as ``plotly.min.js`` and loaded by a relative ``src``.
"""

from __future__ import annotations

import html as _html
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

PLOTLY_FILE = "plotly.min.js"
"""File name of the plotly.js bundle written beside pages that load it from their folder."""

_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class Html(str):
    """Markup built by circuitlab itself (its text parts already escaped): inserted unchanged."""


def text(s: Any) -> str:
    """``s`` as HTML text or a quoted attribute value."""
    return _html.escape(str(s), quote=True)


def plot_text(s: Any) -> str:
    """``s`` for a plotly string: tags become visible text, not formatting (quotes stay as they
    are: plotly shows ``&quot;`` literally)."""
    return _html.escape(str(s), quote=False)


def script_json(obj: Any, **kw) -> str:
    """JSON of ``obj`` that can sit inside a ``<script>`` element: no ``</script>``, ``<!--``
    or raw line separators can appear in it, and ``JSON.parse``/JS read the same values."""
    s = json.dumps(obj, **kw)
    for ch, esc in _SCRIPT_ESCAPES.items():
        s = s.replace(ch, esc)
    return s


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The installed plotly package's plotly.js (the version its figures were made for)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def bundle_plotly(folder: str | Path) -> Path:
    """Write ``folder/plotly.min.js`` unless an identical copy is there; return its path."""
    from circuitlab.io import atomic_write

    path = Path(folder) / PLOTLY_FILE
    js = plotly_js()
    data = js.encode("utf-8")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    atomic_write(path, lambda p: Path(p).write_bytes(data))
    return path


def figure_html(fig, plotlyjs: str | bool = "file", div_id: Optional[str] = None,
                post_script: Optional[str] = None) -> Html:
    """A figure as an HTML fragment. ``plotlyjs``: "inline" (the library in the page), "file"
    (a ``<script src="plotly.min.js">``; pair it with ``bundle_plotly``) or False (loaded
    earlier in the page). Plotly's own JSON escapes ``<``, ``>`` and ``/``."""
    include = {"inline": "inline", "file": PLOTLY_FILE, False: False}[plotlyjs]
    return Html(fig.to_html(full_html=False, include_plotlyjs=include, div_id=div_id, post_script=post_script))


def page(title: str, body: str, head: str = "") -> Html:
    """A complete page around markup ``body`` (``title`` is escaped here)."""
    return Html(f"<!doctype html><html><head><meta charset='utf-8'><title>{text(title)}</title>{head}</head>"
                f"<body>{body}</body></html>")


def write_html(path: str | Path, markup: str, plotly_file: bool = False) -> Path:
    """Write a page atomically; with ``plotly_file``, bundle plotly.js beside it."""
    from circuitlab.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if plotly_file:
        bundle_plotly(path.parent)
    atomic_write(path, lambda p: Path(p).write_text(markup, encoding="utf-8"))
    return path


def write_figure(fig, path: str | Path, title: str = "") -> Path:
    """One figure as a page that works offline (plotly.js bundled once in the page's folder)."""
    title = title or _figure_title(fig) or Path(path).stem
    return write_html(path, page(title, figure_html(fig, "file")), plotly_file=True)


def _figure_title(fig) -> str:
    t = fig.layout.title.text
    return _html.unescape(t) if t else ""
