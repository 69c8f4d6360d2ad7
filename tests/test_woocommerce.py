"""WooCommerce's product CSV export: variations merged into their parent, per-row attribute names."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import READERS, ReaderOptions, read_catalog
from catalogclip.catalog.readers.woocommerce import split_list
from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl, split_values
from catalogclip.cli import app
from test_readers import write_jpeg

RAW = ReaderOptions(normalise=False)  # the reader's own output, before attribute normalisation

HEADER = ["ID", "Type", "SKU", "Name", "Published", "Is featured?", "Visibility in catalog", "Short description",
          "Description", "Sale price", "Regular price", "Categories", "Tags", "Images", "Parent", "Brands",
          "Attribute 1 name", "Attribute 1 value(s)", "Attribute 1 visible", "Attribute 1 global",
          "Attribute 2 name", "Attribute 2 value(s)", "Attribute 2 visible", "Attribute 2 global",
          "Meta: _wpcom_is_markdown"]


def woo_row(id_: str, type_: str, name: str = "", published: str = "1", **fields: str) -> list[str]:
    """A row of the export; `fields` by column name with spaces as `_` (Attribute_1_name)."""
    values = {"ID": id_, "Type": type_, "Name": name, "Published": published}
    values |= {column.replace("_", " ").replace("values", "value(s)"): value for column, value in fields.items()}
    return [values.get(column, "") for column in HEADER]


def hoodie_rows(images: Path) -> list[list[str]]:
    """A variable hoodie: a variation by SKU with a relative image, one by `id:` with an absolute
    local image, one without an image, one disabled."""
    return [
        woo_row("10", "variable", "Hoodie", SKU="woo-hoodie", Short_description="<p>Warm&nbsp;fleece.</p>",
                Description="<h2>Details</h2>\\n<ul>\\n<li>80% cotton</li>\\n<li>Kangaroo pocket</li>\\n</ul>",
                Regular_price="45", Categories="Clothing > Hoodies, Sale, Gifts > For him", Tags="fleece, winter",
                Images="images/hoodie.jpg, images/hoodie-back.jpg", Attribute_1_name="Color",
                Attribute_1_values="Red, Blue", Attribute_2_name="pa_brand", Attribute_2_values="Acme"),
        woo_row("11", "variation", "Hoodie - Red", Parent="woo-hoodie", Images="images/hoodie-red.jpg",
                Attribute_1_name="Color", Attribute_1_values="Red", Attribute_2_name="Size", Attribute_2_values="S"),
        woo_row("12", "variation, virtual", "Hoodie - Blue", Parent="id:10", Images=str(images / "hoodie-blue.jpg"),
                Attribute_1_name="Color", Attribute_1_values="Blue", Attribute_2_name="Size", Attribute_2_values="M"),
        woo_row("13", "variation", "Hoodie - Blue", Parent="id:10", Attribute_1_name="Color",
                Attribute_1_values="Blue", Attribute_2_name="Size", Attribute_2_values="L\\, tall"),
        woo_row("14", "variation", "Hoodie - Green", "0", Parent="id:10", Images="images/hoodie-green.jpg",
                Attribute_1_name="Color", Attribute_1_values="Green"),
    ]


def other_rows() -> list[list[str]]:
    return [
        # Attribute 1 is Material here and Color on the next row: each row names its own.
        woo_row("20", "simple", "Sunrise Mug", Description="<p>Hand-thrown &amp; glazed.</p>",
                Categories="Home > Kitchen > Mugs", Images="images/mug.jpg", Brands="Kiln",
                Attribute_1_name="Material", Attribute_1_values="Stoneware"),
        woo_row("21", "external", "Cap", Images="images/cap.jpg", Attribute_1_name="Color", Attribute_1_values="Black"),
        woo_row("30", "variable", "Draft Scarf", "-1", Images="images/mug.jpg"),
        woo_row("31", "variation", "Draft Scarf - Grey", Parent="id:30", Images="images/mug.jpg"),
        woo_row("40", "grouped", "Breakfast Set", Images="images/mug.jpg"),
        woo_row("50", "variation", "Beanie - Grey", Parent="id:999", Images="images/cap.jpg",
                Attribute_1_name="Color", Attribute_1_values="Grey"),
        woo_row("", "simple", "No ID", Images="images/mug.jpg"),
        woo_row("60", "simple", "No Picture"),
    ]


def write_export(folder: Path) -> Path:
    images = folder / "images"
    for name in ("hoodie", "hoodie-back", "hoodie-red", "hoodie-blue", "hoodie-green", "mug", "cap"):
        write_jpeg(images / f"{name}.jpg")
    path = folder / "wc-product-export-1-1-2025.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([HEADER, *hoodie_rows(images), *other_rows()])
    return path


def image_names(product) -> list[str]:
    return [Path(image.path).name for image in product.images]


def test_split_list_keeps_escaped_commas():
    assert split_list("Clothing > Hoodies, Sale") == ["Clothing > Hoodies", "Sale"]
    assert split_list(" L\\, tall , M,,") == ["L, tall", "M"]
    assert split_list(None) == []


def test_variations_merge_into_their_parent(tmp_path):
    path = write_export(tmp_path)
    problems = ProblemLog()
    catalog = read_catalog("woocommerce", path, problems, RAW)

    assert [p.id for p in catalog] == ["10", "20", "21", "50"]
    hoodie = catalog["10"]
    assert hoodie.title == "Hoodie"
    assert hoodie.description == "Warm fleece. Details 80% cotton Kangaroo pocket"
    assert hoodie.category_path == ["Clothing", "Hoodies"]
    assert image_names(hoodie) == ["hoodie.jpg", "hoodie-back.jpg", "hoodie-red.jpg", "hoodie-blue.jpg"]
    assert hoodie.attributes == {"brand": "Acme", "Color": "Red | Blue", "tags": "fleece | winter",
                                 "categories": "Sale | Gifts > For him", "Size": "S | M | L, tall"}


def test_attribute_names_come_from_each_row(tmp_path):
    catalog = read_catalog("woocommerce", write_export(tmp_path), ProblemLog(), RAW)
    mug, cap = catalog["20"], catalog["21"]
    assert (mug.description, mug.category_path) == ("Hand-thrown & glazed.", ["Home", "Kitchen", "Mugs"])
    assert mug.attributes == {"brand": "Kiln", "Material": "Stoneware"}
    assert cap.attributes == {"Color": "Black"}
    assert cap.category_path == []


def test_skipped_rows_and_orphan_variations_are_reported(tmp_path):
    path = write_export(tmp_path)
    problems = ProblemLog()
    catalog = read_catalog("woocommerce", path, problems, RAW)

    assert (catalog["50"].title, image_names(catalog["50"])) == ("Beanie - Grey", ["cap.jpg"])
    assert problems.notes == [f"{path}: variations whose parent is not in the file kept as products of their own: 1 (lines 12)"]
    assert [(p.kind, p.file, p.line, p.message) for p in problems.problems] == [
        ("malformed row", str(path), 13, "field 'ID' is empty"),
        ("not published", str(path), 6, "field 'Published' is 0 (private, or a disabled variation)"),
        ("not published", str(path), 9, "field 'Published' is -1 (draft); its variations (1) are left out with it"),
        ("grouped product", str(path), 11, "a grouped product lists other products, each read on its own"),
        ("malformed row", str(path), 14, "field 'images' must be a non-empty list"),
    ]
    assert problems.summary() == "4 usable, skipped: 1 grouped product, 2 malformed row, 2 not published"


def test_hidden_products_are_skipped_and_shop_or_search_only_ones_kept(tmp_path):
    write_jpeg(tmp_path / "images" / "mug.jpg")
    path = tmp_path / "export.csv"
    rows = [woo_row(str(n), "simple", f"Mug {visibility}", Images="images/mug.jpg", Visibility_in_catalog=visibility)
            for n, visibility in enumerate(["visible", "catalog", "search", "hidden", ""], start=1)]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([HEADER, *rows])
    problems = ProblemLog()
    catalog = read_catalog("woocommerce", path, problems, RAW)
    assert [p.id for p in catalog] == ["1", "2", "3", "5"]
    assert [(p.kind, p.line, p.message) for p in problems.problems] == [
        ("hidden product", 5, "field 'Visibility in catalog' is hidden (neither the shop pages nor its search show it)")]


def test_missing_column_and_folder_source(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("ID,Type,Name\n1,simple,Mug\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"export\.csv: missing column 'Images'"):
        read_catalog("woocommerce", path, ProblemLog())
    with pytest.raises(ValueError, match="is a folder, expected WooCommerce's product CSV export"):
        read_catalog("woocommerce", tmp_path, ProblemLog())


def test_cli_import_lists_and_reads_the_format(tmp_path):
    runner = CliRunner()
    assert "woocommerce" in READERS.names()
    assert "woocommerce" in runner.invoke(app, ["catalog", "import", "--help"]).output
    out = tmp_path / "catalog.jsonl"
    result = runner.invoke(app, ["catalog", "import", "--format", "woocommerce", str(write_export(tmp_path)), str(out)])

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote 4 products (7 images) to {out}"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["images"][0] == {"path": "images/hoodie.jpg", "source": "merchant"}
    assert rows[0]["attributes"]["colour"] == "Red | Blue"  # normalised: Color -> colour
    assert rows[1]["attributes"] == {"brand": "Kiln", "material": "Stoneware"}


def test_a_catalog_written_as_a_woocommerce_export_reads_back_with_what_the_export_carries(tmp_path):
    from catalogclip.catalog.exports import write_woocommerce_csv
    from catalogclip.catalog.synth import generate_catalog
    from catalogclip.demo import shop_export

    source = generate_catalog(tmp_path / "synth", n_products=6, image_size=48, workers=1)
    original = read_catalog("jsonl", source, ProblemLog())
    export = write_woocommerce_csv(read_jsonl(source), tmp_path / "synth" / "export.csv")
    problems = ProblemLog()
    back = read_catalog("woocommerce", export, problems)
    assert problems.counts() == {} and [p.id for p in back] == [p.id for p in original]
    for theirs, ours in zip(back, original):
        assert (theirs.title, theirs.description, theirs.category_path) == (ours.title, ours.description, ours.category_path)
        assert theirs.attributes == ours.attributes
        # an export carries the merchant's shots, not the customer photos, boxes or splits
        assert [im.path for im in theirs.images] == [im.path for im in ours.images if im.source == "merchant"]
    shop, said = shop_export(source)
    assert [p.id for p in read_jsonl(shop)] == [p.id for p in original] and said.startswith("6 merchant images; 6 usable")


def test_commas_and_html_in_values_survive_the_export(tmp_path):
    from catalogclip.catalog.exports import write_woocommerce_csv

    write_jpeg(tmp_path / "a.jpg")
    odd = Product("x1", "Mug, large", "Fish & chips <b>not bold</b>", [ImageRef("a.jpg")],
                  {"brand": "Kiln, Co", "material": "Clay, fired | Glaze"}, ["Home, Garden", "Mugs"])
    export = write_woocommerce_csv(Catalog([odd], tmp_path), tmp_path / "export.csv")
    (back,) = read_catalog("woocommerce", export, ProblemLog())
    assert (back.title, back.description, back.category_path) == (odd.title, odd.description, odd.category_path)
    assert split_values(back.attributes["material"]) == ["Clay, fired", "Glaze"] and back.attributes["brand"] == "Kiln, Co"
