"""Lexical (BM25) retrieval in the index, fusion with the vector side, entity boosts and strict mode."""
import math

import pytest
from _searchkit import COLOURS, SHOES, PaletteEncoder, product, write_catalog, write_images

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl
from catalogclip.evaluate.metrics import Ranks, mean_metrics
from catalogclip.search.build import BuildOptions, build_index, update_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.fusion import FusionConfig, boosted, competition_ranks, fuse, minmax
from catalogclip.search.index import ProductIndex
from catalogclip.search.lexical import LexicalParams, analyse, parse_weights, product_document
from catalogclip.search.query import QueryError

TITLES_ONLY = BuildOptions(progress=False, lexical=LexicalParams({"title": 1}))


def ids(hits):
    return [h.product.id for h in hits]


def shop(root, titles: dict[str, str], colours: dict[str, str] | None = None, **fields) -> Catalog:
    """Products with the given titles (images in the given colours, red by default)."""
    colours = colours or {}
    products = [
        Product(pid, title, images=[ImageRef(f"images/{pid}.png")], attributes={"colour": colours.get(pid, "red").title(), **fields.get(pid, {})})
        for pid, title in titles.items()
    ]
    write_images(root, products)
    return Catalog(products, root)


def lucene_bm25(query: list[str], docs: dict[str, list[str]], k1=1.5, b=0.75) -> dict[str, float]:
    """BM25 as Lucene (and bm25s's default) defines it, written out from the formula."""
    n, avgdl = len(docs), sum(map(len, docs.values())) / len(docs)
    out = {}
    for pid, doc in docs.items():
        score = 0.0
        for term in query:
            df = sum(term in d for d in docs.values())
            tf = doc.count(term)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        out[pid] = score
    return out


def test_bm25_scores_match_the_formula(tmp_path):
    catalog = shop(tmp_path, {"a": "Red Shoes", "b": "Blue Running Shoes", "c": "Red Shirt", "d": "Green Cap"})
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", TITLES_ONLY)
    docs = {"a": ["red", "shoe"], "b": ["blue", "run", "shoe"], "c": ["red", "shirt"], "d": ["green", "cap"]}
    assert {p.id: analyse(product_document(p, {"title": 1})) for p in catalog} == docs
    expected = lucene_bm25(["red", "shoe"], docs)
    hits = index.search_lexical("red shoes", k=10)
    assert ids(hits) == ["a", "c", "b"]  # d shares no word with the query: not a hit
    assert [h.score for h in hits] == pytest.approx([expected[i] for i in ids(hits)], rel=1e-5)
    # filters and exclusion are the store's, as in vector search
    assert ids(index.search_lexical("red shoes", 10, index.parse_filters({"colour": "red"}), exclude="a")) == ["c", "b"]
    assert ids(index.search_lexical("the of", 10)) == []  # stop words only


def test_products_without_words_leave_the_lexical_side_empty(tmp_path):
    index = build_index(PaletteEncoder(), shop(tmp_path, {"a": "The", "b": "Of It"}, {"a": "red", "b": "blue"}), tmp_path / "idx", TITLES_ONLY)
    assert index.search_lexical("the red", 5) == [] and len(ProductIndex.open(tmp_path / "idx").lexical) == 2
    assert ids(SearchEngine(index, PaletteEncoder()).search_text("red", k=2).hits) == ["a", "b"]


def test_field_weights_repeat_fields_and_are_saved(tmp_path):
    p = Product("x", "Red Tee", "soft cotton", [ImageRef("x.png")], {"brand": "Puma"}, ["Apparel", "Tshirts"])
    assert product_document(p, {"title": 2, "attributes": 1, "category": 0}) == "Red Tee\nRed Tee\nPuma"
    assert parse_weights("title=3, description=1") == {"title": 3, "attributes": 0, "category": 0, "description": 1}
    for bad, message in [("title=x", "is not FIELD=WHOLE_NUMBER"), ("colour=1", "unknown text field"), ("title=0", "at least one")]:
        with pytest.raises(ValueError, match=message):
            LexicalParams(parse_weights(bad))
    write_images(tmp_path, [Product("x", "t", images=p.images, attributes={"colour": "Red"})])
    index = build_index(PaletteEncoder(), Catalog([p], tmp_path), tmp_path / "idx", BuildOptions(progress=False, lexical=LexicalParams({"description": 1})))
    assert ProductIndex.open(tmp_path / "idx").info["lexical"]["weights"] == {"description": 1}
    assert ids(index.search_lexical("cotton", 5)) == ["x"] and index.search_lexical("tee", 5) == []


