import pytest

from catalogclip.search.query import (
    EntityLinker,
    Filter,
    QueryError,
    normalise_category,
    parse_filter_args,
    parse_filters,
    vocab_values,
)

VOCABS = {
    "brand": ["Puma", "Golden Goose", "Golden", "Tommy Hilfiger", "Crème de la Crème"],
    "colour": ["Black", "Navy Blue", "Blue"],
    "category": ["Running Shoes", "Shoes"],
}


def test_linker_finds_entities_case_insensitively_with_offsets():
    linker = EntityLinker(VOCABS)
    text = "black PUMA running shoes"
    entities, matches = linker.entities(text)
    assert entities == {"colour": "Black", "brand": "Puma", "category": "Running Shoes"}
    assert [(m.text, m.start, m.end) for m in matches] == [("black", 0, 5), ("PUMA", 6, 10), ("running shoes", 11, 24)]
    assert all(text[m.start : m.end] == m.text for m in matches)


def test_linker_prefers_the_longest_match():
    linker = EntityLinker(VOCABS)
    assert linker.entities("golden goose sneakers navy blue")[0] == {"brand": "Golden Goose", "colour": "Navy Blue"}
    # without the second word only the shorter brand is there
    assert linker.entities("golden necklace")[0] == {"brand": "Golden"}


def test_linker_ignores_punctuation_accents_and_partial_words():
    linker = EntityLinker(VOCABS)
    assert linker.entities("creme-de-la-CREME lipstick")[0] == {"brand": "Crème de la Crème"}
    assert linker.entities("Tommy, Hilfiger!")[0] == {"brand": "Tommy Hilfiger"}
    assert linker.entities("pum blackish bluetooth")[0] == {}


@pytest.mark.parametrize(
    "typed",
    ["t shirt", "T-Shirt", "tshirt", "TSHIRTS", "t-shirts", "t‐shirt"],
)
def test_linker_tolerates_how_shoppers_write_a_word(typed):
    linker = EntityLinker({"category": ["Tshirts"], "gender": ["Baby Girl's"], "brand": ["Levi's", "Puma"]})
    assert linker.entities(f"{typed} for baby girls by levis")[0] == {"category": "Tshirts", "gender": "Baby Girl's", "brand": "Levi's"}
    assert linker.entities("pumas")[0] == {"brand": "Puma"}  # a plural is the same word


def test_normalised_words_keep_the_offsets_of_what_was_typed():
    from catalogclip.search.text import compounds, key, tokens

    text = "A red T-Shirt for Girl's, a-line"
    assert [(t.text, text[t.start : t.end]) for t in tokens(text)] == [
        ("a", "A"), ("red", "red"), ("tshirt", "T-Shirt"), ("for", "for"), ("girl", "Girl"), ("alin", "a-line"),
    ]
    assert key("t shirt") == key("T-SHIRTS") == key("tshirt") == ("tshirt",)
    assert key("a red shirt") == ("a", "red", "shirt")  # the article stays a word of its own
    assert compounds("anti-slip mat, x-ray") == ["antislip", "xray"]


def test_linker_keeps_first_value_per_group_and_every_match():
    entities, matches = EntityLinker(VOCABS).entities("blue or black shoes")
    assert entities == {"colour": "Blue", "category": "Shoes"}
    assert [m.value for m in matches] == ["Blue", "Black", "Shoes"]


def test_phrase_in_two_groups_is_recognised_in_both():
    entities, _ = EntityLinker({"brand": ["Mango"], "colour": ["mango", "Red"]}).entities("MANGO dress")
    assert entities == {"brand": "Mango", "colour": "mango"}


def test_linker_with_empty_vocab_finds_nothing():
    assert EntityLinker({}).entities("black puma") == ({}, [])
    assert len(EntityLinker({"brand": ["", "  "]})) == 0


def test_vocab_values_reads_mappings_and_vocab_objects():
    class Vocabs:  # the public surface of catalogclip.catalog.vocab.EntityVocabs
        groups = ["brand"]

        def values(self, group):
            return {"brand": ["Puma"]}[group]

    class CallableGroups(Vocabs):
        def groups(self):
            return ["brand"]

    assert vocab_values(Vocabs()) == {"brand": ["Puma"]}
    assert vocab_values(CallableGroups()) == {"brand": ["Puma"]}
    assert vocab_values({"colour": ("Black",)}) == {"colour": ["Black"]}


