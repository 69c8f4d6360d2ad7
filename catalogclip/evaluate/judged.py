"""Score a search index on judged queries, in one or more search modes.

Each query is run through the search engine (`search(text, depth, mode)` gives product ids, best
first); the ranks of its relevant products in that list feed the metrics of
`catalogclip.evaluate.metrics`. A relevant product the search did not return within `depth` counts
as ranked below it, so every metric with a cut-off <= `depth` is exact. Judged products that are not
in the index are dropped (and counted): the index cannot return them. Results are shaped like a
protocol's (one task per mode, one group per query family), so tables and reports read them as
they read any protocol; a per-query file holds each query's numbers and top products.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from catalogclip.catalog.problems import ProblemLog
from catalogclip.evaluate.attribute_queries import ATTRIBUTE_QUERIES, AttributeQueryOptions, attribute_queries
from catalogclip.evaluate.metrics import Ranks, graded_ndcg, per_query
from catalogclip.evaluate.qrels import JudgedQueries, read_judged
from catalogclip.io import atomic_write_json, atomic_write_text
from catalogclip.search.fusion import MODES

if TYPE_CHECKING:
    from catalogclip.search.engine import SearchEngine

JUDGED_METRICS = ("P@1", "P@5", "P@10", "Recall@10", "Recall@100", "MRR@10", "nDCG@10", "mAP@100")
#: how many products each query retrieves; the deepest cut-off of JUDGED_METRICS
DEPTH = 100
#: the top of each ranking kept in the per-query file
TOP_SHOWN = 10

#: search(text, k, mode) -> product ids, best first
SearchFn = Callable[[str, int, str], list[str]]


def judged_ranks(rankings: Sequence[Sequence[str]], relevant: Sequence[dict[str, int]], depth: int) -> tuple[Ranks, np.ndarray]:
    """Ranks of each query's relevant products in its ranking, and their grades (aligned).

    A relevant product missing from the first `depth` results gets a distinct rank after `depth`.
    """
    lists, gains = [], []
    for ranking, judged in zip(rankings, relevant):
        position = {pid: r for r, pid in enumerate(ranking[:depth], start=1)}
        found = sorted((position[p], g) for p, g in judged.items() if p in position)
        missing = [g for p, g in judged.items() if p not in position]
        pairs = found + [(depth + 1 + i, g) for i, g in enumerate(missing)]
        lists.append([r for r, _ in pairs])
        gains += [g for _, g in pairs]
    ranks = Ranks.from_lists(lists)  # ranks are distinct per query, so their order is kept
    return ranks, np.array(gains, dtype=np.float64)


def query_metrics(ranks: Ranks, gains: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-query values of each metric; nDCG uses the grades, the others relevance > 0."""
    return {name: graded_ndcg(ranks, gains, int(name.split("@")[1])) if name.startswith("nDCG@") else per_query(ranks, name)
            for name in names}


def evaluate_judged(
    search: SearchFn,
    judged: JudgedQueries,
    modes: Sequence[str],
    index_ids: set[str],
    name: str = "judged",
    depth: int = DEPTH,
    metrics: Sequence[str] = JUDGED_METRICS,
) -> tuple[dict, list[dict]]:
    """(result, per-query rows): every metric per mode and query family, and each query's detail."""
    usable, dropped = _in_index(judged, index_ids)
    qids = usable.ids
    if not qids:
        raise ValueError(f"no judged query has a relevant product in the index ({dropped['judgments']} judged products are not in it)")
    relevant = [usable.relevant(q) for q in qids]
    families = sorted({f for q in qids if (f := usable.family(q))})
    groups = {f: np.array([i for i, q in enumerate(qids) if usable.family(q) == f]) for f in families}
    tasks, rows = {}, []
    for mode in modes:
        started = time.perf_counter()
        rankings = [search(usable.queries[q], depth, mode) for q in qids]
        ranks, gains = judged_ranks(rankings, relevant, depth)
        values = query_metrics(ranks, gains, metrics)
        tasks[mode] = {
            "query_side": "text", "candidate_side": "product", "n_queries": len(qids), "n_candidates": len(index_ids),
            "n_queries_per_group": {"all": len(qids), **{f: len(g) for f, g in groups.items()}},
            "metrics": {"all": _means(values, None), **{f: _means(values, g) for f, g in groups.items()}},
            "seconds": round(time.perf_counter() - started, 3),
        }
        rows += [_query_row(mode, q, usable, relevant[i], rankings[i], {m: float(v[i]) for m, v in values.items()})
                 for i, q in enumerate(qids)]
    result = {
        "protocol": name, "n_queries": len(qids), "n_products": len(index_ids),
        "settings": {"depth": depth, "modes": list(modes), "metrics": list(metrics), "dropped": dropped,
                     "relevance": "grade > 0 is relevant; nDCG weighs products by grade (linear gain)",
                     "Recall@K": "fraction of a query's relevant products in its top K (IR recall)"},
        "tasks": tasks, "summary": {},
    }
    return result, rows