def same_ranking(got, expected):
    return [k for k, _ in got] == [k for k, _ in expected] and [s for _, s in got] == pytest.approx([s for _, s in expected])


def test_fusion_against_hand_computed_rankings():
    sides = {"vector": [("a", 0.9), ("b", 0.5), ("c", 0.1)], "lexical": [("c", 8.0), ("a", 4.0)]}
    assert competition_ranks([("a", 3.0), ("b", 2.0), ("c", 2.0), ("d", 1.0)]) == [1, 2, 2, 4]
    rrf = fuse(sides, FusionConfig(method="rrf", weight=0.5, rrf_k=60))
    assert same_ranking(rrf, [("a", 0.5 / 61 + 0.5 / 62), ("c", 0.5 / 63 + 0.5 / 61), ("b", 0.5 / 62)])
    weighted = fuse(sides, FusionConfig(method="weighted", weight=0.3))
    assert same_ranking(weighted, [("c", 0.7), ("a", 0.3), ("b", 0.15)])
    # equal fused scores keep the order candidates were first seen in
    assert [k for k, _ in fuse(sides, FusionConfig(method="weighted", weight=0.5))] == ["a", "c", "b"]
    # one side alone keeps its own scores
    assert fuse({"lexical": sides["lexical"]}, FusionConfig()) == sides["lexical"]
    # the boost is a fraction of the scores' spread (0.7 - 0.15): b carries every entity
    assert same_ranking(boosted(weighted, {"b": 1.0, "a": 0.0}, 0.5), [("c", 0.7), ("b", 0.15 + 0.5 * 0.55), ("a", 0.3)])
    assert minmax([2.0, 2.0]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown fusion 'max'"):
        FusionConfig(method="max")
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        FusionConfig(weight=1.5)


def test_hybrid_hits_say_which_side_found_them(tmp_path):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(progress=False))
    engine = SearchEngine(index, PaletteEncoder(), FusionConfig(method="rrf", weight=0.5, boost=0.0, adaptive=False))
    vector = engine.search_text("red shoes", k=12, mode="vector").hits
    lexical = engine.search_text("red shoes", k=12, mode="lexical").hits
    hybrid = engine.search_text("red shoes", k=12, mode="hybrid").hits
    assert all(set(h.sides) == {"vector"} for h in vector) and all(set(h.sides) == {"lexical"} for h in lexical)
    v_rank = {h.product.id: r for r, h in enumerate(vector, 1)}
    # equal scores share the better rank in the fusion (products of one colour look alike)
    v_fused = {h.product.id: 1 + sum(o.score > h.score for o in vector) for h in vector}
    l_fused = {h.product.id: 1 + sum(o.score > h.score for o in lexical) for h in lexical}
    expected = {pid: 0.5 / (60 + v_fused[pid]) + (0.5 / (60 + l_fused[pid]) if pid in l_fused else 0.0) for pid in v_rank}
    assert ids(hybrid) == sorted(expected, key=lambda pid: (-expected[pid], v_rank[pid]))
    for hit in hybrid:
        assert hit.score == pytest.approx(expected[hit.product.id])
        assert hit.sides["vector"]["rank"] == v_rank[hit.product.id]
        assert ("lexical" in hit.sides) == (hit.product.id in l_fused)
    red_shoes = {p.id for p in catalog if p.attributes["colour"] == "Red" and p.category_path == SHOES}
    assert set(ids(hybrid)[: len(red_shoes)]) == red_shoes and red_shoes
    with pytest.raises(QueryError, match="unknown search mode 'semantic'"):
        engine.search_text("red", mode="semantic")


