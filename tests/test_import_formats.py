"""Shop exports: Google Merchant feeds (TSV, XML), Shopify's product CSV, a mapped CSV, Flipkart's variants."""
from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path

import pytest

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import ReaderOptions, read_catalog
from catalogclip.catalog.readers.mapped_csv import ColumnMapping
from catalogclip.catalog.readers.html import html_to_text, plain_text
from test_readers import flipkart_row, write_flipkart, write_jpeg

RAW = ReaderOptions(normalise=False)  # the readers' own output, before attribute normalisation


def write_images(root: Path, names: list[str]) -> None:
    for name in names:
        write_jpeg(root / name)


def image_names(product) -> list[str]:
    return [Path(image.path).name for image in product.images]


# --- google-merchant --------------------------------------------------------------------

GOOGLE_FIELDS = ["id", "title", "description", "link", "image_link", "additional_image_link", "brand", "color",
                 "gender", "age_group", "material", "pattern", "size", "google_product_category", "product_type",
                 "item_group_id"]
GOOGLE_ITEMS = [
    # Two colour variants of one shirt (sizes S and M of red): one product.
    ["TS-R-S", "Oxford Shirt Red S", "Cotton <b>oxford</b>.", "https://shop.example/ts", "images/ts-red.jpg",
     "images/ts-red-back.jpg,images/ts-red-side.jpg", "Acme", "Red", "male", "adult", "Cotton", "Solid", "S",
     "Apparel & Accessories > Clothing > Shirts & Tops", "Men > Shirts > Oxford", "TS"],
    ["TS-R-M", "Oxford Shirt Red M", "Cotton oxford.", "", "images/ts-red.jpg", "", "Acme", "Red", "male",
     "adult", "Cotton", "Solid", "M", "", "Men > Shirts > Oxford", "TS"],
    ["MUG-1", "Stoneware Mug", "", "", "images/mug.jpg", "", "Potter", "", "", "", "Stoneware", "", "",
     "Home & Garden > Kitchen & Dining > Tableware > Drinkware > Mugs", "", ""],
    ["TS-B-S", "Oxford Shirt Blue S", "", "", "images/ts-blue.jpg", "", "Acme", "Blue", "male", "adult",
     "Cotton", "Solid", "S", "", "Men > Shirts > Oxford", "TS"],
    ["BAD-1", "", "no title", "", "images/mug.jpg", "", "", "", "", "", "", "", "", "", "", ""],
    ["NUM-1", "Numbered Category", "", "", "images/mug.jpg", "", "", "", "", "", "", "", "", "2271", "", ""],
]
GOOGLE_IMAGES = ["images/ts-red.jpg", "images/ts-red-back.jpg", "images/ts-red-side.jpg", "images/ts-blue.jpg",
                 "images/mug.jpg"]


def check_google_catalog(catalog, problems, feed: Path, bad_line: int) -> None:
    assert [p.id for p in catalog] == ["TS", "MUG-1", "NUM-1"]
    shirt = catalog["TS"]
    assert shirt.title == "Oxford Shirt Red S"
    assert shirt.category_path == ["Men", "Shirts", "Oxford"]  # product_type wins over the Google taxonomy
    assert image_names(shirt) == ["ts-red.jpg", "ts-red-back.jpg", "ts-red-side.jpg", "ts-blue.jpg"]
    assert shirt.attributes == {"brand": "Acme", "color": "Red | Blue", "gender": "male", "age_group": "adult",
                                "material": "Cotton", "pattern": "Solid", "size": "S | M"}
    mug = catalog["MUG-1"]
    assert mug.category_path == ["Home & Garden", "Kitchen & Dining", "Tableware", "Drinkware", "Mugs"]
    assert mug.attributes == {"brand": "Potter", "material": "Stoneware"}
    assert catalog["NUM-1"].category_path == []  # a bare taxonomy id names no nodes
    assert [(p.kind, p.file, p.line) for p in problems.problems] == [("malformed row", str(feed), bad_line)]
    assert "field 'title' is empty" in problems.problems[0].message


def test_google_merchant_tsv_groups_variants_and_keeps_every_image(tmp_path):
    write_images(tmp_path, GOOGLE_IMAGES)
    feed = tmp_path / "feed.tsv"
    feed.write_text("\n".join("\t".join(row) for row in [GOOGLE_FIELDS, *GOOGLE_ITEMS]) + "\n", encoding="utf-8")
    problems = ProblemLog()
    catalog = read_catalog("google-merchant", feed, problems, RAW)
    check_google_catalog(catalog, problems, feed, bad_line=6)
    assert catalog["TS"].description == "Cotton oxford."  # HTML as plain text


