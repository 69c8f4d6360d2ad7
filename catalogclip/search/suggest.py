"""Search-as-you-type suggestions: the query so far, completed from what the catalog holds.

The last word being typed (or the last few, for values of several words: "golden g") is completed
to the index's entity values (attribute values, category names) and to the words of its product
text, most products first; the words typed before it are kept as typed ("black pu" -> "black
puma"). Matching is on folded text (case, accents), by prefix, with bisection over sorted keys,
so a suggestion costs a few lookups whatever the catalog's size.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping

from catalogclip.search.lexical import STOPWORDS
from catalogclip.search.text import fold, key

if TYPE_CHECKING:
    from catalogclip.search.index import ProductIndex

#: values of up to this many words are completed from the end of the query ("new balance ru")
MAX_PHRASE_WORDS = 3
WORD = "word"  # the kind of a suggestion completed from the product text


@dataclass(frozen=True)
class Suggestion:
    text: str  # the whole query, completed
    kind: str  # the entity group of the completed value ("brand", "category" ...) or "word"
    products: int  # how many products carry the completed value or word

    def to_json(self) -> dict:
        return {"text": self.text, "kind": self.kind, "products": self.products}


class _Prefixes:
    """Entries (folded key, text, kind, count) sorted by key, looked up by prefix."""

    def __init__(self, entries: Iterable[tuple[str, str, str, int]]) -> None:
        self.entries = sorted(entries)
        self.keys = [e[0] for e in self.entries]

    def starting(self, prefix: str) -> list[tuple[str, str, str, int]]:
        start = bisect_left(self.keys, prefix)
        end = bisect_left(self.keys, prefix + "\U0010ffff", lo=start)
        return self.entries[start:end]


class Suggester:
    """Completions from `values` ({group: {value: products}}, e.g. `ProductIndex.vocabulary()`)
    and `words` ({folded word: products}, the lexical side's)."""

    def __init__(self, values: Mapping[str, Mapping[str, int]], words: Mapping[str, int]) -> None:
        self._values = _Prefixes((fold(v), v, group, n) for group, counts in values.items() for v, n in counts.items() if fold(v).strip())
        self._words = _Prefixes((w, w, WORD, n) for w, n in words.items())

    def __len__(self) -> int:
        """Values and words it completes to."""
        return len(self._values.keys) + len(self._words.keys)

    @classmethod
    def of_index(cls, index: "ProductIndex") -> "Suggester":
        """Completions from an index: its entity values, and the words of its product text but stop words."""
        return cls(index.vocabulary(), {word: n for word, n in index.lexical.words.items() if word not in STOPWORDS})

    def suggest(self, text: str, k: int = 8) -> list[Suggestion]:
        """Up to k completions of `text` (none once it ends in a space: no word is being typed)."""
        if not text or text[-1].isspace():
            return []
        words = text.split()
        typed = key(" ".join(words))
        found: dict[tuple[str, ...], Suggestion] = {}
        # values completing the last n words, for the longest n that has any: "golden g" -> "golden goose"
        for n in range(min(MAX_PHRASE_WORDS, len(words)), 0, -1):
            head, fragment = _head(words, n), fold(" ".join(words[-n:]))
            values = self._values.starting(fragment)
            _fill(found, k, typed, (Suggestion(head + value, group, count) for _, _, value, group, count in _by_products(values)))
            if values:
                break
        # then words: "golden g" -> "golden golden" is no suggestion
        head, before = _head(words, 1), fold(words[-2]) if len(words) > 1 else None
        _fill(found, k, typed, (Suggestion(head + word, kind, count) for _, _, word, kind, count in _by_products(self._words.starting(fold(words[-1])))
                                if word != before))
        return list(found.values())


def _by_products(entries: list[tuple[str, str, str, int]]) -> Iterator[tuple[int, str, str, str, int]]:
    """Entries, most products first (then by key), as (-products, key, text, kind, products): a heap
    popped only as far as suggestions are needed, so a one-letter prefix's thousands of words cost
    one pass, not a suggestion each."""
    heap = [(-count, folded, text, kind, count) for folded, text, kind, count in entries]
    heapq.heapify(heap)
    while heap:
        yield heapq.heappop(heap)


def _fill(found: dict[tuple[str, ...], Suggestion], k: int, typed: tuple[str, ...], suggestions: Iterable[Suggestion]) -> None:
    """Add suggestions in order until there are k, one per text as search matches it ("red
    backpack" = "red Backpacks", `text.key`: the first, i.e. a value's, or the most products'),
    none the same as what is typed."""
    for suggestion in suggestions:
        if len(found) >= k:
            return
        matched = key(suggestion.text)
        if matched != typed:
            found.setdefault(matched, suggestion)


def _head(words: list[str], n: int) -> str:
    """The words before the last n, as typed, with a space after them."""
    return " ".join(words[:-n]) + " " if len(words) > n else ""
