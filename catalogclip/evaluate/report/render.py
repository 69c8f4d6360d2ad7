"""Markdown and self-contained HTML renderings of a report.

The HTML embeds its plots and image thumbnails as base64 data URIs, so the one file can be mailed
or archived; the Markdown refers to the PNG files written next to it.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from catalogclip.evaluate.report.collect import Entry
from catalogclip.evaluate.report.tables import TEXT_PROXY_SECTION, Table

#: (protocol, task) pairs whose example queries are shown, with their top candidates
EXAMPLE_TASKS = (("full", "t2i"), ("category", "category"), ("zeroshot-cls", "zeroshot-cls"))
THUMB_PX = 96


@dataclass
class Grid:
    """Example queries of one task of one entry."""

    title: str
    examples: list[dict]


def example_grids(entries: Sequence[Entry], per_grid: int = 4) -> list[Grid]:
    grids = []
    for entry in entries:
        for protocol, task in EXAMPLE_TASKS:
            examples = entry.results.get(protocol, {}).get("tasks", {}).get(task, {}).get("examples", [])
            if examples:
                grids.append(Grid(f"{entry.label}: {protocol} ({task})", examples[:per_grid]))
    return grids


def thumbnail(path: str | None, size: int = THUMB_PX) -> bytes | None:
    """A small JPEG of an image file, or None when it cannot be read."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
            return buffer.getvalue()
    except (OSError, ValueError):
        return None


def _format(value, percent: bool) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def _delta(row_delta: float | None) -> str:
    return "" if row_delta is None else f"{row_delta:+.1f}%"


def _starts_proxies(table: Table, row) -> bool:
    """Whether `row` is the first text proxy of a table (they follow the cross-modal rows)."""
    return row.text_proxy and next(r for r in table.rows if r.text_proxy) is row


def _kind(entry: Entry) -> str:
    return "baseline (text proxy)" if entry.text_proxy else entry.kind


def _with_delta(table: Table, baseline: str | None) -> bool:
    return baseline is not None and any(r.delta is not None for r in table.rows)


# --- Markdown ----------------------------------------------------------------------------------