def google_xml(items: list[list[str]]) -> str:
    def item(row: list[str]) -> str:
        lines = ["  <item>"]
        for name, value in zip(GOOGLE_FIELDS, row):
            if not value:
                continue
            values = value.split(",") if name == "additional_image_link" else [value]
            tag = name if name in ("title", "description", "link") else f"g:{name}"
            lines += [f"    <{tag}>{v.replace('&', '&amp;').replace('<', '&lt;')}</{tag}>" for v in values]
        return "\n".join(lines + ["  </item>"])

    body = "\n".join(item(row) for row in items)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" xmlns:g="http://base.google.com/ns/1.0">\n'
            f"<channel>\n<title>Shop</title>\n{body}\n</channel>\n</rss>\n")


def test_google_merchant_tsv_several_product_types_give_the_first_path(tmp_path):
    write_images(tmp_path, ["images/mug.jpg"])
    feed = tmp_path / "feed.tsv"
    feed.write_text("id\ttitle\timage_link\tproduct_type\tgoogle_product_category\n"
                    "S1\tShirt\timages/mug.jpg\tMen > Shirts, Sale > Shirts\t\n"
                    "F1\tTea\timages/mug.jpg\t\tFood, Beverages & Tobacco > Beverages > Tea & Infusions\n")
    catalog = read_catalog("google-merchant", feed, ProblemLog(), RAW)
    assert catalog["S1"].category_path == ["Men", "Shirts"]
    assert catalog["F1"].category_path == ["Food, Beverages & Tobacco", "Beverages", "Tea & Infusions"]


def test_google_merchant_xml_rss_reads_the_same_feed(tmp_path):
    write_images(tmp_path, GOOGLE_IMAGES)
    feed = tmp_path / "feed.xml"
    feed.write_text(google_xml(GOOGLE_ITEMS), encoding="utf-8")
    problems = ProblemLog()
    catalog = read_catalog("google-merchant", feed, problems, RAW)
    # A problem names the line of the item's <item> tag: the bad item is the 5th.
    starts = [i + 1 for i, line in enumerate(feed.read_text().splitlines()) if line == "  <item>"]
    check_google_catalog(catalog, problems, feed, bad_line=starts[4])
    assert catalog["TS"].description == "Cotton oxford."  # XML-escaped HTML, as plain text


def test_google_merchant_xml_cdata_html_description_is_plain_text(tmp_path):
    write_images(tmp_path, ["images/mug.jpg"])
    feed = tmp_path / "feed.xml"
    feed.write_text(google_xml(GOOGLE_ITEMS[2:3]).replace(
        "<g:id>", "<description><![CDATA[<p>Soft <strong>glaze</strong>.</p><ul><li>12&nbsp;oz</li></ul>]]></description><g:id>"
    ))
    assert read_catalog("google-merchant", feed, ProblemLog(), RAW)["MUG-1"].description == "Soft glaze. 12 oz"


def test_google_merchant_additional_images_one_url_per_xml_element_comma_separated_in_tsv(tmp_path):
    cloudinary = "https://res.example/upload/w_600,h_600,c_fill/back.jpg"
    fields = {name: "" for name in GOOGLE_FIELDS} | {"id": "M", "title": "Mug", "image_link": "https://res.example/a.jpg"}
    feed = tmp_path / "feed.xml"
    feed.write_text(google_xml([list(fields.values())]).replace(
        "</item>", f"<g:additional_image_link>{cloudinary}</g:additional_image_link></item>"
    ))
    no_download = ReaderOptions(normalise=False, check_images=False)
    assert [i.path for i in read_catalog("google-merchant", feed, ProblemLog(), no_download)["M"].images] == [
        "https://res.example/a.jpg", cloudinary
    ]
    tsv = tmp_path / "feed.tsv"
    fields["additional_image_link"] = f"https://res.example/b.jpg,{cloudinary}"
    tsv.write_text("\t".join(fields) + "\n" + "\t".join(fields.values()) + "\n")
    assert [i.path for i in read_catalog("google-merchant", tsv, ProblemLog(), no_download)["M"].images] == [
        "https://res.example/a.jpg", "https://res.example/b.jpg", cloudinary
    ]


