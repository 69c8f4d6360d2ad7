"""Queries end to end: validate, understand, encode with the model, search the index.

`SearchEngine` is what the CLI `search` command and the service share. It talks to the model
only through the `Encoder` protocol (catalogclip/embeddings.py).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from catalogclip.search.index import Hit, IncompatibleModelError, ProductIndex
from catalogclip.search.query import (
    EntityLinker,
    EntityMatch,
    QueryError,
    check_clean,
    filter_mapping,
    normalise_category,
    vocab_values,
)

if TYPE_CHECKING:
    from PIL import Image

    from catalogclip.embeddings import Encoder

MAX_QUERY_CHARS = 1000
MAX_K = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class SearchResult:
    hits: list[Hit]
    query: dict
    entities: list[EntityMatch] = field(default_factory=list)
    took_ms: float = 0.0

    def to_json(self) -> dict:
        return {
            "query": self.query,
            "entities": [m.to_json() for m in self.entities],
            "took_ms": round(self.took_ms, 2),
            "results": [hit.to_json() for hit in self.hits],
        }


def check_text(text: str, what: str = "query") -> str:
    """The text stripped, with control characters read as spaces; refused if empty, overlong,
    or holding what no encoder can take (NULs, lone surrogates)."""
    text = _CONTROL.sub(" ", check_clean(text or "", what)).strip()
    if not text:
        raise QueryError(f"the {what} is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the {what} is {len(text)} characters long; at most {MAX_QUERY_CHARS} are allowed")
    return text


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


class SearchEngine:
    def __init__(self, index: ProductIndex, encoder: "Encoder") -> None:
        self.index = index
        self.encoder = encoder
        try:
            index.check_model(encoder.model_id, encoder.dim)
            #: why queries from this encoder cannot search this index (None: they can)
            self.incompatible: str | None = None
        except IncompatibleModelError as exc:
            self.incompatible = str(exc)
        self.linker = EntityLinker(vocab_values(encoder.vocabs)) if encoder.vocabs is not None else None

    def _check_model(self) -> None:
        if self.incompatible is not None:
            raise IncompatibleModelError(self.incompatible)

    def understand(self, text: str) -> tuple[dict[str, str], list[EntityMatch]]:
        """Entities recognised in the text (EI-CLIP runs only; others recognise nothing)."""
        return self.linker.entities(text) if self.linker is not None else ({}, [])

    def search_text(self, text: str, k: int = 10, filters: Mapping | None = None) -> SearchResult:
        start = time.perf_counter()
        text, k, clauses = check_text(text), check_k(k), self.index.parse_filters(filters)
        self._check_model()
        entities, matches = self.understand(text)
        vector = self.encoder.encode_texts([text], [entities] if self.linker is not None else None)[0]
        hits = self.index.search(vector, k, clauses)
        return SearchResult(hits, {"text": text, "filters": dict(filters or {})}, matches, _ms(start))

    def search_image(self, image: "Image.Image", k: int = 10, filters: Mapping | None = None) -> SearchResult:
        start = time.perf_counter()
        k, clauses = check_k(k), self.index.parse_filters(filters)
        self._check_model()
        vector = self.encoder.encode_images([image.convert("RGB")])[0]
        hits = self.index.search(vector, k, clauses)
        return SearchResult(hits, {"image": f"{image.width}x{image.height}", "filters": dict(filters or {})}, [], _ms(start))

    def search_category(self, path: str, k: int = 10, filters: Mapping | None = None, within: bool = True) -> SearchResult:
        """Products for a category query (CLIP-ITA's category-to-image retrieval); `within`
        keeps them inside the category's subtree, as a category browser does."""
        start = time.perf_counter()
        path = normalise_category(check_text(path, "category path"))
        k = check_k(k)
        filters = {**filter_mapping(filters), "category": path} if within else filter_mapping(filters)
        clauses = self.index.parse_filters(filters)
        self._check_model()
        vector = self.encoder.encode_categories([path])[0]
        hits = self.index.search(vector, k, clauses)
        return SearchResult(hits, {"category": path, "filters": filters}, [], _ms(start))

    def similar(self, product_id: str, k: int = 10, filters: Mapping | None = None) -> SearchResult:
        """Products that look like this one (its image vectors; no model call, so any index works)."""
        start = time.perf_counter()
        k, clauses = check_k(k), self.index.parse_filters(filters)
        vector = self.index.product_vector(product_id)
        hits = self.index.search(vector, k, clauses, exclude=product_id)
        return SearchResult(hits, {"similar_to": product_id, "filters": dict(filters or {})}, [], _ms(start))


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def open_engine(
    index_path: str | Path,
    run: str | Path | None = None,
    device: str = "cpu",
    catalog_root: str | Path | None = None,
    need_model: bool = True,
) -> SearchEngine:
    """An engine over an index, encoding queries with `run` (default: the run that built it).

    With `need_model`, a run other than the index's model is refused here, at once.
    """
    from catalogclip.embed import RunEncoder
    from catalogclip.train.runs import load_run

    index = ProductIndex.open(index_path, catalog_root)
    run = run or index.info.get("run")
    if not run:
        raise ValueError(f"{index_path} does not record the run it was built with; give --run")
    loaded = load_run(run, device)
    engine = SearchEngine(index, RunEncoder(method=loaded.method, model_id=loaded.model_id))
    if need_model and engine.incompatible is not None:
        raise IncompatibleModelError(engine.incompatible)
    return engine
