"""Search-as-you-type suggestions: the query so far completed from the index's values and words."""
import pytest
from _searchkit import SHOES, PaletteEncoder, product, write_catalog
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.service import create_app
from catalogclip.search.suggest import WORD, Suggester
from catalogclip.search.text import fold, key

VALUES = {"brand": {"Puma": 6, "Golden Goose": 3, "Pumpkin & Co": 1}, "colour": {"Black": 5, "Blue": 4},
          "category": {"Shoes": 4, "Shirts": 4, "Footwear": 4}}
WORDS = {"puma": 6, "pumps": 2, "black": 5, "blue": 4, "golden": 3, "goose": 3, "shoes": 4, "shirts": 4, "shiny": 1, "gloves": 2}


def texts(text, k=8, values=VALUES, words=WORDS):
    return [(s.text, s.kind, s.products) for s in Suggester(values, words).suggest(text, k)]


def test_the_last_word_is_completed_values_first_then_by_products():
    assert texts("pu") == [("Puma", "brand", 6), ("Pumpkin & Co", "brand", 1), ("pumps", WORD, 2)]
    assert texts("sh") == [("Shirts", "category", 4), ("Shoes", "category", 4), ("shiny", WORD, 1)]  # ties: alphabetical
    assert texts("BLA") == [("Black", "colour", 5)]  # folded; the word "black" is the same text as the value
    # one form of a text: "red shoe" matches as "red Shoes" does, and "puma" is what is typed as "pumas"
    assert texts("red sh", words={"shoe": 9}) == [("red Shirts", "category", 4), ("red Shoes", "category", 4)]
    assert texts("pumas") == []
    assert texts("pu", k=1) == [("Puma", "brand", 6)]


def test_words_before_the_last_are_kept_as_typed():
    assert texts("Black pu")[:2] == [("Black Puma", "brand", 6), ("Black Pumpkin & Co", "brand", 1)]


def test_a_value_of_several_words_completes_the_words_it_starts_with():
    # "golden g": the value "Golden Goose" completes both words; "golden golden" is no suggestion
    assert texts("golden g") == [("Golden Goose", "brand", 3), ("golden gloves", WORD, 2)]


def test_nothing_is_suggested_for_a_finished_word_or_an_unknown_prefix():
    assert texts("puma ") == [] and texts("puma") == [] and texts("xq") == [] and texts("") == []


@given(st.text(alphabet="abcdefghilmnoprstuwy &", min_size=1, max_size=12), st.integers(1, 6))
def test_every_suggestion_extends_what_was_typed(typed, k):
    found = Suggester(VALUES, WORDS).suggest(typed, k)
    assert len(found) <= k
    words = typed.split()
    for s in found:
        assert any(_completes(s.text, words, n) for n in range(1, min(3, len(words)) + 1)), s
        assert key(s.text) != key(" ".join(words))
    order = [(s.kind == WORD, -s.products, fold(s.text)) for s in found]
    assert order == sorted(order)


def _completes(text: str, words: list[str], n: int) -> bool:
    """Whether `text` is the typed words but the last n, as typed, then a completion of those n."""
    head = " ".join(words[:-n]) + " " if len(words) > n else ""
    return text.startswith(head) and fold(text[len(head):]).startswith(fold(" ".join(words[-n:])))


# --- in the engine and the service ----------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """12 products: Puma and Diesel, six colours, shoes / shirts / jeans (tests/_searchkit.py)."""
    root = tmp_path_factory.mktemp("shop")
    return SearchEngine(build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), root / "idx", BuildOptions(progress=False)), PaletteEncoder())


def test_the_index_counts_the_products_of_each_value_and_category_name(engine):
    vocabulary = engine.index.vocabulary()
    assert vocabulary["brand"] == {"Diesel": 6, "Puma": 6} and vocabulary["colour"]["Yellow"] == 2
    assert vocabulary["category"] == {"Apparel": 8, "Bottomwear": 4, "Jeans": 4, "Topwear": 4, "Shirts": 4, "Footwear": 4, "Shoes": 4}


def test_the_engine_suggests_from_the_index(engine):
    body = engine.suggest("diesel j")
    assert body["suggestions"][0] == {"text": "diesel Jeans", "kind": "category", "products": 4}
    assert [s["text"] for s in engine.suggest("pu", k=1)["suggestions"]] == ["Puma"]


def test_the_service_suggests_and_refuses_bad_input(engine):
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    body = client.get("/suggest", params={"q": "foot"}).json()
    assert body["query"] == "foot" and body["suggestions"][0] == {"text": "Footwear", "kind": "category", "products": 4}
    assert client.get("/suggest", params={"q": ""}).status_code == 400
    assert client.get("/suggest", params={"q": "pu", "k": 0}).status_code == 422


def _every_completion(values, words, typed, k):
    """The suggestions by brute force: every value and word checked, the best of each text (as
    search matches it) kept, all sorted, the first k."""
    typed_words = typed.split()
    if not typed or typed[-1].isspace():
        return []
    candidates = []
    for n in range(min(3, len(typed_words)), 0, -1):
        head = " ".join(typed_words[:-n]) + " " if len(typed_words) > n else ""
        hits = [(head + v, g, c) for g, counts in values.items() for v, c in counts.items() if fold(v).startswith(fold(" ".join(typed_words[-n:])))]
        candidates += hits
        if hits:
            break
    head = " ".join(typed_words[:-1]) + " " if len(typed_words) > 1 else ""
    before = fold(typed_words[-2]) if len(typed_words) > 1 else None
    candidates += [(head + w, WORD, c) for w, c in words.items() if w.startswith(fold(typed_words[-1])) and w != before]
    best = {}
    for text, kind, count in sorted(candidates, key=lambda s: (s[1] == WORD, -s[2], fold(s[0]), s[0], s[1])):
        if key(text) != key(" ".join(typed_words)):
            best.setdefault(key(text), (text, kind, count))
    return list(best.values())[:k]


@settings(max_examples=1000)
@given(st.dictionaries(st.text("abc", min_size=1, max_size=4), st.integers(1, 5), max_size=40),
       st.dictionaries(st.text("abcAB ", min_size=1, max_size=6).filter(str.strip), st.integers(1, 5), max_size=15),
       st.dictionaries(st.text("abcAB", min_size=1, max_size=3), st.integers(1, 5), max_size=8),
       st.text("abc ", min_size=1, max_size=7), st.integers(1, 5))
def test_suggestions_are_the_best_k_of_every_completion(words, brands, colours, typed, k):
    """Only the k values and enough words with the most products are looked at: the same as
    checking every completion (a one-letter prefix of a large catalog has thousands)."""
    values = {"brand": brands, "colour": colours}
    got = [(s.text, s.kind, s.products) for s in Suggester(values, words).suggest(typed, k)]
    assert got == _every_completion(values, words, typed, k)


def test_the_engine_never_completes_to_a_stop_word(tmp_path):
    root = tmp_path / "shop"
    products = [product("t1", "black", "The Theory", SHOES, 10.0), product("t2", "red", "Puma", SHOES, 20.0)]
    engine = SearchEngine(build_index(PaletteEncoder(), read_jsonl(write_catalog(root, products)), tmp_path / "idx", BuildOptions(progress=False)),
                          PaletteEncoder())
    assert engine.index.lexical.words["the"] == 1  # a word of the catalog's text ...
    found = [s["text"] for s in engine.suggest("black th")["suggestions"]]
    assert found == ["black The Theory", "black theory"]  # ... but no word to complete "th" to