def test_google_merchant_xml_latin1_declaration_and_broken_xml(tmp_path):
    write_images(tmp_path, GOOGLE_IMAGES)
    feed = tmp_path / "feed.xml"
    text = google_xml(GOOGLE_ITEMS[2:3]).replace("UTF-8", "ISO-8859-1").replace("Stoneware Mug", "Mug Garçon")
    feed.write_bytes(text.encode("latin-1"))
    assert read_catalog("google-merchant", feed, ProblemLog(), RAW)["MUG-1"].title == "Mug Garçon"

    feed.write_text(google_xml(GOOGLE_ITEMS[2:3]).replace("</channel>", "<item><g:id>x</oops></channel>"))
    problems = ProblemLog()
    assert [p.id for p in read_catalog("google-merchant", feed, problems, RAW)] == ["MUG-1"]
    assert [p.kind for p in problems.problems] == ["malformed row"]
    assert "XML: mismatched tag" in problems.problems[0].message


def test_google_merchant_tsv_missing_column(tmp_path):
    feed = tmp_path / "feed.tsv"
    feed.write_text("id\ttitle\nA\tMug\n")
    with pytest.raises(ValueError, match=r"feed\.tsv: missing column 'image_link'"):
        read_catalog("google-merchant", feed, ProblemLog())


def test_google_merchant_tsv_quotes_are_text_and_rows_must_fit_the_header(tmp_path):
    write_images(tmp_path, ["cap.jpg", "mug.jpg"])
    feed = tmp_path / "feed.tsv"
    feed.write_text(
        "id\ttitle\tdescription\timage_link\tbrand\tcolor\n"
        'V7\tSingle 7" Vinyl\t"Limited pressing.\tcap.jpg\tLabel\tBlack\n'  # an unclosed quote: text
        'MUG-1\t"Sunrise" Mug\tSays "perfect".\tmug.jpg\n'  # trailing empty fields dropped
        "CAP-1\tCap\tTwill.\tAdjustable.\tcap.jpg\tAcme\tBlack\n",  # one field too many
        encoding="utf-8",
    )
    problems = ProblemLog()
    catalog = read_catalog("google-merchant", feed, problems, RAW)
    assert [p.id for p in catalog] == ["V7", "MUG-1"]
    assert (catalog["V7"].title, catalog["V7"].description) == ('Single 7" Vinyl', '"Limited pressing.')
    assert catalog["V7"].attributes == {"brand": "Label", "color": "Black"}
    assert (catalog["MUG-1"].title, catalog["MUG-1"].description) == ('"Sunrise" Mug', 'Says "perfect".')
    assert [(p.kind, p.line, p.message) for p in problems.problems] == [
        ("malformed row", 4, "7 fields, the header has 6")
    ]


# --- shopify ----------------------------------------------------------------------------

SHOPIFY_HEADER = ["Handle", "Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags", "Published",
                  "Option1 Name", "Option1 Value", "Option2 Name", "Option2 Value", "Option3 Name", "Option3 Value",
                  "Variant SKU", "Variant Price", "Image Src", "Image Position", "Image Alt Text", "Variant Image",
                  "Status"]


def shopify_row(handle: str, **fields: str) -> list[str]:
    return [fields.get(name.replace(" ", "_").replace("(", "").replace(")", ""), "") if name != "Handle" else handle
            for name in SHOPIFY_HEADER]


SHOPIFY_ROWS = [
    shopify_row("linen-shirt", Title="Linen Shirt", Body_HTML="<p>Breathable&nbsp;linen.</p><ul><li>Relaxed fit</li></ul><script>x()</script>",
                Vendor="Acme", Product_Category="Apparel & Accessories > Clothing > Shirts & Tops", Type="Shirts",
                Tags="summer, linen", Option1_Name="Colour", Option1_Value="White", Option2_Name="Size",
                Option2_Value="S", Variant_SKU="LS-W-S", Image_Src="images/ls-2.jpg", Image_Position="2",
                Variant_Image="images/ls-white.jpg"),
    shopify_row("linen-shirt", Option1_Value="White", Option2_Value="M", Variant_SKU="LS-W-M",
                Image_Src="images/ls-1.jpg", Image_Position="1", Variant_Image="images/ls-white.jpg"),
    shopify_row("linen-shirt", Option1_Value="Sand", Option2_Value="S", Variant_SKU="LS-S-S",
                Image_Src="images/ls-3.jpg", Image_Position="3", Variant_Image="images/ls-sand.jpg"),
    shopify_row("mug", Title="Mug", Vendor="Potter", Type="Mugs", Option1_Name="Title", Option1_Value="Default Title",
                Image_Src="images/mug.jpg", Image_Position="1"),
    shopify_row("", Title="Orphan"),
    shopify_row("no-title", Image_Src="images/mug.jpg"),
]


