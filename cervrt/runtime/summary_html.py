"""OUT/summary.html: a static page (no server, no network) with one row per slide, sortable by any column.

Each row shows the slide's overlay thumbnail (its ``NAME.overlay.jpg``, linked to the full picture),
its status, worst grade (single pixel) and triage grade (the highest grade over the minimum area),
tissue area and the area of each grade. A click on a column header sorts by it (a few lines of
inline JavaScript; numbers sort as numbers); grades sort by severity.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["render_summary"]

_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f0f0f0;cursor:pointer;user-select:none}th:hover{background:#e0e0e0}
td img{max-width:160px;max-height:120px;display:block}.failed{background:#fde8e8}.skipped{color:#555}"""

_SCRIPT = """document.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
var t=th.closest('table'),b=t.tBodies[0],r=Array.from(b.rows),d=th.dataset.dir==='a'?-1:1;th.dataset.dir=d>0?'a':'d';
r.sort(function(x,y){var p=x.cells[i].dataset.k,q=y.cells[i].dataset.k,m=parseFloat(p),n=parseFloat(q);
if(!isNaN(m)&&!isNaN(n))return d*(m-n);return d*p.localeCompare(q);});
r.forEach(function(e){b.appendChild(e);});});});"""


def _cell(text: Any, key: Any = None, raw: str | None = None) -> str:
    shown = raw if raw is not None else html.escape("" if text is None else str(text))
    sort_key = html.escape(str(text if key is None else key), quote=True)
    return f'<td data-k="{sort_key}">{shown}</td>'


def _thumbnail(row: Any, out: str) -> str:
    overlay = (row.report or {}).get("outputs", {}).get("overlay") if row.report else None
    if not overlay:
        return _cell("", raw="")
    rel = html.escape(os.path.relpath(overlay, out) if out else overlay, quote=True)
    return _cell("", raw=f'<a href="{rel}"><img src="{rel}" alt="overlay" loading="lazy"></a>')


def render_summary(rows: Sequence[Any], class_names: Sequence[str], title: str = "cervrt run", out: str = "") -> str:
    """The page for ``rows`` (SlideRow: slide, id/name, status, report or error); thumbnails relative to ``out``."""
    grades = {name: k for k, name in enumerate(class_names)}
    head = ["overlay", "slide", "status", "worst grade", "triage grade", "triage area", "tissue mm²",
            *(f"{c} mm²" for c in class_names[1:]), "error"]
    body = []
    for row in rows:
        values = row.values(list(class_names))
        worst, tri = values.get("worst_grade", ""), values.get("triage_grade", "")
        area = values.get("triage_area", "")
        cells = [_thumbnail(row, out), _cell(values["id"]), _cell(row.status),
                 _cell(worst, grades.get(worst, -1)), _cell(tri, grades.get(tri, -1)),
                 _cell(f"{area} {values.get('triage_unit', '')}".strip(), area if area != "" else -1),
                 _cell(values.get("tissue_mm2", ""), values.get("tissue_mm2", "") or -1),
                 *(_cell(values.get(f"{c} mm2", ""), values.get(f"{c} mm2", "") or -1) for c in class_names[1:]),
                 _cell(row.error)]
        body.append(f'<tr class="{html.escape(row.status)}">{"".join(cells)}</tr>')
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{len(rows)} slides; click a column to sort.</p><table><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table><script>{_SCRIPT}</script></body></html>\n")
