import json

import numpy as np
import pytest
from _searchkit import COLOURS, SHOES, PaletteEncoder, product, write_catalog, write_images

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl
from catalogclip.search.build import BuildOptions, build_index, embed_images, update_index, work_folder
from catalogclip.search.engine import SearchEngine
from catalogclip.search.index import IncompatibleModelError, ProductIndex
from catalogclip.search.query import QueryError
from catalogclip.search.vectors import VectorIndex, VectorParams

QUIET = BuildOptions(progress=False)


@pytest.fixture()
def catalog(tmp_path):
    return read_jsonl(write_catalog(tmp_path / "shop"))


def ids(hits):
    return [h.product.id for h in hits]


def colour_of(hit):
    return hit.product.attributes["colour"].lower()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_text_query_finds_the_products_of_that_colour(tmp_path, catalog, kind):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(kind=kind, progress=False))
    assert index.kind == kind and len(index) == 12
    engine = SearchEngine(index, PaletteEncoder())
    for colour in COLOURS:
        hits = engine.search_text(f"a {colour} thing", k=2).hits
        assert {colour_of(h) for h in hits} == {colour}
        assert hits[0].score >= hits[1].score
    # each product appears once however many images it has (odd products have two)
    hits = engine.search_text("green", k=12).hits
    assert sorted(ids(hits)) == sorted(p.id for p in catalog)


def test_filters_select_exactly_the_matching_products(tmp_path, catalog):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    engine = SearchEngine(index, PaletteEncoder())

    def found(filters):
        return set(ids(engine.search_text("red", k=12, filters=filters).hits))

    def expected(keep):
        return {p.id for p in catalog if keep(p)}

    price = lambda p: float(p.attributes["price"])  # noqa: E731
    assert found({"brand": "puma"}) == expected(lambda p: p.attributes["brand"] == "Puma")
    assert found({"colour": ["Red", "BLUE"], "brand": "Diesel"}) == expected(
        lambda p: p.attributes["colour"] in ("Red", "Blue") and p.attributes["brand"] == "Diesel"
    )
    assert found({"price": {"min": 35, "max": 80}}) == expected(lambda p: 35 <= price(p) <= 80)
    assert found({"category": "Apparel"}) == expected(lambda p: p.category_path[0] == "Apparel")
    assert found({"category": ["Apparel > Bottomwear", "Footwear"]}) == expected(lambda p: p.category_path[-1] in ("Jeans", "Shoes"))
    assert found({"brand": "Nobody"}) == set()
    # the best red product inside a filter is still ranked first
    hits = engine.search_text("red", k=3, filters={"category": "Footwear"}).hits
    assert colour_of(hits[0]) == "red" and all(h.product.category_path == SHOES for h in hits)


def test_bad_filters_are_refused_with_a_message(tmp_path, catalog):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    with pytest.raises(QueryError, match=r"unknown filter field 'size' \(known: brand, category, colour, price\)"):
        index.parse_filters({"size": "M"})
    with pytest.raises(QueryError, match="filter 'brand' has non-numeric values"):
        index.parse_filters({"brand": {"min": 1}})


def test_selective_filter_on_ann_index_loses_no_recall():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    allowed = np.zeros(len(vectors), bool)
    allowed[rng.choice(len(vectors), 25, replace=False)] = True
    query = vectors[0]
    truth = set(np.flatnonzero(allowed)[np.argsort(-(vectors[allowed] @ query))[:10]])
    for kind in ("ivf", "hnsw"):
        index = VectorIndex.build(vectors, kind, VectorParams(nlist=64, nprobe=1, ef_search=16))
        for exact_limit in (0, 1000):  # 0 forces the ANN path with widened breadth and fallback
            index.exact_limit = exact_limit
            scores, found = index.search(query, 10, allowed)
            assert set(found) == truth, (kind, exact_limit)
            assert np.all(np.diff(scores) <= 0)
        # a filter allowing fewer than k vectors returns all of them
        few = np.zeros(len(vectors), bool)
        few[[5, 9]] = True
        assert sorted(index.search(query, 10, few)[1]) == [5, 9]