def test_shopify_groups_rows_by_handle_with_images_in_position_order(tmp_path):
    write_images(tmp_path, ["images/ls-1.jpg", "images/ls-2.jpg", "images/ls-3.jpg", "images/ls-white.jpg",
                            "images/ls-sand.jpg", "images/mug.jpg"])
    path = tmp_path / "products_export.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([SHOPIFY_HEADER, *SHOPIFY_ROWS])
    problems = ProblemLog()
    catalog = read_catalog("shopify", path, problems, RAW)

    assert [p.id for p in catalog] == ["linen-shirt", "mug"]
    shirt = catalog["linen-shirt"]
    assert shirt.title == "Linen Shirt"
    assert shirt.description == "Breathable linen. Relaxed fit"
    assert shirt.category_path == ["Apparel & Accessories", "Clothing", "Shirts & Tops"]
    assert image_names(shirt) == ["ls-1.jpg", "ls-2.jpg", "ls-3.jpg", "ls-white.jpg", "ls-sand.jpg"]
    assert shirt.attributes == {"brand": "Acme", "type": "Shirts", "tags": "summer | linen",
                                "Colour": "White | Sand", "Size": "S | M"}
    mug = catalog["mug"]
    assert mug.attributes == {"brand": "Potter", "type": "Mugs"}  # "Default Title" is no option
    assert mug.category_path == ["Mugs"]  # no Product Category: the shop's Type
    assert [(p.kind, p.line) for p in problems.problems] == [("malformed row", 6), ("malformed row", 7)]
    assert problems.problems[0].message == "field 'Handle' is empty"
    assert problems.problems[1].message == "field 'title' is empty"


def test_shopify_skips_and_counts_products_shoppers_cannot_see(tmp_path):
    write_images(tmp_path, ["images/a.jpg"])
    path = tmp_path / "products_export.csv"
    seen = {"Title": "Shown", "Image_Src": "images/a.jpg"}
    rows = [shopify_row("active", **seen, Status="active", Published="TRUE"),  # line 2
            shopify_row("draft", **seen, Status="draft", Published="TRUE"),  # line 3
            shopify_row("draft", Option1_Value="M", Image_Src="images/a.jpg"),  # line 4: its variant row
            shopify_row("archived", **seen, Status="Archived"),  # line 5
            shopify_row("off-store", **seen, Status="active", Published="FALSE"),  # line 6
            shopify_row("old-export", **seen)]  # line 7: exports before Status and Published left them empty
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([SHOPIFY_HEADER, *rows])
    problems = ProblemLog()
    catalog = read_catalog("shopify", path, problems, RAW)
    assert [p.id for p in catalog] == ["active", "old-export"]
    assert [(p.kind, p.line, p.message) for p in problems.problems] == [
        ("not published", 3, "field 'Status' is draft; its other rows (1) are left out with it"),
        ("not published", 5, "field 'Status' is Archived"),
        ("not published", 6, "field 'Published' is FALSE (not on the online store)"),
    ]
    assert problems.summary().endswith("skipped: 3 not published")


def test_shopify_image_problems_name_the_image_row_and_its_column(tmp_path):
    write_images(tmp_path, ["images/tee.jpg"])
    path = tmp_path / "products_export.csv"
    rows = [shopify_row("tee", Title="Tee", Body_HTML="<p>Soft.</p>\n<ul>\n<li>Relaxed</li>\n</ul>",
                        Image_Src="images/tee.jpg", Image_Position="1"),  # lines 2-5
            shopify_row("tee", Image_Src="images/back.jpg", Image_Position="2"),  # line 6
            shopify_row("tee", Variant_Image="images/gone.jpg"),  # line 7
            shopify_row("", Title="Orphan")]  # line 8
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([SHOPIFY_HEADER, *rows])
    problems = ProblemLog()
    catalog = read_catalog("shopify", path, problems, RAW)
    assert catalog.lines == {"tee": 2}  # where the product's first row starts
    assert [(p.kind, p.line, p.message) for p in problems.problems] == [
        ("malformed row", 8, "field 'Handle' is empty"),
        ("missing image", 6, "field 'images[1].path' = 'images/back.jpg' (from 'Image Src'): no such file "
                             "(product 'tee' kept with 1 of 3 images)"),
        ("missing image", 7, "field 'images[2].path' = 'images/gone.jpg' (from 'Variant Image'): no such file "
                             "(product 'tee' kept with 1 of 3 images)"),
    ]


