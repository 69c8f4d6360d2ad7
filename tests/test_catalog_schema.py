"""The canonical catalog: validation, JSONL round trip, image checks and statistics."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalogclip.catalog.images import image_problem, keep_usable_images
from catalogclip.catalog.paths import ImageRoots
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import (
    Catalog,
    ImageRef,
    Product,
    RowError,
    iter_jsonl,
    product_from_json,
    read_jsonl,
    unique_products,
    write_jsonl,
)
from catalogclip.catalog.stats import catalog_stats


def test_product_from_json_accepts_both_image_forms():
    product = product_from_json(
        {
            "id": 7,
            "title": "  Goose Tee ",
            "images": ["a.jpg", {"path": "b.jpg", "source": "customer", "bbox": [1, 2, 30, 40]}],
            "attributes": {"brand": "Roadster", "colour": "", "size": None},
            "category_path": ["Apparel", "Topwear"],
        }
    )
    assert product == Product(
        id="7",
        title="Goose Tee",
        images=[ImageRef("a.jpg"), ImageRef("b.jpg", "customer", (1.0, 2.0, 30.0, 40.0))],
        attributes={"brand": "Roadster"},  # empty values are dropped
        category_path=["Apparel", "Topwear"],
    )


def test_product_from_json_takes_numbers_bools_and_lists_as_attribute_text():
    attributes = {"capacity_oz": 12, "weight_kg": 0.5, "organic": True, "colour": ["Red", "Blue", "", "Red"],
                  "size": [38, 40.5], "tags": []}
    product = product_from_json({"id": "p", "title": "T", "images": ["a.jpg"], "attributes": attributes})
    assert product.attributes == {"capacity_oz": "12", "weight_kg": "0.5", "organic": "true",
                                  "colour": "Red | Blue", "size": "38 | 40.5"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"id": "p", "title": "", "images": ["a.jpg"]}, "field 'title' is empty"),
        ({"id": "p", "title": "T", "images": ["a.jpg"], "attributes": {"fit": [{"x": 1}]}},
         "field 'attributes.fit[0]' must be a string, got dict"),
        ({"id": "p", "title": "T", "images": []}, "field 'images' must be a non-empty list"),
        ({"title": "T", "images": ["a.jpg"]}, "field 'id' is empty"),
        ({"id": "p", "title": "T", "images": [{"path": "a.jpg", "bbox": [5, 5, 1, 9]}]}, "x1 <= x0"),
        ({"id": "p", "title": "T", "images": ["a.jpg"], "attributes": ["x"]}, "field 'attributes' must be an object"),
        ({"id": "p", "title": ["T"], "images": ["a.jpg"]}, "field 'title' must be a string, got list"),
        ([1, 2], "must be a JSON object, got list"),
    ],
)
def test_product_from_json_names_the_bad_field(raw, message):
    with pytest.raises(RowError, match=message.replace("[", r"\[")):
        product_from_json(raw)


def test_read_jsonl_logs_bad_lines_with_line_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps({"id": "a", "title": "A", "images": ["a.jpg"]}) + "\n"
        "\n"  # blank lines are ignored, but still counted
        "{not json\n"
        + json.dumps({"id": "b", "title": " ", "images": ["b.jpg"]}) + "\n"
        + json.dumps({"id": "a", "title": "A2", "images": ["a2.jpg"]}) + "\n"
    )
    problems = ProblemLog()
    catalog = read_jsonl(path, problems)
    assert [p.title for p in catalog] == ["A"] and catalog.root == tmp_path
    assert [(p.kind, p.line) for p in problems.problems] == [
        ("malformed row", 3), ("malformed row", 4), ("duplicate id", 5)
    ]
    assert problems.loaded == 1
    # iter_jsonl keeps line numbers and leaves duplicates to unique_products.
    rows = list(iter_jsonl(path, ProblemLog()))
    assert [(line, p.id) for line, p in rows] == [(1, "a"), (5, "a")]
    assert [line for line, _ in unique_products(rows, path, ProblemLog())] == [1]


def test_write_jsonl_makes_paths_relative_to_the_new_file(tmp_path):
    source = Catalog(
        [Product("p1", "Mug", images=[ImageRef("images/p1.jpg"), ImageRef(str(tmp_path / "far" / "x.jpg"))])],
        tmp_path / "src",
        image_roots=(tmp_path / "far",),
    )
    out = write_jsonl(source, tmp_path / "src" / "catalog.jsonl")
    row = json.loads(out.read_text())
    # Under the file's folder: relative; anywhere else: absolute (never "../").
    assert [im["path"] for im in row["images"]] == ["images/p1.jpg", str((tmp_path / "far" / "x.jpg").resolve())]
    # Read back, the absolute path is outside the file's folder: refused unless its root is given.
    problems = ProblemLog()
    assert read_jsonl(out, problems).products[0].images == [ImageRef("images/p1.jpg")]
    assert problems.counts() == {"image outside the catalog root": 1}
    elsewhere = write_jsonl(source, tmp_path / "other" / "c.jsonl")
    back = read_jsonl(elsewhere, image_root=tmp_path)
    assert [back.image_path(im) for im in back.products[0].images] == [
        (tmp_path / "src" / "images" / "p1.jpg").resolve(),
        (tmp_path / "far" / "x.jpg").resolve(),
    ]


titles = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20)


@settings(deadline=None, max_examples=30)  # file I/O on a shared machine: no per-example deadline
@given(st.lists(st.tuples(titles, titles, titles), min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_jsonl_round_trip_keeps_every_field(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("rt")
    catalog = Catalog(
        [
            Product(pid, title, description="d", images=[ImageRef(f"images/{i}.jpg", "ad", (0, 0, 4, 5))],
                    attributes={"brand": brand}, category_path=["A", title])
            for i, (pid, title, brand) in enumerate(rows)
        ],
        folder,
    )
    back = read_jsonl(write_jsonl(catalog, folder / "c.jsonl"))
    assert back.products == catalog.products


def test_image_problem_by_stat_and_by_decode(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4), "red").save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"GIF89a but not really")
    assert image_problem(good) is None and image_problem(good, verify=True) is None
    assert image_problem(tmp_path / "none.jpg") == ("missing image", "no such file")
    assert image_problem(empty) == ("broken image", "empty file")
    assert image_problem(tmp_path) == ("broken image", "not a regular file")
    assert image_problem(garbage) is None  # stat alone cannot tell
    kind, reason = image_problem(garbage, verify=True)
    assert kind == "broken image" and reason.startswith("cannot decode")


def test_keep_usable_images_drops_and_counts(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    product = Product("p", "P", images=[ImageRef("a.jpg"), ImageRef("b.jpg"), ImageRef(str(tmp_path / "c.jpg"))])
    problems = ProblemLog()
    kept = keep_usable_images(product, ImageRoots(tmp_path), problems, "cat.jsonl", 9)
    assert kept.images == [ImageRef("a.jpg")] and product.images[1] == ImageRef("b.jpg")  # input untouched
    assert [str(p) for p in problems.problems] == [
        "cat.jsonl:9: missing image: field 'images[1].path' = 'b.jpg': no such file (product 'p' kept with 1 of 3 images)",
        f"cat.jsonl:9: missing image: field 'images[2].path' = '{tmp_path / 'c.jpg'}': no such file "
        "(product 'p' kept with 1 of 3 images)",
    ]
    assert keep_usable_images(Product("q", "Q", images=[ImageRef("z.jpg")]), ImageRoots(tmp_path), problems, "f", 1) is None
    assert problems.problems[-1].message.endswith("(product 'q' skipped: no usable image)")


def stats_catalog(tmp_path) -> Catalog:
    for name in ["1.jpg", "2.jpg", "3.jpg", "4.jpg"]:
        (tmp_path / name).write_bytes(b"jpeg")
    products = [
        Product("a", "A", images=[ImageRef("1.jpg"), ImageRef("2.jpg", "customer")],
                attributes={"brand": "Puma", "colour": "Red"}, category_path=["Apparel", "Topwear", "Tshirts"]),
        Product("b", "B", images=[ImageRef("3.jpg")],
                attributes={"brand": "Puma"}, category_path=["Apparel", "Topwear", "Shirts"]),
        Product("c", "C", images=[ImageRef("4.jpg"), ImageRef("gone.jpg", "ad"), ImageRef("x/gone.jpg")],
                attributes={"brand": "Nike", "colour": "Red"}, category_path=["Footwear", "Topwear"]),
        Product("d", "D", images=[ImageRef("4.jpg")], attributes={"colour": "Blue"}),
    ]
    return Catalog(products, tmp_path)


def test_catalog_stats_hand_computed(tmp_path):
    stats = catalog_stats(stats_catalog(tmp_path), top=1)
    assert stats["products"] == 4 and stats["images"] == 7
    assert stats["images_per_product"] == {"min": 1, "mean": 1.75, "max": 3}
    assert stats["image_sources"] == {"merchant": 5, "customer": 1, "ad": 1}
    assert stats["attributes"] == {
        "brand": {"distinct": 2, "coverage": 0.75, "top": [["Puma", 2]]},
        "colour": {"distinct": 2, "coverage": 0.75, "top": [["Red", 2]]},
    }
    assert stats["category"] == {
        "depth": {"min": 0, "mean": 2.0, "max": 3},
        # Topwear under Apparel and under Footwear: two nodes, one name.
        "nodes_per_level": [2, 2, 2],
        "names_per_level": [2, 1, 2],
        "leaves": 3,
        "without_category": 1,
    }
    assert stats["image_files"] == {
        "unusable": 2,
        "by_kind": {"missing image": 2},
        "examples": ["gone.jpg: no such file", "x/gone.jpg: no such file"],
    }
    json.dumps(stats)  # JSON-ready
    assert "image_files" not in catalog_stats(stats_catalog(tmp_path), check_images=False)


def test_catalog_stats_of_an_empty_catalog():
    stats = catalog_stats(Catalog([]))
    assert stats["products"] == 0 and stats["images_per_product"] == {"min": 0, "mean": 0.0, "max": 0}
    assert stats["category"]["nodes_per_level"] == [] and stats["attributes"] == {}
