"""Query spelling: words the catalog does not know are corrected towards words it does."""
import pytest
from _searchkit import PaletteEncoder, standard_products, write_catalog
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import OSA

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.index import ProductIndex
from catalogclip.search.lexical import lexical_folder
from catalogclip.search.service import create_app
from catalogclip.search.spelling import Speller, english_words, max_edits
from catalogclip.search.text import key, stem

WORDS = {"sneakers": 30, "seekers": 1, "backpack": 12, "golden": 3, "goose": 3, "jacket": 20, "liner": 2, "nike": 40,
         "tshirt": 50, "black": 80, "sandals": 9, "kurta": 7, "kurti": 4, "gloves": 5}


def speller(words=WORDS) -> Speller:
    return Speller(words, {stem(w) for w in words})


def corrected(text: str, words=WORDS) -> str:
    return speller(words).correct(text).text


def test_unknown_words_become_the_nearest_catalog_word():
    spelled = speller().correct("Puma snekers")
    assert spelled.text == "Puma sneakers"
    assert [c.to_json() for c in spelled.corrections] == [{"typed": "snekers", "to": "sneakers", "start": 5, "end": 12}]
    assert corrected("red backpak") == "red backpack"  # a letter missing
    assert corrected("nkie jakcet") == "nike jacket"  # two neighbours swapped: one edit each
    assert corrected("t shrit") == "tshirt"  # a lone letter joins its word, as in matching
    assert corrected("blakc Tshirts") == "black Tshirts"  # "Tshirts" is known by its stem


def test_among_equally_near_words_the_one_more_products_carry_wins():
    # "snekers" is one edit from both "sneakers" (30 products) and "seekers" (1)
    assert corrected("snekers") == "sneakers"
    assert corrected("snekers", {**WORDS, "seekers": 31}) == "seekers"
    # "kurtu" is one edit from "kurta" (7) and "kurti" (4)
    assert corrected("kurtu") == "kurta"


def test_the_edit_budget_grows_with_the_word():
    assert [max_edits(w) for w in ("nkie", "jaket", "sandls", "sneakerss")] == [1, 1, 2, 2]
    assert corrected("sandles") == "sandals"  # 7 letters, two edits away
    assert corrected("jkct") == "jkct"  # 4 letters, two edits from "jacket": left as typed


def test_a_word_with_no_near_catalog_word_is_matched_by_its_stem():
    # "gpove" (5 letters: one edit) is two edits from "gloves", but one from its stem "glove"
    assert corrected("gpove") == "gloves"


def test_english_words_short_words_numbers_and_catalog_words_stay_as_typed():
    assert "linen" in english_words() and "snekers" not in english_words()
    # the rarer half of the word list is names, foreign words and misspellings: corrected like typos
    assert "kura" not in english_words() and corrected("kura") == "kurta"
    # "linen" is one edit from "liner", but it is a word: the shopper meant linen, which this catalog lacks
    assert corrected("linen shirt") == "linen shirt"
    assert corrected("nke 32gb xl") == "nke 32gb xl"  # under 4 letters, or not letters only
    assert speller().correct("black sneaker kurtas").corrections == []  # known, or known by their stem


def test_a_word_with_no_near_word_is_split_into_two_catalog_words():
    assert corrected("goldengoose tshirt") == "golden goose tshirt"
    assert corrected("gooseblack") == "goose black"
    assert corrected("zzzzqqqq") == "zzzzqqqq"  # neither near nor splittable


def test_a_catalog_without_words_corrects_nothing():
    assert Speller({}, set()).correct("snekers").corrections == []


@settings(max_examples=200, deadline=None)
@given(word=st.sampled_from(sorted(w for w in WORDS if len(w) >= 5)), data=st.data())
def test_one_typo_in_a_catalog_word_is_corrected_to_a_word_near_it(word, data):
    """A single deletion, insertion, substitution or swap: the search reads a catalog word within
    the budget of the typed word, and a corrected query is never corrected again."""
    i = data.draw(st.integers(0, len(word) - 2))
    letter = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
    typo = data.draw(st.sampled_from([word[:i] + word[i + 1 :], word[:i] + letter + word[i:], word[:i] + letter + word[i + 1 :],
                                      word[:i] + word[i + 1] + word[i] + word[i + 2 :]]))
    spelled = speller().correct(typo)
    if typo in WORDS or typo in english_words() or stem(typo) in {stem(w) for w in WORDS}:
        assert spelled.text == typo
        return
    assert spelled.text in WORDS and OSA.distance(typo, spelled.text) <= max_edits(typo)
    assert OSA.distance(typo, spelled.text) <= OSA.distance(typo, word)  # never farther than the word typed at
    assert speller().correct(spelled.text).corrections == []


