"""Set an index's fusion from judged queries: the method, vector weight and entity boost that
score best on a shop's own queries, saved with the index so every engine over it uses them.

Each query is retrieved once (both sides, `depth` candidates each); every setting of the grid
is then only a re-ranking of those candidates, so a grid of ~90 settings costs about as much as
one pass of hybrid search. Metrics are the judged-query evaluation's (catalogclip.evaluate.judged).
The chosen value is measured on the queries it was chosen on, so it is optimistic: evaluate on
other queries for an honest figure.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from catalogclip.search.engine import Candidates, SearchEngine, rank
from catalogclip.search.fusion import METHODS, FusionConfig
from catalogclip.search.lock import index_writer

if TYPE_CHECKING:
    from catalogclip.evaluate.qrels import JudgedQueries

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
BOOSTS = (0.0, 0.1, 0.2, 0.4)


@dataclass
class Tuning:
    best: FusionConfig
    value: float  # the metric of `best` on the tuning queries
    grid: list[dict]  # every setting tried with its value
    sides: dict[str, float]  # the metric of each side alone (boost applied), for reference


def tune_fusion(
    engine: SearchEngine,
    judged: "JudgedQueries",
    metric: str = "nDCG@10",
    methods: Sequence[str] = METHODS,
    weights: Sequence[float] = WEIGHTS,
    boosts: Sequence[float] = BOOSTS,
) -> Tuning:
    """The fusion setting with the best mean `metric` over the judged queries (ties: the first
    in grid order, so the simpler / earlier setting wins)."""
    from catalogclip.evaluate.judged import _in_index, judged_ranks, query_metrics

    base = engine.fusion
    depth = base.depth
    judged, _ = _in_index(judged, engine.index.store.product_ids())  # judgments of products the index lacks cannot be met
    qids = [q for q in judged.ids if judged.relevant(q)]
    if not qids:
        raise ValueError("no judged query has a relevant product in the index: nothing to tune on")
    candidates = [engine.candidates(judged.queries[q], depth, mode="hybrid") for q in qids]
    relevant = [judged.relevant(q) for q in qids]
    ids = _product_ids(engine, candidates)

    def score(config: FusionConfig, only: str | None = None) -> float:
        rankings = [[ids[r.row] for r in rank(_only(c, only), config, depth)] for c in candidates]
        ranks, gains = judged_ranks(rankings, relevant, depth)
        return float(np.mean(query_metrics(ranks, gains, [metric])[metric]))

    grid = []
    for method in methods:
        for weight in weights:
            for boost in boosts:
                config = replace(base, method=method, weight=float(weight), boost=float(boost), tuned=None)
                grid.append({"method": method, "weight": float(weight), "boost": float(boost), metric: score(config)})
    best = max(grid, key=lambda row: row[metric])  # max keeps the first of equal values
    tuned = {"metric": metric, "value": best[metric], "queries": len(qids), "settings_tried": len(grid)}
    config = replace(base, method=best["method"], weight=best["weight"], boost=best["boost"], tuned=tuned)
    sides = {side: score(replace(base, boost=config.boost), only=side) for side in ("vector", "lexical")}
    return Tuning(config, best[metric], grid, sides)


def _only(candidates: Candidates, side: str | None) -> Candidates:
    if side is None:
        return candidates
    return replace(candidates, sides={side: candidates.sides.get(side, [])})


def _product_ids(engine: SearchEngine, candidates: list[Candidates]) -> dict[int, str]:
    rows = {row for c in candidates for found in c.sides.values() for row, _, _ in found}
    return engine.index.store.ids_by_row(rows)


def save_fusion(engine: SearchEngine, config: FusionConfig) -> None:
    """Store `config` in the engine's index (and use it from now on), as the index's writer."""
    with index_writer(engine.index.path):
        engine.index.set_info(fusion=config.to_json())
    engine.fusion = config