def markdown(title: str, entries: Sequence[Entry], tables: Sequence[Table], baseline: str | None,
             plots: dict[str, Path], grids: Sequence[Grid], out_dir: Path) -> str:
    lines = [f"# {title}", "", *_entry_lines(entries), ""]
    if baseline:
        lines += [f"Relative improvements are over **{baseline}**.", ""]
    for table in tables:
        lines += _markdown_table(table, baseline)
    for name, path in plots.items():
        lines += [f"## {name}", "", f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    for grid in grids:
        lines += _markdown_grid(grid, out_dir)
    return "\n".join(lines) + "\n"


def _entry_lines(entries: Sequence[Entry]) -> list[str]:
    lines = ["| model | kind | settings | folder |", "|---|---|---|---|"]
    for e in entries:
        settings = ", ".join(f"{k}={v}" for k, v in e.info.items() if v not in (None, "") and k not in ("catalog", "label"))
        lines.append(f"| {e.label} | {_kind(e)} | {settings} | `{e.path}` |")
    return lines


def _markdown_table(table: Table, baseline: str | None) -> list[str]:
    delta = _with_delta(table, baseline)
    header = ["model", *table.columns] + ([f"Δ {table.headline}"] if delta else [])
    lines = [f"## {table.title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        if _starts_proxies(table, row):
            lines.append(f"| *{TEXT_PROXY_SECTION}* |" + " |" * (len(header) - 1))
        cells = []
        for i, value in enumerate(row.values):
            text = _format(value, table.percent)
            cells.append(f"**{text}**" if table.is_best(row, i) else text)
        lines.append("| " + " | ".join([row.label, *cells] + ([_delta(row.delta)] if delta else [])) + " |")
    return lines + ["", table.note, ""] if table.note else lines + [""]


def _markdown_grid(grid: Grid, out_dir: Path) -> list[str]:
    lines = [f"## Examples: {grid.title}", "", "| query | 1 | 2 | 3 | 4 | 5 |", "|---|---|---|---|---|---|"]
    for example in grid.examples:
        cells = [_markdown_item(example["query"], out_dir, None)]
        cells += [_markdown_item(c, out_dir, c["relevant"]) for c in example["top"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "✓ = relevant, ✗ = not relevant.", ""]


def _markdown_item(item: dict, out_dir: Path, relevant: bool | None) -> str:
    mark = "" if relevant is None else ("✓ " if relevant else "✗ ")
    label = item["label"].replace("|", "/")
    data = thumbnail(item.get("image"))
    if data is None:
        return f"{mark}{label}"
    name = hashlib.sha1(item["image"].encode()).hexdigest()[:16] + ".jpg"
    target = out_dir / "thumbs" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return f"{mark}![{label}](thumbs/{name})<br>{label}"


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.best{font-weight:700}.up{color:#1a7f37}.down{color:#c62828}.note{color:#666;font-size:.85rem}
img.plot{max-width:100%;border:1px solid #eee}
.grid td{vertical-align:top;text-align:center;width:110px;font-size:.75rem}
.grid img{display:block;margin:0 auto .2rem;border:3px solid transparent}
.grid .yes img{border-color:#2e7d32}.grid .no img{border-color:#c62828}
.mark{font-weight:700}.yes .mark{color:#2e7d32}.no .mark{color:#c62828}
.info td{text-align:left}
tr.section td{text-align:left;font-style:italic;background:#fafafa;color:#555}
.noimg{display:block;width:96px;height:60px;margin:0 auto .2rem;background:#f4f4f4;color:#999;line-height:60px}
"""


def html_page(title: str, entries: Sequence[Entry], tables: Sequence[Table], baseline: str | None,
              plots: dict[str, Path], grids: Sequence[Grid]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>", _html_entries(entries)]
    if baseline:
        parts.append(f"<p>Relative improvements (Δ) are over <b>{html.escape(baseline)}</b>.</p>")
    parts += [_html_table(t, baseline) for t in tables]
    for name, path in plots.items():
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img class='plot' alt='{html.escape(name)}' src='{uri}'>")
    parts += [_html_grid(g) for g in grids]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_entries(entries: Sequence[Entry]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(e.label)}</td><td>{_kind(e)}</td><td>"
        + html.escape(", ".join(f"{k}={v}" for k, v in e.info.items() if v not in (None, "") and k not in ("catalog", "label")))
        + f"</td><td><code>{html.escape(str(e.path))}</code></td></tr>"
        for e in entries
    )
    return f"<table class='info'><tr><th>model</th><th>kind</th><th>settings</th><th>folder</th></tr>{rows}</table>"


def _html_table(table: Table, baseline: str | None) -> str:
    delta = _with_delta(table, baseline)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", *table.columns])
    head += f"<th>Δ {html.escape(table.headline)}</th>" if delta else ""
    body = []
    for row in table.rows:
        if _starts_proxies(table, row):
            span = len(table.columns) + 1 + bool(delta)
            body.append(f"<tr class='section'><td colspan={span}>{html.escape(TEXT_PROXY_SECTION)}</td></tr>")
        cells = []
        for i, value in enumerate(row.values):
            best = table.is_best(row, i)
            cells.append(f"<td{' class=best' if best else ''}>{_format(value, table.percent)}</td>")
        if delta:
            css = "" if row.delta is None else (" class=up" if row.delta >= 0 else " class=down")
            cells.append(f"<td{css}>{_delta(row.delta)}</td>")
        body.append(f"<tr><td>{html.escape(row.label)}</td>{''.join(cells)}</tr>")
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return f"<h2>{html.escape(table.title)}</h2><table><tr>{head}</tr>{''.join(body)}</table>{note}"


def _html_grid(grid: Grid) -> str:
    rows = []
    for example in grid.examples:
        cells = [_html_item(example["query"], None)] + [_html_item(c, c["relevant"]) for c in example["top"]]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "<tr><th>query</th>" + "".join(f"<th>{k}</th>" for k in range(1, 6)) + "</tr>"
    return (f"<h2>Examples: {html.escape(grid.title)}</h2><table class='grid'>{head}{''.join(rows)}</table>"
            "<p class='note'>Green ✓ = relevant, red ✗ = not relevant.</p>")


def _html_item(item: dict, relevant: bool | None) -> str:
    css = "" if relevant is None else (" class='yes'" if relevant else " class='no'")
    mark = "" if relevant is None else f"<span class='mark'>{'✓' if relevant else '✗'}</span> "
    label = html.escape(item["label"])
    data = thumbnail(item.get("image")) if "image" in item else None
    if data is not None:
        picture = f"<img alt='{label}' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"
    elif "image" in item:
        picture = "<span class='noimg'>no image</span>"
    else:
        picture = ""
    return f"<td{css}>{picture}{mark}{label}</td>"
