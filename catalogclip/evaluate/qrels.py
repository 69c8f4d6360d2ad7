"""Judged query sets: query texts and graded relevance of products, read from a shop's files.

Formats (`read_judged`):

- TREC qrels, one judgment a line: ``QID 0 PRODUCT_ID GRADE`` (``QID PRODUCT_ID GRADE`` too),
  with the query texts in a TSV (``QID<TAB>text``) or a JSONL file (``{"_id": QID, "text": ...}``;
  ``id`` / ``qid`` and ``query`` are accepted; any other field, e.g. ``family``, is kept as
  query info).
- A BEIR folder: ``queries.jsonl`` and ``qrels/test.tsv`` (``query-id corpus-id score``, with
  that header); ``corpus.jsonl`` is the shop's catalog and is not needed here.
- A JSON object ``{"query text": {"product id": grade, ...}, ...}``.

Grade > 0 is relevant (as trec_eval counts it); grade 0 is a judged non-relevant product. Bad
lines are skipped and logged with their file and line (`ProblemLog`); reading fails only when
no query with a relevant product is left. `JudgedQueries.save` writes TREC qrels + queries JSONL,
which `read_judged` reads back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.io import atomic_write_text

_ID_KEYS = ("_id", "id", "qid", "query_id", "query-id")
_TEXT_KEYS = ("text", "query")
_TSV_HEADERS = {"qid", "id", "_id", "query-id", "query_id"}


@dataclass
class JudgedQueries:
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> product id -> grade
    #: query id -> more fields of the query (``family`` groups queries in reports)
    info: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def ids(self) -> list[str]:
        return list(self.queries)

    def family(self, qid: str) -> str | None:
        return self.info.get(qid, {}).get("family")

    def relevant(self, qid: str) -> dict[str, int]:
        return {pid: grade for pid, grade in self.qrels.get(qid, {}).items() if grade > 0}

    def subset(self, qids) -> "JudgedQueries":
        qids = [q for q in qids if q in self.queries]
        return JudgedQueries({q: self.queries[q] for q in qids}, {q: self.qrels.get(q, {}) for q in qids},
                             {q: self.info[q] for q in qids if q in self.info})

    def save(self, qrels_path: str | Path, queries_path: str | Path) -> tuple[Path, Path]:
        """TREC qrels + queries JSONL (atomically); `read_judged(queries_path, qrels_path)` reads them."""
        qrels_lines = [f"{qid} 0 {pid} {grade}\n" for qid in self.queries for pid, grade in self.qrels.get(qid, {}).items()]
        query_lines = [json.dumps({"_id": qid, "text": text, **self.info.get(qid, {})}, ensure_ascii=False) + "\n"
                       for qid, text in self.queries.items()]
        atomic_write_text(qrels_path, "".join(qrels_lines))
        atomic_write_text(queries_path, "".join(query_lines))
        return Path(qrels_path), Path(queries_path)


def read_judged(queries: str | Path | None, qrels: str | Path, problems: ProblemLog | None = None) -> JudgedQueries:
    """A judged query set in any of the module's formats (chosen by what `qrels` is)."""
    problems = problems if problems is not None else ProblemLog()
    qrels = Path(qrels)
    if not qrels.exists():
        raise FileNotFoundError(f"{qrels}: no such qrels file or BEIR folder")
    if qrels.is_dir():
        queries, qrels = _beir_files(qrels, queries)
    elif qrels.suffix == ".json":
        if queries is not None:
            raise ValueError(f"{qrels}: a JSON qrels object holds its query texts; do not give --queries with it")
        return _usable(_read_json_object(qrels, problems), qrels, problems)
    if queries is None:
        raise ValueError(f"{qrels}: TREC qrels need the query texts (--queries QUERIES.tsv or .jsonl)")
    queries = Path(queries)
    texts, info = (_read_queries_jsonl if queries.suffix == ".jsonl" else _read_queries_tsv)(queries, problems)
    judgments = _read_trec(qrels, problems)
    for qid in sorted(set(judgments) - set(texts)):
        problems.add("unknown query", qrels, None, f"query '{qid}' has judgments but no text in {queries.name}")
    return _usable(JudgedQueries(texts, {q: judgments.get(q, {}) for q in texts}, info), qrels, problems)


def _beir_files(folder: Path, queries: str | Path | None) -> tuple[Path, Path]:
    tsvs = sorted((folder / "qrels").glob("*.tsv"))
    qrels = folder / "qrels" / "test.tsv" if (folder / "qrels" / "test.tsv").exists() else (tsvs[0] if len(tsvs) == 1 else None)
    if qrels is None:
        raise ValueError(f"{folder}: a BEIR folder needs qrels/test.tsv (found: {', '.join(p.name for p in tsvs) or 'none'})")
    return Path(queries) if queries is not None else folder / "queries.jsonl", qrels


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line.rstrip("\n")