def test_vector_index_kinds():
    from catalogclip.search.vectors import AUTO_FLAT_MAX, choose_kind

    assert choose_kind("auto", 10) == "flat"
    assert choose_kind("auto", AUTO_FLAT_MAX + 1) == "ivf"
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        choose_kind("annoy", 10)


def test_build_is_atomic_and_refuses_to_clobber_other_folders(tmp_path, catalog):
    build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileExistsError, match="is not a search index"):
        build_index(PaletteEncoder(), catalog, tmp_path / "notes", QUIET)
    # a failing build leaves the previous index untouched and no temporary folders behind
    with pytest.raises(ValueError, match="3 vectors but 2 image references"):
        ProductIndex.build(tmp_path / "idx", [], np.ones((3, 4)), [(0, 0)] * 2, model_id="m", catalog_root=tmp_path)
    assert len(ProductIndex.open(tmp_path / "idx")) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx", "notes", "shop"]  # the writer lock stays
    with pytest.raises(FileNotFoundError, match="not a search index"):
        ProductIndex.open(tmp_path / "notes")


def test_index_records_the_model_and_refuses_other_models(tmp_path, catalog):
    options = BuildOptions(progress=False, run="runs/r1", config={"method": "clip"})
    index = build_index(PaletteEncoder("model-a"), catalog, tmp_path / "idx", options)
    reopened = ProductIndex.open(tmp_path / "idx")
    assert (reopened.model_id, reopened.dim, reopened.info["run"], reopened.info["config"]) == ("model-a", 10, "runs/r1", {"method": "clip"})
    with pytest.raises(IncompatibleModelError, match="built with model 'model-a'.*queries come from model 'model-b'"):
        reopened.check_model("model-b", 10)
    engine = SearchEngine(index, PaletteEncoder("model-b"))
    with pytest.raises(IncompatibleModelError, match="model-b"):
        engine.search_text("red")
    with pytest.raises(IncompatibleModelError, match="dimension 3"):
        index.search(np.ones(3), 1)
    # "similar" uses the index's own vectors, so it still works
    assert colour_of(engine.similar("p00", k=1).hits[0]) == "red"


def test_add_delete_and_compaction_persist(tmp_path, catalog):
    encoder = PaletteEncoder()
    index = build_index(encoder, catalog, tmp_path / "idx", BuildOptions(kind="ivf", progress=False))
    new = [product("n1", "red", "Nike", SHOES, 5.0), product("n2", "red", "Nike", SHOES, 6.0)]
    write_images(catalog.root, new)
    vectors = encoder.encode_images([_solid("red"), _solid("red")])
    index.add(new, vectors, [(0, 0), (1, 0)])
    index.delete(["p00", "p06", "nope"])
    index.commit()
    reopened = ProductIndex.open(tmp_path / "idx")
    engine = SearchEngine(reopened, encoder)
    assert set(ids(engine.search_text("red", k=2).hits)) == {"n1", "n2"}
    assert len(reopened) == 12 and reopened.info["generation"] == 2
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["lexical-2", "meta.sqlite", "vectors-2.faiss"]
    # deleting most products compacts the vector file: tombstones are gone, answers unchanged
    ntotal = reopened.vectors.ntotal
    reopened.delete([p.id for p in catalog if p.id not in ("p01", "p07")])
    reopened.commit()
    assert reopened.vectors.ntotal < ntotal / 2
    again = SearchEngine(ProductIndex.open(tmp_path / "idx"), encoder)
    assert ids(again.search_text("red", k=2).hits) in (["n1", "n2"], ["n2", "n1"])
    assert {colour_of(h) for h in again.search_text("green", k=1).hits} == {"green"}
    assert again.index.product_vector("p07").shape == (10,)


