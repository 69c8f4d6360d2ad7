"""Typo-tolerant queries: a word the catalog does not know is corrected to one it does.

A shopper's word is corrected when neither it nor its stem occurs in the catalog's text, it is
made of letters, at least `MIN_LETTERS` long, and it is not a common English word (the more
common half of symspellpy's 82,765-word frequency list): "linen" asked of a catalog without
linen stays as typed instead of becoming "liner", and the vector side can still read it; the
rarer half is mostly names, foreign words and misspellings ("kura", "wite"), which shoppers type
by mistake. Its correction is the catalog word nearest in optimal-string-alignment distance
(rapidfuzz: swapping two neighbours is one edit), as written or else by its stem (so "gpove"
finds a catalog that writes "Gloves"), within Elasticsearch's AUTO fuzziness (one edit up to 5 letters, two
from 6), and among equally near words the one most products carry. A word with none is split
into two catalog words where it can be ("goldengoose" -> "golden goose").

Every side of a search reads the corrected query (vector, BM25, entity recognition); the result
says what was changed, and a search can ask for its text as typed instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Container, Mapping

from rapidfuzz import process
from rapidfuzz.distance import OSA

from catalogclip.search.text import Token, fold, stem, tokens

#: shorter words are left alone: too many catalog words lie one edit from them ("tee", "xxl")
MIN_LETTERS = 4
#: the shortest part a word is split into
MIN_PART = 3
#: unknown words whose correction a speller remembers
UNKNOWN_WORDS_CACHED = 65_536


def max_edits(word: str) -> int:
    """Elasticsearch's AUTO fuzziness: one edit for words of up to 5 letters, two from 6."""
    return 1 if len(word) <= 5 else 2


@lru_cache(maxsize=1)
def english_frequencies() -> dict[str, int]:
    """symspellpy's English frequency dictionary: word (folded) -> count."""
    text = (files("symspellpy") / "frequency_dictionary_en_82_765.txt").read_text(encoding="utf-8")
    return {fold(word): int(count) for word, count in (line.split(" ") for line in text.splitlines() if line)}


@lru_cache(maxsize=1)
def english_words() -> frozenset[str]:
    """The more common half of the English frequency dictionary (by count)."""
    counted = sorted(((count, word) for word, count in english_frequencies().items()), reverse=True)
    return frozenset(word for _, word in counted[: len(counted) // 2])


@dataclass(frozen=True)
class Correction:
    typed: str  # the query's text as typed
    to: str  # what the search reads instead
    start: int  # character offsets in the typed query
    end: int

    def to_json(self) -> dict:
        return {"typed": self.typed, "to": self.to, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Spelled:
    text: str  # the query as searched
    corrections: list[Correction] = field(default_factory=list)


class Speller:
    """Corrects query words towards `words` (a catalog's words: folded surface form -> number of
    products carrying it); `stems` are the catalog's stemmed terms (a word whose stem is there
    is known: "sneaker" for a catalog that writes "sneakers")."""

    def __init__(self, words: Mapping[str, int], stems: Container[str]) -> None:
        self.words = dict(words)
        self.stems = stems
        #: a catalog stem -> the catalog word written with it that most products carry
        self._word_of_stem: dict[str, str] = {}
        for word in sorted(self.words, key=lambda w: (-self.words[w], w)):
            self._word_of_stem.setdefault(stem(word), word)
        self._by_length = _by_length(self.words)
        self._stems_by_length = _by_length(self._word_of_stem)
        # a shop's queries repeat: each unknown word's scan of the vocabulary is done once
        self._unknown = lru_cache(maxsize=UNKNOWN_WORDS_CACHED)(self._correct_unknown)

    def __len__(self) -> int:
        return len(self.words)

    def correct(self, text: str) -> Spelled:
        """The query with its unknown words corrected, and what was changed."""
        corrections = []
        for token in tokens(text):
            to = self._correction(token)
            if to is not None:
                corrections.append(Correction(text[token.start : token.end], to, token.start, token.end))
        for c in reversed(corrections):
            text = text[: c.start] + c.to + text[c.end :]
        return Spelled(text, corrections)

    def _correction(self, token: Token) -> str | None:
        word = token.word
        if len(word) < MIN_LETTERS or not word.isalpha() or self.known(token) or word in english_words():
            return None
        return self._unknown(word, token.text)

    def _correct_unknown(self, word: str, word_stem: str) -> str | None:
        return self.nearest(word, word_stem) or self.split(word)

    def known(self, token: Token) -> bool:
        return token.word in self.words or token.text in self.stems

    def nearest(self, word: str, word_stem: str) -> str | None:
        """The catalog word nearest to `word` within the word's edit budget, the most common of
        ties; failing that, the one whose stem is nearest to the word's stem."""
        budget = max_edits(word)
        found = [(distance, -self.words[w], w) for w, distance in _near(word, self._by_length, budget)]
        if not found:
            found = [(distance, -self.words[w], w) for w, distance in
                     ((self._word_of_stem[s], d) for s, d in _near(word_stem, self._stems_by_length, budget))]
        return min(found)[2] if found else None

    def split(self, word: str) -> str | None:
        """`word` as two catalog words ("goldengoose" -> "golden goose"), the most common pair."""
        splits = [(min(self.words[a], self.words[b]), a, b) for a, b in
                  ((word[:i], word[i:]) for i in range(MIN_PART, len(word) - MIN_PART + 1)) if a in self.words and b in self.words]
        if not splits:
            return None
        _, a, b = max(splits)
        return f"{a} {b}"


def _by_length(strings) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for string in sorted(strings):
        out.setdefault(len(string), []).append(string)
    return out


def _near(string: str, by_length: dict[int, list[str]], budget: int) -> list[tuple[str, int]]:
    """(string, distance) of those in `by_length` within `budget` edits of `string`."""
    return [(found, distance) for length in range(len(string) - budget, len(string) + budget + 1)
            for found, distance, _ in process.extract(string, by_length.get(length, ()), scorer=OSA.distance, score_cutoff=budget, limit=None)]
