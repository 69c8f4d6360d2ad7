"""Protocols on hand-made embeddings where the right answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from catalogclip.catalog.schema import Catalog, ImageRef, Product
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.metrics import Qrels, Ranks, mean_metrics
from catalogclip.evaluate.protocols import (
    CandidateLists,
    EmbeddingScorer,
    Inventory,
    ProtocolOptions,
    draw_candidate_lists,
    evaluate,
    seen_categories,
)


def _product(pid: str, path: list[str], n_images: int = 1, sources: tuple[str, ...] = ()) -> Product:
    sources = sources or ("merchant",) * n_images
    return Product(pid, f"title {pid}", images=[ImageRef(f"{pid}_{k}.jpg", s) for k, s in enumerate(sources)],
                   category_path=path)


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _embeddings(catalog: Catalog, image: np.ndarray, text: np.ndarray, **extra) -> Embeddings:
    rows = list(catalog.iter_images())
    return Embeddings(
        image=_unit(image),
        image_product=np.array([catalog.products[i].id for i, _ in rows]),
        image_source=np.array([im.source for _, im in rows]),
        image_path=np.array([str(catalog.image_path(im)) for _, im in rows]),
        text=_unit(text),
        text_product=np.array([p.id for p in catalog]),
        **extra,
    )


def _naive_ranks(scores: np.ndarray, qrels: Qrels) -> Ranks:
    """Reference: sort every full row (stable, so ties go by candidate index)."""
    lists = []
    for q, row in enumerate(scores):
        position = np.empty(len(row), dtype=np.int64)
        position[np.argsort(-row, kind="stable")] = np.arange(len(row))
        lists.append(position[qrels.row(q)] + 1)
    return Ranks.from_lists(lists)


@pytest.fixture
def three_products():
    # a: 2 images, b: 1, c: 1. Texts are basis vectors e0, e1, e2.
    catalog = Catalog([_product("a", ["A", "A1"], 2), _product("b", ["A", "A2"]), _product("c", ["B", "B1"])])
    text = np.eye(3, 4)
    image = [
        [1.0, 0.0, 0.0, 0.0],  # a_0: matches text a
        [0.3, 1.0, 0.0, 0.0],  # a_1: closer to text b than to text a (a mistake)
        [0.1, 1.0, 0.0, 0.0],  # b_0: matches text b
        [0.0, 0.0, 1.0, 0.5],  # c_0: matches text c
    ]
    emb = _embeddings(catalog, np.array(image), text)
    return catalog, emb


def test_full_protocol_hand_worked(three_products):
    catalog, emb = three_products
    inv = Inventory.from_embeddings(emb, catalog)
    result = evaluate("full", inv, EmbeddingScorer(emb, inv))
    i2t, t2i = result["tasks"]["i2t"]["metrics"]["all"], result["tasks"]["t2i"]["metrics"]["all"]
    # I2T: a_0 -> a (rank 1), a_1 -> b (0.96) first, a (0.29) second, b_0 -> b (1), c_0 -> c (1)
    assert i2t["R@1"] == pytest.approx(3 / 4) and i2t["R@5"] == 1.0
    assert i2t["MRR"] == pytest.approx((1 + 1 / 2 + 1 + 1) / 4)
    # T2I: text a -> a_0 (1.0), a_1 (0.29); text b -> b_0 (0.995) before a_1 (0.958); text c -> c_0
    assert t2i["R@1"] == 1.0
    assert result["summary"]["SumR"] == pytest.approx(3 / 4 + 1 + 1 + 3)
    assert result["tasks"]["t2i"]["n_candidates"] == 4 and result["tasks"]["i2t"]["n_queries"] == 4
    curve = result["tasks"]["i2t"]["curve"]["R@K"]
    assert curve[0] == pytest.approx(0.75) and curve[1] == 1.0


def test_full_protocol_matches_naive_full_matrix_and_chunking():
    rng = np.random.default_rng(0)
    products = [_product(f"p{i}", ["R", f"L{i % 3}"], n_images=1 + i % 3) for i in range(30)]
    catalog = Catalog(products)
    n_images = sum(len(p.images) for p in products)
    emb = _embeddings(catalog, rng.standard_normal((n_images, 8)), rng.standard_normal((30, 8)))
    inv = Inventory.from_embeddings(emb, catalog)
    scorer = EmbeddingScorer(emb, inv)
    whole = evaluate("full", inv, scorer)
    tiny_chunks = evaluate("full", inv, scorer, chunk_bytes=1)  # one query per chunk
    qrels_t2i = Qrels.from_labels(np.arange(30), inv.image_product)
    naive = mean_metrics(_naive_ranks(emb.text @ emb.image.T, qrels_t2i), ["R@1", "R@5", "R@10", "MRR"])
    assert whole["tasks"]["t2i"]["metrics"]["all"] == pytest.approx(naive)
    assert _same_metrics(tiny_chunks, whole)


def _same_metrics(a: dict, b: dict) -> bool:
    return all(a["tasks"][t]["metrics"] == b["tasks"][t]["metrics"] for t in a["tasks"])


def test_examples_mark_relevant_candidates(three_products):
    catalog, emb = three_products
    inv = Inventory.from_embeddings(emb, catalog)
    result = evaluate("full", inv, EmbeddingScorer(emb, inv), n_examples=4)
    examples = result["tasks"]["i2t"]["examples"]
    a1 = next(e for e in examples if e["query"]["key"].endswith("a_1.jpg"))
    assert [c["key"] for c in a1["top"][:2]] == ["b", "a"]
    assert [c["relevant"] for c in a1["top"][:2]] == [False, True]
    assert a1["top"][0]["score"] >= a1["top"][1]["score"]


def _leafy_catalog(n_per_leaf: dict[tuple[str, ...], int]) -> Catalog:
    products, k = [], 0
    for path, count in n_per_leaf.items():
        for _ in range(count):
            products.append(_product(f"p{k:03d}", list(path), 2, ("customer", "merchant")))
            k += 1
    return Catalog(products)


def test_sample100_lists_draw_from_the_leaf_first_and_are_seeded():
    catalog = _leafy_catalog({("A", "X"): 8, ("A", "Y"): 3, ("B", "Z"): 5})
    inv = Inventory.from_catalog(catalog)
    leaf = {p.id: tuple(p.category_path) for p in catalog}
    lists = draw_candidate_lists(inv, n_negatives=5, seed=0)
    for query, candidates in lists.lists.items():
        assert len(candidates) == 6 and len(set(candidates)) == 6 and candidates.count(query) == 1
        negatives = [c for c in candidates if c != query]
        if leaf[query] == ("A", "X"):  # 7 other products in the leaf: all negatives from it
            assert all(leaf[c] == ("A", "X") for c in negatives)
        if leaf[query] == ("A", "Y"):  # 2 in the leaf, then 3 from the parent A
            assert sum(leaf[c] == ("A", "Y") for c in negatives) == 2
            assert all(leaf[c][0] == "A" for c in negatives)
    assert draw_candidate_lists(inv, 5, seed=0).lists == lists.lists
    assert draw_candidate_lists(inv, 5, seed=1).lists != lists.lists
    # the positive is not always in the same place (ties would otherwise favour it)
    assert len({c.index(q) for q, c in lists.lists.items()}) > 2
    # a product's list does not depend on the other products' order
    shuffled = Inventory.from_catalog(Catalog(list(reversed(catalog.products))))
    assert draw_candidate_lists(shuffled, 5, seed=0).lists == lists.lists


def test_sample100_says_loudly_where_negatives_came_from():
    catalog = _leafy_catalog({("A", "X"): 8, ("A", "Y"): 3, ("B", "Z"): 5})
    inv = Inventory.from_catalog(catalog)
    result = evaluate("sample100", inv, _ConstantScorer(), ProtocolOptions(n_negatives=5))
    # X: 7 others in the leaf; Y: 2 in the leaf + 3 from A; Z: 4 in the leaf + 1 from anywhere
    assert result["settings"]["negatives_from"] == {"leaf": 8, "level 1": 3, "whole test set": 5}
    assert result["settings"]["warning"] == (
        "sample100 is easier than its name says: 8 of 16 products have fewer than 5 other products in their leaf "
        "category; their negatives were drawn from wider categories instead (3 from level 1, 5 from whole test set).")
    tiny = evaluate("sample100", Inventory.from_catalog(_leafy_catalog({("A", "X"): 3})), _ConstantScorer(), ProtocolOptions())
    assert "each list holds 3 candidates" in tiny["settings"]["warning"]
    roomy = evaluate("sample100", inv, _ConstantScorer(), ProtocolOptions(n_negatives=2))
    assert roomy["settings"]["negatives_from"] == {"leaf": 16} and roomy["settings"]["warning"] is None


def test_sample100_reuses_saved_lists(tmp_path):
    catalog = _leafy_catalog({("A", "X"): 12, ("B", "Z"): 12})
    rng = np.random.default_rng(3)
    n = sum(len(p.images) for p in catalog)
    emb = _embeddings(catalog, rng.standard_normal((n, 6)), rng.standard_normal((24, 6)))
    inv = Inventory.from_embeddings(emb, catalog)
    lists = draw_candidate_lists(inv, n_negatives=10, seed=7)
    path = lists.save(tmp_path / "lists.json")
    loaded = CandidateLists.load(path)
    assert loaded.lists == lists.lists and loaded.seed == 7
    scorer = EmbeddingScorer(emb, inv)
    reused = evaluate("sample100", inv, scorer, ProtocolOptions(candidate_lists=loaded))
    drawn = evaluate("sample100", inv, scorer, ProtocolOptions(seed=7, n_negatives=10))
    assert _same_metrics(reused, drawn)
    assert reused["tasks"]["t2i"]["n_candidates"] == 11 and reused["settings"]["seed"] == 7
    # the T2I candidate of each product is its merchant shot (its second image here)
    t2i_example = reused["tasks"]["t2i"]["examples"][0]
    assert all(c["image"].endswith("_1.jpg") for c in t2i_example["top"])


def test_sample100_refuses_lists_of_another_catalog(tmp_path):
    catalog = _leafy_catalog({("A", "X"): 4})
    inv = Inventory.from_catalog(catalog)
    other = CandidateLists(0, 1, {"p000": ["p000", "zz-9"]})
    with pytest.raises(ValueError, match="'zz-9'"):
        evaluate("sample100", inv, _ConstantScorer(), ProtocolOptions(candidate_lists=other))
    (tmp_path / "bad.json").write_text('{"lists": {"p000": ["p001"]}}')
    with pytest.raises(ValueError, match="exactly once"):
        CandidateLists.load(tmp_path / "bad.json")


class _ConstantScorer:
    name = "constant"

    def score_fn(self, task):
        return lambda rows: np.zeros((len(rows), len(task.candidates)), dtype=np.float32)

    def describe(self):
        return {"scorer": self.name}


def test_constant_scores_rank_by_candidate_index(three_products):
    catalog, _ = three_products
    inv = Inventory.from_catalog(catalog)
    result = evaluate("full", inv, _ConstantScorer())
    # all ties: text a's images are rows 0 and 1 (rank 1), b's row 2 (rank 3), c's row 3 (rank 4)
    assert result["tasks"]["t2i"]["metrics"]["all"]["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 4) / 3)


def _category_setup(fused: bool = False):
    # shoes: s1 (one of its two images looks like a shoe), s2; shirts: t1, t2. Tree: Foot>Shoes, Wear>Shirts
    catalog = Catalog([
        _product("s1", ["Foot", "Shoes"], 2), _product("s2", ["Foot", "Shoes"]),
        _product("t1", ["Wear", "Shirts"]), _product("t2", ["Wear", "Shirts"]),
    ])
    image = [[0.0, 0.0, 1.0], [1.0, 0.1, 0.0], [0.9, 0.0, 0.1], [0.0, 1.0, 0.0], [0.1, 0.9, 0.0]]
    cats = {"Foot": [1.0, 0.0, 0.0], "Foot > Shoes": [1.0, 0.0, 0.0], "Wear": [0.0, 1.0, 0.0], "Wear > Shirts": [0.0, 1.0, 0.0]}
    extra = {"category": _unit(list(cats.values())), "category_path": np.array(list(cats))}
    if fused:  # product vectors that put s1 among the shirts
        extra["product"] = _unit([[-0.1, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.05]])
    emb = _embeddings(catalog, np.array(image), np.eye(4, 3) + 0.01, **extra)
    return catalog, emb


def test_category_protocol_max_over_images_and_groups():
    catalog, emb = _category_setup()
    inv = Inventory.from_embeddings(emb, catalog)
    train = Catalog([_product("x", ["Foot", "Shoes"])])
    result = evaluate("category", inv, EmbeddingScorer(emb, inv), ProtocolOptions(seen_categories=seen_categories(train)))
    task = result["tasks"]["category"]
    assert task["n_queries_per_group"] == {"all": 4, "root": 2, "leaf": 2, "unseen": 2}
    # s1's best image (row 1) matches shoes, so every query ranks its 2 products first
    for group in ("all", "root", "leaf", "unseen"):
        assert task["metrics"][group]["R-precision"] == 1.0
        assert task["metrics"][group]["P@1"] == 1.0
    assert task["metrics"]["all"]["P@5"] == pytest.approx(2 / 5)
    assert task["metrics"]["all"]["P@10"] == pytest.approx(2 / 10)
    assert result["model"]["product_scores"] == "max over its images"


def test_category_protocol_uses_fused_product_vectors():
    catalog, emb = _category_setup(fused=True)
    inv = Inventory.from_embeddings(emb, catalog)
    task = evaluate("category", inv, EmbeddingScorer(emb, inv))["tasks"]["category"]
    # shoes nodes: s2 first, s1 (negative score) after both shirts -> ranks 1 and 4; shirts nodes: 1 and 2
    assert task["metrics"]["root"]["R-precision"] == pytest.approx((1 / 2 + 1) / 2)
    assert task["metrics"]["all"]["mAP@10"] == pytest.approx(((1 + 2 / 4) / 2 * 2 + 1 * 2) / 4)
    assert task["metrics"]["all"]["mAP@5"] == task["metrics"]["all"]["mAP@10"]  # every relevant product is in the top 4
    assert "unseen" not in task["metrics"]


def test_zeroshot_classification_accuracy():
    catalog, emb = _category_setup()
    inv = Inventory.from_embeddings(emb, catalog)
    task = evaluate("zeroshot-cls", inv, EmbeddingScorer(emb, inv))["tasks"]["zeroshot-cls"]
    # 5 images; s1's first image (e2) is no shoe and ties at 0 with both leaves: index order -> Shoes, correct
    assert task["n_queries"] == 5 and task["n_candidates"] == 2
    assert task["metrics"]["all"]["Acc@1"] == 1.0


def test_missing_category_vectors_are_named():
    catalog, emb = _category_setup()
    emb.category, emb.category_path = None, None
    inv = Inventory.from_embeddings(emb, catalog)
    with pytest.raises(KeyError, match="'Foot'"):
        evaluate("category", inv, EmbeddingScorer(emb, inv))
    vectors = {c: np.ones(3, np.float32) / np.sqrt(3) for c in inv.categories}
    assert evaluate("category", inv, EmbeddingScorer(emb, inv, vectors))["tasks"]["category"]["n_queries"] == 4


def test_inventory_from_embeddings_drops_unreadable_products(three_products):
    catalog, emb = three_products
    keep = emb.image_product != "b"  # b's only image could not be read
    partial = Embeddings(emb.image[keep], emb.image_product[keep], emb.image_source[keep], emb.image_path[keep],
                         emb.text, emb.text_product)
    inv = Inventory.from_embeddings(partial, catalog)
    assert inv.product_ids.tolist() == ["a", "c"] and len(inv.image_product) == 3
    with pytest.raises(ValueError, match="another catalog"):
        Inventory.from_embeddings(partial, Catalog([_product("zz", [])]))


def test_unknown_protocol_lists_known(three_products):
    catalog, emb = three_products
    inv = Inventory.from_embeddings(emb, catalog)
    with pytest.raises(KeyError, match="category, full, product, sample100, zeroshot-cls"):
        evaluate("nope", inv, EmbeddingScorer(emb, inv))


def _tied_full_setup(seed: int, shuffle: bool):
    """Integer-valued vectors: every dot product is exact, so any way of computing the scores gives
    the same numbers, with many ties. Products have 1-3 images, optionally in shuffled row order."""
    rng = np.random.default_rng(seed)
    products = [_product(f"p{i:02d}", ["R"], n_images=1 + i % 3) for i in range(17)]
    catalog = Catalog(products)
    emb = _embeddings(catalog, np.ones((sum(len(p.images) for p in products), 3)), np.ones((17, 3)))
    emb.text = rng.integers(-1, 2, (17, 3)).astype(np.float32)
    emb.image = rng.integers(-1, 2, (len(emb.image), 3)).astype(np.float32)
    if shuffle:
        order = rng.permutation(len(emb.image))
        emb.image, emb.image_product = emb.image[order], emb.image_product[order]
        emb.image_source, emb.image_path = emb.image_source[order], emb.image_path[order]
    return catalog, emb


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, 8 * 40 * 3, 2**30])
def test_paired_full_equals_ranking_each_direction(shuffle, chunk_bytes):
    from catalogclip.evaluate.protocols import ProtocolOptions, full_tasks, run_task, transposed_pair

    catalog, emb = _tied_full_setup(seed=5, shuffle=shuffle)
    inv = Inventory.from_embeddings(emb, catalog)
    scorer = EmbeddingScorer(emb, inv)
    tasks = full_tasks(inv, ProtocolOptions())
    assert transposed_pair(tasks, scorer) == (tasks[1], tasks[0])  # rows: t2i, columns: i2t
    paired = evaluate("full", inv, scorer, chunk_bytes=chunk_bytes, n_examples=3)
    for task in tasks:
        alone = run_task(task, scorer, inv, n_examples=3, chunk_bytes=chunk_bytes)
        assert paired["tasks"][task.name]["metrics"] == alone["metrics"]
        assert paired["tasks"][task.name]["curve"] == alone["curve"]
        assert paired["tasks"][task.name]["examples"] == alone["examples"]
    # and both equal a stable sort of each image's row of S.T (ties by text index)
    texts = emb.text[[list(emb.text_product).index(p.id) for p in inv.products]]
    naive = _naive_ranks(emb.image[inv.image_index] @ texts.T, Qrels.from_labels(inv.image_product, np.arange(17)))
    assert paired["tasks"]["i2t"]["metrics"]["all"] == pytest.approx(mean_metrics(naive, ["R@1", "R@5", "R@10", "MRR"]))


def test_pairs_are_only_used_when_the_tasks_are_transposes(three_products):
    from catalogclip.evaluate.protocols import ProtocolOptions, full_tasks, sample100_tasks, transposed_pair

    catalog, emb = three_products
    inv = Inventory.from_embeddings(emb, catalog)
    assert transposed_pair(sample100_tasks(inv, ProtocolOptions(n_negatives=1)), EmbeddingScorer(emb, inv)) is None
    assert transposed_pair(full_tasks(inv, ProtocolOptions()), _ConstantScorer()) is None