def test_embedding_resumes_after_an_interruption(tmp_path, catalog):
    class Interrupted(Exception):
        pass

    class Flaky(PaletteEncoder):
        def __init__(self, fail_after):
            super().__init__()
            self.calls, self.images, self.fail_after = 0, 0, fail_after

        def encode_images(self, images):
            self.calls += 1
            if self.calls > self.fail_after:
                raise Interrupted
            self.images += len(images)
            return super().encode_images(images)

    work = tmp_path / "work"
    n_images = sum(len(p.images) for p in catalog)  # 18
    with pytest.raises(Interrupted):
        embed_images(Flaky(fail_after=2), catalog, work, batch_size=2, shard_size=4, progress=False)
    assert len(list(work.glob("shard-*.npz"))) == 1  # 2 batches of 2 = one full shard kept
    second = Flaky(fail_after=100)
    vectors, refs = embed_images(second, catalog, work, batch_size=2, shard_size=4, progress=False)
    assert second.images == n_images - 4
    reference, ref_refs = embed_images(PaletteEncoder(), catalog, tmp_path / "fresh", progress=False)
    assert refs == ref_refs and np.allclose(vectors, reference)
    # another model cannot reuse the shards
    other = Flaky(fail_after=100)
    other.model_id = "palette-v2"
    embed_images(other, catalog, work, batch_size=2, shard_size=4, progress=False)
    assert other.images == n_images


def test_broken_images_are_logged_and_imageless_products_left_out(tmp_path, catalog):
    (catalog.root / "images" / "p01_0.png").write_bytes(b"not a png")  # p01 keeps its second image
    (catalog.root / "images" / "p02_0.png").write_bytes(b"")  # p02 has no other image
    problems = ProblemLog()
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET, problems)
    assert problems.counts() == {"broken image": 2, "unsearchable product": 1}
    assert len(index) == 11 and "p02" not in index.store.product_ids()
    # p01 is still found, through its second image
    hits = index.search(PaletteEncoder().encode_images([_solid("green")])[0], 1, index.parse_filters({"brand": "Diesel"}))
    assert (hits[0].product.id, hits[0].image) == ("p01", 1)


def test_update_embeds_only_new_and_changed_products(tmp_path, catalog):
    build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    index = ProductIndex.open(tmp_path / "idx")
    products = list(catalog)
    products[0] = product("p00", "white", "Puma", SHOES, 10.0)  # was red: its image changes
    products = [p for p in products if p.id != "p05"] + [product("p99", "yellow", "Nike", SHOES, 1.0, views=2)]
    root = catalog.root  # the same files: only p00's image is redrawn
    write_images(root, products)
    (root / "catalog.jsonl").write_text("".join(json.dumps(p.to_json()) + "\n" for p in products))
    counting = _Counting()
    summary = update_index(counting, read_jsonl(root / "catalog.jsonl"), index, QUIET)
    assert (summary.added, summary.changed, summary.deleted, summary.unchanged) == (1, 1, 1, 10)
    assert counting.images == 3  # p00's image and p99's two, nothing else
    assert not work_folder(index.path).exists()
    engine = SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder())
    assert "p05" not in engine.index.store.product_ids()
    assert set(ids(engine.search_text("white", k=2).hits)) == {"p00", "p11"}
    assert ids(engine.search_text("red", k=1).hits) == ["p06"]
    assert engine.index.product("p99").attributes["brand"] == "Nike"
    # a second update with the same catalog changes nothing
    assert str(update_index(_Counting(), read_jsonl(root / "catalog.jsonl"), engine.index, QUIET)) == "0 added, 0 changed, 0 deleted, 12 unchanged"


def test_update_refuses_another_model(tmp_path, catalog):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    with pytest.raises(IncompatibleModelError):
        update_index(PaletteEncoder("other"), catalog, index, QUIET)


