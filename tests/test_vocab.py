"""Entity vocabularies: specials, ordering, case-insensitive lookup, train-only building, round trips."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalogclip.catalog.schema import Catalog, ImageRef, Product
from catalogclip.catalog.splits import split_by_product
from catalogclip.catalog.vocab import NONE, NONE_ID, UNK, UNK_ID, EntityVocab, EntityVocabs, build_vocabs


def product(pid: str, **attributes: str) -> Product:
    return Product(pid, f"title {pid}", images=[ImageRef(f"{pid}.jpg")], attributes=attributes)


@pytest.fixture
def catalog() -> Catalog:
    colours = ["Black", "black ", "Blue", "Red", "Red", "blue", "Blue", None]
    products = []
    for i, colour in enumerate(colours):
        attrs = {"brand": "Puma" if i % 2 else "Diesel"}
        if colour is not None:
            attrs["colour"] = colour
        products.append(product(f"p{i}", **attrs))
    return Catalog(products)


def test_ids_by_frequency_then_name_with_specials_first(catalog):
    vocabs = build_vocabs(catalog, ["colour", "brand"])
    colour = vocabs["colour"]
    # blue x3, black x2, red x2 (tie broken by name); shown in the most frequent spelling.
    assert colour.values == ["Blue", "Black", "Red"] and colour.counts == [3, 2, 2]
    assert [colour.decode(i) for i in range(len(colour))] == [NONE, UNK, "Blue", "Black", "Red"]
    assert vocabs.sizes() == [5, 4]
    assert vocabs.groups == ["colour", "brand"]
    assert vocabs.values("brand") == ["Diesel", "Puma"]


def test_lookup_ignores_case_and_spaces_and_maps_missing_and_unseen(catalog):
    vocabs = build_vocabs(catalog, ["colour", "brand"])
    assert vocabs["colour"].id("  bLaCk ") == vocabs["colour"].id("Black") == 3
    assert vocabs.encode(catalog["p7"]) == [NONE_ID, 3]  # p7 has no colour; brand Puma
    assert vocabs.encode_values({"colour": "Mauve", "brand": "diesel"}) == [UNK_ID, 2]
    assert vocabs.encode_values({}) == [NONE_ID, NONE_ID]
    assert vocabs.encode_values({"colour": "  "}) == [NONE_ID, NONE_ID]
    assert vocabs.decode("colour", UNK_ID) == UNK


def test_min_count_sends_rare_values_to_unk(catalog):
    colour = build_vocabs(catalog, ["colour"], min_count=3)["colour"]
    assert colour.values == ["Blue"]
    assert colour.id("red") == UNK_ID
    with pytest.raises(ValueError, match="min_count"):
        build_vocabs(catalog, ["colour"], min_count=0)


def test_built_on_train_only_so_test_only_values_are_unk():
    products = [product(f"p{i}", brand=f"brand{i}") for i in range(20)]
    split = split_by_product(Catalog(products), 0.25, seed=0)
    vocabs = build_vocabs(split.train, ["brand"])
    train_brands = {p.attributes["brand"] for p in split.train}
    assert set(vocabs.values("brand")) == train_brands
    for p in split.test:
        assert vocabs.encode(p) == [UNK_ID]
    for p in split.train:
        assert vocabs.decode("brand", vocabs.encode(p)[0]) == p.attributes["brand"]


def test_json_and_file_round_trip(catalog, tmp_path):
    vocabs = build_vocabs(catalog, ["brand", "colour"])
    assert EntityVocabs.from_json(vocabs.to_json()) == vocabs
    loaded = EntityVocabs.load(vocabs.save(tmp_path / "vocabs.json"))
    assert loaded == vocabs and loaded.groups == ["brand", "colour"]
    assert [loaded.encode(p) for p in catalog] == [vocabs.encode(p) for p in catalog]


def test_errors_name_the_group_field_or_file(catalog, tmp_path):
    with pytest.raises(ValueError, match="attribute group 'size' is not in the catalog"):
        build_vocabs(catalog, ["colour", "size"])
    with pytest.raises(ValueError, match="repeat"):
        build_vocabs(catalog, ["colour", "colour"])
    vocabs = build_vocabs(catalog, ["colour"])
    with pytest.raises(KeyError, match="no vocabulary for attribute group 'brand'"):
        vocabs["brand"]
    with pytest.raises(ValueError, match="out of range"):
        vocabs.decode("colour", 5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"groups": [{"group": "colour", "values": ["a"], "counts": ["x"]}]}')
    with pytest.raises(ValueError, match=r"bad\.json: vocabulary 'colour': field 'counts'"):
        EntityVocabs.load(bad)
    bad.write_text('{"groups": [{"group": "colour", "values": ["a", "A"], "counts": [1, 1]}]}')
    with pytest.raises(ValueError, match="values repeat"):
        EntityVocabs.load(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        EntityVocabs.load(bad)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["Red", "red", " RED", "Blue", "green", "Green ", "x", "", None]), max_size=40),
       st.integers(1, 4))
def test_every_kept_value_round_trips_and_ids_follow_frequency(values, min_count):
    vocab = EntityVocab.build("g", values, min_count)
    real = [v.strip().casefold() for v in values if v and v.strip()]
    counts = {key: real.count(key) for key in set(real)}
    kept = {key for key, n in counts.items() if n >= min_count}
    assert {v.casefold() for v in vocab.values} == kept
    assert vocab.counts == sorted(vocab.counts, reverse=True)
    assert vocab.counts == [counts[v.casefold()] for v in vocab.values]
    for key in counts:
        entity_id = vocab.id(key.upper())
        assert (vocab.decode(entity_id).casefold() == key) if key in kept else (entity_id == UNK_ID)
    assert vocab.id(None) == vocab.id("") == NONE_ID


def test_category_levels_are_entity_groups():
    from catalogclip.catalog.schema import Catalog, ImageRef, Product
    from catalogclip.catalog.vocab import UNK_ID, build_vocabs

    def item(pid, path):
        return Product(pid, "t", images=[ImageRef("a.jpg")], attributes={"brand": "Puma"}, category_path=path)

    train = Catalog([item("a", ["Apparel", "Topwear", "Shirts"]), item("b", ["Apparel", "Topwear", "Shirts"]), item("c", ["Footwear"])])
    vocabs = build_vocabs(train, ["brand", "category:2", "category:leaf"])
    assert vocabs.values("category:2") == ["Shirts"]
    assert vocabs.values("category:leaf") == ["Shirts", "Footwear"]
    assert vocabs.encode(item("d", ["Footwear"])) == [2, 0, 3]  # Footwear has no level 2: <none>
    assert vocabs.encode(item("e", ["Apparel", "Topwear", "Jeans"]))[1] == UNK_ID
