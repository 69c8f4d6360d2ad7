"""An image path never leads outside the catalog's root: absolute, `../` and symlinks out are
refused at import, at load, at training, at indexing and by the index's image lookup."""
import json
import os

import pytest
from _searchkit import PaletteEncoder, standard_products, write_images
from PIL import Image

from catalogclip.catalog.paths import OUTSIDE_ROOT, ImageRoots, OutsideRootError
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import ReaderOptions, read_catalog
from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl
from catalogclip.search.build import BuildOptions, build_index

ROUTES = ("absolute", "dotdot", "symlink")


@pytest.fixture()
def shop(tmp_path):
    """shop/catalog.jsonl whose product 'p' has a good image and, per route, one leading to
    secret.txt outside shop/; product 'q' has only the escaping image of each route."""
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    shop = tmp_path / "shop"
    (shop / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(shop / "images" / "good.png")
    os.symlink(secret, shop / "images" / "x.jpg")
    os.symlink(shop / "images" / "good.png", shop / "images" / "alias.png")  # inside: fine
    escapes = {"absolute": str(secret), "dotdot": "images/../../secret.txt", "symlink": "images/x.jpg"}
    rows = [
        {"id": "p", "title": "Red mug", "images": ["images/good.png", *escapes.values(), "images/alias.png"]},
        *({"id": f"q-{route}", "title": "Bad", "images": [path]} for route, path in escapes.items()),
    ]
    (shop / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return shop, secret


def _outside(problems):
    return [p for p in problems.problems if p.kind == OUTSIDE_ROOT]


def test_roots_resolve_inside_and_refuse_each_route_out(shop):
    folder, secret = shop
    roots = ImageRoots(folder)
    assert roots.resolve("images/good.png") == (folder / "images" / "good.png").resolve()
    assert roots.resolve("images/alias.png") == (folder / "images" / "good.png").resolve()
    for path in (str(secret), "images/../../secret.txt", "images/x.jpg", "/etc/passwd", "a\x00b"):
        with pytest.raises(OutsideRootError):
            roots.resolve(path)
    # an explicitly configured image root is allowed, and only it
    assert ImageRoots(folder, (secret.parent,)).resolve(str(secret)) == secret.resolve()
    assert not ImageRoots(folder, (folder / "images",)).inside(str(secret))


def test_load_drops_every_route_out_with_file_line_and_field(shop):
    folder, _ = shop
    problems = ProblemLog()
    catalog = read_jsonl(folder / "catalog.jsonl", problems)
    assert [p.id for p in catalog] == ["p"]
    assert [im.path for im in catalog["p"].images] == ["images/good.png", "images/alias.png"]
    lines = [str(p) for p in _outside(problems)]
    assert len(lines) == 6 and problems.loaded == 1
    path = folder / "catalog.jsonl"
    assert lines[0] == (
        f"{path}:1: {OUTSIDE_ROOT}: field 'images[1].path' = '{folder.parent / 'secret.txt'}': not opened "
        "(product 'p' kept with 2 of 5 images)"
    )
    assert lines[1].startswith(f"{path}:1: {OUTSIDE_ROOT}: field 'images[2].path' = 'images/../../secret.txt'")
    assert lines[2].startswith(f"{path}:1: {OUTSIDE_ROOT}: field 'images[3].path' = 'images/x.jpg'")
    assert lines[3:] == [
        f"{path}:{n}: {OUTSIDE_ROOT}: field 'images[0].path' = '{escape}': not opened (product 'q-{route}' skipped: no usable image)"
        for n, route, escape in zip((2, 3, 4), ROUTES, (folder.parent / "secret.txt", "images/../../secret.txt", "images/x.jpg"))
    ]


def test_import_never_opens_a_file_outside(shop, monkeypatch):
    folder, secret = shop
    opened = []
    real_stat, real_open = os.stat, Image.open
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: opened.append(str(p)) or real_stat(p, *a, **k))
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    problems = ProblemLog()
    catalog = read_catalog("jsonl", folder / "catalog.jsonl", problems, ReaderOptions(verify_images=True))
    assert [p.id for p in catalog] == ["p"] and len(_outside(problems)) == 6
    assert any(o.endswith("good.png") for o in opened)  # the good image was checked ...
    assert not [o for o in opened if "secret" in o or o.endswith("x.jpg")]  # ... the others never touched


def test_an_explicit_image_dir_stays_allowed_at_import_and_at_load(tmp_path):
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(images / "7.jpg")
    styles = tmp_path / "dataset" / "meta" / "styles.csv"
    styles.parent.mkdir()
    styles.write_text(
        "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
        "7,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Puma Men Red Tshirt\n"
    )
    catalog = read_catalog("myntra", styles, ProblemLog(), ReaderOptions(image_dir=images))
    assert catalog.image_path(catalog["7"].images[0]) == (images / "7.jpg").resolve()
    from catalogclip.catalog.schema import write_jsonl

    out = write_jsonl(catalog, tmp_path / "work" / "catalog.jsonl")  # images outside: absolute paths
    assert len(read_jsonl(out, ProblemLog())) == 0
    assert len(read_jsonl(out, ProblemLog(), image_root=images)) == 1


def test_index_build_leaves_out_images_outside_and_image_file_refuses_them(shop, tmp_path):
    folder, secret = shop
    products = standard_products()[:2]
    write_images(folder, products)
    escaping = Product("evil", "Red thing", images=[ImageRef(products[0].images[0].path), ImageRef(str(secret))],
                       attributes={"colour": "Red"})
    problems = ProblemLog()
    index = build_index(PaletteEncoder(), Catalog([*products, escaping], folder), tmp_path / "idx", BuildOptions(progress=False), problems)
    assert len(_outside(problems)) == 1 and index.info["vectors"] == sum(len(p.images) for p in products) + 1
    assert [im.path for im in index.product("evil").images] == [products[0].images[0].path]
    assert index.image_file(index.product("p00"), 0) == (folder / products[0].images[0].path).resolve()
    for path in (str(secret), "../secret.txt", "images/x.jpg"):
        with pytest.raises(KeyError, match="outside the catalog root"):
            index.image_file(Product("z", "z", images=[ImageRef(path)]), 0)
    # an image swapped for a symlink out after indexing is refused too
    target = folder / products[0].images[0].path
    target.unlink()
    os.symlink(secret, target)
    with pytest.raises(KeyError, match="outside the catalog root"):
        index.image_file(index.product("p00"), 0)


def test_training_pairs_never_include_an_image_outside(shop):
    from catalogclip.models.backbones.base import BackboneConfig
    from catalogclip.models.methods import build_method
    from catalogclip.train.data import build_pairs

    folder, secret = shop
    catalog = Catalog(
        [Product("a", "a", images=[ImageRef("images/good.png"), ImageRef("images/x.jpg")]),
         Product("b", "b", images=[ImageRef("images/alias.png"), ImageRef(str(secret))])],
        folder, file=folder / "catalog.jsonl", lines={"a": 3, "b": 4},
    )
    problems = ProblemLog()
    data = build_pairs(build_method("clip", BackboneConfig(spec="tiny", embed_dim=8)), catalog, problems)
    assert [p.name for p in data.image_paths] == ["good.png", "good.png"]
    assert [(p.line, p.kind) for p in problems.problems] == [(3, OUTSIDE_ROOT), (4, OUTSIDE_ROOT)]


def test_cli_split_records_the_image_root_its_catalogs_need(tmp_path):
    from _searchkit import write_catalog
    from typer.testing import CliRunner

    from catalogclip.cli import app

    catalog = write_catalog(tmp_path / "shop")
    runner = CliRunner()
    result = runner.invoke(app, ["catalog", "split", str(catalog), "--out", str(tmp_path / "shop" / "splits")])
    assert result.exit_code == 0, result.output
    shop = (tmp_path / "shop").resolve()
    assert f"need --image-root {shop}" in result.stderr
    assert json.loads((tmp_path / "shop" / "splits" / "split.json").read_text())["image_root"] == str(shop)
    train = tmp_path / "shop" / "splits" / "train.jsonl"
    assert len(read_jsonl(train, image_root=shop)) == 10
    refused = ProblemLog()
    assert len(read_jsonl(train, refused)) == 0 and refused.counts()[OUTSIDE_ROOT] > 0