def _ndcg(engine: SearchEngine, queries: dict[str, set[str]], mode: str) -> float:
    ranks = []
    for text, relevant in queries.items():
        found = ids(engine.search_text(text, k=10, mode=mode).hits)
        ranks.append([found.index(p) + 1 if p in found else 100 + i for i, p in enumerate(sorted(relevant))])
    return mean_metrics(Ranks.from_lists(ranks), ["nDCG@10"])["nDCG@10"]


def test_vector_wins_where_the_answer_is_in_the_images_and_lexical_where_it_is_in_the_titles(tmp_path):
    # 1. titles say nothing about colour: only the images (the vector side) know it
    colours = {f"i{n}": COLOURS[n % 6] for n in range(12)}
    plain = shop(tmp_path / "images", {pid: f"Classic Item {pid}" for pid in colours}, colours)
    engine = SearchEngine(build_index(PaletteEncoder(), plain, tmp_path / "idx1", TITLES_ONLY), PaletteEncoder())
    queries = {c: {pid for pid, pc in colours.items() if pc == c} for c in COLOURS}
    scores = {mode: _ndcg(engine, queries, mode) for mode in ("vector", "lexical", "hybrid")}
    assert scores["vector"] == 1.0 and scores["lexical"] == 0.0 and scores["hybrid"] >= scores["vector"]

    # 2. every image is red: only the titles (the lexical side) tell the products apart
    words = ["goose", "anchor", "tiger", "rocket"]
    titles = {f"t{n}": f"{words[n % 4].title()} Print Tee" for n in range(12)}
    printed = shop(tmp_path / "titles", titles)
    engine = SearchEngine(build_index(PaletteEncoder(), printed, tmp_path / "idx2", TITLES_ONLY), PaletteEncoder())
    queries = {f"{w} print": {pid for pid, t in titles.items() if t.lower().startswith(w)} for w in words}
    scores = {mode: _ndcg(engine, queries, mode) for mode in ("vector", "lexical", "hybrid")}
    assert scores["lexical"] == 1.0 and scores["vector"] < 0.7 and scores["hybrid"] >= scores["lexical"]


def test_coverage_is_the_share_of_query_terms_the_catalog_text_has(tmp_path):
    index = build_index(PaletteEncoder(), shop(tmp_path, {"s": "Grey Sweatshirt", "t": "Anti-Slip Mat"}), tmp_path / "idx", TITLES_ONLY)
    assert index.lexical.coverage("grey sweatshirt") == 1.0
    assert index.lexical.coverage("grey sipper") == 0.5
    assert index.lexical.coverage("grey sweat shirt") == 1.0  # the catalog writes the two words as one
    assert index.lexical.coverage("velvet sipper bottle") == 0.0
    assert index.lexical.coverage("buy grey sweatshirt online") == 1.0  # shopping words the catalog lacks do not count
    assert index.lexical.coverage("buy velvet online") == 0.0
    assert FusionConfig(weight=0.2).side_weights(0.5) == pytest.approx({"vector": 0.6, "lexical": 0.4})
    assert FusionConfig(weight=0.2).side_weights(0.0) == pytest.approx({"vector": 1.0, "lexical": 0.0})
    assert FusionConfig(weight=0.2, adaptive=False).side_weights(0.5) == pytest.approx({"vector": 0.2, "lexical": 0.8})


def test_adaptive_fusion_lets_the_images_answer_words_no_title_has(tmp_path):
    """Titles know "item" (some say it twice, so BM25 orders them) but no colour: only the images
    do. With a fixed low vector weight BM25's order of "item" buries the colour; the adaptive
    weight hands a query whose colour word no title has to the vector side."""
    colours = {f"i{n}": COLOURS[n % 6] for n in range(12)}
    titles = {pid: "Classic Item Item" if n % 2 else "Classic Item" for n, pid in enumerate(colours)}
    index = build_index(PaletteEncoder(), shop(tmp_path / "images", titles, colours), tmp_path / "idx", TITLES_ONLY)
    queries = {f"{c} item": {pid for pid, pc in colours.items() if pc == c} for c in COLOURS}
    fixed = _ndcg(SearchEngine(index, PaletteEncoder(), FusionConfig(method="weighted", weight=0.2, adaptive=False, boost=0.0)), queries, "hybrid")
    adaptive = _ndcg(SearchEngine(index, PaletteEncoder(), FusionConfig(method="weighted", weight=0.2, boost=0.0)), queries, "hybrid")
    vector = _ndcg(SearchEngine(index, PaletteEncoder()), queries, "vector")
    assert adaptive >= vector == 1.0 > fixed


