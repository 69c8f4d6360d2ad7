"""Text-only baselines (BM25, MiniLM) and the zero-shot backbone baseline on small catalogs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalogclip.catalog.schema import Catalog, ImageRef, Product
from catalogclip.evaluate.baselines import BM25Backend, side_fields, side_texts, text_baseline, zeroshot_embeddings
from catalogclip.evaluate.metrics import relevant_ranks
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, ProtocolOptions, category_tasks, evaluate

SHOP = [
    ("s1", "leather running sneakers", ["Footwear", "Shoes"], {"brand": "Puma", "colour": "Black"}),
    ("s2", "suede trainers for jogging", ["Footwear", "Shoes"], {"brand": "Nike", "colour": "White"}),
    ("s3", "hiking boots", ["Footwear", "Shoes"], {"brand": "Puma", "colour": "Brown"}),
    ("t1", "cotton crew neck t-shirt", ["Apparel", "Topwear"], {"brand": "Puma", "colour": "Black"}),
    ("t2", "linen button-down shirt", ["Apparel", "Topwear"], {"brand": "Diesel", "colour": "Blue"}),
    ("j1", "slim fit denim jeans", ["Apparel", "Bottomwear"], {"brand": "Diesel", "colour": "Blue"}),
]


def _catalog(root: Path | None = None) -> Catalog:
    products = [
        Product(pid, title, images=[ImageRef(f"{pid}.png")], attributes=attrs, category_path=path)
        for pid, title, path, attrs in SHOP
    ]
    if root is not None:
        rng = np.random.default_rng(0)
        for pid, *_ in SHOP:
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / f"{pid}.png")
    return Catalog(products, root or Path("."))


def test_a_side_never_sees_the_field_it_is_asked_about():
    assert side_fields("text", "image") == ("title", "description")
    assert side_fields("image", "text") == ("attributes", "category")
    assert side_fields("product", "category") == ("title", "description", "attributes")
    assert side_fields("image", "category") == ("title", "description", "attributes")
    inv = Inventory.from_catalog(_catalog())
    assert side_texts(inv, "image", np.array([0]), "text") == ["Puma Black Footwear Shoes"]
    assert side_texts(inv, "product", np.array([3]), "category") == ["cotton crew neck t-shirt Puma Black"]
    assert side_texts(inv, "category", np.array([1]), "product") == ["Footwear Shoes"]


def test_bm25_scores_follow_the_lucene_formula():
    docs = ["black shoes", "black black shirt", "blue jeans denim"]
    scores = BM25Backend(k1=1.5, b=0.75).index(docs)(["black", "jeans"])
    n, avgdl = 3, (2 + 3 + 3) / 3

    def expected(tf: int, df: int, dl: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf / (tf + 1.5 * (1 - 0.75 + 0.75 * dl / avgdl))

    np.testing.assert_allclose(scores[0], [expected(1, 2, 2), expected(2, 2, 3), 0.0], rtol=1e-5)
    np.testing.assert_allclose(scores[1], [0.0, 0.0, expected(1, 1, 3)], rtol=1e-5)
    # plurals meet singulars; a query of stop words matches nothing
    plural = BM25Backend().index(["red shirts", "blue jeans"])(["shirt", "shirts", "the"])
    assert plural[0, 0] > 0 and plural[0, 0] == plural[1, 0]
    assert plural[2].tolist() == [0.0, 0.0]


def test_bm25_full_protocol_cannot_read_titles():
    inv = Inventory.from_catalog(_catalog())
    result = evaluate("full", inv, text_baseline("bm25", inv))
    t2i = result["tasks"]["t2i"]["metrics"]["all"]
    # titles share no word with attributes + category, so every score is 0 and ties go by index:
    # product k's image is candidate k, ranked k+1st
    assert t2i["MRR"] == pytest.approx(np.mean([1 / (k + 1) for k in range(6)]))
    assert result["model"]["baseline"] == "bm25"


def test_bm25_category_protocol_finds_products_by_their_words():
    products = [
        Product("a", "Puma Tshirt", images=[ImageRef("a.png")], category_path=["Apparel", "Tshirts"]),
        Product("b", "Diesel Jeans", images=[ImageRef("b.png")], category_path=["Apparel", "Jeans"]),
        Product("c", "Nike Tshirt", images=[ImageRef("c.png")], category_path=["Apparel", "Tshirts"]),
    ]
    inv = Inventory.from_catalog(Catalog(products))
    task = evaluate("category", inv, text_baseline("bm25", inv))["tasks"]["category"]
    # leaves Tshirts and Jeans are found exactly ("Tshirts" meets "Tshirt"); the root word appears nowhere
    assert task["metrics"]["leaf"]["R-precision"] == 1.0
    assert task["metrics"]["root"]["R-precision"] == 1.0  # every product is relevant to the root


@pytest.mark.slow  # loads MiniLM
def test_minilm_ranks_shoes_for_the_shoe_category():
    inv = Inventory.from_catalog(_catalog())
    task = category_tasks(inv, ProtocolOptions())[0]
    scores = text_baseline("minilm", inv).score_fn(task)(task.queries)
    ranks = relevant_ranks(scores, task.qrels)
    # sneakers, trainers and boots come first for "Footwear Shoes" although no title says "shoe"
    for node in ("Footwear", "Footwear > Shoes"):
        q = inv.categories.index(node)
        assert ranks.ranks[ranks.indptr[q] : ranks.indptr[q + 1]].tolist() == [1, 2, 3]


def test_unknown_text_baseline():
    with pytest.raises(ValueError, match="bm25, minilm"):
        text_baseline("tfidf", Inventory.from_catalog(_catalog()))


def test_zeroshot_backbone_is_seeded_and_evaluates(tmp_path):
    catalog = _catalog(tmp_path)
    first = zeroshot_embeddings("tiny", catalog, seed=3)
    again = zeroshot_embeddings("tiny", catalog, seed=3)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_allclose(np.linalg.norm(first.image, axis=1), 1.0, rtol=1e-5)
    assert first.category is not None and first.meta["baseline"] == "zeroshot"
    inv = Inventory.from_embeddings(first, catalog)
    result = evaluate("full", inv, EmbeddingScorer(first, inv))
    assert result["tasks"]["t2i"]["n_queries"] == 6 and result["tasks"]["i2t"]["n_candidates"] == 6
    assert evaluate("category", inv, EmbeddingScorer(first, inv))["tasks"]["category"]["n_queries"] == 5
