"""Reports over runs and baselines: Markdown + self-contained HTML + JSON of every number.

`write_report(folders, out_dir, baseline)` reads each folder's ``eval/*.json`` (and ``gates.json``,
``config.yaml`` or ``baseline.json``) and writes ``report.md``, ``report.html``, ``report.json``
and the PNG plots under ``plots/`` (Markdown thumbnails under ``thumbs/``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from catalogclip.evaluate.report.collect import Entry, load_entries
from catalogclip.evaluate.report.plots import curve_plots, gates_plot
from catalogclip.evaluate.report.render import example_grids, html_page, markdown
from catalogclip.evaluate.report.tables import Table, build_tables
from catalogclip.io import atomic_write_json, atomic_write_text


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    plots: dict[str, Path]


def write_report(folders: Sequence[str | Path], out_dir: str | Path, baseline: str | None = None,
                 title: str = "catalogclip evaluation report") -> ReportFiles:
    """Write the report of `folders` (runs or baseline outputs) to `out_dir`.

    `baseline` is the label of the row improvements are relative to (a folder name, or a
    baseline's label such as "bm25"); by default the first trained run (else the first baseline
    that is not a text proxy), never a text-only baseline.
    """
    out_dir = Path(out_dir)
    entries = load_entries(folders)
    baseline = _baseline_label(entries, baseline)
    tables = build_tables(entries, baseline)
    plots: dict[str, Path] = {}
    gates = gates_plot(entries, out_dir / "plots" / "gates.png")
    if gates is not None:
        plots["Gate weights per entity group"] = gates
    plots.update({f"R@K curves: {p}": path for p, path in curve_plots(entries, out_dir / "plots").items()})
    grids = example_grids(entries)
    files = ReportFiles(out_dir / "report.md", out_dir / "report.html", out_dir / "report.json", plots)
    atomic_write_text(files.markdown, markdown(title, entries, tables, baseline, plots, grids, out_dir))
    atomic_write_text(files.html, html_page(title, entries, tables, baseline, plots, grids))
    atomic_write_json(files.json, _numbers(entries, tables, baseline))
    return files


def _baseline_label(entries: Sequence[Entry], baseline: str | None) -> str | None:
    labels = [e.label for e in entries]
    if baseline is None:
        reference = next((e for e in entries if e.kind == "run"), None) or next((e for e in entries if not e.text_proxy), None)
        return reference.label if reference is not None else None
    if baseline not in labels:
        raise ValueError(f"baseline '{baseline}' is none of the reported models ({', '.join(labels)})")
    return baseline


def _numbers(entries: Sequence[Entry], tables: Sequence[Table], baseline: str | None) -> dict:
    return {"baseline": baseline, "tables": [t.to_json() for t in tables], "entries": [e.to_json() for e in entries]}


__all__ = ["ReportFiles", "write_report"]