@pytest.mark.parametrize("typed", ["baby girl tshirt", "Baby Girls T-Shirts", "baby girl's t shirt", "BABY GIRL T SHIRTS"])
def test_lexical_matching_tolerates_how_shoppers_type(tmp_path_factory, typed):
    root = tmp_path_factory.mktemp("tolerant")
    catalog = shop(root, {"g": "Baby Girl's Printed T-Shirt", "m": "Men Printed Shirt", "w": "Women Girlish Dress"})
    index = build_index(PaletteEncoder(), catalog, root / "idx", TITLES_ONLY)
    assert ids(index.search_lexical(typed, 3))[0] == "g"


def test_catalog_spelling_of_two_words_as_one_is_found(tmp_path):
    index = build_index(PaletteEncoder(), shop(tmp_path, {"s": "Grey Sweatshirt", "t": "Anti-Slip Mat", "o": "Grey Shirt"}), tmp_path / "idx", TITLES_ONLY)
    assert ids(index.search_lexical("sweat shirt", 3))[0] == "s"
    assert ids(index.search_lexical("antislip", 3)) == ["t"] and ids(index.search_lexical("anti slip", 3)) == ["t"]


def test_entities_boost_in_every_mode_and_strict_filters(tmp_path):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(progress=False))
    # no run vocabularies: the linker knows the index's own values and category names
    engine = SearchEngine(index, PaletteEncoder())
    result = engine.search_text("puma jeans", k=12)
    assert {(m.group, m.value) for m in result.entities} == {("brand", "Puma"), ("category", "Jeans")}
    puma_jeans = {p.id for p in catalog if p.attributes["brand"] == "Puma" and p.category_path[-1] == "Jeans"}
    assert set(ids(result.hits)[: len(puma_jeans)]) == puma_jeans
    # in vector mode (which knows nothing of brands or jeans) a boost far above the scores' spread
    # orders the products by the share of entities they carry, then as the vector side did
    share = {p.id: ((p.attributes["brand"] == "Puma") + (p.category_path[-1] == "Jeans")) / 2 for p in catalog}
    unboosted = ids(SearchEngine(index, PaletteEncoder(), FusionConfig(boost=0.0)).search_text("puma jeans", k=12, mode="vector").hits)
    boosted_ids = ids(SearchEngine(index, PaletteEncoder(), FusionConfig(boost=10.0)).search_text("puma jeans", k=12, mode="vector").hits)
    assert boosted_ids == sorted(unboosted, key=lambda pid: -share[pid]) != unboosted
    diesel_jeans = {p.id for p in catalog if p.attributes["brand"] == "Diesel" and p.category_path[-1] == "Jeans"}
    for mode in ("vector", "lexical", "hybrid"):
        strict = engine.search_text("Diesel jeans", k=12, mode=mode, strict=True)
        assert set(ids(strict.hits)) == diesel_jeans, mode
    # a category level name selects its subtree; a value nothing carries leaves nothing
    assert {h.product.category_path[0] for h in engine.search_text("apparel", k=12, strict=True).hits} == {"Apparel"}
    assert len(engine.search_text("apparel", k=12, strict=True).hits) == 8


def test_index_values_without_a_searchable_word_are_not_recognised(tmp_path):
    catalog = shop(tmp_path, {"a": "Red Tee", "b": "Blue Tee"}, {"a": "red", "b": "blue"}, a={"fit": "The"}, b={"fit": "Slim"})
    engine = SearchEngine(build_index(PaletteEncoder(), catalog, tmp_path / "idx", TITLES_ONLY), PaletteEncoder())
    assert [(m.group, m.value) for m in engine.search_text("the slim tee").entities] == [("fit", "Slim")]