def test_html_to_text():
    assert html_to_text("<h2>Care</h2><p>Wash&nbsp;at 30&deg;C<br>Do not bleach</p>") == "Care Wash at 30°C Do not bleach"
    assert html_to_text("<style>p {}</style>plain") == "plain"
    # Only what looks like HTML is converted: plain text keeps its <, & and line breaks.
    assert plain_text("Hand-thrown &amp; glazed<br/>") == "Hand-thrown & glazed"
    assert plain_text("Sizes < 40 & > 36,\nAT&T edition") == "Sizes < 40 & > 36,\nAT&T edition"


# --- csv with a column mapping ----------------------------------------------------------


def test_mapped_tsv_with_image_and_category_separators(tmp_path):
    write_images(tmp_path, ["pics/a1.jpg", "pics/a2.jpg", "pics/b.jpg"])
    path = tmp_path / "export.tsv"
    path.write_text(
        "sku\tname\tdetails\tpictures\tdept\tmaker\tshade\tfit\n"
        "A\tWool Scarf\tWarm.\tpics/a1.jpg; pics/a2.jpg\tAccessories/Scarves\tNorthwind\tGrey\t\n"
        "B\tCanvas Tote\t\tpics/b.jpg\tBags\t\tBeige\tRoomy\n"
        "C\tNo Picture\t\t\tBags\t\t\t\n",
        encoding="utf-8",
    )
    mapping = ColumnMapping.from_dict({
        "id": "sku", "title": "name", "description": "details", "images": "pictures", "image_sep": ";",
        "category": "dept", "category_sep": "/", "brand": "maker", "attributes": {"colour": "shade", "fit": "fit"},
    })
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=mapping, normalise=False))
    assert [p.id for p in catalog] == ["A", "B"]
    scarf = catalog["A"]
    assert (scarf.title, scarf.description) == ("Wool Scarf", "Warm.")
    assert image_names(scarf) == ["a1.jpg", "a2.jpg"]
    assert scarf.category_path == ["Accessories", "Scarves"]
    assert scarf.attributes == {"colour": "Grey", "brand": "Northwind"}
    assert catalog["B"].attributes == {"colour": "Beige", "fit": "Roomy"}
    assert [(p.kind, p.line, p.message) for p in problems.problems] == [
        ("malformed row", 4, "field 'images' must be a non-empty list")
    ]


def test_mapped_csv_descriptions_in_html_or_with_literal_line_breaks_are_plain_text(tmp_path):
    write_images(tmp_path, ["images/a.jpg"])
    path = tmp_path / "wc-product-export.csv"
    rows = [["ID", "Name", "Description", "Images"],
            ["1", "Hoodie", "<h2>Details</h2>\\n<ul>\\n<li>80% cotton</li>\\n</ul>", "images/a.jpg"],
            ["2", "Mug", "Hand-thrown.\\nDishwasher safe.", "images/a.jpg"]]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    mapping = ColumnMapping.from_dict({"id": "ID", "title": "Name", "description": "Description", "images": "Images"})
    catalog = read_catalog("csv", path, ProblemLog(), ReaderOptions(columns=mapping, normalise=False))
    assert catalog["1"].description == "Details 80% cotton"
    assert catalog["2"].description == "Hand-thrown.\nDishwasher safe."


