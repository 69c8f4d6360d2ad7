"""How shoppers' words are matched: one normalisation for entity recognition and for BM25.

A word is folded (case and accents: "Crème" -> "creme"), loses a possessive ("Girl's" -> "girl"),
a single letter is joined to the word after it ("t shirt", "t-shirt" -> "tshirt", but the
article "a" stays a word unless a hyphen ties it: "A-line" -> "aline"), and the word is stemmed
with the Snowball English stemmer (PyStemmer), so plurals match ("Tshirts" -> "tshirt",
"pumas" -> "puma"). Tokens keep the character offsets of what they came from, so a recognised
phrase can be shown as the shopper typed it.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import NamedTuple

import Stemmer

# a word, with an optional possessive after it ("girl's", "boys'") that is dropped
_WORD = re.compile(r"([^\W_]+)(?:['’]s\b|(?<=s)['’])?")
#: letters that are words of their own when they stand alone ("a red shirt", "i")
_ARTICLES = frozenset({"a", "i"})
_stemmer = Stemmer.Stemmer("english")


class Token(NamedTuple):
    start: int  # character offsets in the original text
    end: int
    text: str  # normalised form
    word: str  # the word as matched before stemming: folded, a lone letter joined ("tshirts")


def fold(text: str) -> str:
    """Case- and accent-insensitive form used for matching (Crème -> creme)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    return _stemmer.stemWord(word)


def tokens(text: str) -> list[Token]:
    """The normalised words of `text` with their offsets (see the module docstring)."""
    words = [(m.start(), m.end(1), fold(m.group(1))) for m in _WORD.finditer(text)]
    out: list[Token] = []
    i = 0
    while i < len(words):
        start, end, word = words[i]
        if _joins_next(text, words, i):
            _, end, after = words[i + 1]
            word, i = word + after, i + 1
        out.append(Token(start, end, stem(word), word))
        i += 1
    return out


def _joins_next(text: str, words: list[tuple[int, int, str]], i: int) -> bool:
    """A lone letter joins the next word, if it follows at once or after a hyphen or a space."""
    start, end, word = words[i]
    if len(word) != 1 or not word.isalpha() or i + 1 == len(words):
        return False
    gap = text[end : words[i + 1][0]]
    return gap in ("-", "‐", "–") or (gap == " " and word not in _ARTICLES)


def compounds(text: str) -> list[str]:
    """Hyphenated words also as one word ("anti-slip" -> "antislip"), so either spelling matches."""
    return [stem("".join(fold(part) for part in re.split(r"[-‐–]", m.group()))) for m in re.finditer(r"[^\W_]+(?:[-‐–][^\W_]+)+", text)]


@lru_cache(maxsize=200_000)
def key(text: str) -> tuple[str, ...]:
    """The normalised words of a phrase: two phrases match when their keys are equal."""
    return tuple(t.text for t in tokens(text))
