"""`catalogclip catalog import` and `catalogclip catalog stats`: exit codes and messages."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from catalogclip.catalog.readers import READERS
from catalogclip.cli import app
from test_readers import FASHIONGEN_ROWS, NASTY_MYNTRA_ROWS, write_fashiongen, write_jpeg, write_myntra, write_truncated_jpeg

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["catalog", *map(str, args)])


def test_import_myntra_writes_canonical_jsonl_and_reports_problems(tmp_path):
    root = write_myntra(tmp_path / "myntra", NASTY_MYNTRA_ROWS, ["1", "2", "3", "6"])
    out = tmp_path / "myntra" / "catalog.jsonl"
    problems_file = tmp_path / "logs" / "problems.txt"
    result = run("import", "--format", "myntra", root, out, "--problems", problems_file)

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote 3 products (3 images) to {out}"
    assert "3 usable, skipped: 1 duplicate id, 2 malformed row, 1 missing image" in result.stderr
    assert f"{root / 'styles.csv'}:5: duplicate id: id '1' already seen" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "6"]
    assert rows[0]["images"] == [{"path": "images/1.jpg", "source": "merchant"}]  # relative to OUT's folder
    assert len(problems_file.read_text().splitlines()) == 4


def test_import_reports_a_few_problems_per_kind_but_writes_them_all(tmp_path):
    rows = [f"{i},Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Puma Men Tee {i}" for i in range(12)]
    root = write_myntra(tmp_path, rows, ["0"])
    result = run("import", "-f", "myntra", root, tmp_path / "out" / "c.jsonl", "--problems", tmp_path / "p.txt")
    assert result.exit_code == 0
    assert result.stderr.count("missing image:") == 5
    assert "... and 6 more 'missing image'" in result.stderr
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 11


def test_import_exits_1_when_nothing_usable_is_left(tmp_path):
    root = write_myntra(tmp_path, NASTY_MYNTRA_ROWS[:2], [])
    out = tmp_path / "c.jsonl"
    result = run("import", "--format", "myntra", root, out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: nothing usable in {root}"
    assert not out.exists()


def test_import_verify_images_drops_undecodable_files(tmp_path):
    root = write_myntra(tmp_path, NASTY_MYNTRA_ROWS[:2], ["1"])
    write_truncated_jpeg(root / "images" / "2.jpg")
    out = tmp_path / "c.jsonl"
    assert "wrote 2 products" in run("import", "-f", "myntra", root, out).stdout
    result = run("import", "-f", "myntra", root, out, "--verify-images")
    assert result.exit_code == 0 and "wrote 1 products" in result.stdout
    assert "broken image" in result.stderr and "cannot decode" in result.stderr


def test_import_fashiongen_extracts_images_beside_out(tmp_path):
    h5_path = write_fashiongen(tmp_path / "fg.h5", FASHIONGEN_ROWS)
    out = tmp_path / "out" / "catalog.jsonl"
    result = run("import", "-f", "fashiongen", h5_path, out)
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert [im["path"] for im in rows["101"]["images"]] == ["images/101_0.jpg", "images/101_1.jpg", "images/101_2.jpg"]
    assert (tmp_path / "out" / "images" / "202_0.jpg").is_file()


def test_import_user_errors_are_one_line(tmp_path):
    cases = {
        ("-f", "amazon", tmp_path, tmp_path / "o.jsonl"): f"error: unknown catalog format 'amazon' (known: {', '.join(READERS.names())})",
        ("-f", "myntra", tmp_path / "nope", tmp_path / "o.jsonl"): f"error: {tmp_path / 'nope'}: no such file or folder",
    }
    (tmp_path / "styles.csv").write_text("id,gender,productDisplayName\n1,Men,Tee\n")
    cases[("-f", "myntra", tmp_path, tmp_path / "o.jsonl")] = (
        f"error: {tmp_path / 'styles.csv'}: missing column 'masterCategory' (found: id, gender, productDisplayName)"
    )
    for args, message in cases.items():
        result = run("import", *args)
        assert result.exit_code == 2
        assert result.stderr.strip() == message
        assert "Traceback" not in result.output


def write_small_catalog(tmp_path):
    write_jpeg(tmp_path / "images" / "a.jpg")
    rows = [
        {"id": "a", "title": "Puma Tee", "images": ["images/a.jpg", {"path": "images/a2.jpg", "source": "customer"}],
         "attributes": {"brand": "Puma"}, "category_path": ["Apparel", "Topwear"]},
        {"id": "b", "title": "Nike Cap", "images": ["images/a.jpg"],
         "attributes": {"brand": "Nike", "colour": "Red"}, "category_path": ["Accessories"]},
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "oops\n")
    return path


def test_stats_json(tmp_path):
    result = run("stats", write_small_catalog(tmp_path), "--json")
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert stats["products"] == 2 and stats["images_per_product"] == {"min": 1, "mean": 1.5, "max": 2}
    assert stats["image_sources"] == {"merchant": 2, "customer": 1}
    assert stats["attributes"]["colour"] == {"distinct": 1, "coverage": 0.5, "top": [["Red", 1]]}
    assert stats["category"]["nodes_per_level"] == [2, 1]
    assert stats["image_files"]["by_kind"] == {"missing image": 1}
    assert "catalog.jsonl:3: malformed row: invalid JSON" in result.stderr


def test_stats_text_and_missing_file(tmp_path):
    result = run("stats", write_small_catalog(tmp_path))
    assert result.exit_code == 0
    assert "2 products, 3 images (per product min 1, mean 1.50, max 2)" in result.stdout
    assert "nodes per level [2, 1]" in result.stdout
    assert "unusable image files: 1" in result.stdout and "images/a2.jpg: no such file" in result.stdout

    result = run("stats", tmp_path / "nope.jsonl")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"


def test_import_brand_stop_words_option(tmp_path):
    root = write_myntra(tmp_path, ["7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Nike Dri-FIT Men Red Tee"], ["7"])
    out = tmp_path / "c.jsonl"
    assert run("import", "-f", "myntra", root, out).exit_code == 0
    assert json.loads(out.read_text())["attributes"]["brand"] == "Nike Dri-FIT"
    assert run("import", "-f", "myntra", root, out, "--brand-stop-words", " Dri-FIT, Men").exit_code == 0
    assert json.loads(out.read_text())["attributes"]["brand"] == "Nike"


def test_import_mapped_csv_from_flags_and_yaml_with_an_encoding(tmp_path):
    write_jpeg(tmp_path / "pics" / "a.jpg")
    (tmp_path / "shop.csv").write_bytes("sku;name;pic;maker\nA;Café Mug;pics/a.jpg;Potter\n".encode("cp1252"))
    out = tmp_path / "c.jsonl"
    flags = ["--column", "id=sku", "--column", "title=name", "--column", "images=pic", "--column", "delimiter=;"]
    result = run("import", "-f", "csv", tmp_path / "shop.csv", out, *flags, "--column", "brand=maker", "--encoding", "cp1252")
    assert result.exit_code == 0, result.output
    row = json.loads(out.read_text())
    assert (row["title"], row["attributes"], row["images"][0]["path"]) == ("Café Mug", {"brand": "Potter"}, "pics/a.jpg")

    (tmp_path / "map.yaml").write_text("id: sku\ntitle: name\nimages: pic\ndelimiter: ';'\n")
    result = run("import", "-f", "csv", tmp_path / "shop.csv", out, "--columns", tmp_path / "map.yaml")
    assert result.exit_code == 0 and "undecodable bytes" in result.stderr  # not UTF-8, but not fatal
    assert json.loads(out.read_text())["title"] == "Caf\ufffd Mug"

    result = run("import", "-f", "csv", tmp_path / "shop.csv", out, "--column", "title")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --column title: expected FIELD=COLUMN"


def test_import_normalises_attributes_and_says_what_it_merged(tmp_path):
    from test_readers import flipkart_row, write_flipkart

    specs = '{"product_specification"=>[{"key"=>"Brand", "value"=>"ALISHA"}, {"key"=>"Ideal For", "value"=>"%s"}, {"key"=>"Color", "value"=>"%s"}]}'
    rows = [flipkart_row(f"a{i}", f"Shorts {i}", "Clothing >> Shorts", ["s.jpg"], specs % (ideal, colour), brand="Alisha")
            for i, (ideal, colour) in enumerate([("Men, Women", "Blk"), ("Men and Women", "Black"), ("Men", "black"), ("Women", "Red")])]
    csv_path = write_flipkart(tmp_path / "flipkart.csv", rows)
    write_jpeg(tmp_path / "images" / "s.jpg")
    out = tmp_path / "c.jsonl"
    (tmp_path / "aliases.yaml").write_text("values:\n  colour:\n    Blk: Black\n")

    result = run("import", "-f", "flipkart", csv_path, out, "--aliases", tmp_path / "aliases.yaml")
    assert result.exit_code == 0, result.output
    attributes = [json.loads(line)["attributes"] for line in out.read_text().splitlines()]
    assert attributes[0] == attributes[1] == {"brand": "Alisha", "gender": "Men | Women", "colour": "Black"}
    assert attributes[2] == {"brand": "Alisha", "gender": "Men", "colour": "Black"}
    assert "attribute groups merged: brand <- Brand (4), brand (4); colour <- Color (4); gender <- Ideal For (4)" in result.stderr
    assert "value spellings merged: 2 in 2 groups (e.g. brand: ALISHA -> Alisha; colour: black -> Black)" in result.stderr
    assert "multi-values split: 2 values" in result.stderr and "alias file: colour 1 values" in result.stderr

    assert run("import", "-f", "flipkart", csv_path, out, "--no-normalise").exit_code == 0
    assert json.loads(out.read_text().splitlines()[0])["attributes"] == {
        "Brand": "ALISHA", "Ideal For": "Men, Women", "Color": "Blk", "brand": "Alisha"
    }


def test_stats_lists_the_best_covered_groups_and_the_loading_problems(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    rows = [{"id": f"p{i}", "title": "Tee", "images": ["a.jpg"],
             "attributes": {"brand": "Puma", **{f"spec{k}": "x" for k in range(i)}}} for i in range(20)]
    path = tmp_path / "catalog.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b'{"id": "\xff"}\n')

    result = run("stats", path, "--groups", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "20 attribute groups, highest coverage first" in result.stdout
    table = [line for line in lines if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in table] == ["brand", "spec0", "spec1"]
    assert "│ 100.0%" in table[0] and "Puma (20)" in table[0]
    assert "... and 17 more groups, coverage 5.0% to 85.0% (--all lists them)" in result.stdout
    assert "problems loading the catalog: 2 (1 malformed row, 1 undecodable bytes)" in result.stdout
    assert len(lines) < 20

    full = run("stats", path, "--all")
    assert "spec18" in full.stdout and "more groups" not in full.stdout
    figures = json.loads(run("stats", path, "--json").stdout)
    assert list(figures["attributes"])[:3] == ["brand", "spec0", "spec1"] and len(figures["attributes"]) == 20
    assert figures["problems"]["by_kind"] == {"undecodable bytes": 1, "malformed row": 1}


def test_import_csv_delimiter_flag_takes_backslash_t_or_tab_and_refuses_others_in_one_line(tmp_path):
    write_jpeg(tmp_path / "pics" / "a.jpg")
    (tmp_path / "shop.tsv").write_text("sku\tname\tpic\nA\tMug, 12 oz\tpics/a.jpg\n")
    out = tmp_path / "c.jsonl"
    flags = ["--column", "id=sku", "--column", "title=name", "--column", "images=pic"]
    for delimiter in ("\\t", "tab", "\t"):
        result = run("import", "-f", "csv", tmp_path / "shop.tsv", out, *flags, "--column", f"delimiter={delimiter}")
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["title"] == "Mug, 12 oz"
    for delimiter in (";;", "", '"'):
        result = run("import", "-f", "csv", tmp_path / "shop.tsv", out, *flags, "--column", f"delimiter={delimiter}")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.stderr.strip() == (
            f"error: delimiter {delimiter!r}: expected one character such as , ; | or \\t (or the word tab)"
        )