def test_mapped_csv_image_cells_in_every_shape_an_export_writes(tmp_path):
    write_images(tmp_path, ["images/a.jpg", "images/b.jpg", "images/shirt red.jpg"])
    cloudinary = "https://res.example/upload/w_600,h_600,c_fill/x.jpg"
    cells = {
        "json": ('["images/a.jpg", "images/b.jpg"]', ""),
        "windows": ("images\\shirt red.jpg", ""),
        "pipes": ("images/a.jpg|images/b.jpg", ""),
        "semicolons": ("images/a.jpg; images/b.jpg", ""),
        "magento": ("images/a.jpg", "images/a.jpg,images/b.jpg"),  # base image again among the additional ones
        "urls": (f"{cloudinary}, https://res.example/y.jpg", ""),
        "comma-in-name": ("images/shirt red.jpg", "images/x, y"),  # not a list: one (missing) image
        "broken": ('["images/a.jpg"', ""),
    }
    path = tmp_path / "export.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["sku", "name", "base_image", "additional_images"],
                                  *([sku, sku.title(), *images] for sku, images in cells.items())])
    mapping = ColumnMapping.from_dict({"id": "sku", "title": "name", "images": ["base_image", "additional_images"]})
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=mapping, normalise=False, check_images=False))
    paths = {p.id: [image.path for image in p.images] for p in catalog}
    assert paths == {
        "json": ["images/a.jpg", "images/b.jpg"],
        "windows": ["images/shirt red.jpg"],
        "pipes": ["images/a.jpg", "images/b.jpg"],
        "semicolons": ["images/a.jpg", "images/b.jpg"],
        "magento": ["images/a.jpg", "images/b.jpg"],
        "urls": [cloudinary, "https://res.example/y.jpg"],
        "comma-in-name": ["images/shirt red.jpg", "images/x, y"],
    }
    assert [(p.line, p.message) for p in problems.problems] == [(9, "field 'base_image' is not a JSON list")]


@pytest.mark.parametrize(
    ("cell", "sep", "path"),
    [
        ("Clothing > Hoodies, Sale", ">", ["Clothing", "Hoodies"]),  # WooCommerce
        ("Default Category/Gear/Bags,Default Category/Collections/New Luggage", "/", ["Default Category", "Gear", "Bags"]),
        ("Food, Beverages & Tobacco > Beverages", ">", ["Food, Beverages & Tobacco", "Beverages"]),  # one path
        ("Clothing > Shirts\\, Tops & Tees, Sale", ">", ["Clothing", "Shirts, Tops & Tees"]),  # WooCommerce's escaped comma
    ],
)
def test_mapped_csv_category_cell_naming_several_paths_gives_the_first(tmp_path, cell, sep, path):
    write_images(tmp_path, ["a.jpg"])
    export = tmp_path / "export.csv"
    with export.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["sku", "name", "image", "categories"], ["1", "Bag", "a.jpg", cell]])
    mapping = ColumnMapping.from_dict({"id": "sku", "title": "name", "images": "image", "category": "categories",
                                       "category_sep": sep})
    assert read_catalog("csv", export, ProblemLog(), ReaderOptions(columns=mapping))["1"].category_path == path


def test_mapped_csv_image_dir_takes_magento_rooted_paths_and_stays_confined(tmp_path):
    write_images(tmp_path, ["media/m/b/mb01.jpg", "secret.jpg"])
    path = tmp_path / "export" / "catalog_product.csv"
    path.parent.mkdir()
    path.write_text("sku,name,base_image\nMB01,Bag,/m/b/mb01.jpg\nX,Sneaky,/m/../../secret.jpg\n")
    mapping = ColumnMapping.from_dict({"id": "sku", "title": "name", "images": "base_image"})
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=mapping, image_dir=tmp_path / "media"))
    assert [p.id for p in catalog] == ["MB01"]
    assert catalog.image_path(catalog["MB01"].images[0]) == tmp_path / "media" / "m" / "b" / "mb01.jpg"
    assert [(p.kind, p.line) for p in problems.problems] == [("image outside the catalog root", 3)]

    problems = ProblemLog()  # without --image-dir a rooted path is outside the export's folder
    assert not len(read_catalog("csv", path, problems, ReaderOptions(columns=mapping)))
    assert [p.kind for p in problems.problems] == ["image outside the catalog root"] * 2


def test_column_mapping_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="which column is 'images'"):
        ColumnMapping.from_dict({"id": "a", "title": "b"})
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        ColumnMapping.from_dict({"id": "a", "title": "b", "images": "c", "colour": "d"})
    path = tmp_path / "x.csv"
    path.write_text("sku,name\n1,x\n")
    with pytest.raises(ValueError, match="a column mapping is required"):
        read_catalog("csv", path, ProblemLog())
    mapping = ColumnMapping.from_dict({"id": "sku", "title": "name", "images": "img"})
    with pytest.raises(ValueError, match=r"x\.csv: missing column 'img'"):
        read_catalog("csv", path, ProblemLog(), ReaderOptions(columns=mapping, normalise=False))


