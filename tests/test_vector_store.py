"""The vector-store seam and the faiss backend: batched search, compressed kinds, recall reporting."""
import numpy as np
import pytest
from _searchkit import PaletteEncoder, write_catalog

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.backend import Connection, Selection, VectorParams, backend, choose_kind
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.index import ProductIndex, sampled_recall
from catalogclip.search.vectors import FaissStore, VectorIndex


def clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.7 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(data, queries, k):
    return np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :k]


def recall(found, truth):
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "ivf", "hnsw"])
def test_a_batch_answers_exactly_what_single_queries_answer(kind):
    data, queries = clustered(3000), clustered(40, seed=1)
    index = VectorIndex.build(data, kind, VectorParams(nlist=16, nprobe=4))
    allowed = np.zeros(len(data), bool)
    allowed[::7] = True
    for mask in (None, allowed):
        batch = index.search_many(queries, 10, mask)
        for query, (scores, ids) in zip(queries, batch):
            single_scores, single_ids = index.search(query, 10, mask)
            assert ids.tolist() == single_ids.tolist() and np.allclose(scores, single_scores)
            assert mask is None or mask[ids].all()
    # exact kinds agree with a numpy scan
    if kind in ("flat", "flat_fp16"):
        found = [ids for _, ids in index.search_many(queries, 10)]
        assert recall(found, exact_top(data, queries, 10)) >= (1.0 if kind == "flat" else 0.99)


def test_compressed_kinds_are_smaller_and_keep_most_of_the_recall():
    data, queries = clustered(8000, dim=64), clustered(100, dim=64, seed=1)
    truth = exact_top(data, queries, 10)
    sizes, recalls = {}, {}
    for kind in ("flat", "flat_fp16", "ivf", "ivf_sq8", "ivf_pq"):
        index = VectorIndex.build(data, kind, VectorParams(nlist=32, nprobe=32))  # all lists: only the codes lose recall
        sizes[kind] = index.nbytes
        recalls[kind] = recall([ids for _, ids in index.search_many(queries, 10)], truth)
    raw = data.nbytes
    assert sizes["flat"] >= raw and sizes["flat_fp16"] < 0.55 * raw
    # codes are 1 (sq8) or 1/4 (pq) byte per dimension, plus 16 bytes per vector of ids and direct map
    assert sizes["ivf_sq8"] < 0.35 * raw and sizes["ivf_pq"] < 0.2 * raw
    assert recalls["ivf"] == 1.0 and recalls["ivf_sq8"] >= 0.9 and 0.3 <= recalls["ivf_pq"] < recalls["ivf_sq8"]


def test_sampled_recall_is_the_overlap_with_exact_search():
    data = clustered(2000)
    store = FaissStore(VectorIndex.build(data, "ivf", VectorParams(nlist=40, nprobe=1)))
    report = sampled_recall(store, data, k=10, n_queries=50, seed=3)
    queries = data[np.random.default_rng(3).choice(len(data), 50, replace=False)]
    by_hand = recall([ids for _, ids in store.search(queries, 10, Selection())], exact_top(data, queries, 10))
    assert report == {"recall": round(by_hand, 4), "k": 10, "queries": 50} and by_hand < 0.95
    assert sampled_recall(FaissStore(VectorIndex.build(data, "flat")), data)["recall"] == 1.0


def test_auto_kind_compresses_only_big_catalogs():
    assert [choose_kind("auto", n) for n in (10, 100_001, 2_000_001)] == ["flat", "ivf", "ivf_sq8"]
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        choose_kind("annoy", 10)
    with pytest.raises(KeyError, match="unknown vector store backend 'annoy' \\(known: faiss"):
        backend("annoy")


def test_index_reports_recall_of_an_approximate_kind_and_checks_the_backend(tmp_path):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(kind="ivf_sq8", progress=False))
    assert index.backend == "faiss" and index.kind == "ivf_sq8"
    assert index.info["recall_at_10"]["queries"] == 18 and 0 < index.info["recall_at_10"]["recall"] <= 1
    exact = build_index(PaletteEncoder(), catalog, tmp_path / "exact", BuildOptions(kind="flat", progress=False))
    assert "recall_at_10" not in exact.info
    with pytest.raises(ValueError, match="keeps its vectors in faiss, not milvus"):
        ProductIndex.open(tmp_path / "idx", connection=Connection("milvus"))
    # batched search over the index: the same hits as one query at a time
    vectors = PaletteEncoder().encode_texts(["red", "green shoes", "blue"])
    for batch, query in zip(index.search_many(vectors, 3), vectors):
        assert [(h.product.id, h.image) for h in batch] == [(h.product.id, h.image) for h in index.search(query, 3)]
