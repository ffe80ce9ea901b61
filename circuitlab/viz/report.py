"""A self-contained HTML report: sections of text, tables and plotly figures."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab.result import atomic_write


@dataclass
class Report:
    title: str
    sections: list[tuple[str, str, list[Any]]] = field(default_factory=list)

    def add(self, heading: str, text: str, *items: Any) -> None:
        """Items are plotly figures, HTML strings, or lists of rows (tables)."""
        self.sections.append((heading, text, list(items)))

    def html(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
                 "th{background:#f3f3f3}p.note{color:#555}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        first_fig = True
        for heading, text, items in self.sections:
            parts.append(f"<section><h2>{html.escape(heading)}</h2><p class='note'>{html.escape(text)}</p>")
            for it in items:
                if hasattr(it, "to_html"):
                    parts.append(it.to_html(full_html=False, include_plotlyjs="inline" if first_fig else False))
                    first_fig = False
                elif isinstance(it, list):
                    parts.append(_table(it))
                else:
                    parts.append(str(it))
            parts.append("</section>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = self.html()
        atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
        return path


def _table(rows: list) -> str:
    if not rows:
        return ""
    head = rows[0]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for r in rows[1:]:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _fmt(c) -> str:
    return f"{c:.4g}" if isinstance(c, float) else str(c)
