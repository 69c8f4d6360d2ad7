"""The synthetic catalog: files, boxes, confounders, visible signal and determinism."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageChops
from typer.testing import CliRunner

from catalogclip.catalog.schema import read_jsonl
from catalogclip.catalog.synth import (
    BRANDS,
    CONFOUNDER_BRANDS,
    CONFOUNDER_WORDS,
    generate_catalog,
    render_product,
    render_view,
    sample_spec,
)
from catalogclip.catalog.synth.world import COLOURS, PRINT_LEAVES
from catalogclip.cli import app

N, VIEWS, SIZE = 48, 3, 64  # 48 products: every confounder word gets a distractor


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_catalog(out, n_products=N, seed=0, views=VIEWS, image_size=SIZE, workers=2)
    return out


@pytest.fixture(scope="module")
def catalog(synth_dir):
    return read_jsonl(synth_dir / "catalog.jsonl")


def test_counts_files_and_sources(catalog):
    assert len(catalog) == N
    assert [p.id for p in catalog] == [f"syn-{i:06d}" for i in range(N)]
    for product in catalog:
        assert [im.source for im in product.images] == ["merchant"] + ["customer"] * (VIEWS - 1)
        assert len(product.category_path) in (2, 3)
        assert {"brand", "colour", "pattern", "material", "season", "gender"} <= set(product.attributes)
        assert product.attributes["brand"] in product.title
        for image in product.images:
            with Image.open(catalog.image_path(image)) as im:
                im.load()
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (SIZE, SIZE))


def test_boxes_inside_image_and_customer_products_small(catalog):
    for _, image in catalog.iter_images():
        x0, y0, x1, y1 = image.bbox
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        if image.source == "customer":
            # 25-50% of the side before a rotation of at most 15 degrees.
            assert 0.1 * SIZE <= max(x1 - x0, y1 - y0) <= 0.5 * 1.3 * SIZE + 1
        else:
            assert max(x1 - x0, y1 - y0) >= 0.6 * SIZE


@pytest.mark.parametrize("index", [0, 5, 17, 30])
def test_customer_box_is_tight_around_the_drawn_product(catalog, index):
    """Redraw a customer shot with the product in another colour: the scene is the same, so the
    pixels that change are exactly the product's, and their box is the recorded bbox."""
    spec = sample_spec(index, seed=0)
    other = dataclasses.replace(spec, colour="Green" if spec.colour != "Green" else "Red")
    view = render_view(spec, 1, SIZE, seed=0)
    changed = ImageChops.difference(view.image, render_view(other, 1, SIZE, seed=0).image).getbbox()
    assert tuple(catalog[spec.id].images[1].bbox) == view.bbox
    assert changed is not None
    assert all(abs(a - b) <= 1 for a, b in zip(changed, view.bbox))  # soft edge pixels may round equal
    assert view.mask.getbbox() == view.bbox
    # The file on disk is that drawing (up to JPEG loss).
    with Image.open(catalog.image_path(catalog[spec.id].images[1])) as saved:
        diff = np.abs(np.asarray(saved, dtype=np.int16) - np.asarray(view.image, dtype=np.int16))
    assert diff.mean() < 10


def test_confounder_brands_and_everyday_sense_distractors(catalog):
    assert set(CONFOUNDER_BRANDS) == set(CONFOUNDER_WORDS) and len(CONFOUNDER_BRANDS) >= 6
    brand_products = [p for p in catalog if p.attributes["brand"] in CONFOUNDER_BRANDS and "print" not in p.attributes]
    assert len(brand_products) >= 10
    word_brand = {word: brand for brand, word in CONFOUNDER_WORDS.items()}
    distractors = [p for p in catalog if "print" in p.attributes]
    assert {p.attributes["print"] for p in distractors} == set(CONFOUNDER_WORDS.values())
    for product in distractors:
        word = product.attributes["print"]
        assert product.attributes["brand"] != word_brand[word]  # another brand uses the word
        assert word in product.title.lower() and word in product.description.lower()
        assert product.category_path[-1] in PRINT_LEAVES


def test_print_and_brand_mark_are_drawn():
    spec = dataclasses.replace(sample_spec(0), leaf="Tshirts", colour="White", pattern="solid", gender="Men",
                               brand="Roadster", print=None)
    plain = np.asarray(render_product(spec, 128), dtype=np.int16)
    printed = np.asarray(render_product(dataclasses.replace(spec, print="goose"), 128), dtype=np.int16)
    other_brand = np.asarray(render_product(dataclasses.replace(spec, brand="HRX"), 128), dtype=np.int16)
    product_area = (plain[..., 3] > 0).sum()
    assert (np.abs(printed - plain).sum(-1) > 30).sum() > 0.05 * product_area
    assert 0 < (np.abs(other_brand - plain).sum(-1) > 30).sum() < 0.05 * product_area  # a small logo
    assert len({(b.logo_shape, b.logo_colour) for b in BRANDS}) == len(BRANDS)


def test_colour_is_visible_in_merchant_shots():
    """The named colour is the nearest palette colour to the product's median pixel."""
    specs = [s for s in (sample_spec(i, seed=3) for i in range(60)) if s.pattern == "solid"]
    names, palette = list(COLOURS), np.array(list(COLOURS.values()), dtype=float)
    hits = 0
    for spec in specs:
        view = render_view(spec, 0, SIZE, seed=3)
        pixels = np.asarray(view.image)[np.asarray(view.mask) == 255]
        median = np.median(pixels, axis=0)
        hits += names[int(np.argmin(((palette - median) ** 2).sum(1)))] == spec.colour
    assert len(specs) >= 15 and hits / len(specs) >= 0.9


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(synth_dir, tmp_path):
    again = tmp_path / "again"
    generate_catalog(again, n_products=N, seed=0, views=VIEWS, image_size=SIZE, workers=1)
    assert _files(again) == _files(synth_dir)


def test_other_seed_other_catalog(synth_dir, tmp_path):
    other = tmp_path / "other"
    generate_catalog(other, n_products=6, seed=1, views=2, image_size=SIZE, workers=1)
    first = _files(synth_dir)
    for name, data in _files(other).items():
        if name.startswith("images/"):
            assert data != first[name]
    titles = [read_jsonl(folder / "catalog.jsonl").products[0].title for folder in (other, synth_dir)]
    assert titles[0] != titles[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_products": 0}, "n_products"), ({"views": 0}, "views"), ({"image_size": 16}, "image_size"),
     ({"workers": 0}, "workers")],
)
def test_bad_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_catalog(tmp_path, **kwargs)
    assert not (tmp_path / "catalog.jsonl").exists()


def test_cli_synth(tmp_path):
    result = CliRunner().invoke(app, ["catalog", "synth", "--products", "4", "--out", str(tmp_path), "--views", "2",
                                      "--image-size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    catalog = read_jsonl(tmp_path / "catalog.jsonl")
    assert len(catalog) == 4 and all(len(p.images) == 2 for p in catalog)
    bad = CliRunner().invoke(app, ["catalog", "synth", "--out", str(tmp_path / "x"), "--image-size", "8"])
    assert bad.exit_code == 2 and "image_size must be at least 32" in bad.output
