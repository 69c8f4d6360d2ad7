"""The lexical side of an index: BM25 (bm25s) over each product's text.

A product's document is its text fields, each repeated as often as its integer weight says
(`product_document`), so a title word counts twice by default; any BM25 engine given the same
documents and the same analyser (`analyse`: catalogclip/search/text.py's normalisation, English
stop words left out, hyphenated words also joined) scores alike. Documents are product rows of the
metadata store, so filters are the store's row masks.

It also keeps the catalog's words as written (folded, unstemmed) with the number of products
carrying each: what query spelling corrects towards (catalogclip/search/spelling.py).

On disk it is a folder ``lexical-<gen>/`` (bm25s's arrays + ``rows.npy``, the product row of each
document, + ``words.json``), written under the same generation as the vector file. A folder
written before ``words.json`` existed loads with no words: its queries are searched as typed
until the next commit (`catalogclip index --update`) or rebuild writes them. BM25's IDF depends on every
document, so a commit that changed products re-indexes all of them.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from catalogclip.catalog.schema import Product
from catalogclip.search import text as shop_text

FIELDS = ("title", "attributes", "category", "description")
DEFAULT_WEIGHTS = {"title": 2, "attributes": 1, "category": 1, "description": 1}
#: words BM25 leaves out (and suggestions never complete to), as written and as stemmed
STOPWORDS = frozenset(shop_text.stem(w) for w in STOPWORDS_EN) | frozenset(STOPWORDS_EN)
#: words about shopping, not products ("shop sandals", "kurtis online"): a catalog that lacks them
#: is not missing anything the shopper asked for, so they do not lower a query's coverage
SHOPPING_WORDS = "buy shop shopping online store sale cheap cheapest price prices deal deals offer offers discount best order"


@dataclass
class LexicalParams:
    """How product text becomes BM25 documents (stored with the index)."""

    weights: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    k1: float = 1.5
    b: float = 0.75

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown text field(s) {', '.join(sorted(unknown))} (known: {', '.join(FIELDS)})")
        bad = {f: w for f, w in self.weights.items() if not isinstance(w, int) or isinstance(w, bool) or w < 0}
        if bad:
            raise ValueError(f"field weights must be whole numbers >= 0 (a field repeats that often), got {bad}")
        if not any(self.weights.values()):
            raise ValueError("at least one text field needs a weight above 0")

    def to_json(self) -> dict:
        return {"weights": dict(self.weights), "k1": self.k1, "b": self.b}


def parse_weights(spec: str) -> dict[str, int]:
    """``"title=2,attributes=1"`` -> {"title": 2, "attributes": 1}; unnamed fields get 0."""
    weights = {f: 0 for f in FIELDS}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"field weight '{part}' is not FIELD=WHOLE_NUMBER (fields: {', '.join(FIELDS)})")
        weights[name.strip()] = int(value)
    return weights


def product_fields(product: Product) -> dict[str, str]:
    return {
        "title": product.title,
        "attributes": "\n".join(product.attributes.values()),  # a line each: analysed once per distinct value
        "category": " ".join(product.category_path),
        "description": product.description,
    }


def product_document(product: Product, weights: Mapping[str, int]) -> str:
    """A product's searchable text: every field, repeated `weights[field]` times."""
    fields = product_fields(product)
    return "\n".join(fields[f] for f in FIELDS for _ in range(weights.get(f, 0)) if fields[f])


def analyse(text: str) -> list[str]:
    """BM25 terms of a text: normalised words without stop words, plus joined hyphenated words.
    Lines are analysed apart (and remembered: a catalog repeats its attribute values and paths)."""
    return [term for line in text.split("\n") for term in _analyse_line(line)]


@lru_cache(maxsize=65_536)
def _line_tokens(line: str) -> tuple[shop_text.Token, ...]:
    return tuple(shop_text.tokens(line))


@lru_cache(maxsize=65_536)
def _analyse_line(line: str) -> tuple[str, ...]:
    words = [t.text for t in _line_tokens(line) if t.text not in STOPWORDS]
    seen = set(words)
    return tuple(words + [w for w in shop_text.compounds(line) if w not in seen])


def document_words(text: str) -> set[str]:
    """The distinct words of a text as written (folded, not stemmed), letters only."""
    return {t.word for line in text.split("\n") for t in _line_tokens(line) if t.word.isalpha()}


