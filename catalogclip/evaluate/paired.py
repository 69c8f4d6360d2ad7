"""Both directions of a retrieval benchmark from one pass over one score matrix.

I2T and T2I of the `full` protocol rank the rows and the columns of the same matrix
``S = text @ image.T``. Computing it once instead of once per direction halves the matrix
products, which dominate the cost. The difficulty is the column direction: an image's rank counts,
over every row chunk, the texts that score above its relevant text's score ``S[t(i), i]``, which
must be known before the first chunk is counted and must be the very value the matrix holds (a
separately computed dot product may differ in the last bit and break ties). So:

1. Columns are ordered by their relevant row; then every relevant pair of a row chunk lies in one
   "diagonal" tile (that chunk's rows x the columns whose relevant row is in it). All diagonal
   tiles are computed first and kept: they give every column's relevant score.
2. Each row strip is then assembled from its diagonal tile and the products of the columns left
   and right of it, so every element of ``S`` is computed exactly once. Rows are ranked by
   `metrics.relevant_ranks`; columns accumulate their counts.

Ranks, and their ties (broken by candidate index in both directions), are exactly those of ranking
the rows of ``S`` and the rows of ``S.T``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalogclip.evaluate.metrics import Qrels, Ranks, relevant_ranks


@dataclass
class PairedRanks:
    rows: Ranks  # ranks of each row query's relevant columns
    columns: Ranks  # rank of each column query's one relevant row
    row_scores: dict[int, np.ndarray]  # full score rows of the requested example rows
    column_scores: dict[int, np.ndarray]  # full score columns of the requested example columns


def paired_ranks(
    row_vectors: np.ndarray,
    column_vectors: np.ndarray,
    row_qrels: Qrels,
    column_relevant: np.ndarray,
    chunk_rows: int,
    example_rows: set[int] = frozenset(),
    example_columns: set[int] = frozenset(),
) -> PairedRanks:
    """Ranks of ``S = row_vectors @ column_vectors.T`` by rows (relevance `row_qrels`) and by columns
    (column j's one relevant row is ``column_relevant[j]``); the two must describe the same pairs."""
    n_rows, n_cols = len(row_vectors), len(column_vectors)
    order = np.argsort(column_relevant, kind="stable")  # columns grouped by their relevant row
    ordered = np.ascontiguousarray(column_vectors[order])
    unorder = np.argsort(order) if not np.array_equal(order, np.arange(n_cols)) else None
    starts = list(range(0, n_rows, chunk_rows))
    bounds = np.searchsorted(column_relevant[order], [*starts, n_rows])  # diagonal column range per chunk

    diagonal = [row_vectors[a : a + chunk_rows] @ ordered[bounds[k] : bounds[k + 1]].T for k, a in enumerate(starts)]
    target = np.empty(n_cols, dtype=np.result_type(row_vectors, column_vectors))
    for k, a in enumerate(starts):
        local_rows = column_relevant[order[bounds[k] : bounds[k + 1]]] - a
        target[order[bounds[k] : bounds[k + 1]]] = diagonal[k][local_rows, np.arange(len(local_rows))]
    if not np.isfinite(target).all():
        raise ValueError("scores contain NaN or infinite values (are the embeddings finite?)")

    above = np.zeros(n_cols, dtype=np.int64)  # rows scoring above each column's relevant row
    ties_before = np.zeros(n_cols, dtype=np.int64)  # rows scoring the same, with a smaller index
    row_parts, row_scores, column_parts = [], {}, []
    for k, a in enumerate(starts):
        b = min(a + chunk_rows, n_rows)
        block = row_vectors[a:b]
        strip = np.concatenate(
            [block @ ordered[: bounds[k]].T, diagonal[k], block @ ordered[bounds[k + 1] :].T], axis=1
        )
        diagonal[k] = None  # free it: each tile is used once
        if unorder is not None:
            strip = strip[:, unorder]  # back to column index order (ties go by it)
        row_parts.append(relevant_ranks(strip, row_qrels.rows(a, b)))
        row_scores.update({q: strip[q - a].copy() for q in example_rows if a <= q < b})
        column_parts.append(strip[:, sorted(example_columns)])
        greater = np.count_nonzero(strip > target, axis=0)
        at_least = np.count_nonzero(strip >= target, axis=0)
        own = (column_relevant >= a) & (column_relevant < b)  # the relevant row itself is in this strip
        above += greater
        for j in np.flatnonzero(at_least - greater - own > 0):  # rare: another row scores exactly the same
            before = min(max(column_relevant[j] - a, 0), b - a)  # rows of this strip with a smaller index
            ties_before[j] += np.count_nonzero(strip[:before, j] == target[j])
    column_ranks = above + ties_before + 1
    columns = Ranks(np.arange(n_cols + 1, dtype=np.int64), column_ranks)
    stacked = np.concatenate(column_parts, axis=0) if column_parts else np.zeros((0, 0))
    column_scores = {j: stacked[:, i].copy() for i, j in enumerate(sorted(example_columns))}
    return PairedRanks(Ranks.concat(row_parts), columns, row_scores, column_scores)
