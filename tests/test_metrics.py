"""Metrics against ranx on random runs, hand-worked examples, and the tie-breaking rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalogclip.evaluate.metrics import (
    SORT_ABOVE,
    Qrels,
    Ranks,
    graded_ndcg,
    hit_curve,
    mean_metrics,
    parse_metric,
    per_query,
    relevant_ranks,
    sum_r,
    top_k,
)

OURS_TO_RANX = {
    "R@1": "hit_rate@1",
    "R@5": "hit_rate@5",
    "R@10": "hit_rate@10",
    "P@1": "precision@1",
    "P@5": "precision@5",
    "P@20": "precision@20",
    "mAP@5": "map@5",
    "mAP@20": "map@20",
    "R-precision": "r-precision",
    "nDCG@5": "ndcg@5",
    "nDCG@20": "ndcg@20",
    "MRR": "mrr",
    "MRR@3": "mrr@3",
    "Recall@5": "recall@5",
    "Recall@20": "recall@20",
}


def _random_run(seed: int, n_queries: int, n_candidates: int, max_relevant: int):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_queries, n_candidates)).astype(np.float32)
    lists = [rng.choice(n_candidates, size=rng.integers(1, max_relevant + 1), replace=False) for _ in range(n_queries)]
    return scores, Qrels.from_lists(lists)


def _reference_ranks(scores: np.ndarray, qrels: Qrels) -> list[list[int]]:
    """Brute force: a stable sort of -scores orders ties by ascending candidate index."""
    out = []
    for q, row in enumerate(scores):
        order = list(np.argsort(-row, kind="stable"))
        out.append(sorted(order.index(c) + 1 for c in qrels.row(q)))
    return out


def test_every_metric_matches_ranx_per_query():
    ranx = pytest.importorskip("ranx")
    # a few queries have more relevant items than SORT_ABOVE, so both ranking paths are exercised
    scores, qrels = _random_run(seed=0, n_queries=40, n_candidates=120, max_relevant=SORT_ABOVE + 20)
    ranks = relevant_ranks(scores, qrels)
    assert (qrels.n_relevant > SORT_ABOVE).any() and (qrels.n_relevant <= 3).any()

    qid = lambda q: f"q{q:04d}"  # noqa: E731  (ranx returns queries in id order)
    ranx_qrels = ranx.Qrels({qid(q): {f"d{c}": 1 for c in qrels.row(q)} for q in range(qrels.n_queries)})
    ranx_run = ranx.Run({qid(q): {f"d{c}": float(s) for c, s in enumerate(row)} for q, row in enumerate(scores)})
    theirs = ranx.evaluate(ranx_qrels, ranx_run, list(OURS_TO_RANX.values()), return_mean=False)
    for ours, their_name in OURS_TO_RANX.items():
        np.testing.assert_allclose(per_query(ranks, ours), theirs[their_name], rtol=1e-9, atol=1e-12, err_msg=ours)


def test_ranks_match_a_stable_sort_on_random_runs():
    scores, qrels = _random_run(seed=1, n_queries=25, n_candidates=60, max_relevant=45)
    ranks = relevant_ranks(scores, qrels)
    np.testing.assert_array_equal(ranks.ranks, Ranks.from_lists(_reference_ranks(scores, qrels)).ranks)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_queries=st.integers(1, 6),
    n_candidates=st.integers(1, 40),
)
def test_ties_are_broken_by_candidate_index(data, n_queries, n_candidates):
    # scores from a tiny integer range: many ties, on both ranking paths
    values = st.lists(st.integers(0, 3), min_size=n_candidates, max_size=n_candidates)
    scores = np.array([data.draw(values) for _ in range(n_queries)], dtype=np.float32)
    lists = [
        data.draw(st.sets(st.integers(0, n_candidates - 1), min_size=1, max_size=n_candidates))
        for _ in range(n_queries)
    ]
    qrels = Qrels.from_lists(lists)
    ranks = relevant_ranks(scores, qrels)
    expected = Ranks.from_lists(_reference_ranks(scores, qrels))
    np.testing.assert_array_equal(ranks.ranks, expected.ranks)
    np.testing.assert_array_equal(ranks.indptr, expected.indptr)


def test_ranks_do_not_depend_on_chunking():
    scores, qrels = _random_run(seed=2, n_queries=30, n_candidates=50, max_relevant=5)
    scores = np.round(scores, 1)  # ties
    whole = relevant_ranks(scores, qrels)
    parts = [relevant_ranks(scores[a : a + 7], qrels.rows(a, min(a + 7, 30))) for a in range(0, 30, 7)]
    merged = Ranks.concat(parts)
    np.testing.assert_array_equal(whole.ranks, merged.ranks)
    np.testing.assert_array_equal(whole.indptr, merged.indptr)


def test_hand_worked_example():
    # one query, candidates 0..5 ranked by score: c3 (0.9), c1 (0.8), c0 (0.5), c4 (0.5), c2 (0.1), c5 (0.0)
    # c0 and c4 tie: c0 has the smaller index, so it ranks 3rd and c4 4th. Relevant: c1, c4, c5.
    scores = np.array([[0.5, 0.8, 0.1, 0.9, 0.5, 0.0]])
    ranks = relevant_ranks(scores, Qrels.from_lists([[4, 1, 5]]))
    assert ranks.ranks.tolist() == [2, 4, 6]
    got = mean_metrics(ranks, ["R@1", "R@2", "Acc@5", "P@2", "P@5", "mAP@5", "mAP@10", "R-precision", "nDCG@3", "MRR"])
    assert got["R@1"] == 0.0 and got["R@2"] == 1.0 and got["Acc@5"] == 1.0
    assert got["P@2"] == pytest.approx(1 / 2)
    assert got["P@5"] == pytest.approx(2 / 5)
    assert got["mAP@5"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert got["mAP@10"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 6) / 3)
    assert got["R-precision"] == pytest.approx(1 / 3)  # one of the top 3 is relevant
    assert got["nDCG@3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4)))
    assert got["MRR"] == pytest.approx(1 / 2)


def test_recall_and_cut_off_mrr_hand_worked():
    # query 0: relevant at ranks 2, 4, 6; query 1: one relevant at rank 12
    ranks = Ranks.from_lists([[2, 4, 6], [12]])
    np.testing.assert_allclose(per_query(ranks, "Recall@5"), [2 / 3, 0.0])
    np.testing.assert_allclose(per_query(ranks, "Recall@100"), [1.0, 1.0])
    np.testing.assert_allclose(per_query(ranks, "MRR@10"), [1 / 2, 0.0])
    np.testing.assert_allclose(per_query(ranks, "MRR"), [1 / 2, 1 / 12])


def test_graded_ndcg_hand_worked_and_binary_case():
    # relevant candidates at ranks 1 (grade 1) and 3 (grade 3): ideal puts grade 3 first
    ranks = Ranks.from_lists([[1, 3]])
    got = graded_ndcg(ranks, np.array([1.0, 3.0]), 10)
    assert got[0] == pytest.approx((1 + 3 / 2) / (3 + 1 / math.log2(3)))
    np.testing.assert_allclose(graded_ndcg(ranks, np.ones(2), 10), per_query(ranks, "nDCG@10"))
    with pytest.raises(ValueError, match="gains"):
        graded_ndcg(ranks, np.ones(3), 10)


def test_graded_ndcg_matches_ranx():
    ranx = pytest.importorskip("ranx")
    scores, qrels = _random_run(seed=3, n_queries=25, n_candidates=60, max_relevant=8)
    rng = np.random.default_rng(3)
    grade = {(q, int(c)): int(rng.integers(1, 4)) for q in range(qrels.n_queries) for c in qrels.row(q)}
    ranks = relevant_ranks(scores, qrels)
    # the grade of each ranked relevant candidate, in the order of `ranks.ranks`
    order = [np.argsort(-scores[q], kind="stable") for q in range(qrels.n_queries)]
    gains = np.array([grade[(q, int(order[q][r - 1]))] for q in range(qrels.n_queries)
                      for r in ranks.ranks[ranks.indptr[q]:ranks.indptr[q + 1]]], dtype=float)
    qid = lambda q: f"q{q:04d}"  # noqa: E731
    ranx_qrels = ranx.Qrels({qid(q): {f"d{c}": grade[(q, int(c))] for c in qrels.row(q)} for q in range(qrels.n_queries)})
    ranx_run = ranx.Run({qid(q): {f"d{c}": float(s) for c, s in enumerate(row)} for q, row in enumerate(scores)})
    for k in (5, 10):
        theirs = ranx.evaluate(ranx_qrels, ranx_run, f"ndcg@{k}", return_mean=False)
        np.testing.assert_allclose(graded_ndcg(ranks, gains, k), theirs, rtol=1e-9)


def test_means_over_several_queries_and_curve():
    # query 0: relevant at rank 1; query 1: at rank 3; query 2: at ranks 2 and 7
    ranks = Ranks.from_lists([[1], [3], [2, 7]])
    got = mean_metrics(ranks, ["R@1", "R@2", "R@5", "MRR"])
    assert got == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@5": 1.0, "MRR": (1 + 1 / 3 + 1 / 2) / 3})
    np.testing.assert_allclose(hit_curve(ranks, 4), [1 / 3, 2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(per_query(ranks, "P@2"), [0.5, 0.0, 0.5])


def test_sum_r_adds_six_recalls():
    i2t = {"R@1": 0.1, "R@5": 0.2, "R@10": 0.3}
    t2i = {"R@1": 0.4, "R@5": 0.5, "R@10": 0.6}
    assert sum_r(i2t, t2i) == pytest.approx(2.1)


def test_top_k_orders_by_score_then_index():
    scores = np.array([[0.2, 0.9, 0.9, 0.1, 0.9], [1.0, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 2, 4], [0, 1, 2]])
    np.testing.assert_array_equal(top_k(scores, 10).shape, (2, 5))


def test_qrels_from_labels():
    qrels = Qrels.from_labels(np.array(["a", "b", "c"]), np.array(["b", "a", "b", "d"]))
    assert [qrels.row(q).tolist() for q in range(3)] == [[1], [0, 2], []]


@pytest.mark.parametrize(
    "scores, lists, message",
    [
        (np.zeros((2, 3)), [[0]], "do not match"),
        (np.zeros((1, 3)), [[]], "no relevant"),
        (np.zeros((1, 3)), [[3]], "outside"),
        (np.array([[0.0, np.nan, 1.0]]), [[0]], "NaN"),
    ],
)
def test_bad_input_is_refused(scores, lists, message):
    with pytest.raises(ValueError, match=message):
        relevant_ranks(scores, Qrels.from_lists(lists))


@pytest.mark.parametrize("name", ["R", "R@0", "mAP", "MRR@0", "Recall", "F1@3", "R-precision@2"])
def test_unknown_metric_names(name):
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric(name)
