"""The milvus backend on Milvus Lite: the same answers as the faiss backend, filters that cannot be
escaped from, updates, and the alias swap on rebuild."""
import json
import re

import numpy as np
import pytest
from _searchkit import SHOES, PaletteEncoder, product, write_catalog, write_images
from hypothesis import given, settings
from hypothesis import strategies as st

from catalogclip.catalog.schema import ImageRef, Product, read_jsonl
from catalogclip.search.backend import Connection, VectorParams
from catalogclip.search.build import BuildOptions, build_index, update_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.index import IncompatibleModelError, ProductIndex
from catalogclip.search.query import parse_filters

pytest.importorskip("milvus_lite")
from milvus_lite.search.filter.tokens import tokenize  # noqa: E402

from catalogclip.search.milvus import Columns, string_literal  # noqa: E402

HOSTILE = ['Pu"ma', "Di'esel", 'x" or 1==1 or "y', "a\\", "\\\"", "[brand]", "line\nbreak", "tab\there", "') or (1==1"]
CATEGORIES = [["Footwear", "Shoes"], ["Apparel", "Top\"wear", "Shirts"], ["Apparel", "Bottom\\wear", "Jeans"], ["Bags"]]
N, DIM = 10_000, 32


def milvus(tmp_path, name="shop", **kw):
    return Connection("milvus", str(tmp_path / "milvus.db"), collection=name, **kw)