def test_entities_are_recognised_and_fed_to_the_encoder(tmp_path, catalog):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    encoder = PaletteEncoder(vocabs={"brand": ["Puma", "Diesel"], "colour": ["Black", "Red"]})
    result = SearchEngine(index, encoder).search_text("Black PUMA running shoes", k=2)
    # the index's own category names are recognised too, but only the run's groups reach its encoder
    assert {m.group: m.value for m in result.entities} == {"colour": "Black", "brand": "Puma", "category": "Shoes"}
    assert encoder.text_calls[-1] == (["Black PUMA running shoes"], [{"colour": "Black", "brand": "Puma"}])
    assert {colour_of(h) for h in result.hits} == {"black"}
    body = result.to_json()
    assert body["entities"][0] == {"group": "colour", "value": "Black", "text": "Black", "start": 0, "end": 5, "filter": {"colour": ["Black"]}}
    assert body["entities"][2]["filter"] == {"category": ["Footwear > Shoes"]}
    # a non-EI-CLIP encoder gets no entities at all
    plain = PaletteEncoder()
    SearchEngine(index, plain).search_text("black puma")
    assert plain.text_calls[-1] == (["black puma"], None)


def test_category_search_and_tree(tmp_path, catalog):
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    engine = SearchEngine(index, PaletteEncoder())
    hits = engine.search_category("Apparel>Topwear", k=12).hits
    assert sorted(ids(hits)) == sorted(p.id for p in catalog if p.category_path[1:2] == ["Topwear"])
    assert len(engine.search_category("Apparel", k=12, within=False).hits) == 12
    tree = index.category_tree()
    assert [(n["name"], n["count"]) for n in tree] == [("Apparel", 8), ("Footwear", 4)]
    assert [(c["path"], c["count"]) for c in tree[0]["children"]] == [("Apparel > Bottomwear", 4), ("Apparel > Topwear", 4)]
    facets = index.facets()
    assert facets["price"] == {"type": "range", "min": 10.0, "max": 120.0}
    assert facets["brand"]["values"] == [{"value": "Diesel", "count": 6}, {"value": "Puma", "count": 6}]


def test_query_validation(tmp_path, catalog):
    engine = SearchEngine(build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET), PaletteEncoder())
    with pytest.raises(QueryError, match="the query is empty"):
        engine.search_text("   ")
    with pytest.raises(QueryError, match="10240 characters long; at most 1000"):
        engine.search_text("x" * 10240)
    with pytest.raises(QueryError, match="k must be between 1 and 200"):
        engine.search_text("red", k=0)
    with pytest.raises(KeyError, match="no product 'zz'"):
        engine.similar("zz")


class _Counting(PaletteEncoder):
    def __init__(self):
        super().__init__()
        self.images = 0

    def encode_images(self, images):
        self.images += len(images)
        return super().encode_images(images)


def _solid(colour):
    from _searchkit import PALETTE
    from PIL import Image

    return Image.new("RGB", (8, 8), PALETTE[colour])


def test_products_keep_their_fields_through_the_store(tmp_path):
    p = Product("x1", "Crème Tee", "soft", [ImageRef("a.png", "customer", (1.0, 2.0, 3.0, 4.0))], {"brand": "Crème"}, ["A", "B"])
    write_images(tmp_path, [Product("x1", "t", images=p.images, attributes={"colour": "Red"})])
    index = build_index(PaletteEncoder(), Catalog([p], tmp_path), tmp_path / "idx", QUIET)
    assert index.product("x1") == p
    assert index.image_file(p, 0) == tmp_path.resolve() / "a.png"
    with pytest.raises(KeyError, match="has no image 1"):
        index.image_file(p, 1)


