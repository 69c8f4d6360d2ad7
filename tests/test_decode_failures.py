"""Images that cannot be decoded (a 20000x20000 PNG bomb, a truncated JPEG, an empty file) are
skipped and counted by train, embed and index, with the catalog's file, line and field; an
oversized title is refused at load."""
from __future__ import annotations

import io
import json
import struct
import zlib

from PIL import Image
from typer.testing import CliRunner

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import read_jsonl
from catalogclip.cli import app
from catalogclip.train.data import load_rgb

runner = CliRunner()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG header for width x height grey pixels and a few bytes of data: Pillow must
    refuse it from the header, before allocating 400 MB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]  # the header is intact: only decoding finds the cut


def bad_shop(brand_catalog):
    """The brand catalog with three products' images replaced; returns {product id: line}."""
    folder = brand_catalog.parent
    rows = [json.loads(line) for line in brand_catalog.read_text().splitlines()]
    damage = {2: ("bomb.png", png_bomb()), 5: ("cut.jpg", truncated_jpeg()), 9: ("zero.jpg", b"")}
    for line, (name, data) in damage.items():
        (folder / name).write_bytes(data)
        rows[line - 1]["images"] = [name]
    brand_catalog.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {rows[line - 1]["id"]: line for line in damage}


def test_the_pixel_budget_is_enforced_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_bomb())
    try:
        load_rgb(tmp_path / "bomb.png")
    except Image.DecompressionBombError as exc:
        assert "400000000 pixels" in str(exc)
    else:
        raise AssertionError("a 20000x20000 PNG was decoded")


def test_train_embed_and_index_skip_undecodable_images_with_file_line_and_field(brand_catalog, tmp_path):
    lines = bad_shop(brand_catalog)
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "--catalog", str(brand_catalog), "--method", "clip", "--backbone", "tiny", "--epochs", "1",
        "--batch-size", "8", "--out", str(run), "--no-progress", "--set", "data.test_fraction=0.05",
    ])
    assert result.exit_code == 0, result.output
    problems = (run / "problems.txt").read_text().splitlines()
    by_line = {int(p.split(":")[1]): p for p in problems}
    assert set(lines) <= set(json.loads((run / "split.json").read_text())["train"])  # seeded split
    assert sorted(by_line) == sorted(lines.values())
    for product_id, line in lines.items():
        assert by_line[line].startswith(f"{brand_catalog}:{line}: broken image: field 'images[0].path' = ")
        assert by_line[line].endswith(f"(product '{product_id}')")
    assert "'bomb.png': cannot decode: Image size (400000000 pixels) exceeds limit" in by_line[2]
    assert "'cut.jpg': cannot decode: image file is truncated" in by_line[5] and "'zero.jpg': empty file" in by_line[9]
    assert "trained clip" in result.output

    embedded = runner.invoke(app, ["embed", "--run", str(run), "--split", "all"])
    assert embedded.exit_code == 0, embedded.output
    assert "29 images, 32 products" in embedded.output

    log = tmp_path / "index-problems.txt"
    indexed = runner.invoke(app, ["index", "--run", str(run), "--out", str(tmp_path / "idx"), "--no-progress", "--problems", str(log)])
    assert indexed.exit_code == 0, indexed.output
    assert "indexed 29 products" in indexed.output
    index_problems = log.read_text().splitlines()
    for product_id, line in lines.items():
        assert any(p.startswith(f"{brand_catalog}:{line}: broken image: field 'images[0].path'") for p in index_problems)
        assert f"{brand_catalog}:{line}: unsearchable product: product '{product_id}' has no readable image; left out" in index_problems


def test_an_oversized_title_is_refused_at_load(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    rows = [{"id": "ok", "title": "Mug", "images": ["a.png"]}, {"id": "big", "title": "x" * 1_000_000, "images": ["a.png"]}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = ProblemLog()
    assert [p.id for p in read_jsonl(tmp_path / "c.jsonl", problems)] == ["ok"]
    assert [str(p) for p in problems.problems] == [
        f"{tmp_path / 'c.jsonl'}:2: malformed row: field 'title' has 1,000,000 characters (at most 1,000)"
    ]
