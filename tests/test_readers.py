"""Catalog readers on tiny inputs made here, nasty rows included."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import BRAND_STOP_WORDS, READERS, ReaderOptions, read_catalog
from catalogclip.catalog.readers.fashiongen import decode_text
from catalogclip.catalog.readers.flipkart import category_from_tree, image_names, parse_specifications
from catalogclip.catalog.readers.myntra import brand_from_name

MYNTRA_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def write_jpeg(path: Path, colour=(200, 30, 30), size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path, "JPEG")
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header is fine but whose pixel data stops halfway: only a decode notices."""
    noise = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(path, "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_myntra(root: Path, rows: list[str], images: list[str]) -> Path:
    """styles.csv with `rows` (raw lines after the header) and a JPEG per id in `images`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "styles.csv").write_text(MYNTRA_HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    for product_id in images:
        write_jpeg(root / "images" / f"{product_id}.jpg")
    return root


NASTY_MYNTRA_ROWS = [
    "1,Men,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Men Grey T-shirt",  # line 2
    "2,Men,Personal Care,Fragrance,Perfume and Body Mist,Blue,Spring,2017,Casual,Boss Men Perfume, After Shave Balm and Shower Gel Set",
    "3,Women,Apparel,Topwear,Kurtas,Red,,2012,Ethnic,",  # line 4: empty title
    "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,United Colors of Benetton Men Blue Shirt",  # line 5: duplicate id
    "4,Women,Footwear,Shoes,Heels,Black,Winter,2013,Casual,Catwalk Women Black Heels",  # line 6: image missing
    "5,Girls,Apparel",  # line 7: short row
    "6,Unisex,Accessories,Watches,Watches,Silver,,,Casual,United Colors of Benetton Unisex Silver Watch",
]


def test_myntra_reads_the_kaggle_layout_and_skips_bad_rows(tmp_path):
    root = write_myntra(tmp_path / "myntra", NASTY_MYNTRA_ROWS, ["1", "2", "3", "6"])
    problems = ProblemLog()
    catalog = read_catalog("myntra", root, problems)

    assert [p.id for p in catalog] == ["1", "2", "6"]
    puma = catalog["1"]
    assert puma.title == "Puma Men Grey T-shirt" and puma.description == ""
    assert puma.category_path == ["Apparel", "Topwear", "Tshirts"]
    assert puma.attributes == {
        "gender": "Men", "baseColour": "Grey", "season": "Summer", "usage": "Casual", "year": "2012", "brand": "Puma"
    }
    assert catalog.image_path(puma.images[0]) == (root / "images" / "1.jpg").resolve()
    # The unquoted comma in the name: the extra field is joined back, not lost or misread.
    assert catalog["2"].title == "Boss Men Perfume, After Shave Balm and Shower Gel Set"
    assert catalog["2"].attributes["brand"] == "Boss"
    # Empty season and year are left out rather than stored as "".
    assert catalog["6"].attributes == {
        "gender": "Unisex", "baseColour": "Silver", "usage": "Casual", "brand": "United Colors of Benetton"
    }

    styles = str(root / "styles.csv")
    where = {(p.kind, p.file, p.line) for p in problems.problems}
    assert where == {
        ("malformed row", styles, 4),
        ("duplicate id", styles, 5),
        ("missing image", styles, 6),
        ("malformed row", styles, 7),
    }
    assert "field 'title' is empty" in str(next(p for p in problems.problems if p.line == 4))
    assert problems.loaded == 3
    assert problems.summary() == "3 usable, skipped: 1 duplicate id, 2 malformed row, 1 missing image"


def test_myntra_without_image_checks_keeps_rows_whose_image_is_missing(tmp_path):
    root = write_myntra(tmp_path, NASTY_MYNTRA_ROWS[:1] + NASTY_MYNTRA_ROWS[4:5], ["1"])
    catalog = read_catalog("myntra", root / "styles.csv", ProblemLog(), ReaderOptions(check_images=False))
    assert [p.id for p in catalog] == ["1", "4"]


def test_myntra_image_dir_option_and_missing_column(tmp_path):
    root = write_myntra(tmp_path, NASTY_MYNTRA_ROWS[:1], [])
    write_jpeg(tmp_path / "elsewhere" / "1.jpg")
    catalog = read_catalog("myntra", root, ProblemLog(), ReaderOptions(image_dir=tmp_path / "elsewhere"))
    assert [p.id for p in catalog] == ["1"]

    (root / "styles.csv").write_text("id,gender,masterCategory,productDisplayName\n1,Men,Apparel,X\n")
    with pytest.raises(ValueError, match=r"styles\.csv: missing column 'subCategory'"):
        read_catalog("myntra", root, ProblemLog())


@pytest.mark.parametrize(
    ("name", "brand"),
    [
        ("Puma Men Grey T-shirt", "Puma"),
        ("United Colors of Benetton Women Blue Jeans", "United Colors of Benetton"),
        ("Gini and Jony Boy's Kaleb White Shirt", "Gini and Jony"),
        ("Arrow Woman Grey Trousers", "Arrow"),
        ("Lakme Compact Puff", ""),  # no gender word: no brand
        ("Men Black Socks", ""),  # gender word first: nothing before it
    ],
)
def test_brand_is_the_words_before_the_gender_word(name, brand):
    assert brand_from_name(name, BRAND_STOP_WORDS) == brand


def test_brand_stop_words_are_configurable(tmp_path):
    root = write_myntra(tmp_path, ["7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Nike Dri-FIT Men Red Tee"], ["7"])
    options = ReaderOptions(brand_stop_words=("Dri-FIT",))
    assert read_catalog("myntra", root, ProblemLog(), options)["7"].attributes["brand"] == "Nike"
    assert brand_from_name("nike MEN red tee", ("men",)) == "nike"  # case does not matter


# --- flipkart ---------------------------------------------------------------------------

FLIPKART_COLUMNS = ["uniq_id", "product_name", "product_category_tree", "brand", "description", "image", "product_specifications"]


def write_flipkart(path: Path, rows: list[dict]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, FLIPKART_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def flipkart_row(uniq_id: str, name: str, tree: str, images: list[str], specs: str = "", brand: str = "") -> dict:
    return {
        "uniq_id": uniq_id,
        "product_name": name,
        "product_category_tree": json.dumps([tree]),
        "brand": brand,
        "description": f"Key features of {name}",
        "image": json.dumps(images),
        "product_specifications": specs,
    }


def test_flipkart_tree_specs_and_local_images(tmp_path):
    specs = '{"product_specification"=>[{"key"=>"Fabric", "value"=>"Cotton"}, {"value"=>"Machine wash"}, {"key"=>"Pattern", "value"=>"Solid"}]}'
    rows = [
        flipkart_row(
            "a1",
            "Alisha Solid Women's Cycling Shorts",
            "Clothing >> Women's Clothing >> Shorts >> Alisha Shorts >> Alisha Solid Women's Cycling Shorts",
            ["http://img5a.flixcart.com/image/short/u/4/a/alisha-1.jpeg?q=70", "http://img5a.flixcart.com/image/x/alisha-2.jpeg"],
            specs,
            brand="Alisha",
        ),
        flipkart_row(
            "b2",
            "FabHomeDecor Fabric Double Sofa Bed",
            "Furniture >> Living Room Furniture >> Sofa Beds >> FabHomeDecor Fabric Double Sofa Bed (Finish Colo...",
            ["sofa.jpeg"],
            '{"product_specification"=>{"key"=>"Finish", "value"=>"Matte => glossy"}}',
        ),
        flipkart_row("c3", "Sathiyas Cotton Bath Towel", "Home >> Bath >> Towels", ["towel.jpeg"], "not a hash"),
        flipkart_row("d4", "Broken Tree", "Home", ["towel.jpeg"]) | {"product_category_tree": "Home >> Bath"},
    ]
    csv_path = write_flipkart(tmp_path / "flipkart.csv", rows)
    for name in ["alisha-1.jpeg", "sofa.jpeg", "towel.jpeg"]:  # alisha-2.jpeg is missing
        write_jpeg(tmp_path / "images" / name)

    problems = ProblemLog()
    catalog = read_catalog("flipkart", csv_path, problems)

    assert [p.id for p in catalog] == ["a1", "b2", "c3"]
    shorts = catalog["a1"]
    assert shorts.category_path == ["Clothing", "Women's Clothing", "Shorts", "Alisha Shorts"]
    assert shorts.attributes == {"material": "Cotton", "Pattern": "Solid", "brand": "Alisha"}  # normalised
    assert shorts.description == "Key features of Alisha Solid Women's Cycling Shorts"
    # One of two images is missing: the product stays with the other, and the drop is counted.
    assert [Path(im.path).name for im in shorts.images] == ["alisha-1.jpeg"]
    assert catalog.image_path(shorts.images[0]) == (tmp_path / "images" / "alisha-1.jpeg").resolve()
    # The truncated last node ("... (Finish Colo...") is the product name: dropped.
    assert catalog["b2"].category_path == ["Furniture", "Living Room Furniture", "Sofa Beds"]
    assert catalog["b2"].attributes == {"Finish": "Matte => glossy"}
    # Unparseable specifications lose the attributes, not the product.
    assert catalog["c3"].attributes == {} and catalog["c3"].category_path == ["Home", "Bath", "Towels"]

    messages = {(p.kind, p.line): p.message for p in problems.problems}
    assert set(messages) == {("missing image", 2), ("bad specifications", 4), ("malformed row", 5)}
    assert "kept with 1 of 2 images" in messages["missing image", 2]
    assert "alisha-2.jpeg" in messages["missing image", 2]
    assert messages["malformed row", 5] == "field 'product_category_tree' is not a JSON list"


def test_flipkart_image_dir_option_and_missing_column(tmp_path):
    csv_path = write_flipkart(tmp_path / "f.csv", [flipkart_row("a", "Mug", "Kitchen >> Mugs", ["mug.jpg"])])
    write_jpeg(tmp_path / "pics" / "mug.jpg")
    assert len(read_catalog("flipkart", csv_path, ProblemLog(), ReaderOptions(image_dir=tmp_path / "pics"))) == 1
    assert len(read_catalog("flipkart", csv_path, ProblemLog())) == 0  # default images/ folder is empty

    csv_path.write_text("uniq_id,product_name,image\na,Mug,[]\n")
    with pytest.raises(ValueError, match=r"f\.csv: missing column 'product_category_tree'"):
        read_catalog("flipkart", csv_path, ProblemLog())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ('{"product_specification"=>nil}', {}),
        ('{"product_specification"=>[{"key"=>"Type", "value"=>"Analog"}, {"value"=>"Round"}]}', {"Type": "Analog"}),
        ('{"product_specification"=>[{"key"=>"Size", "value"=>"6\\" x 4\\""}]}', {"Size": '6" x 4"'}),
        ('{"product_specification"=>[{"key"=>"Note", "value"=>"nil => none"}]}', {"Note": "nil => none"}),
        ('{"product_specification"=>[{"key"=>"A", "value"=>"1"}, {"key"=>"A", "value"=>"2"}]}', {"A": "1"}),
    ],
)
def test_parse_specifications(text, expected):
    assert parse_specifications(text) == expected


@pytest.mark.parametrize("text", ['{"product_specification"=>[', "[1, 2]", '{"product_specification"=>["x"]}'])
def test_parse_specifications_rejects_other_text(text):
    with pytest.raises(ValueError):
        parse_specifications(text)


def test_category_tree_keeps_a_last_node_that_is_not_the_product():
    assert category_from_tree('["Watches >> Wrist Watches"]', "Sonata Analog Watch") == ["Watches", "Wrist Watches"]
    # A node that the name merely starts with is a category ("Alisha Shorts"), unless cut with "...".
    assert category_from_tree('["Pens >> Parker Pen"]', "Parker Pen Blue") == ["Pens", "Parker Pen"]
    assert category_from_tree('["Pens >> Parker..."]', "Parker Pen Blue") == ["Pens"]
    assert category_from_tree('["Pens >> Park Avenue"]', "Parker Pen") == ["Pens", "Park Avenue"]
    assert category_from_tree("", "Mug") == []
    assert image_names('["http://x/a/b.jpg?w=1", "b.jpg", "c.png"]') == ["b.jpg", "c.png"]


# --- fashiongen -------------------------------------------------------------------------


def fixed_bytes(values: list[str], encoding: str = "utf-8", width: int = 40) -> np.ndarray:
    """Strings as Fashion-Gen stores them: fixed-length bytes, space padded, shape (N, 1)."""
    return np.array([[v.encode(encoding).ljust(width)] for v in values], dtype=f"S{width}")


def write_fashiongen(path: Path, rows: list[dict], drop: tuple[str, ...] = ()) -> Path:
    colours = np.array([r["colour"] for r in rows], dtype=np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (len(rows), 16, 16, 3)).copy()
    columns = {
        "input_image": images,
        "input_productID": np.array([[r["pid"]] for r in rows], dtype=np.int64),
        "input_name": fixed_bytes([r["name"] for r in rows]),
        "input_description": fixed_bytes([r.get("description", "") for r in rows], width=80),
        "input_brand": fixed_bytes([r.get("brand", "") for r in rows], "latin-1"),
        "input_category": fixed_bytes([r["category"] for r in rows]),
        "input_subcategory": fixed_bytes([r.get("subcategory", "") for r in rows]),
        "input_season": fixed_bytes(["SS2017"] * len(rows)),
        "input_composition": fixed_bytes([""] * len(rows)),
        "input_gender": fixed_bytes(["WOMEN"] * len(rows)),
        "input_pose": fixed_bytes([f"id_gridfs_{i}" for i in range(len(rows))]),
    }
    with h5py.File(path, "w") as h5:
        for key, value in columns.items():
            if key not in drop:
                h5.create_dataset(key, data=value)
    return path


FASHIONGEN_ROWS = [
    {"pid": 101, "name": "LONG SLEEVE SHIRT", "description": "Cotton shirt.", "brand": "Comme des Garçons",
     "category": "SHIRTS", "subcategory": "SHIRTS", "colour": (250, 0, 0)},
    {"pid": 101, "name": "LONG SLEEVE SHIRT", "brand": "Comme des Garçons", "category": "SHIRTS",
     "subcategory": "SHIRTS", "colour": (0, 250, 0)},
    {"pid": 202, "name": "LEATHER BOOTS", "brand": "Acne", "category": "SHOES", "colour": (0, 0, 250)},
    {"pid": 101, "name": "LONG SLEEVE SHIRT", "brand": "Comme des Garçons", "category": "SHIRTS",
     "subcategory": "SHIRTS", "colour": (250, 250, 250)},
    {"pid": 303, "name": "   ", "category": "BAGS", "colour": (10, 10, 10)},  # empty title
]


def test_fashiongen_groups_rows_by_product_and_extracts_jpegs(tmp_path):
    h5_path = write_fashiongen(tmp_path / "fashiongen_train.h5", FASHIONGEN_ROWS)
    problems = ProblemLog()
    catalog = read_catalog("fashiongen", h5_path, problems, ReaderOptions(image_dir=tmp_path / "out" / "images"))

    assert [p.id for p in catalog] == ["101", "202"]
    shirt = catalog["101"]
    assert shirt.title == "LONG SLEEVE SHIRT" and shirt.description == "Cotton shirt."
    assert shirt.category_path == ["SHIRTS", "SHIRTS"]
    assert catalog["202"].category_path == ["SHOES"]  # empty subcategory: path stops there
    assert shirt.attributes == {"brand": "Comme des Garçons", "gender": "WOMEN", "season": "SS2017"}
    # Rows 0, 1 and 3 are the same product: three images, in row order, each a real JPEG.
    colours = []
    for image in shirt.images:
        with Image.open(catalog.image_path(image)) as im:
            assert im.format == "JPEG" and im.size == (16, 16)
            colours.append(im.getpixel((8, 8)))
    assert [np.argmax(c) for c in colours[:2]] == [0, 1] and min(colours[2]) > 200
    assert [(p.kind, p.line) for p in problems.problems] == [("malformed row", 4)]


def test_fashiongen_bad_inputs_name_the_file(tmp_path):
    h5_path = write_fashiongen(tmp_path / "fg.h5", FASHIONGEN_ROWS[:1], drop=("input_name",))
    with pytest.raises(ValueError, match=r"fg\.h5: missing key 'input_name'"):
        read_catalog("fashiongen", h5_path, ProblemLog(), ReaderOptions(image_dir=tmp_path / "im"))
    with pytest.raises(ValueError, match="image folder"):
        read_catalog("fashiongen", h5_path, ProblemLog())
    not_h5 = tmp_path / "fake.h5"
    not_h5.write_text("hello")
    with pytest.raises(ValueError, match=r"fake\.h5: not a readable HDF5 file"):
        read_catalog("fashiongen", not_h5, ProblemLog(), ReaderOptions(image_dir=tmp_path / "im"))


def test_decode_text_handles_padding_and_latin1():
    assert decode_text(np.array([b"Gar\xe7ons   "])) == "Garçons"
    assert decode_text("Garçons".encode("utf-8") + b"\x00\x00") == "Garçons"
    assert decode_text(np.array([42])) == "42"


# --- jsonl and the shared checks --------------------------------------------------------


def test_jsonl_reader_validates_rows_and_images(tmp_path):
    write_jpeg(tmp_path / "images" / "a.jpg")
    write_truncated_jpeg(tmp_path / "images" / "b.jpg")
    (tmp_path / "images" / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    lines = [
        {"id": "a", "title": "Mug", "images": ["images/a.jpg", "images/gone.jpg"]},
        "this is not json",
        {"id": "a", "title": "Mug again", "images": ["images/a.jpg"]},
        {"id": "b", "title": "Plate", "images": ["images/b.jpg"]},
        {"id": "c", "title": "Bowl", "images": [{"path": "images/c.jpg", "source": "customer"}]},
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")

    problems = ProblemLog()
    catalog = read_catalog("jsonl", path, problems)
    # By stat, b and c look fine; the missing image of a is dropped, a is kept.
    assert [p.id for p in catalog] == ["a", "b", "c"] and len(catalog["a"].images) == 1
    assert sorted((p.line, p.kind) for p in problems.problems) == [
        (1, "missing image"), (2, "malformed row"), (3, "duplicate id")
    ]

    problems = ProblemLog()
    catalog = read_catalog("jsonl", path, problems, ReaderOptions(verify_images=True))
    # Decoding finds the truncated JPEG (which PIL's verify alone passes) and the fake one.
    assert [p.id for p in catalog] == ["a"]
    broken = [p for p in problems.problems if p.kind == "broken image"]
    assert [(p.line, "cannot decode" in p.message, "skipped" in p.message) for p in broken] == [
        (4, True, True), (5, True, True)
    ]
    assert problems.loaded == 1


def test_read_catalog_rejects_unknown_format_and_missing_source(tmp_path):
    assert {"csv", "fashiongen", "flipkart", "google-merchant", "grocery-store", "jsonl", "myntra", "shopify"} <= set(READERS.names())
    with pytest.raises(KeyError, match="unknown catalog format 'amazon'"):
        read_catalog("amazon", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.csv: no such file"):
        read_catalog("flipkart", tmp_path / "nowhere.csv")


def test_csv_level_errors_name_file_and_line(tmp_path):
    # A field beyond the csv module's size limit: that row alone is skipped, at its own line.
    rows = NASTY_MYNTRA_ROWS[:1] + ["9,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Puma Men " + "x" * 140_000] + NASTY_MYNTRA_ROWS[1:2]
    root = write_myntra(tmp_path / "big", rows, ["1", "2", "9"])
    problems = ProblemLog()
    assert [p.id for p in read_catalog("myntra", root, problems)] == ["1", "2"]
    assert [(p.kind, p.line) for p in problems.problems] == [("malformed row", 3)]
    assert "field larger than field limit" in problems.problems[0].message

    bad = tmp_path / "empty"
    bad.mkdir()
    (bad / "styles.csv").write_text("")
    with pytest.raises(ValueError, match=r"styles\.csv: empty file, expected a CSV header"):
        read_catalog("myntra", bad, ProblemLog())
