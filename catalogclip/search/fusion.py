"""One ranking from several retrieval sides (vector, lexical), and the entity boost.

Each side hands over its candidates best first as (key, score). Two fusions:

- ``rrf``, reciprocal rank fusion: ``sum_side w_side / (rrf_k + rank_side)`` (rank from 1, equal
  scores sharing the better rank; a side that did not find a candidate adds nothing). Scores of
  different kinds never meet.
- ``weighted``: ``sum_side w_side * (s - min_side) / (max_side - min_side)``, each side's scores
  min-max normalised over its own candidates (all 1 when they are equal; 0 where not found).

``w_vector = weight`` and ``w_lexical = 1 - weight``, except that with ``adaptive`` (the default)
the vector side's share grows with the query words the lexical index has never seen:
``w_vector = weight + (1 - weight) * (1 - coverage)``, ``coverage`` being the share of the
query's terms found in the catalog's text. BM25 is the better ranker where a shopper types the
catalog's own words (labels, brands, types) and knows nothing of the others ("sipper" for a
catalog that says "bottle"); there the model carries the query. A single side keeps its own scores. The
entity boost then adds ``boost * share * spread`` to each candidate, where ``share`` is the
fraction of recognised entity groups the product carries and ``spread`` the range of the fused
scores, so the boost means the same for cosines, BM25 scores and fused scores. Ties keep the
order candidates were first seen in (the vector side's first).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Hashable, Mapping, Sequence

MODES = ("vector", "lexical", "hybrid")
METHODS = ("rrf", "weighted")
SIDES = ("vector", "lexical")

Ranked = Sequence[tuple[Hashable, float]]  # (key, score), best first


@dataclass
class FusionConfig:
    """How hybrid queries fuse the sides (stored with an index; set from judged queries by `tune`)."""

    #: RRF with a vector weight of 0.1 (0.9 where the lexical side knows every query word) was, with
    #: no judged query, at least as good as BM25 alone for all three methods and both BM25 field
    #: sets on Myntra's validation shopper queries (benchmarks/shopper_myntra.py); the weighted
    #: fusion at 0.5, the first default, lost to BM25 there. Tune it on a shop's own judged queries.
    method: str = "rrf"
    #: the vector side's share where the lexical side knows every query word; the lexical side gets 1 - weight
    weight: float = 0.1
    #: raise the vector side's share by the share of query words the lexical index lacks
    adaptive: bool = True
    rrf_k: int = 60
    depth: int = 100  # candidates each side contributes (at least k)
    boost: float = 0.2  # recognised entities' boost, as a fraction of the fused scores' spread
    tuned: dict | None = None  # how the values were chosen: metric, value, queries

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fusion '{self.method}' (known: {', '.join(METHODS)})")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1], got {self.weight}")
        if self.rrf_k < 0 or self.depth < 1 or self.boost < 0:
            raise ValueError(f"fusion needs rrf_k >= 0, depth >= 1 and boost >= 0, got {self.rrf_k}, {self.depth}, {self.boost}")

    def side_weights(self, coverage: float = 1.0) -> dict[Hashable, float]:
        """Each side's weight for a query whose terms the lexical index knows `coverage` of."""
        vector = self.weight + (1.0 - self.weight) * (1.0 - coverage) if self.adaptive else self.weight
        return {"vector": vector, "lexical": 1.0 - vector}

    def to_json(self) -> dict:
        return asdict(self)


def competition_ranks(ranked: Ranked) -> list[int]:
    """1-based ranks where equal scores share the better rank (1, 2, 2, 4): a side that cannot
    tell candidates apart must not order them by accident."""
    ranks: list[int] = []
    for position, (_, score) in enumerate(ranked, start=1):
        ranks.append(ranks[-1] if ranks and score == ranked[position - 2][1] else position)
    return ranks


def rrf(sides: Mapping[str, Ranked], weights: Mapping[str, float], k: int = 60) -> dict[Hashable, float]:
    fused: dict[Hashable, float] = {}
    for side, ranked in sides.items():
        for rank, (key, _) in zip(competition_ranks(ranked), ranked):
            fused[key] = fused.get(key, 0.0) + weights[side] / (k + rank)
    return fused


def minmax(scores: Sequence[float]) -> list[float]:
    low, high = min(scores, default=0.0), max(scores, default=0.0)
    if high == low:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def weighted(sides: Mapping[str, Ranked], weights: Mapping[str, float]) -> dict[Hashable, float]:
    fused: dict[Hashable, float] = {}
    for side, ranked in sides.items():
        for (key, _), norm in zip(ranked, minmax([s for _, s in ranked])):
            fused[key] = fused.get(key, 0.0) + weights[side] * norm
    return fused


def fuse(sides: Mapping[str, Ranked], config: FusionConfig, coverage: float = 1.0) -> list[tuple[Hashable, float]]:
    """All candidates of the sides, best first, with their fused scores (`coverage`: the share of
    the query's terms the lexical index knows)."""
    if len(sides) == 1:
        return list(next(iter(sides.values())))
    weights = config.side_weights(coverage)
    fused = rrf(sides, weights, config.rrf_k) if config.method == "rrf" else weighted(sides, weights)
    return sorted(fused.items(), key=lambda item: -item[1])  # stable: ties keep first-seen order


def boosted(ranking: Sequence[tuple[Hashable, float]], share: Mapping[Hashable, float], boost: float) -> list[tuple[Hashable, float]]:
    """The ranking with each candidate raised by ``boost * share[key] * spread`` (see above)."""
    if not ranking or not boost or not share:
        return list(ranking)
    scores = [s for _, s in ranking]
    spread = (max(scores) - min(scores)) or 1.0
    raised = [(key, score + boost * share.get(key, 0.0) * spread) for key, score in ranking]
    return sorted(raised, key=lambda item: -item[1])
