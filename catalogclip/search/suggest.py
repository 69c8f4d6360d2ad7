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
from typing import Iterable, Mapping

from catalogclip.search.text import fold

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
        self._values = _Prefixes(_one_per_text((fold(v), v, group, n) for group, counts in values.items() for v, n in counts.items() if fold(v).strip()))
        self._words = _Prefixes((w, w, WORD, n) for w, n in words.items())

    def suggest(self, text: str, k: int = 8) -> list[Suggestion]:
        """Up to k completions of `text` (none once it ends in a space: no word is being typed)."""
        if not text or text[-1].isspace():
            return []
        words = text.split()
        found: dict[str, Suggestion] = {}
        # values completing the last n words, for the longest n that has any: "golden g" -> "golden goose"
        for n in range(min(MAX_PHRASE_WORDS, len(words)), 0, -1):
            head, fragment = _head(words, n), fold(" ".join(words[-n:]))
            values = self._values.starting(fragment)
            for _, value, group, count in _most_products(values, k + 1):  # one may be what is typed already
                _add(found, Suggestion(head + value, group, count))
            if values:
                break
        head, before = _head(words, 1), fold(words[-2]) if len(words) > 1 else None
        # enough words to fill k after those equal to a value found, to the word before or to what is typed are dropped
        for _, word, kind, count in _most_products(self._words.starting(fold(words[-1])), k + len(found) + 2):
            if word != before:  # "golden g" -> "golden golden" is no suggestion
                _add(found, Suggestion(head + word, kind, count))
        found.pop(fold(" ".join(words)), None)  # what is typed already is no suggestion
        # values before words, then the most products, then alphabetical
        return heapq.nsmallest(k, found.values(), key=lambda s: (s.kind == WORD, -s.products, fold(s.text)))


def _one_per_text(entries: Iterable[tuple[str, str, str, int]]) -> list[tuple[str, str, str, int]]:
    """One entry per folded text, the one most products carry ("Black" is a colour and a
    category: suggested once, as the group that has more of it)."""
    best: dict[str, tuple[str, str, str, int]] = {}
    for entry in sorted(entries, key=lambda e: (e[0], -e[3], e[1], e[2])):
        best.setdefault(entry[0], entry)
    return list(best.values())


def _most_products(entries: list[tuple[str, str, str, int]], n: int) -> list[tuple[str, str, str, int]]:
    """The n entries most products carry; ties in key order (heapq.nlargest is stable), so a
    one-letter prefix's thousands of words cost one pass, not a suggestion each."""
    return heapq.nlargest(n, entries, key=lambda e: e[3])


def _head(words: list[str], n: int) -> str:
    """The words before the last n, as typed, with a space after them."""
    return " ".join(words[:-n]) + " " if len(words) > n else ""


def _add(found: dict[str, Suggestion], suggestion: Suggestion) -> None:
    """Keep the first suggestion of each text (folded): a value's before the same text as a word."""
    found.setdefault(fold(suggestion.text), suggestion)
