"""Plain HTML pieces: every piece of text goes through ``esc``; no scripts, no external resources."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

import numpy as np

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f0; }
table.facts th { background: #f6f6f6; text-align: left; font-weight: normal; }
table.facts td { text-align: left; max-width: 60em; }
tr.emph td { font-weight: bold; background: #f6f9fc; }
.note { color: #666; font-size: 0.9em; }
.warning { background: #fdecec; border: 2px solid #d22; color: #900; font-weight: bold; padding: 0.6em 1em; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figs figure { margin: 0; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.thumb { margin: 0; padding: 3px; width: 104px; border: 3px solid #3a3; font-size: 0.75em; text-align: center; }
.thumb.wrong { border-color: #d22; background: #fdecec; }
.thumb img { width: 96px; height: 96px; image-rendering: pixelated; display: block; margin: 0 auto; }
.mark { font-weight: bold; } .wrong .mark { color: #d22; } .right .mark { color: #3a3; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number formatted, or "n/a" for anything missing or not a finite number."""
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return format(value, spec)


def table(header: list[str], rows: Iterable[list[Any]], row_classes: list[str] | None = None) -> str:
    """Cells are escaped text."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and i < len(row_classes) and row_classes[i] else ""
        attr = f' class="{esc(cls)}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table without a header row."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def img(src: str, alt: str, width: int | None = None) -> str:
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{esc(src)}" alt="{esc(alt)}"{w}>'


def figure(src: str, caption: str) -> str:
    return f"<figure>{img(src, caption)}<figcaption class=\"note\">{esc(caption)}</figcaption></figure>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def document(title: str, subtitle: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n{note(subtitle)}\n" + "\n".join(sections) + "\n</body></html>\n")