# --- in the engine ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """12 products: Puma and Diesel, six colours, shoes / shirts / jeans (tests/_searchkit.py)."""
    root = tmp_path_factory.mktemp("shop")
    return build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), root / "idx", BuildOptions(progress=False))


def test_the_index_keeps_the_catalog_words_and_how_many_products_carry_each(index):
    words = ProductIndex.open(index.path).lexical.words
    assert words["puma"] == words["diesel"] == 6 and words["yellow"] == 2 and words["footwear"] == 4
    assert not any(w.isdigit() for w in words)  # prices are not words to correct towards


def test_every_side_searches_the_corrected_query_and_says_so(index):
    engine = SearchEngine(index, PaletteEncoder())
    result = engine.search_text("diesl jeans", k=12, mode="lexical")
    assert result.query["searched"] == "diesel jeans" and result.query["spell"] is True
    assert [c.to_json() for c in result.corrections] == [{"typed": "diesl", "to": "diesel", "start": 0, "end": 5}]
    assert {(m.group, m.value) for m in result.entities} == {("brand", "Diesel"), ("category", "Jeans")}  # recognised once corrected
    top = [h.product for h in result.hits[:2]]
    assert all(p.attributes["brand"] == "Diesel" and p.category_path[-1] == "Jeans" for p in top)
    # the vector side reads the corrected text: "yelow" -> "yellow" is a colour the toy encoder sees
    vector = engine.search_text("yelow shoes", k=2, mode="vector")
    assert vector.query["searched"] == "yellow shoes" and {h.product.attributes["colour"] for h in vector.hits} == {"Yellow"}


def test_spell_off_searches_the_text_as_typed(index):
    engine = SearchEngine(index, PaletteEncoder())
    as_typed = engine.search_text("diesl jeans", k=12, mode="lexical", spell=False)
    assert as_typed.corrections == [] and as_typed.query["searched"] == "diesl jeans"
    assert {m.group for m in as_typed.entities} == {"category"}  # no brand in "diesl"
    assert {h.product.attributes["brand"] for h in as_typed.hits} == {"Puma", "Diesel"}  # every pair of jeans, either brand


def test_an_index_written_before_words_were_kept_searches_as_typed(tmp_path):
    root = tmp_path / "shop"
    catalog = read_jsonl(write_catalog(root))
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(progress=False))
    (index.path / lexical_folder(index.info["generation"]) / "words.json").unlink()
    old = SearchEngine(ProductIndex.open(index.path), PaletteEncoder())
    assert old.search_text("diesl jeans", mode="lexical").corrections == []


def test_the_service_reports_corrections_and_takes_spell(index):
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder())))
    body = client.get("/search", params={"q": "pumma shoes", "mode": "lexical"}).json()
    assert body["query"]["searched"] == "puma shoes" and body["corrections"][0]["typed"] == "pumma"
    assert {r["attributes"]["brand"] for r in body["results"][:2]} == {"Puma"}
    assert client.get("/search", params={"q": "pumma shoes", "spell": "false"}).json()["corrections"] == []
    posted = client.post("/search", json={"q": "pumma shoes", "spell": False}).json()
    assert posted["query"]["searched"] == "pumma shoes" and posted["corrections"] == []


def test_keys_of_corrected_words_match_the_catalog(index):
    """A corrected word is spelt as the catalog writes it: its key is the catalog's key."""
    spelled = SearchEngine(index, PaletteEncoder()).speller.correct("yelow diesl footwaer")
    assert key(spelled.text) == key("yellow diesel footwear")


def test_an_unknown_word_is_looked_up_once(monkeypatch):
    """Shops' queries repeat: the vocabulary scan for an unknown word runs once per speller."""
    spell = speller()
    scans = []
    nearest = spell.nearest
    monkeypatch.setattr(spell, "nearest", lambda *args: scans.append(args) or nearest(*args))
    assert spell.correct("red snekers").text == "red sneakers"
    assert spell.correct("snekers shoes").text == "sneakers shoes"
    assert scans == [("snekers", "sneker")]