@lru_cache(maxsize=1)
def _shopping_terms() -> frozenset[str]:
    return frozenset(analyse(SHOPPING_WORDS))


class LexicalIndex:
    """BM25 over product documents; document i is product row `rows[i]`."""

    ROWS_FILE = "rows.npy"
    WORDS_FILE = "words.json"

    def __init__(self, retriever: bm25s.BM25, rows: np.ndarray, words: dict[str, int] | None = None) -> None:
        self.retriever = retriever
        self.rows = rows
        #: the catalog's words as written -> how many products carry each
        self.words = words or {}

    @classmethod
    def build(cls, products: Iterable[tuple[int, Product]], params: LexicalParams) -> "LexicalIndex":
        rows, corpus, words = [], [], Counter()
        for row, product in products:
            rows.append(row)
            document = product_document(product, params.weights)
            corpus.append(analyse(document))
            words.update(document_words(document))
        retriever = bm25s.BM25(k1=params.k1, b=params.b)
        if not any(corpus):  # bm25s cannot index an empty vocabulary; "" is never a query term
            corpus = [[""]] * max(len(corpus), 1)
        retriever.index(corpus, show_progress=False)
        return cls(retriever, np.asarray(rows, dtype=np.int64), dict(sorted(words.items())))

    @classmethod
    def load(cls, path: str | Path) -> "LexicalIndex":
        path = Path(path)
        retriever = bm25s.BM25.load(str(path), show_progress=False)
        words = path / cls.WORDS_FILE
        return cls(retriever, np.load(path / cls.ROWS_FILE), json.loads(words.read_text(encoding="utf-8")) if words.exists() else None)

    def save(self, path: str | Path) -> None:
        """Write the folder at `path` whole: into a temporary folder, then renamed."""
        path = Path(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            self.retriever.save(str(tmp), show_progress=False)
            np.save(tmp / self.ROWS_FILE, self.rows)
            (tmp / self.WORDS_FILE).write_text(json.dumps(self.words, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __len__(self) -> int:
        return len(self.rows)

    def query_terms(self, text: str) -> list[str]:
        """The query's terms, plus each pair of adjacent words that the catalog writes as one word
        ("sweat shirt" -> also "sweatshirt")."""
        terms = analyse(text)
        return terms + [a + b for a, b in self._joined_pairs(text) if a + b not in terms]

    def _joined_pairs(self, text: str) -> list[tuple[str, str]]:
        """Adjacent words of the query that the catalog writes as one word."""
        words = shop_text.key(text)
        return [(a, b) for a, b in zip(words, words[1:]) if a + b in self.retriever.vocab_dict]

    def coverage(self, text: str) -> float:
        """The share of the query's terms the catalog's text has (1.0 for a query without terms); a
        word counts as known when the catalog writes it joined to its neighbour ("t shirt"), and
        shopping words the catalog lacks ("online") do not count."""
        vocab = self.retriever.vocab_dict
        terms = [t for t in analyse(text) if t in vocab or t not in _shopping_terms()]
        if not terms:
            return 1.0
        joined = {word for pair in self._joined_pairs(text) for word in pair}
        return sum(term in vocab or term in joined for term in terms) / len(terms)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every document for a query (0 where no term matches)."""
        ids = self.retriever.get_tokens_ids(self.query_terms(text))
        if not ids:  # bm25s cannot score an empty query
            return np.zeros(len(self.rows), np.float32)
        return self.retriever.get_scores(ids).astype(np.float32)

    def search(self, text: str, k: int, allowed_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, product rows) among documents matching at least one query term,
        restricted to rows where the bool mask `allowed_rows` is true; ties by smaller row."""
        scores = self.scores(text)
        matching = scores > 0
        if allowed_rows is not None:
            inside = self.rows < len(allowed_rows)
            matching &= inside & allowed_rows[np.where(inside, self.rows, 0)]
        docs = np.flatnonzero(matching)
        if len(docs) > k:
            kth = np.partition(scores[docs], len(docs) - k)[len(docs) - k]
            docs = docs[scores[docs] >= kth]
        order = np.lexsort((self.rows[docs], -scores[docs]))[:k]
        return scores[docs[order]], self.rows[docs[order]]


def lexical_folder(generation: int) -> str:
    return f"lexical-{generation}"
