"""Splits: by product or by held-out leaf category, seeded, saved as id lists."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl, write_jsonl
from catalogclip.catalog.splits import Split, make_split, split_by_leaf, split_by_product
from catalogclip.cli import app

LEAVES = [["Apparel", "Topwear", "Tshirts"], ["Apparel", "Topwear", "Shirts"], ["Apparel", "Dresses"],
          ["Footwear", "Shoes", "Sneakers"], ["Accessories", "Watches"], []]


def make_catalog(leaf_indices: list[int], images_per_product: int = 2) -> Catalog:
    return Catalog([
        Product(f"p{i}", f"product {i}", images=[ImageRef(f"images/p{i}_{v}.jpg") for v in range(images_per_product)],
                category_path=list(LEAVES[leaf]))
        for i, leaf in enumerate(leaf_indices)
    ])


catalogs = st.lists(st.integers(0, len(LEAVES) - 1), min_size=2, max_size=60).map(make_catalog)
fractions = st.floats(0.05, 0.95)
seeds = st.integers(0, 2**16)


def ids(catalog: Catalog) -> set[str]:
    return {p.id for p in catalog}


def assert_partition(split: Split, catalog: Catalog) -> None:
    assert ids(split.train).isdisjoint(ids(split.test))
    assert ids(split.train) | ids(split.test) == ids(catalog)
    assert len(split.train) + len(split.test) == len(catalog)
    # Images travel with their product: each image on exactly one side.
    train_images = {im.path for p in split.train for im in p.images}
    test_images = {im.path for p in split.test for im in p.images}
    assert train_images.isdisjoint(test_images)


@settings(max_examples=60, deadline=None)
@given(catalogs, fractions, seeds)
def test_split_by_product_partitions_reproducibly(catalog, fraction, seed):
    split = split_by_product(catalog, fraction, seed)
    assert_partition(split, catalog)
    n = len(catalog)
    assert len(split.test) == min(max(round(n * fraction), 1), n - 1)
    again = split_by_product(catalog, fraction, seed)
    assert [p.id for p in again.test] == [p.id for p in split.test]
    # The order of the catalog does not matter, only its ids and the seed.
    shuffled = Catalog(list(reversed(catalog.products)))
    assert ids(split_by_product(shuffled, fraction, seed).test) == ids(split.test)


@settings(max_examples=60, deadline=None)
@given(catalogs, fractions, seeds)
def test_split_by_leaf_holds_out_whole_leaves(catalog, fraction, seed):
    leaves = {tuple(p.category_path) for p in catalog if p.category_path}
    if len(leaves) < 2:
        with pytest.raises(ValueError, match="leaf"):
            split_by_leaf(catalog, fraction, seed)
        return
    split = split_by_leaf(catalog, fraction, seed)
    assert_partition(split, catalog)
    train_leaves = {tuple(p.category_path) for p in split.train}
    test_leaves = {tuple(p.category_path) for p in split.test}
    assert train_leaves.isdisjoint(test_leaves)
    assert test_leaves and train_leaves - {()}  # at least one real leaf on each side
    assert () not in test_leaves  # uncategorised products always train
    assert ids(split_by_leaf(catalog, fraction, seed).test) == ids(split.test)


def test_leaf_split_is_near_the_fraction_and_seeds_differ():
    catalog = make_catalog([i % 5 for i in range(100)])  # five leaves of 20 products
    assert len(split_by_leaf(catalog, 0.4, seed=0).test) == 40
    held_out = {frozenset(tuple(p.category_path) for p in split_by_leaf(catalog, 0.2, seed=s).test) for s in range(10)}
    assert len(held_out) > 1


def test_product_split_seeds_differ():
    catalog = make_catalog([0] * 50)
    assert ids(split_by_product(catalog, seed=0).test) != ids(split_by_product(catalog, seed=1).test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        split_by_product(make_catalog([0, 1, 2]), fraction)


def test_too_small_and_unknown_kind():
    with pytest.raises(ValueError, match="at least 2"):
        split_by_product(make_catalog([0]))
    with pytest.raises(ValueError, match="unknown split kind 'random'"):
        make_split(make_catalog([0, 1]), "random")


def test_save_and_load_round_trip(tmp_path):
    catalog = make_catalog([i % 4 for i in range(20)])
    split = split_by_leaf(catalog, 0.3, seed=7)
    path = split.save(tmp_path / "split.json")
    raw = json.loads(path.read_text())
    assert raw["by"] == "leaf" and raw["seed"] == 7 and raw["test"] == [p.id for p in split.test]
    loaded = Split.load(path, catalog)
    assert [p.id for p in loaded.train] == [p.id for p in split.train]
    assert [p.id for p in loaded.test] == [p.id for p in split.test]
    assert (loaded.name, loaded.seed, loaded.test_fraction) == ("leaf", 7, 0.3)


@pytest.mark.parametrize(
    "content, message",
    [('{"train": ["p0"], "test": ["zz"]}', "test product 'zz' is not in the catalog"),
     ('{"train": ["p0", "p1"], "test": ["p1"]}', "'p1' is on both sides"),
     ('{"train": "p0", "test": []}', "field 'train' must be a list"),
     ('{"train": [], "test": [], "by": "random"}', "field 'by'"),
     ('{"train": [', "invalid JSON")],
)
def test_load_errors_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        Split.load(path, make_catalog([0, 1, 2]))
    assert str(path) in str(info.value)


def test_cli_split_writes_both_sides(tmp_path):
    catalog = make_catalog([i % 3 for i in range(12)])
    catalog.root = tmp_path
    (tmp_path / "images").mkdir()
    for _, image in catalog.iter_images():
        catalog.image_path(image).write_bytes(b"jpg")
    source = write_jsonl(catalog, tmp_path / "catalog.jsonl")
    out = tmp_path / "split"
    result = CliRunner().invoke(app, ["catalog", "split", str(source), "--out", str(out), "--by", "leaf",
                                      "--test-fraction", "0.34", "--seed", "3"])
    assert result.exit_code == 0, result.output
    # images stay in tmp_path, outside the split's folder: reading the sides needs that root
    train, test = read_jsonl(out / "train.jsonl", image_root=tmp_path), read_jsonl(out / "test.jsonl", image_root=tmp_path)
    expected = split_by_leaf(read_jsonl(source), 0.34, seed=3)
    assert [p.id for p in test] == [p.id for p in expected.test]
    assert [p.id for p in train] == [p.id for p in expected.train]
    assert all(test.image_path(im).is_file() for _, im in test.iter_images())  # paths still resolve
    assert Split.load(out / "split.json", read_jsonl(source)).name == "leaf"


def test_cli_split_user_errors(tmp_path):
    missing = CliRunner().invoke(app, ["catalog", "split", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "nope.jsonl: no such file" in missing.output
    single = make_catalog([0])
    single.root = tmp_path
    one = write_jsonl(single, tmp_path / "one.jsonl")
    small = CliRunner().invoke(app, ["catalog", "split", str(one), "--out", str(tmp_path / "s")])
    assert small.exit_code == 2 and "one.jsonl: cannot split" in small.output
    assert len(small.output.strip().splitlines()) == 1