# --- flipkart: every shape of the image column, SRC a folder ------------------------------


@pytest.mark.parametrize(
    "image",
    [
        json.dumps(["http://img5a.flixcart.com/image/a/b/55b85ea1.jpeg?q=70", "http://img5a.flixcart.com/x/55b85ea1.jpeg"]),
        "http://img5a.flixcart.com/image/a/b/55b85ea1.jpeg",
        "55b85ea1.jpeg",
    ],
    ids=["json-list", "one-url", "file-name"],
)
def test_flipkart_image_column_variants_and_folder_source(tmp_path, image):
    write_flipkart(tmp_path / "flipkart_sample.csv", [flipkart_row("a", "Mug", "Kitchen >> Mugs", []) | {"image": image}])
    write_jpeg(tmp_path / "images" / "55b85ea1.jpeg")
    for src in (tmp_path / "flipkart_sample.csv", tmp_path):
        problems = ProblemLog()
        catalog = read_catalog("flipkart", src, problems)
        assert not problems.problems
        assert image_names(catalog["a"]) == ["55b85ea1.jpeg"]


def test_flipkart_folder_must_hold_one_csv(tmp_path):
    with pytest.raises(ValueError, match="expected one Flipkart CSV file in the folder, found none"):
        read_catalog("flipkart", tmp_path)
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x\n")
    with pytest.raises(ValueError, match="found a.csv, b.csv"):
        read_catalog("flipkart", tmp_path)


# --- encodings --------------------------------------------------------------------------

LATIN1_ROW = "1,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Garçons Men Tee\n"


def test_bytes_that_do_not_decode_are_reported_and_replaced_not_fatal(tmp_path):
    from test_readers import MYNTRA_HEADER, write_myntra

    root = write_myntra(tmp_path, [], ["1", "2"])
    good = "2,Women,Apparel,Topwear,Tops,Blue,Summer,2012,Casual,Élan Women Top\n"
    (root / "styles.csv").write_bytes(MYNTRA_HEADER.encode() + LATIN1_ROW.encode("latin-1") + good.encode("utf-8"))
    problems = ProblemLog()
    catalog = read_catalog("myntra", root, problems)
    assert catalog["1"].title == "Gar\ufffdons Men Tee" and catalog["2"].title == "Élan Women Top"
    assert [(p.kind, p.line) for p in problems.problems] == [("undecodable bytes", 2)]
    assert "byte 0xe7 at position 57 of the line is not utf-8" in problems.problems[0].message
    assert "row kept" in problems.problems[0].message
    assert problems.summary() == "2 usable, skipped: nothing; 1 lines with undecodable bytes kept, bad bytes replaced by U+FFFD"

    (root / "styles.csv").write_bytes((MYNTRA_HEADER + LATIN1_ROW).encode("cp1252"))
    problems = ProblemLog()
    assert read_catalog("myntra", root, problems, ReaderOptions(encoding="cp1252"))["1"].title == "Garçons Men Tee"
    assert not problems.problems
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        read_catalog("myntra", root, ProblemLog(), ReaderOptions(encoding="klingon"))


def test_read_jsonl_survives_a_bad_byte(tmp_path):
    from catalogclip.catalog.schema import read_jsonl

    path = tmp_path / "catalog.jsonl"
    rows = [{"id": "a", "title": "Garçons Tee", "images": ["a.jpg"]}, {"id": "b", "title": "Mug", "images": ["b.jpg"]}]
    lines = [json.dumps(row, ensure_ascii=False).encode("utf-8") for row in rows]
    path.write_bytes(lines[0].replace("ç".encode(), b"\xe7") + b"\n" + lines[1] + b"\n")
    problems = ProblemLog()
    catalog = read_jsonl(path, problems)
    assert [p.title for p in catalog] == ["Gar\ufffdons Tee", "Mug"]
    assert [(p.kind, p.file, p.line) for p in problems.problems] == [("undecodable bytes", str(path), 1)]


# --- CSV plumbing: line ends, encodings, delimiters, rows over several lines -------------------

TAB_MAPPING = ColumnMapping.from_dict({"id": "sku", "title": "name", "images": "images", "brand": "brand"})