def test_parse_filters_builds_clauses():
    filters = parse_filters(
        {"brand": "Puma", "colour": ["Black", "Red"], "price": {"min": "10", "max": 50}, "category": "Footwear>Shoes "},
        ["brand", "colour", "price"],
    )
    assert filters == [
        Filter("brand", ("Puma",)),
        Filter("colour", ("Black", "Red")),
        Filter("price", low=10.0, high=50.0),
        Filter("category", ("Footwear > Shoes",)),
    ]
    assert filters[2].is_range and not filters[0].is_range
    assert parse_filters({"price": {"max": 5}}, ["price"]) == [Filter("price", low=None, high=5.0)]
    # 64-bit integers are values and bounds like any other; wider ones are taken as strings
    assert parse_filters({"brand": [2**63 - 1, "18446744073709551616"], "price": {"min": -(2**63)}}, ["brand", "price"]) == [
        Filter("brand", (str(2**63 - 1), "18446744073709551616")),
        Filter("price", low=float(-(2**63))),
    ]
    assert parse_filters(None, []) == []


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"fabric": "Cotton"}, "unknown filter field 'fabric' (known: brand, category, price)"),
        ({"brand": []}, "filter 'brand' has an empty list of values"),
        ({"brand": [" "]}, "filter 'brand' has an empty value"),
        ({"brand": {"x": 1}}, "filter 'brand': a range is"),
        ({"price": {"min": "cheap"}}, "filter 'price.min' must be a number, got 'cheap'"),
        ({"price": {"min": float("nan")}}, "must be a finite number"),
        ({"price": {"min": 50, "max": 10}}, "min 50 is greater than max 10"),
        ({"price": {}}, "a range needs 'min' or 'max'"),
        ({"brand": [{"a": 1}]}, "values must be strings"),
        ({"category": {"min": 1}}, "filter 'category': a range is"),
        ({"brand": [2**64]}, "filter 'brand' has an integer beyond 64 bits; write it as a string"),
        ({"price": {"min": int("1" * 400)}}, "filter 'price.min' has an integer beyond 64 bits"),  # no float holds it
        ({"price": {"max": -(2**63) - 1}}, "filter 'price.max' has an integer beyond 64 bits"),
        (["brand"], "filters must be an object"),
    ],
)
def test_parse_filters_rejects_bad_input_with_a_message(raw, message):
    with pytest.raises(QueryError) as info:
        parse_filters(raw, ["brand", "price"])
    assert message in str(info.value)


def test_parse_filter_args_from_the_command_line():
    assert parse_filter_args(["brand=Puma", "colour=Black, Red", "price=10..50", "year=..2012", "category=Footwear > Shoes"]) == {
        "brand": ["Puma"],
        "colour": ["Black", "Red"],
        "price": {"min": "10", "max": "50"},
        "year": {"min": None, "max": "2012"},
        "category": "Footwear > Shoes",
    }
    with pytest.raises(QueryError, match="'brand' is not FIELD=VALUE"):
        parse_filter_args(["brand"])
    with pytest.raises(QueryError, match="given twice"):
        parse_filter_args(["brand=A", "brand=B"])


def test_normalise_category():
    assert normalise_category(" Footwear>Shoes >Sneakers ") == "Footwear > Shoes > Sneakers"
    assert normalise_category(["Footwear", " Shoes"]) == "Footwear > Shoes"


def test_linker_reads_the_run_entity_vocabularies():
    from catalogclip.catalog.vocab import EntityVocab, EntityVocabs

    vocabs = EntityVocabs([
        EntityVocab.build("brand", ["Puma", "puma", "Golden Goose"]),
        EntityVocab.build("colour", ["Black", "Navy Blue"]),
    ])
    entities, _ = EntityLinker(vocab_values(vocabs)).entities("navy blue golden goose sneakers")
    assert entities == {"colour": "Navy Blue", "brand": "Golden Goose"}
    assert vocabs.encode_values(entities) == [vocabs["brand"].id("Golden Goose"), vocabs["colour"].id("Navy Blue")]
