"""Retrieval metrics, computed from the ranks of each query's relevant candidates.

Every metric here is a function of one thing per query: the 1-based ranks ``r_1 < r_2 < ... < r_R``
of its ``R`` relevant candidates in the ranking by descending score. `relevant_ranks` finds those
ranks exactly without sorting a row: a relevant candidate's rank is one plus the number of
candidates ranked before it, counted in one vectorised comparison pass per relevant candidate (a
query with many relevant candidates - a root category - is ranked by one stable sort instead).

Ties
----
Candidates with equal scores are ordered by ascending candidate index, i.e. what a stable sort of
``-scores`` gives. The rank of relevant candidate ``j`` is therefore
``1 + #{c : s_c > s_j} + #{c < j : s_c == s_j}``: a function of the score matrix alone, the same
for any chunk size, thread count or BLAS. Where a candidate's index could favour the positive
(the sample100 lists), the protocol shuffles the candidate order with its seed.

Definitions (binary relevance; every query needs at least one relevant candidate; each metric is
the mean over queries; all values are fractions in [0, 1]):

- ``R@K`` (Rank@K; the hit rate of image-text retrieval papers, not IR recall): 1 if ``r_1 <= K``.
- ``Acc@K``: the same number, named as in classification (``Acc@1`` = top-1 accuracy).
- ``P@K``: ``#{i : r_i <= K} / K``.
- ``Recall@K`` (IR recall): ``#{i : r_i <= K} / R``.
- ``mAP@K``: ``(1/R) * sum_{i : r_i <= K} i / r_i``. Normalised by ``R`` as trec_eval and ranx do
  (not by ``min(R, K)``), so a query with many relevant items scores at most ``K / R``.
- ``R-precision``: ``#{i : r_i <= R} / R``.
- ``nDCG@K``: ``sum_{r_i <= K} 1/log2(r_i + 1)`` over its ideal value ``sum_{i <= min(R, K)} 1/log2(i + 1)``.
- ``MRR``: ``1 / r_1``, without cut-off; ``MRR@K``: ``1 / r_1`` when ``r_1 <= K``, else 0.

Graded relevance (judged query sets): `graded_ndcg` weighs each relevant candidate by its grade
(linear gain ``g_i / log2(r_i + 1)``, as trec_eval and ranx's ``ndcg``); the ideal ranking orders
the query's grades descending. With every grade 1 it equals ``nDCG@K``.
- ``SumR`` (`sum_r`): the sum of R@1, R@5 and R@10 over both directions (I2T and T2I), in [0, 6].
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

#: a query with more relevant candidates than this is ranked by one stable sort of its row
#: rather than one counting pass per relevant candidate (a sort costs about as much as ~30 passes)
SORT_ABOVE = 32


class _PerQueryRows:
    """Row bookkeeping shared by the CSR structures below (`indptr` has n_queries + 1 entries)."""

    indptr: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.indptr)


@dataclass(frozen=True)
class Qrels(_PerQueryRows):
    """Relevant candidate indices per query, in compressed sparse row form.

    The relevant candidates of query ``q`` are ``indices[indptr[q]:indptr[q + 1]]``.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_lists(cls, lists: Sequence[Iterable[int]]) -> "Qrels":
        rows = [np.unique(np.asarray(list(r), dtype=np.int64)) for r in lists]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(r) for r in rows])
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices.astype(np.int64))

    @classmethod
    def from_labels(cls, query_labels: np.ndarray, candidate_labels: np.ndarray) -> "Qrels":
        """Candidate c is relevant to query q when their labels are equal (e.g. product ids)."""
        candidate_labels = np.asarray(candidate_labels)
        order = np.argsort(candidate_labels, kind="stable")
        sorted_labels = candidate_labels[order]
        query_labels = np.asarray(query_labels)
        lo = np.searchsorted(sorted_labels, query_labels, side="left")
        hi = np.searchsorted(sorted_labels, query_labels, side="right")
        indptr = np.zeros(len(query_labels) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(hi - lo)
        indices = np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(lo) else np.zeros(0, np.int64)
        return cls(indptr, indices.astype(np.int64))

    def row(self, q: int) -> np.ndarray:
        return self.indices[self.indptr[q] : self.indptr[q + 1]]

    def rows(self, start: int, stop: int) -> "Qrels":
        """The qrels of queries ``start..stop-1``."""
        indptr = self.indptr[start : stop + 1]
        return Qrels(indptr - indptr[0], self.indices[indptr[0] : indptr[-1]])


@dataclass(frozen=True)
class Ranks(_PerQueryRows):
    """The ranks of each query's relevant candidates, ascending within a query (CSR like `Qrels`)."""

    indptr: np.ndarray
    ranks: np.ndarray

    @property
    def first(self) -> np.ndarray:
        """Rank of the best-ranked relevant candidate of each query."""
        return self.ranks[self.indptr[:-1]]

    def query_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_queries), self.n_relevant)

    def position(self) -> np.ndarray:
        """1-based position of each rank within its query (i in r_i)."""
        return np.arange(len(self.ranks)) - np.repeat(self.indptr[:-1], self.n_relevant) + 1

    def subset(self, queries: np.ndarray) -> "Ranks":
        queries = np.asarray(queries, dtype=np.int64)
        return Ranks.from_lists([self.ranks[self.indptr[q] : self.indptr[q + 1]] for q in queries])

    @classmethod
    def from_lists(cls, lists: Sequence[Iterable[int]]) -> "Ranks":
        qrels = Qrels.from_lists(lists)  # sorts and checks nothing else; ranks are distinct per query
        return cls(qrels.indptr, qrels.indices)

    @classmethod
    def concat(cls, parts: Sequence["Ranks"]) -> "Ranks":
        if not parts:
            return cls(np.zeros(1, np.int64), np.zeros(0, np.int64))
        sizes = np.concatenate([np.diff(p.indptr) for p in parts])
        indptr = np.zeros(len(sizes) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(sizes)
        return cls(indptr, np.concatenate([p.ranks for p in parts]))


def relevant_ranks(scores: np.ndarray, qrels: Qrels) -> Ranks:
    """Exact ranks of the relevant candidates of each row of `scores` (n_queries, n_candidates).

    Ties are broken by candidate index (see the module docstring).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != qrels.n_queries:
        raise ValueError(f"scores of shape {scores.shape} do not match {qrels.n_queries} queries")
    if len(qrels.indices) and (qrels.indices.min() < 0 or qrels.indices.max() >= scores.shape[1]):
        raise ValueError(f"a relevant candidate index is outside 0..{scores.shape[1] - 1}")
    n_rel = qrels.n_relevant
    if (n_rel == 0).any():
        raise ValueError(f"query {int(np.flatnonzero(n_rel == 0)[0])} has no relevant candidate")
    # a NaN or inf anywhere makes the sum non-finite; the sum costs a twentieth of an elementwise check
    if not np.isfinite(scores.sum()) and not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values (are the embeddings finite?)")
    ranks = np.empty(len(qrels.indices), dtype=np.int64)
    counted = n_rel <= SORT_ABOVE
    _count_ranks(scores, qrels, counted, ranks)
    for q in np.flatnonzero(~counted):
        _sort_ranks(scores[q], qrels.indptr[q], qrels.row(q), ranks)
    # order ranks within each query, as `Ranks` promises
    query = np.repeat(np.arange(qrels.n_queries), n_rel)
    return Ranks(qrels.indptr.copy(), ranks[np.lexsort((ranks, query))])


def _count_ranks(scores: np.ndarray, qrels: Qrels, counted: np.ndarray, out: np.ndarray) -> None:
    """Ranks by counting: pass t handles the t-th relevant candidate of every counted query."""
    n_rel = qrels.n_relevant
    for t in range(int(n_rel[counted].max(initial=0))):
        rows = np.flatnonzero(counted & (n_rel > t))
        block = scores if len(rows) == len(scores) else scores[rows]  # a view when all rows take part
        flat = qrels.indptr[rows] + t
        candidates = qrels.indices[flat]
        target = block[np.arange(len(rows)), candidates][:, None]
        greater = np.count_nonzero(block > target, axis=1)
        at_least = np.count_nonzero(block >= target, axis=1)
        ties_before = np.zeros(len(rows), dtype=np.int64)
        for i in np.flatnonzero(at_least - greater > 1):  # rare: another candidate has exactly this score
            ties_before[i] = np.count_nonzero(block[i, : candidates[i]] == target[i, 0])
        out[flat] = greater + ties_before + 1


def _sort_ranks(row: np.ndarray, start: int, candidates: np.ndarray, out: np.ndarray) -> None:
    order = np.argsort(-row, kind="stable")  # stable: equal scores keep ascending index order
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    out[start : start + len(candidates)] = position[candidates] + 1


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best candidates of each row, best first, ties by ascending index."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for i, row in enumerate(scores):
        kth = np.partition(row, row.size - k)[row.size - k]
        keep = np.flatnonzero(row >= kth)  # every candidate that can make the top k, ties included
        out[i] = keep[np.lexsort((keep, -row[keep]))][:k]
    return out


# --- metrics: per-query values from ranks ------------------------------------------------------


def _hit(ranks: Ranks, k: int) -> np.ndarray:
    return (ranks.first <= k).astype(np.float64)


def _precision(ranks: Ranks, k: int) -> np.ndarray:
    return _per_query_sum(ranks, ranks.ranks <= k) / k


def _average_precision(ranks: Ranks, k: int) -> np.ndarray:
    gains = np.where(ranks.ranks <= k, ranks.position() / ranks.ranks, 0.0)
    return _per_query_sum(ranks, gains) / ranks.n_relevant


def _r_precision(ranks: Ranks, _: int) -> np.ndarray:
    n_rel = ranks.n_relevant
    return _per_query_sum(ranks, ranks.ranks <= np.repeat(n_rel, n_rel)) / n_rel


def _recall(ranks: Ranks, k: int) -> np.ndarray:
    return _per_query_sum(ranks, ranks.ranks <= k) / ranks.n_relevant


def _ndcg(ranks: Ranks, k: int) -> np.ndarray:
    return graded_ndcg(ranks, np.ones(len(ranks.ranks)), k)


def graded_ndcg(ranks: Ranks, gains: np.ndarray, k: int) -> np.ndarray:
    """nDCG@K per query, `gains[j]` being the grade of the relevant candidate ranked `ranks.ranks[j]`."""
    gains = np.asarray(gains, dtype=np.float64)
    if gains.shape != ranks.ranks.shape:
        raise ValueError(f"{len(gains)} gains for {len(ranks.ranks)} relevant candidates")
    dcg = _per_query_sum(ranks, np.where(ranks.ranks <= k, gains / np.log2(ranks.ranks + 1.0), 0.0))
    ideal_order = np.lexsort((-gains, ranks.query_of()))  # within each query, best grade first
    position = ranks.position()
    ideal = _per_query_sum(ranks, np.where(position <= k, gains[ideal_order] / np.log2(position + 1.0), 0.0))
    return dcg / ideal


def _reciprocal_rank(ranks: Ranks, k: int) -> np.ndarray:
    first = ranks.first
    return np.where(first <= k, 1.0 / first, 0.0) if k else 1.0 / first


def _per_query_sum(ranks: Ranks, values: np.ndarray) -> np.ndarray:
    return np.bincount(ranks.query_of(), weights=values.astype(np.float64), minlength=ranks.n_queries)


#: metric family -> (function of (ranks, k), whether the name carries @K: True, False, or None = optional)
_FAMILIES: dict[str, tuple[Callable[[Ranks, int], np.ndarray], bool | None]] = {
    "R": (_hit, True),
    "Acc": (_hit, True),
    "P": (_precision, True),
    "Recall": (_recall, True),
    "mAP": (_average_precision, True),
    "nDCG": (_ndcg, True),
    "R-precision": (_r_precision, False),
    "MRR": (_reciprocal_rank, None),
}
_NAME = re.compile(r"^(?P<family>[A-Za-z-]+)(@(?P<k>\d+))?$")


def parse_metric(name: str) -> tuple[Callable[[Ranks, int], np.ndarray], int]:
    """'mAP@10' -> (average precision, 10); raises ValueError naming the known metrics."""
    match = _NAME.match(name)
    family = _FAMILIES.get(match["family"]) if match else None
    has_k = bool(match and match["k"])
    if family is None or family[1] not in (has_k, None) or (has_k and int(match["k"]) < 1):
        known = "R@K, Acc@K, P@K, Recall@K, mAP@K, nDCG@K, R-precision, MRR, MRR@K"
        raise ValueError(f"unknown metric '{name}' (known: {known})")
    return family[0], int(match["k"]) if has_k else 0


def per_query(ranks: Ranks, name: str) -> np.ndarray:
    """The value of metric `name` for each query."""
    function, k = parse_metric(name)
    return function(ranks, k)


def mean_metrics(ranks: Ranks, names: Sequence[str]) -> dict[str, float]:
    """Mean over queries of each metric (NaN when there are no queries)."""
    if ranks.n_queries == 0:
        return {name: float("nan") for name in names}
    return {name: float(per_query(ranks, name).mean()) for name in names}


def hit_curve(ranks: Ranks, max_k: int) -> np.ndarray:
    """R@K for K = 1..max_k (for R@K curves)."""
    counts = np.bincount(np.minimum(ranks.first, max_k + 1), minlength=max_k + 2)
    return np.cumsum(counts[1 : max_k + 1]) / max(ranks.n_queries, 1)


def sum_r(i2t: dict[str, float], t2i: dict[str, float], ks: Sequence[int] = (1, 5, 10)) -> float:
    """SumR: R@1 + R@5 + R@10 of image-to-text plus those of text-to-image."""
    return float(sum(direction[f"R@{k}"] for direction in (i2t, t2i) for k in ks))