def test_cr_only_line_ends_import(tmp_path):
    write_images(tmp_path, ["images/mug.jpg", "images/cap.jpg"])
    path = tmp_path / "mac.csv"
    path.write_bytes(b"sku,name,images,brand\rM1,Mug,images/mug.jpg,Kiln\rC1,Cap,images/cap.jpg,\r")
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=TAB_MAPPING, normalise=False))
    assert [p.id for p in catalog] == ["M1", "C1"] and not problems.problems

    shop = tmp_path / "shop.csv"
    rows = [list(SHOPIFY_ROWS[3]), shopify_row("no-title", Image_Src="images/mug.jpg")]
    rows[0][SHOPIFY_HEADER.index("Body (HTML)")] = "<p>Holds 12 oz.</p>\r<p>Dishwasher safe.</p>"
    with shop.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\r").writerows([SHOPIFY_HEADER, *rows])
    problems = ProblemLog()
    catalog = read_catalog("shopify", shop, problems, RAW)
    assert catalog["mug"].description == "Holds 12 oz. Dishwasher safe."
    assert [(p.line, p.message) for p in problems.problems] == [(4, "field 'title' is empty")]  # the row's own line


def test_utf16_with_a_bom_is_detected_and_utf16_without_one_is_an_encoding(tmp_path):
    write_images(tmp_path, ["images/mug.jpg"])
    text = "sku\tname\timages\tbrand\r\nM1\tCafé Mug\timages/mug.jpg\tKiln\r\n"
    path = tmp_path / "unicode_text.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))  # Excel's "Unicode Text"
    options = ReaderOptions(columns=TAB_MAPPING, normalise=False)
    problems = ProblemLog()
    assert read_catalog("csv", path, problems, options)["M1"].title == "Café Mug" and not problems.problems

    path.write_bytes(text.encode("utf-16-le")[:-4] + b"\x00\xdc" + "\r\n".encode("utf-16-le"))  # a lone surrogate
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=TAB_MAPPING, normalise=False, encoding="utf-16"))
    assert catalog["M1"].title == "Café Mug" and catalog["M1"].attributes == {"brand": "Kiln\ufffd"}
    assert [(p.kind, p.line) for p in problems.problems] == [("undecodable bytes", 2)]
    assert "byte 0x00 at position 32 of the line is not utf-16" in problems.problems[0].message


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_is_guessed_from_the_header(tmp_path, delimiter):
    write_images(tmp_path, ["images/mug.jpg"])
    path = tmp_path / "export.csv"
    rows = [["sku", "name", "images", "brand"], ["M1", "Mug; 12, oz", "images/mug.jpg", "Kiln | Co"]]
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    catalog = read_catalog("csv", path, ProblemLog(), ReaderOptions(columns=TAB_MAPPING, normalise=False))
    assert (catalog["M1"].title, catalog["M1"].attributes) == ("Mug; 12, oz", {"brand": "Kiln | Co"})


def test_shopify_resaved_by_a_european_excel_semicolons_and_cp1252(tmp_path):
    write_images(tmp_path, ["images/mug.jpg"])
    path = tmp_path / "products_export.csv"
    with path.open("w", newline="", encoding="cp1252") as fh:
        csv.writer(fh, delimiter=";").writerows([SHOPIFY_HEADER, shopify_row("mug", Title="Mug – 12 oz", Image_Src="images/mug.jpg")])
    problems = ProblemLog()
    assert read_catalog("shopify", path, problems, ReaderOptions(encoding="cp1252"))["mug"].title == "Mug – 12 oz"
    assert not problems.problems


def test_csv_errors_name_the_file_and_the_line_the_row_starts_on(tmp_path):
    write_images(tmp_path, ["images/mug.jpg"])
    path = tmp_path / "export.csv"
    huge = "x" * (csv.field_size_limit() + 1)
    path.write_text(f'sku,name,images,brand\nA,"two\nlines",images/mug.jpg,\nB,"start\n{huge}",images/mug.jpg,\n')
    problems = ProblemLog()
    catalog = read_catalog("csv", path, problems, ReaderOptions(columns=TAB_MAPPING, normalise=False))
    assert catalog["A"].title == "two\nlines"
    assert [(p.file, p.line) for p in problems.problems] == [(str(path), 4)]
    assert problems.problems[0].message.startswith("CSV: field larger than field limit")

    path.write_text(f'"{huge}",name\n')
    with pytest.raises(ValueError, match=rf"{path.name}:1: cannot read the CSV header: field larger than field limit"):
        read_catalog("csv", path, ProblemLog(), ReaderOptions(columns=TAB_MAPPING))