def _means(values: dict[str, np.ndarray], rows: np.ndarray | None) -> dict[str, float]:
    return {m: float(np.mean(v if rows is None else v[rows])) for m, v in values.items()}


def _in_index(judged: JudgedQueries, index_ids: set[str]) -> tuple[JudgedQueries, dict]:
    """The judgments of products the index holds; queries left without a relevant one are dropped."""
    qrels = {q: {p: g for p, g in judged.qrels[q].items() if p in index_ids} for q in judged.ids}
    trimmed = JudgedQueries(judged.queries, qrels, judged.info)
    keep = [q for q in judged.ids if trimmed.relevant(q)]
    dropped = {"judgments": sum(len(judged.qrels[q]) - len(qrels[q]) for q in judged.ids), "queries": len(judged) - len(keep)}
    return trimmed.subset(keep), dropped


def _query_row(mode: str, qid: str, judged: JudgedQueries, relevant: dict[str, int], ranking: list[str], values: dict) -> dict:
    grades = judged.qrels[qid]
    first = next((r for r, pid in enumerate(ranking, start=1) if pid in relevant), None)
    return {"mode": mode, "qid": qid, "query": judged.queries[qid], **judged.info.get(qid, {}),
            "n_relevant": len(relevant), "first_relevant_rank": first, **{m: round(v, 6) for m, v in values.items()},
            "top": [{"id": pid, "grade": grades.get(pid)} for pid in ranking[:TOP_SHOWN]]}


# --- a search index as the system under test ---------------------------------------------------

def mode_list(requested: Sequence[str]) -> list[str]:
    """Expand "all" (every search mode) and check the names."""
    names = [m.strip() for value in requested for m in value.split(",") if m.strip()] or ["all"]
    names = [m for name in names for m in (MODES if name == "all" else [name])]
    unknown = next((m for m in names if m not in MODES), None)
    if unknown is not None:
        raise ValueError(f"unknown search mode '{unknown}' (known: {', '.join(MODES)}, all)")
    return list(dict.fromkeys(names))


def engine_search(engine: "SearchEngine") -> SearchFn:
    return lambda text, k, mode: [hit.product.id for hit in engine.search_text(text, k, mode=mode).hits]


def evaluate_index(engine: "SearchEngine", judged: JudgedQueries, modes: Sequence[str], out_dir: str | Path,
                   name: str = "judged", depth: int = DEPTH) -> dict:
    """Evaluate an index on judged queries; writes ``<out>/eval/<name>.json`` and ``<name>-per-query.jsonl``."""
    modes = mode_list(modes)
    index_ids = engine.index.store.product_ids()
    result, rows = evaluate_judged(engine_search(engine), judged, modes, index_ids, name, depth)
    result["index"] = str(engine.index.path)
    eval_dir = Path(out_dir) / "eval"
    atomic_write_json(eval_dir / f"{name}.json", result)
    atomic_write_text(eval_dir / f"{name}-per-query.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return result


def judged_or_generated(engine: "SearchEngine", protocol: str, queries: str | Path | None, qrels: str | Path | None,
                        out_dir: str | Path, problems: ProblemLog, options: AttributeQueryOptions | None = None) -> tuple[JudgedQueries, str]:
    """(the query set, its result name): a shop's judged queries, or `attribute-queries` generated
    from the index's products and saved beside the results for reuse."""
    if qrels is not None:
        return read_judged(queries, qrels, problems), "judged"
    if protocol != ATTRIBUTE_QUERIES:
        raise ValueError(f"an index is evaluated on judged queries (--qrels FILE [--queries FILE]) or --protocol {ATTRIBUTE_QUERIES}")
    judged = attribute_queries(engine.index.store.iter_products(), options)
    eval_dir = Path(out_dir) / "eval"
    judged.save(eval_dir / f"{ATTRIBUTE_QUERIES}.qrels", eval_dir / f"{ATTRIBUTE_QUERIES}.queries.jsonl")
    return judged, ATTRIBUTE_QUERIES
