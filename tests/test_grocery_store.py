"""The grocery-store reader and the image-tag split, on a tiny copy of the data set's layout made here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import read_catalog
from catalogclip.catalog.readers.grocery_store import brand_from_manufacturer
from catalogclip.catalog.schema import read_jsonl
from catalogclip.catalog.splits import Split, make_split
from catalogclip.cli import app
from test_readers import write_jpeg

HEADER = ("Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),"
          "Iconic Image Path (str),Product Description Path (str)")
ICONIC = "iconic-images-and-descriptions"
# (name, id, coarse, coarse id, folder under the iconic root)
CLASSES = [
    ("Granny-Smith", 0, "Apple", 0, "Fruit/Apple/Granny-Smith"),
    ("Banana", 1, "Banana", 1, "Fruit/Banana"),  # the fine class is its coarse class: no Fine level
    ("God-Morgon-Orange-Juice", 2, "Juice", 2, "Packages/Juice/God-Morgon-Orange-Juice"),
    ("Arla-Standard-Milk", 3, "Milk", 3, "Packages/Milk/Arla-Standard-Milk"),
]


def write_grocery(root: Path) -> Path:
    """A 4-class data set with the real quirks: CRLF classes.csv without a final newline, a BOM,
    a hyphenated information file, photos at a folder depth that disagrees with their label."""
    data = root / "dataset"
    rows = [HEADER]
    for name, cid, coarse, coarse_id, folder in CLASSES:
        base = f"/{ICONIC}/{folder}/{name}"
        rows.append(f"{name},{cid},{coarse},{coarse_id},{base}_Iconic.jpg,{base}_Description.txt")
        write_jpeg(data / ICONIC / folder / f"{name}_Iconic.jpg")
        (data / ICONIC / folder / f"{name}_Description.txt").write_text(f"The {name} product.\n", encoding="utf-8")
    (data / "classes.csv").write_bytes("\r\n".join(rows).encode())
    juice = data / ICONIC / "Packages/Juice/God-Morgon-Orange-Juice"
    (juice / "God-Morgon-Orange-Juice_Information.txt").write_text(
        "\ufeffTitle: Apelsinjuice\nManufacturer and volume: GOD MORGON , 1l\n", encoding="utf-8")
    milk = data / ICONIC / "Packages/Milk/Arla-Standard-Milk"
    (milk / "Arla-Standard-Milk-Information.txt").write_text("Title: Mjölk\nManufacturer and volume: ARLA KO , 1l\n")
    lists = {
        "train": ["train/Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg, 0, 0",
                  "train/Fruit/Apple/Granny-Smith/Granny-Smith_002.jpg, 0, 0",
                  "train/Fruit/Banana/Banana_001.jpg, 1, 1",
                  "train/Packages/God-Morgon-Orange-Juice/God-Morgon-Orange-Juice_001.jpg, 2, 2",  # no Juice/ level
                  "train/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg, 3, 3",
                  "train/Fruit/Banana/Banana_002.jpg",  # line 6: no ids
                  "train/Fruit/Banana/Banana_003.jpg, 9, 1",  # line 7: no such class
                  "../outside.jpg, 1, 1"],  # line 8: outside the data set
        "val": ["val/Fruit/Banana/Banana_004.jpg, 1, 1"],
        "test": ["test/Fruit/Apple/Granny-Smith/Granny-Smith_003.jpg, 0, 0",
                 "test/Fruit/Banana/Banana_005.jpg, 1, 1",
                 "test/Packages/Juice/God-Morgon-Orange-Juice/God-Morgon-Orange-Juice_002.jpg, 2, 2"],
    }
    for split, lines in lists.items():
        (data / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
        for line in lines:
            write_jpeg(data / line.split(",")[0])
    write_jpeg(root / "outside.jpg")
    return root


@pytest.fixture
def grocery(tmp_path):
    return write_grocery(tmp_path / "grocery")


def test_reader_maps_classes_to_products_with_tagged_photos(grocery):
    problems = ProblemLog()
    catalog = read_catalog("grocery-store", grocery, problems)
    assert [p.id for p in catalog] == [name for name, *_ in CLASSES]
    apple, banana, juice, milk = catalog.products
    assert apple.title == "Granny Smith" and apple.description == "The Granny-Smith product."
    assert apple.category_path == ["Fruit", "Apple", "Granny Smith"]
    assert banana.category_path == ["Fruit", "Banana"]
    assert juice.category_path == ["Packages", "Juice", "God Morgon Orange Juice"]
    assert [p.attributes for p in catalog] == [{}, {}, {"brand": "God-Morgon"}, {"brand": "Arla"}]
    assert [(im.source, im.split) for im in apple.images] == [
        ("merchant", None), ("customer", "train"), ("customer", "train"), ("customer", "test")]
    assert [im.split for im in banana.images] == [None, "train", "val", "test"]
    # the label comes from the list, not from the folder depth
    assert juice.images[1].path == "train/Packages/God-Morgon-Orange-Juice/God-Morgon-Orange-Juice_001.jpg"
    assert all(catalog.image_path(im).is_file() for _, im in catalog.iter_images())
    lines = {(Path(p.file).name, p.line, p.kind) for p in problems.problems}
    assert lines == {("train.txt", 6, "malformed row"), ("train.txt", 7, "malformed row"), ("train.txt", 8, "bad path")}
    assert "no class 9" in str(next(p for p in problems.problems if p.line == 7))


def test_reader_accepts_the_dataset_folder_and_names_a_wrong_one(grocery, tmp_path):
    assert len(read_catalog("grocery-store", grocery / "dataset")) == 4
    with pytest.raises(FileNotFoundError, match="no classes.csv"):
        read_catalog("grocery-store", tmp_path)


def test_reader_skips_a_class_whose_paths_leave_the_data_set(grocery):
    csv = grocery / "dataset" / "classes.csv"
    csv.write_bytes(csv.read_bytes() + b"\r\nEvil,4,Evil,4,/../../outside.jpg,/x_Description.txt")
    problems = ProblemLog()
    catalog = read_catalog("grocery-store", grocery, problems)
    assert "Evil" not in {p.id for p in catalog}
    assert [(p.line, p.kind) for p in problems.problems if p.file.endswith("classes.csv")] == [(6, "bad path")]


@pytest.mark.parametrize("name, manufacturer, brand", [
    ("God-Morgon-Apple-Juice", "GOD MORGON , 1l", "God-Morgon"),
    ("Arla-Sour-Cream", "ARLA KO, 3dl", "Arla"),
    ("Garant-Ecological-Standard-Milk", "GARANT EKO , 1l", "Garant"),
    ("Oatly-Oat-Milk", "", ""),
])
def test_brand_is_the_class_name_prefix_the_manufacturer_starts_with(name, manufacturer, brand):
    assert brand_from_manufacturer(name, manufacturer) == brand


def test_image_split_keeps_products_and_splits_their_photos(grocery, tmp_path):
    catalog = read_catalog("grocery-store", grocery)
    split = make_split(catalog, "image")
    assert [p.id for p in split.train] == [p.id for p in catalog]
    train_tags = {im.split for p in split.train for im in p.images}
    assert train_tags == {None, "train"}
    # every product keeps its merchant shot on the test side; the milk has no test photo
    test = {p.id: [(im.source, im.split) for im in p.images] for p in split.test}
    assert test["Arla-Standard-Milk"] == [("merchant", None)]
    assert test["Banana"] == [("merchant", None), ("customer", "test")]
    # on disk and back: the sides follow from the tags
    again = Split.from_json(json.loads(json.dumps(split.to_json())), catalog)
    assert [[im.path for im in p.images] for p in again.test] == [[im.path for im in p.images] for p in split.test]


def test_image_split_needs_tags(grocery):
    catalog = read_catalog("grocery-store", grocery)
    for product in catalog:
        product.images = [im for im in product.images if im.split is None]
    with pytest.raises(ValueError, match="no image of the catalog has a 'split' tag"):
        make_split(catalog, "image")


def test_cli_import_and_split_keep_the_tags(grocery, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out" / "grocery.jsonl"
    result = runner.invoke(app, ["catalog", "import", "--format", "grocery-store", str(grocery), str(out)])
    assert result.exit_code == 0, result.output
    # the images stay in the data set: OUT is read with it as image root
    catalog = read_jsonl(out, image_root=grocery / "dataset")
    assert [im.split for im in catalog["Banana"].images] == [None, "train", "val", "test"]
    assert all(catalog.image_path(im).is_file() for _, im in catalog.iter_images())
    result = runner.invoke(app, ["catalog", "split", str(out), "--out", str(tmp_path / "split"), "--by", "image",
                                 "--image-root", str(grocery / "dataset")])
    assert result.exit_code == 0, result.output
    test = read_jsonl(tmp_path / "split" / "test.jsonl", image_root=grocery / "dataset")
    assert {im.split for _, im in test.iter_images()} == {None, "test"}


def test_cli_pipeline_seen_products_unseen_photos(grocery, tmp_path):
    """import -> train on the train photos -> embed the test side -> product protocol with distractors."""
    runner = CliRunner()
    catalog, run = tmp_path / "grocery.jsonl", tmp_path / "run"
    assert runner.invoke(app, ["catalog", "import", "-f", "grocery-store", str(grocery), str(catalog)]).exit_code == 0
    result = runner.invoke(app, ["train", "--catalog", str(catalog), "--method", "clip", "--backbone", "tiny",
                                 "--epochs", "1", "--batch-size", "4", "--out", str(run), "--no-progress",
                                 "--image-root", str(grocery / "dataset"), "--set", "data.split_by=image"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["embed", "--run", str(run)]).exit_code == 0
    result = runner.invoke(app, ["evaluate", "--run", str(run), "-p", "product", "--coarse-depth", "2",
                                 "--distractors", "customer"])
    assert result.exit_code == 0, result.output
    fine = json.loads((run / "eval" / "product.json").read_text())["tasks"]["fine"]
    # queries: the 3 test photos; gallery: 4 merchant shots + the other products' test photos
    assert fine["n_queries"] == 3 and fine["n_candidates"] == 4 + 3
