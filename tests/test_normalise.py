"""Attribute normalisation: one name per group, one spelling per value, lists split."""
from __future__ import annotations

import pytest

from catalogclip.catalog.normalise import load_aliases, normalise_catalog
from catalogclip.catalog.schema import Catalog, Product
from catalogclip.catalog.stats import attribute_stats
from catalogclip.catalog.vocab import build_vocabs


def products(*attributes: dict) -> list[Product]:
    return [Product(f"p{i}", f"Product {i}", images=[], attributes=dict(a)) for i, a in enumerate(attributes)]


def test_keys_unify_across_case_spacing_and_synonyms():
    items = products(
        {"Color": "Red", "Brand": "Puma", "brand": "Puma", "Sleeve  Length": "Short"},
        {"colour": "Blue", "Vendor": "Nike", "sleeve_length": "Long", "Fabric": "Cotton"},
        {"Colour": "Red", "Manufacturer": "Nike", "Sleeve Length": "Long", "Material": "cotton"},
        {"brand": "Adidas", "Brand": "Adidas Originals", "Sleeve Length": "Short"},
    )
    report = normalise_catalog(items)
    assert [p.attributes for p in items] == [
        {"colour": "Red", "brand": "Puma", "Sleeve Length": "Short"},
        {"colour": "Blue", "brand": "Nike", "Sleeve Length": "Long", "material": "Cotton"},
        {"colour": "Red", "brand": "Nike", "Sleeve Length": "Long", "material": "Cotton"},
        # A brand column and a different Brand specification: both kept, as a multi-value.
        {"brand": "Adidas | Adidas Originals", "Sleeve Length": "Short"},
    ]
    lines = report.lines()
    assert "brand <- Brand (2), Manufacturer (1), Vendor (1), brand (2)" in lines[0]
    assert "colour <- Color (1), Colour (1), colour (1)" in lines[0]
    assert "Sleeve Length <- Sleeve  Length (1), Sleeve Length (2), sleeve_length (1)" in lines[0]


def test_values_trimmed_case_merged_to_the_most_frequent_spelling():
    items = products({"Washable": "No"}, {"Washable": " NO "}, {"Washable": "No"}, {"Washable": "yes"}, {"Washable": "Yes"})
    report = normalise_catalog(items)
    assert [p.attributes["Washable"] for p in items] == ["No", "No", "No", "Yes", "Yes"]  # Yes/yes tie: first by name
    assert report.case_merged == {"Washable": {"NO": "No", "yes": "Yes"}}
    assert "value spellings merged: 2 in 1 groups" in report.lines()[0]


def test_multi_values_split_only_into_values_the_group_has_alone():
    items = products(
        {"Ideal For": "Men, Women"}, {"Ideal For": "Men and Women"}, {"gender": "Men"}, {"gender": "women"},
        {"gender": "Women"}, {"colour": "Black and White"}, {"colour": "Black"}, {"colour": "Red & Blue"},
        {"colour": "Red"}, {"colour": "Blue"}, {"gender": "Boys & Girls"},
    )
    report = normalise_catalog(items)
    values = [p.attributes for p in items]
    assert values[0] == values[1] == {"gender": "Men | Women"}
    assert values[3] == {"gender": "Women"}
    assert values[5] == {"colour": "Black and White"}  # "White" is never a colour alone: one colour
    assert values[7] == {"colour": "Red | Blue"}
    assert values[10] == {"gender": "Boys & Girls"}  # neither part alone: kept
    assert report.split == {"gender": 2, "colour": 1}
    assert 'gender: "Men, Women" -> Men | Women' in report.lines()[-1]


def test_alias_file_adds_a_shops_synonyms(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("keys:\n  Shade: colour\n  Fit Type: fit\nvalues:\n  colour:\n    Blk: Black\n  fit:\n    Reg: Regular\n")
    aliases = load_aliases(path)
    items = products({"Shade": "blk", "Fit type": "Reg"}, {"Colour": "Black", "fit_type": "Slim"})
    report = normalise_catalog(items, aliases)
    assert [p.attributes for p in items] == [{"colour": "Black", "fit": "Regular"}, {"colour": "Black", "fit": "Slim"}]
    assert report.aliased == {"colour": 1, "fit": 1}

    path.write_text("keys: [Shade]\n")
    with pytest.raises(ValueError, match="'keys' must map spellings to a group name"):
        load_aliases(path)
    path.write_text("synonyms: {}\n")
    with pytest.raises(ValueError, match="unknown section 'synonyms'"):
        load_aliases(path)


def test_multi_values_reach_stats_and_entity_vocabularies():
    items = products({"gender": "Men, Women"}, {"gender": "Men"}, {"gender": "Women"}, {"gender": "men"})
    normalise_catalog(items)
    catalog = Catalog(items)
    # Stats count each value of a multi-value; a vocabulary keeps "Men | Women" as one entity value.
    assert attribute_stats(catalog)["gender"] == {"distinct": 2, "coverage": 1.0, "top": [["Men", 3], ["Women", 2]]}
    vocab = build_vocabs(catalog, ["gender"])["gender"]
    assert vocab.values == ["Men", "Men | Women", "Women"] and vocab.counts == [2, 1, 1]


def test_a_filter_on_either_value_finds_a_multi_valued_product(tmp_path):
    from catalogclip.search.query import Filter
    from catalogclip.search.store import MetadataStore

    store = MetadataStore(tmp_path / "meta.sqlite")
    for i, gender in enumerate(["Men | Women", "Men", "Women"]):
        store.add_product(Product(f"p{i}", "Tee", attributes={"gender": gender}), [(i, 0)])
    assert sorted(store.rows_matching(Filter("gender", ("men",))).tolist()) == [1, 2]
    assert sorted(store.rows_matching(Filter("gender", ("Women",))).tolist()) == [1, 3]
    assert store.facets()["gender"]["values"] == [{"value": "Men", "count": 2}, {"value": "Women", "count": 2}]