def _read_trec(path: Path, problems: ProblemLog) -> dict[str, dict[str, int]]:
    judgments: dict[str, dict[str, int]] = {}
    for number, line in _lines(path):
        fields = line.split()
        if number == 1 and [f.lower() for f in fields[:2]] == ["query-id", "corpus-id"]:
            continue  # BEIR's header
        if len(fields) not in (3, 4):
            problems.add("malformed qrels line", path, number, f"{len(fields)} fields; expected 'QID 0 PRODUCT_ID GRADE'")
            continue
        qid, pid, grade = fields[0], fields[-2], _grade(fields[-1])
        if grade is None:
            problems.add("malformed qrels line", path, number, f"grade '{fields[-1]}' is not an integer")
        elif pid in judgments.setdefault(qid, {}):
            problems.add("duplicate judgment", path, number, f"query '{qid}', product '{pid}' judged again; first kept")
        else:
            judgments[qid][pid] = grade
    return judgments


def _grade(text) -> int | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value == int(value) else None


def _read_queries_tsv(path: Path, problems: ProblemLog) -> tuple[dict[str, str], dict[str, dict]]:
    texts: dict[str, str] = {}
    for number, line in _lines(path):
        qid, tab, text = line.partition("\t")
        if number == 1 and qid.strip().lower() in _TSV_HEADERS:
            continue
        if not tab or not qid.strip() or not text.strip():
            problems.add("malformed query line", path, number, "expected 'QID<TAB>query text'")
        else:
            _add_query(texts, qid.strip(), text.strip(), path, number, problems)
    return texts, {}


def _read_queries_jsonl(path: Path, problems: ProblemLog) -> tuple[dict[str, str], dict[str, dict]]:
    texts: dict[str, str] = {}
    info: dict[str, dict] = {}
    for number, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add("malformed query line", path, number, f"invalid JSON: {exc.msg}")
            continue
        qid = next((row[k] for k in _ID_KEYS if isinstance(row, dict) and k in row), None)
        text = next((row[k] for k in _TEXT_KEYS if isinstance(row, dict) and k in row), None)
        if qid is None or not isinstance(text, str) or not text.strip():
            problems.add("malformed query line", path, number, "needs an id ('_id', 'id' or 'qid') and a non-empty 'text'")
        elif _add_query(texts, str(qid), text.strip(), path, number, problems):
            extra = {k: v for k, v in row.items() if k not in _ID_KEYS + _TEXT_KEYS}
            if extra:
                info[str(qid)] = extra
    return texts, info


def _add_query(texts: dict[str, str], qid: str, text: str, path: Path, number: int, problems: ProblemLog) -> bool:
    if qid in texts:
        problems.add("duplicate query", path, number, f"query id '{qid}' already seen; first kept")
        return False
    texts[qid] = text
    return True


def _read_json_object(path: Path, problems: ProblemLog) -> JudgedQueries:
    raw = path.read_text(encoding="utf-8")
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f'{path}: expected an object {{"query text": {{"product id": grade}}}}')
    texts: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for number, (text, judged) in enumerate(obj.items(), start=1):
        line = _line_of(raw, text)
        grades = {pid: _grade(g) for pid, g in judged.items()} if isinstance(judged, dict) else None
        if not text.strip() or grades is None:
            problems.add("malformed query", path, line, f"query '{text}': expected a non-empty text mapped to {{\"product id\": grade}}")
            continue
        for pid in [p for p, g in grades.items() if g is None or isinstance(judged[p], bool)]:
            problems.add("malformed judgment", path, line, f"query '{text}', product '{pid}': grade {judged[pid]!r} is not an integer")
            grades.pop(pid)
        qid = f"q{number}"
        texts[qid], qrels[qid] = text.strip(), grades
    return JudgedQueries(texts, qrels)


def _line_of(raw: str, key: str) -> int | None:
    """The line a JSON object key is written on (for problem lines; None when not found as written)."""
    at = raw.find(json.dumps(key, ensure_ascii=False) + ":")
    at = at if at >= 0 else raw.find(json.dumps(key) + ":")
    return raw.count("\n", 0, at) + 1 if at >= 0 else None


def _usable(judged: JudgedQueries, source: Path, problems: ProblemLog) -> JudgedQueries:
    """Drop queries without a relevant product (counted); fail when none is left."""
    keep = [q for q in judged.ids if judged.relevant(q)]
    for qid in judged.ids:
        if qid not in keep:
            problems.add("query without relevant product", source, None, f"query '{qid}' ({judged.queries[qid]!r}) has no judgment with grade > 0; skipped")
    problems.loaded += len(keep)
    if not keep:
        raise ValueError(f"{source}: no query with a relevant product ({problems.summary()})")
    return judged.subset(keep)
