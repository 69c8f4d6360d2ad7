"""Tables in the papers' layouts, built from eval results (numbers only; rendering is elsewhere).

- ``full`` / ``sample100`` (EI-CLIP): I2T R@1/5/10, T2I R@1/5/10, SumR.
- ``category`` (CLIP-ITA): P@K, mAP@K, R-precision, one table per granularity (all categories,
  root level, leaf level, unseen categories).
- ``zeroshot-cls``: Acc@1, Acc@5. Any other protocol: every metric of every task.

Each row may carry the relative improvement of the table's headline metric over a chosen
baseline row: ``(value - baseline) / baseline``, in percent.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from catalogclip.evaluate.protocols import CATEGORY_METRICS
from catalogclip.evaluate.report.collect import Entry, protocols_of

Getter = Callable[[dict], "float | None"]
#: protocols that evaluate a search index on text queries, one task per search mode
JUDGED_PROTOCOLS = ("attribute-queries", "judged")
SHOPPER_METRICS = ("nDCG@10", "P@1")
TEXT_PROXY_SECTION = "Text proxies (not cross-modal)"
TEXT_PROXY_NOTE = ("Text proxies read product text only: where the protocol shows an image they see its product's "
                   "catalog record, which on real catalogs repeats the title. They are no image-text system, so they "
                   "are listed apart and never marked best.")
GROUP_TITLES = {"all": "all categories", "root": "most general (root level)", "leaf": "most specific (leaf level)",
                "unseen": "unseen categories"}
DIRECTIONS = (("i2t", "I2T"), ("t2i", "T2I"))


@dataclass
class Row:
    label: str
    values: list[float | None]
    #: relative improvement of the headline metric over the baseline row, in percent
    delta: float | None = None
    #: a text-only baseline: shown in its own section, never marked best
    text_proxy: bool = False


@dataclass
class Table:
    key: str
    title: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    #: the column whose relative improvement over the baseline is shown
    headline: str | None = None
    #: values are fractions shown as percentages
    percent: bool = True
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def best(self, column: int) -> float | None:
        """The best value of a column among the cross-modal rows (text proxies do not compete)."""
        values = [r.values[column] for r in self.rows if _is_number(r.values[column]) and not r.text_proxy]
        return max(values) if values else None

    def is_best(self, row: Row, column: int) -> bool:
        value = row.values[column]
        return not row.text_proxy and value is not None and value == self.best(column) and len(self.rows) > 1


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _metric(task: str, metric: str, group: str = "all") -> Getter:
    def get(result: dict) -> float | None:
        return result.get("tasks", {}).get(task, {}).get("metrics", {}).get(group, {}).get(metric)

    return get


def _summary(name: str) -> Getter:
    return lambda result: result.get("summary", {}).get(name)


def _layouts(protocol: str, results: Sequence[dict]) -> list[tuple[str, str, list[tuple[str, Getter]], str | None, str]]:
    """(key, title, columns, headline, note) of each table a protocol gets."""
    if protocol in ("full", "sample100"):
        columns = [(f"{name} R@{k}", _metric(task, f"R@{k}")) for task, name in DIRECTIONS for k in (1, 5, 10)]
        columns.append(("SumR", _summary("SumR")))
        title = {"full": "Full-candidate retrieval (whole test catalog)",
                 "sample100": "Sample-100 retrieval (positive + 100 same-category negatives)"}[protocol]
        warnings = " ".join(dict.fromkeys(w for r in results if (w := r.get("settings", {}).get("warning"))))
        return [(protocol, title, columns, "SumR", f"R@K in %; SumR = sum of the six R@K. {warnings}".strip())]
    if protocol == "category":
        groups = [g for g in GROUP_TITLES if any(g in r.get("tasks", {}).get("category", {}).get("metrics", {}) for r in results)]
        return [
            (f"category-{g}", f"Category-to-image retrieval: {GROUP_TITLES[g]}",
             [(m, _metric("category", m, g)) for m in CATEGORY_METRICS], "R-precision",
             "In %. mAP@K is normalised by the number of relevant products (trec_eval), so it is at most K/R.")
            for g in groups
        ]
    if protocol == "zeroshot-cls":
        return [(protocol, "Zero-shot classification into leaf categories",
                 [(m, _metric("zeroshot-cls", m)) for m in ("Acc@1", "Acc@5")], "Acc@1", "Accuracy in %.")]
    tasks = list(dict.fromkeys(t for r in results for t in r.get("tasks", {})))
    if tasks:
        columns = [(f"{t} {m}", _metric(t, m)) for t in tasks
                   for m in dict.fromkeys(m for r in results for m in r["tasks"].get(t, {}).get("metrics", {}).get("all", {}))]
        return [(protocol, f"Protocol {protocol}", columns, columns[0][0] if columns else None, "In %.")]
    names = list(dict.fromkeys(k for r in results for k, v in r.items() if _is_number(v) and k != "n"))
    return [(protocol, f"Protocol {protocol}", [(n, lambda r, n=n: r.get(n)) for n in names], names[0] if names else None,
             "In %.")]


def judged_tables(protocol: str, entries: Sequence[Entry]) -> list[Table]:
    """An index evaluated on shopper queries: one row per (index, search mode); nDCG@10 and P@1 per
    query family, then every metric over all queries."""
    having = [e for e in entries if protocol in e.results]
    results = [e.results[protocol] for e in having]
    groups = list(dict.fromkeys(g for r in results for task in r["tasks"].values() for g in task["metrics"]))
    metrics = list(dict.fromkeys(m for r in results for task in r["tasks"].values() for m in task["metrics"]["all"]))
    layouts = [(f"{protocol}-families", f"Shopper queries ({protocol}) per query family",
                [(g, m) for g in groups for m in SHOPPER_METRICS], "In %; one row per index and search mode."),
               (protocol, f"Shopper queries ({protocol}): every metric", [("all", m) for m in metrics],
                "In %; Recall@K is IR recall (share of the relevant products in the top K); nDCG is graded.")]
    tables = []
    for key, title, columns, note in layouts:
        table = Table(key, title, [m if g == "all" and key == protocol else f"{g} {m}" for g, m in columns], note=note)
        for entry, result in zip(having, results):
            for mode, task in result["tasks"].items():
                table.rows.append(Row(f"{entry.label} · {mode}", [task["metrics"].get(g, {}).get(m) for g, m in columns]))
        tables.append(table)
    return tables


def build_tables(entries: Sequence[Entry], baseline: str | None = None) -> list[Table]:
    """Every table of a report; `baseline` is the label of the row improvements are relative to."""
    tables = []
    for protocol in protocols_of(entries):
        if protocol in JUDGED_PROTOCOLS:
            tables += judged_tables(protocol, entries)
            continue
        having = sorted((e for e in entries if protocol in e.results), key=lambda e: e.text_proxy)  # text proxies last
        for key, title, columns, headline, note in _layouts(protocol, [e.results[protocol] for e in having]):
            if any(e.text_proxy for e in having):
                note = f"{note} {TEXT_PROXY_NOTE}".strip()
            table = Table(key, title, [name for name, _ in columns], headline=headline, note=note)
            for entry in having:
                table.rows.append(Row(entry.label, [get(entry.results[protocol]) for _, get in columns], text_proxy=entry.text_proxy))
            _add_deltas(table, baseline)
            tables.append(table)
    return tables


def _add_deltas(table: Table, baseline: str | None) -> None:
    if baseline is None or table.headline is None:
        return
    column = table.columns.index(table.headline)
    base = next((r.values[column] for r in table.rows if r.label == baseline), None)
    if not _is_number(base) or base == 0:
        return
    for row in table.rows:
        if row.label != baseline and _is_number(row.values[column]):
            row.delta = 100.0 * (row.values[column] - base) / base


def result_rows(result: dict) -> list[tuple[str, str, int, dict[str, float]]]:
    """(task, group, number of queries, metrics) for every task and group of one eval result."""
    rows = []
    for task, values in result.get("tasks", {}).items():
        for group, metrics in values["metrics"].items():
            rows.append((task, group, values["n_queries_per_group"][group], metrics))
    return rows