def synthetic(n=N, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n)] + rng.standard_normal((n, DIM)).astype(np.float32)
    products = [
        Product(
            f"s{i:05d}", f"product {i}", images=[ImageRef(f"{i}.png")],
            attributes={"brand": HOSTILE[i % len(HOSTILE)], "colour": ["Red", "Blue", "Black", "Red | Blue"][i % 4], "price": str(i % 100)},
            category_path=CATEGORIES[i % len(CATEGORIES)],
        )
        for i in range(n)
    ]
    return products, vectors, [(i, 0) for i in range(n)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same 10k products in an exact faiss index and an exact (FLAT) Milvus Lite index."""
    tmp = tmp_path_factory.mktemp("pair")
    products, vectors, refs = synthetic()
    common = dict(model_id="m", catalog_root=tmp, kind="flat")
    faiss_index = ProductIndex.build(tmp / "faiss", products, vectors, refs, **common)
    milvus_index = ProductIndex.build(tmp / "milvus", products, vectors, refs, connection=milvus(tmp), **common)
    yield faiss_index, milvus_index
    milvus_index.close()


def answers(hit_lists):
    return [[h.product.id for h in hits] for hits in hit_lists]


def test_milvus_flat_gives_faiss_exact_top10_for_1000_random_queries(pair):
    faiss_index, milvus_index = pair
    assert (milvus_index.backend, milvus_index.kind, len(milvus_index)) == ("milvus", "flat", N)
    queries = np.random.default_rng(1).standard_normal((1000, DIM)).astype(np.float32)
    expected = faiss_index.search_many(queries, 10)
    got = milvus_index.search_many(queries, 10)
    assert answers(got) == answers(expected)
    assert np.allclose([h.score for hits in got for h in hits], [h.score for hits in expected for h in hits], atol=1e-5)
    # one query at a time answers the same
    assert answers([milvus_index.search(q, 10) for q in queries[:20]]) == answers(expected[:20])


FILTERS = [
    {"brand": 'Pu"ma'},
    {"brand": ["x\" or 1==1 or \"y", "a\\"]},
    {"brand": "\\\""},
    {"brand": "[BRAND]"},  # values match case-insensitively, brackets and all
    {"brand": "line\nbreak", "colour": "red"},
    {"brand": "') or (1==1", "price": {"min": 10, "max": 20.5}},
    {"price": {"max": 3}},
    {"category": "Apparel > Top\"wear"},
    {"category": ["Apparel > Bottom\\wear > Jeans", "Bags"], "colour": ["Blue", "BLACK"]},
    {"category": "APPAREL > top\"WEAR"},  # category paths match ignoring case, as attribute values do
    {"category": ["apparel > bottom\\wear > jeans", "bags"]},
]


@pytest.mark.parametrize("filters", FILTERS, ids=range(len(FILTERS)))
def test_filters_with_hostile_values_select_what_faiss_selects(pair, filters):
    faiss_index, milvus_index = pair
    clauses = faiss_index.parse_filters(filters)
    queries = np.random.default_rng(2).standard_normal((30, DIM)).astype(np.float32)
    expected = faiss_index.search_many(queries, 10, clauses)
    assert all(len(hits) == 10 for hits in expected)
    assert answers(milvus_index.search_many(queries, 10, clauses)) == answers(expected)


@pytest.mark.parametrize("value", ['" or 1==1 or "', "Puma\\", "Puma' or 1==1 or '", "x\") or (true", "Pu\"ma\\\" or \\\"1"])
def test_injected_filter_values_match_nothing(pair, value):
    _, milvus_index = pair
    query = np.ones(DIM, np.float32)
    assert milvus_index.search(query, 10, milvus_index.parse_filters({"brand": value})) == []
    assert milvus_index.search(query, 10, milvus_index.parse_filters({"category": value})) == []


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_value_is_one_string_literal_to_milvus(value):
    tokens = [t for t in tokenize(string_literal(value)) if t.kind.name != "EOF"]
    assert len(tokens) == 1 and tokens[0].kind.name == "STRING" and tokens[0].value == value


def test_filter_expressions_name_numbered_columns_and_escape_values():
    fields = {"brand": False, "price": True, "category": False, "size": False}
    brand, price, category, size = parse_filters(
        {"brand": ['A"b', "c\\"], "price": {"min": 1}, "category": ["A > B", "C", "A > D"], "size": "M"}, fields
    )
    columns = Columns({"price": 0, "brand": 1}, depth=2)
    assert columns.expression([brand]) == '(f1 in ["a\\"b", "c\\\\"])'
    columns.multi.add(1)  # some product has several brands: the list column is searched too
    assert columns.expression([brand]) == '(f1 in ["a\\"b", "c\\\\"] or json_contains_any(m1, ["a\\"b", "c\\\\"]))'
    assert columns.expression([price], exclude_row=7) == "(n0 >= 1.0) and (row != 7)"
    assert columns.expression([category]) == '(c0 in ["C"] or c1 in ["A > B", "A > D"])'
    assert columns.expression([size, brand]).startswith("(false) and ")


def test_engine_queries_and_updates_match_faiss(tmp_path):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    quiet = BuildOptions(progress=False)
    engines = {
        name: SearchEngine(build_index(PaletteEncoder(), catalog, tmp_path / name, BuildOptions(progress=False, connection=conn)), PaletteEncoder())
        for name, conn in (("faiss", None), ("milvus", milvus(tmp_path)))
    }

    def same(call):
        results = {name: [(h.product.id, h.image, round(h.score, 5)) for h in call(engine).hits] for name, engine in engines.items()}
        assert results["faiss"] == results["milvus"] and results["faiss"]
        return results["faiss"]

    for mode in ("vector", "lexical", "hybrid"):  # the lexical side is the index folder's BM25 on both backends
        same(lambda e: e.search_text("red puma", k=4, mode=mode))
    same(lambda e: e.search_text("green", k=12, filters={"brand": "puma", "price": {"min": 20}}))
    same(lambda e: e.search_category("Apparel > Topwear", k=5))
    assert same(lambda e: e.search_text("green", k=12, filters={"category": "apparel > TOPWEAR"})) == same(
        lambda e: e.search_text("green", k=12, filters={"category": "Apparel > Topwear"}))
    assert "p00" not in {pid for pid, _, _ in same(lambda e: e.similar("p00", k=5))}
    assert engines["milvus"].index.facets() == engines["faiss"].index.facets()
    with pytest.raises(IncompatibleModelError, match="built with model 'palette-v1'"):
        SearchEngine(engines["milvus"].index, PaletteEncoder("other")).search_text("red")

    # add, change and delete products on both backends
    products = list(catalog)
    products[0] = product("p00", "white", "Puma", SHOES, 10.0)
    products = [p for p in products if p.id != "p05"] + [product("p99", "yellow", "Nike", SHOES, 1.0, views=2)]
    write_images(catalog.root, products)
    (catalog.root / "catalog.jsonl").write_text("".join(json.dumps(p.to_json()) + "\n" for p in products))
    for name, engine in engines.items():
        summary = update_index(PaletteEncoder(), read_jsonl(catalog.root / "catalog.jsonl"), engine.index, quiet)
        assert str(summary) == "1 added, 1 changed, 1 deleted, 10 unchanged"
        engines[name] = SearchEngine(ProductIndex.open(tmp_path / name), PaletteEncoder())  # reopened: what was committed
    assert {pid for pid, _, _ in same(lambda e: e.search_text("white", k=2))} == {"p00", "p11"}
    assert {pid for pid, _, _ in same(lambda e: e.search_text("yellow", k=3))} == {"p03", "p09", "p99"}
    assert "p05" not in {pid for pid, _, _ in same(lambda e: e.search_text("black", k=12))}
    # the deleted and replaced vectors are gone from Milvus itself, not only hidden
    index = engines["milvus"].index
    in_milvus = {e["vid"] for e in index.vectors.client.query(index.vectors.collection, filter="vid >= 0", output_fields=["vid"])}
    assert in_milvus == set(np.flatnonzero(index.store.vector_rows(index.vectors.ntotal) >= 0).tolist()) and len(in_milvus) == 18


def test_rebuild_writes_a_new_collection_and_swaps_the_alias(tmp_path, monkeypatch):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    options = BuildOptions(progress=False, connection=milvus(tmp_path, "live shop"))
    first = build_index(PaletteEncoder(), catalog, tmp_path / "idx", options)
    client = first.vectors.client
    alias = first.vectors.alias
    assert alias == "live_shop" and client.describe_alias(alias)["collection_name"] == first.vectors.collection

    # a rebuild that fails half-way leaves the alias (and the index folder) on the old collection
    from catalogclip.search.milvus import MilvusStore

    def broken(self, folder, generation):
        raise RuntimeError("disk full")

    monkeypatch.setattr(MilvusStore, "persist", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(PaletteEncoder(), read_jsonl(catalog.root / "catalog.jsonl"), tmp_path / "idx", options)
    monkeypatch.undo()
    assert client.describe_alias(alias)["collection_name"] == first.vectors.collection
    assert ProductIndex.open(tmp_path / "idx").vectors.collection == first.vectors.collection

    smaller = read_jsonl(catalog.root / "catalog.jsonl")
    smaller.products = smaller.products[:6]
    second = build_index(PaletteEncoder(), smaller, tmp_path / "idx", options)
    assert second.vectors.collection != first.vectors.collection
    assert client.describe_alias(alias)["collection_name"] == second.vectors.collection
    # a reader that opened the old index still answers from the old collection
    assert len(SearchEngine(first, PaletteEncoder()).search_text("red", k=12).hits) == 12
    assert len(SearchEngine(second, PaletteEncoder()).search_text("red", k=12).hits) == 6
    third = build_index(PaletteEncoder(), smaller, tmp_path / "idx", options)
    # the failed build's and the first collection are dropped; the one just replaced stays
    assert sorted(c for c in client.list_collections() if c.startswith(alias)) == sorted([second.vectors.collection, third.vectors.collection])


def test_opening_needs_the_collection_and_a_lite_uri_is_a_db_file(tmp_path):
    products, vectors, refs = synthetic(50)
    with pytest.raises(ValueError, match="local file ending in .db"):
        ProductIndex.build(tmp_path / "idx", products, vectors, refs, model_id="m", catalog_root=tmp_path,
                           connection=Connection("milvus", str(tmp_path / "milvus")))
    with pytest.raises(ValueError, match="needs --uri"):
        ProductIndex.build(tmp_path / "idx", products, vectors, refs, model_id="m", catalog_root=tmp_path, connection=Connection("milvus"))
    ProductIndex.build(tmp_path / "idx", products, vectors, refs, model_id="m", catalog_root=tmp_path, connection=milvus(tmp_path))
    with pytest.raises(FileNotFoundError, match="its Milvus collection .* is not at"):
        ProductIndex.open(tmp_path / "idx", connection=Connection(uri=str(tmp_path / "elsewhere.db")))


def test_cli_indexes_into_milvus_and_searches_it(tmp_path):
    from typer.testing import CliRunner

    from catalogclip.cli import app

    catalog = write_catalog(tmp_path / "shop")
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    cli("train", "--out", tmp_path / "run", "--catalog", catalog, "--backbone", "tiny", "--method", "clip", "--max-steps", 1, "--no-progress")
    built = cli("index", "--run", tmp_path / "run", "--out", tmp_path / "idx", "--backend", "milvus", "--uri", tmp_path / "m.db",
                "--collection", "shop", "--kind", "hnsw", "--no-progress")
    assert "indexed 12 products (18 images)" in built and "vectors in milvus" in built
    # identical images give tied vectors, which exact and HNSW search may order differently
    assert float(re.search(r"recall@10 against exact search: ([\d.]+) \(18 sampled", built).group(1)) >= 0.9
    body = json.loads(cli("search", "--index", tmp_path / "idx", "red shoes", "-k", 3, "--json", "-f", "price=..60", "-f", "category=Footwear"))
    assert {r["id"] for r in body["results"]} == {"p00", "p03"}
    assert "0 added, 0 changed, 0 deleted, 12 unchanged" in cli("index", "--run", tmp_path / "run", "--out", tmp_path / "idx", "--update", "--no-progress")
    refused = runner.invoke(app, ["search", "--index", str(tmp_path / "idx"), "red", "--backend", "faiss"])
    assert refused.exit_code == 2 and "keeps its vectors in milvus, not faiss" in refused.output


def test_fields_and_depths_first_seen_in_an_update_are_filterable(tmp_path):
    products, vectors, refs = synthetic(200)
    indexes = {
        name: ProductIndex.build(tmp_path / name, products, vectors, refs, model_id="m", catalog_root=tmp_path, connection=conn)
        for name, conn in (("faiss", None), ("milvus", milvus(tmp_path)))
    }
    late = [Product(f"late{i}", "t", images=[ImageRef("x.png")], attributes={"material": ["Cotton", 'Wo"ol', "Silk | Wool"][i % 3], "weight": str(100 + i)},
                    category_path=["Apparel", "Top\"wear", "Shirts", "Long ' sleeve"]) for i in range(6)]
    new_vectors = np.random.default_rng(5).standard_normal((6, DIM)).astype(np.float32)
    for index in indexes.values():
        index.add(late, new_vectors, [(i, 0) for i in range(6)])
        index.commit()
    reopened = {name: ProductIndex.open(tmp_path / name) for name in indexes}
    for filters in ({"material": 'wo"ol'}, {"material": ["wool", "cotton"]}, {"weight": {"min": 102}}, {"category": "Apparel > Top\"wear > Shirts > Long ' sleeve"},
                    {"category": "Apparel > Top\"wear > Shirts", "material": "cotton"}):
        results = {name: [h.product.id for h in index.search(np.ones(DIM), 10, index.parse_filters(filters))] for name, index in reopened.items()}
        assert results["milvus"] == results["faiss"] and results["faiss"], filters


def test_a_selective_filter_gets_milvus_ann_search_full_breadth(tmp_path):
    products, vectors, refs = synthetic(3000)
    common = dict(model_id="m", catalog_root=tmp_path, params=VectorParams(nlist=50, nprobe=1, ef_search=10))
    exact = ProductIndex.build(tmp_path / "exact", products, vectors, refs, kind="flat", **common)
    queries = np.random.default_rng(7).standard_normal((20, DIM)).astype(np.float32)
    clauses = exact.parse_filters({"brand": 'Pu"ma', "colour": "black"})  # 1 product in 36
    for kind in ("ivf", "hnsw"):  # uncompressed: any loss would be the filter's
        ann = ProductIndex.build(tmp_path / kind, products, vectors, refs, kind=kind, connection=milvus(tmp_path, kind), **common)
        assert answers(ann.search_many(queries, 10, clauses)) == answers(exact.search_many(queries, 10, clauses)), kind
        ann.close()