def test_cli_index_update_and_search_with_a_trained_run(tmp_path):
    from typer.testing import CliRunner

    from catalogclip.cli import app

    catalog = write_catalog(tmp_path / "shop")
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args])

    trained = cli("train", "--out", tmp_path / "run", "--catalog", catalog, "--backbone", "tiny", "--method", "clip", "--max-steps", 1, "--no-progress")
    assert trained.exit_code == 0, trained.output
    built = cli("index", "--run", tmp_path / "run", "--out", tmp_path / "idx", "--no-progress")
    assert built.exit_code == 0, built.output
    assert "indexed 12 products (18 images)" in built.output and "(flat, model clip-" in built.output
    info = ProductIndex.open(tmp_path / "idx").info
    assert info["run"] == str((tmp_path / "run").resolve()) and info["config"]["method"] == "clip"

    found = cli("search", "--index", tmp_path / "idx", "red shoes", "-k", 3, "--json", "-f", "price=..60", "-f", "category=Footwear")
    assert found.exit_code == 0, found.output
    body = json.loads(found.output)
    assert len(body["results"]) == 2 and {r["id"] for r in body["results"]} == {"p00", "p03"}
    lexical = cli("search", "--index", tmp_path / "idx", "Diesel jeans", "--mode", "lexical", "--strict", "--json")
    assert lexical.exit_code == 0, lexical.output
    hits = json.loads(lexical.output)["results"]
    assert {h["id"] for h in hits} == {"p05", "p11"} and all(set(h["sides"]) == {"lexical"} for h in hits)
    table = cli("search", "--index", tmp_path / "idx", "red shoes", "-k", 2)
    assert table.exit_code == 0 and "vector#" in table.output and "lexical#" in table.output, table.output
    typo = cli("search", "--index", tmp_path / "idx", "diesl jeans", "--mode", "lexical", "--json")
    assert json.loads(typo.output)["query"]["searched"] == "diesel jeans", typo.output
    as_typed = cli("search", "--index", tmp_path / "idx", "diesl jeans", "--mode", "lexical", "--json", "--no-spell")
    assert json.loads(as_typed.output)["corrections"] == [], as_typed.output
    table = cli("search", "--index", tmp_path / "idx", "diesl jeans", "-k", 2)
    assert "showing results for: diesel jeans (typed: diesl jeans" in table.output, table.output
    judged = tmp_path / "judged.json"
    judged.write_text(json.dumps({"red shoes": {"p00": 2, "p06": 1}, "diesel jeans": {"p05": 1, "p11": 1}}))
    tuned = cli("tune-fusion", "--index", tmp_path / "idx", "--qrels", judged, "--metric", "P@1")
    assert tuned.exit_code == 0 and "settings on 2 queries" in tuned.output and "saved in" in tuned.output, tuned.output
    assert ProductIndex.open(tmp_path / "idx").info["fusion"]["tuned"]["metric"] == "P@1"
    table = cli("search", "--index", tmp_path / "idx", "--similar", "p00", "--k", 2)  # the long form, as the service's `k`
    assert table.exit_code == 0 and "2 results in" in table.output

    for args, message in [
        (("search", "--index", tmp_path / "idx", "red", "-f", "size=M"), "unknown filter field 'size'"),
        (("search", "--index", tmp_path / "idx"), "give exactly one query"),
        (("search", "--index", tmp_path / "idx", "red", "--mode", "semantic"), "unknown search mode 'semantic'"),
        (("index", "--run", tmp_path / "run", "--out", tmp_path / "idx2", "--field-weights", "title=two"), "is not FIELD=WHOLE_NUMBER"),
        (("search", "--index", tmp_path / "idx", "--image", catalog), "not a readable image"),
        (("search", "--index", tmp_path / "nowhere", "red"), "not a search index"),
    ]:
        failed = cli(*args)
        assert failed.exit_code == 2 and message in failed.output, failed.output

    updated = cli("index", "--run", tmp_path / "run", "--out", tmp_path / "idx", "--update", "--no-progress")
    assert updated.exit_code == 0 and "0 added, 0 changed, 0 deleted, 12 unchanged" in updated.output
