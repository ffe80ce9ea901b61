"""A self-contained HTML report: sections of text, tables and plotly figures.

Every string is escaped (``circuitlab.webpage``) except ``Html`` items, markup built by
circuitlab; plotly.js is inlined once, so the report opens offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab.webpage import Html, figure_html, page, text, write_html


@dataclass
class Report:
    title: str
    sections: list[tuple[str, str, list[Any]]] = field(default_factory=list)

    def add(self, heading: str, text: str, *items: Any) -> None:
        """Items are plotly figures, lists of rows (tables), ``Html`` fragments (inserted as they
        are) or other strings (shown as escaped text)."""
        self.sections.append((heading, text, list(items)))

    def html(self) -> str:
        style = ("<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
                 "color:#222}table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
                 "th{background:#f3f3f3}p.note{color:#555}</style>")
        parts = [f"<h1>{text(self.title)}</h1>"]
        first_fig = True
        for heading, note, items in self.sections:
            parts.append(f"<section><h2>{text(heading)}</h2><p class='note'>{text(note)}</p>")
            for it in items:
                if hasattr(it, "to_html"):
                    parts.append(figure_html(it, "inline" if first_fig else False))
                    first_fig = False
                elif isinstance(it, list):
                    parts.append(_table(it))
                elif isinstance(it, Html):
                    parts.append(it)
                else:
                    parts.append(f"<p>{text(it)}</p>")
            parts.append("</section>")
        return page(self.title, "\n".join(parts), head=style)

    def save(self, path: str | Path) -> Path:
        return write_html(path, self.html())


def _table(rows: list) -> str:
    if not rows:
        return ""
    head = rows[0]
    out = ["<table><tr>" + "".join(f"<th>{text(h)}</th>" for h in head) + "</tr>"]
    for r in rows[1:]:
        out.append("<tr>" + "".join(f"<td>{text(_fmt(c))}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _fmt(c) -> str:
    return f"{c:.4g}" if isinstance(c, float) else str(c)