def test_update_keeps_the_lexical_side_in_sync(tmp_path):
    root = tmp_path / "shop"
    catalog = read_jsonl(write_catalog(root))
    build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(progress=False))
    index = ProductIndex.open(tmp_path / "idx")
    products = [p for p in catalog if p.id != "p05"]
    products[0] = Product("p00", "Puma Flamingo Shoes", images=products[0].images, attributes=products[0].attributes, category_path=SHOES)
    products.append(product("p99", "yellow", "Nike", SHOES, 1.0))
    write_images(root, products)
    summary = update_index(PaletteEncoder(), Catalog(products, root), index, BuildOptions(progress=False))
    assert (summary.added, summary.changed, summary.deleted) == (1, 1, 1)
    for opened in (index, ProductIndex.open(tmp_path / "idx")):
        assert ids(opened.search_lexical("flamingo", 5)) == ["p00"]
        assert ids(opened.search_lexical("nike", 5)) == ["p99"]
        assert "p05" not in ids(opened.search_lexical("diesel", 12))
        assert len(opened.lexical) == len(opened) == 12
    generation = index.info["generation"]
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [f"lexical-{generation}", "meta.sqlite", f"vectors-{generation}.faiss"]
    # a product's BM25 statistics are the whole catalog's: a fresh build scores the same
    fresh = build_index(PaletteEncoder(), Catalog(products, root), tmp_path / "fresh", BuildOptions(progress=False))
    again = ProductIndex.open(tmp_path / "idx")
    for query in ("puma shoes", "yellow nike", "blue jeans"):
        a, b = again.search_lexical(query, 12), fresh.search_lexical(query, 12)
        assert {h.product.id: h.score for h in a} == pytest.approx({h.product.id: h.score for h in b})


def test_fusion_settings_are_read_from_the_index(tmp_path):
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(tmp_path / "shop")), tmp_path / "idx", BuildOptions(progress=False))
    index.set_info(fusion=FusionConfig(method="weighted", weight=0.8).to_json())
    engine = SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder())
    assert (engine.fusion.method, engine.fusion.weight) == ("weighted", 0.8)
    index.delete(["p00"])
    with pytest.raises(RuntimeError, match="uncommitted product changes"):
        index.set_info(fusion=FusionConfig().to_json())


def test_fusion_is_tuned_on_judged_queries_and_saved_with_the_index(tmp_path):
    from catalogclip.evaluate.qrels import JudgedQueries
    from catalogclip.search.tune import save_fusion, tune_fusion

    # colour is only in the images of the i* products; the print is only in the titles of the t* ones
    colours = {f"i{n}": COLOURS[n % 6] for n in range(12)}
    words = ["goose", "anchor", "tiger", "rocket"]
    printed = {f"t{n}": f"{words[n % 4].title()} Print Tee" for n in range(12)}
    catalog = shop(tmp_path, {**{pid: f"Classic Item {pid}" for pid in colours}, **printed}, colours)
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", TITLES_ONLY)
    image_colour = {p.id: p.attributes["colour"].lower() for p in catalog}
    queries = {**{c: c for c in COLOURS}, **{w: f"{w} print" for w in words}}
    qrels = {**{c: {pid: 1 for pid, pc in image_colour.items() if pc == c} for c in COLOURS},
             **{w: {pid: 1 for pid, t in printed.items() if t.lower().startswith(w)} for w in words}}
    engine = SearchEngine(index, PaletteEncoder())
    tuning = tune_fusion(engine, JudgedQueries(queries, qrels), metric="nDCG@10", boosts=(0.0,))
    assert len(tuning.grid) == 2 * 11 and {row["method"] for row in tuning.grid} == {"rrf", "weighted"}
    # each side alone fails one kind of query; the tuned fusion answers both
    assert tuning.value == pytest.approx(1.0) and max(tuning.sides.values()) < 0.8
    assert tuning.best.tuned == {"metric": "nDCG@10", "value": tuning.value, "queries": 10, "settings_tried": 22}
    save_fusion(engine, tuning.best)
    assert SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder()).fusion == tuning.best
