"""Queries end to end: validate, understand, encode with the model, search the index.

`SearchEngine` is what the CLI `search` command and the service share. It talks to the model
only through the `Encoder` protocol (catalogclip/embeddings.py).

A text query runs in one of three modes: ``vector`` (the model's embedding of the text against
the image vectors), ``lexical`` (BM25 over product text) or ``hybrid`` (both, fused as the
index's `FusionConfig` says; the default). Words the catalog does not know are first corrected
towards words it does ("puma snekers" -> "puma sneakers", catalogclip/search/spelling.py), unless
the query asks for its text as typed (`spell=False`). Recognised entities (brand, colour, category words
...) boost the products that carry them in every mode, or with ``strict`` become filters. Every
hit says which side found it, at which rank and with which score.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, TypeVar

from catalogclip.search.fusion import MODES, FusionConfig, boosted, fuse
from catalogclip.search.index import Found, Hit, IncompatibleModelError, ProductIndex
from catalogclip.search.lexical import analyse
from catalogclip.search.query import (
    CATEGORY_FIELD,
    CATEGORY_SEP,
    EntityLinker,
    EntityMatch,
    Filter,
    QueryError,
    check_clean,
    filter_mapping,
    normalise_category,
    vocab_values,
)
from catalogclip.search.spelling import Correction, Speller, Spelled
from catalogclip.search.suggest import Suggester, Suggestion
from catalogclip.search.text import key

if TYPE_CHECKING:
    from PIL import Image

    from catalogclip.embeddings import Encoder
    from catalogclip.search.backend import Connection

MAX_QUERY_CHARS = 1000
MAX_K = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class SearchResult:
    hits: list[Hit]
    query: dict
    entities: list[EntityMatch] = field(default_factory=list)
    took_ms: float = 0.0
    #: per entity, the filter that selects the products carrying it (None: no product field holds it)
    entity_filters: list[dict | None] = field(default_factory=list)
    #: the query's words searched as corrected (offsets in the typed text; entities' are in the corrected one)
    corrections: list[Correction] = field(default_factory=list)

    def to_json(self) -> dict:
        filters = self.entity_filters or [None] * len(self.entities)
        return {
            "query": self.query,
            "corrections": [c.to_json() for c in self.corrections],
            "entities": [{**m.to_json(), "filter": f} for m, f in zip(self.entities, filters)],
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


def check_category(path: str) -> str:
    """A category path in "A > B" form, refused like any text query when it is empty, also once
    its separators are dropped (">>>": the error is about the path, not a filter made from it)."""
    path = normalise_category(check_text(path, "category path"))
    if not path:
        raise QueryError("the category path is empty (it holds only '>' separators)")
    return path


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    return k


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise QueryError(f"unknown search mode '{mode}' (known: {', '.join(MODES)})")
    return mode


@dataclass
class Candidates:
    """What each side found for a text query, before fusion (products not loaded yet)."""

    sides: dict[str, list[Found]]  # side -> (product row, score, vector id), best first
    spelled: Spelled  # the query as searched, and the corrections that made it
    entities: list[EntityMatch]
    share: dict[int, float]  # product row -> fraction of the recognised entity groups it carries
    coverage: float = 1.0  # share of the query's terms the lexical index knows (adaptive fusion)


@dataclass
class Ranked:
    row: int
    score: float
    vid: int | None  # the best-matching image's vector, if the vector side found the product
    sides: dict[str, dict]  # side -> {"score", "rank"}


def rank(candidates: Candidates, config: FusionConfig, k: int) -> list[Ranked]:
    """The top k of the fused, entity-boosted candidates, with the sides that found each."""
    found = {side: {row: (r, score, vid) for r, (row, score, vid) in enumerate(rows, start=1)} for side, rows in candidates.sides.items()}
    ranking = fuse({side: [(row, score) for row, score, _ in rows] for side, rows in candidates.sides.items()}, config, candidates.coverage)
    out = []
    for row, score in boosted(ranking, candidates.share, config.boost)[:k]:
        seen = {side: found[side][row] for side in found if row in found[side]}
        vid = seen["vector"][2] if "vector" in seen else None
        out.append(Ranked(row, score, vid, {side: {"score": round(s, 6), "rank": r} for side, (r, s, _) in seen.items()}))
    return out


def _is_category(group: str) -> bool:
    return group == CATEGORY_FIELD or group.startswith(f"{CATEGORY_FIELD}:")


class SearchEngine:
    def __init__(self, index: ProductIndex, encoder: "Encoder", fusion: FusionConfig | None = None) -> None:
        self.index = index
        self.encoder = encoder
        self._fusion = fusion
        #: how hybrid queries fuse (default: what the index stores, e.g. tuned on judged queries)
        self.fusion = fusion or FusionConfig(**(index.info.get("fusion") or {}))
        try:
            index.check_model(encoder.model_id, encoder.dim)
            #: why queries from this encoder cannot search this index (None: they can)
            self.incompatible: str | None = None
        except IncompatibleModelError as exc:
            self.incompatible = str(exc)
        #: the run's entity groups (EI-CLIP: its entity encoders take them), None for other runs
        self.run_vocabs = vocab_values(encoder.vocabs) if encoder.vocabs is not None else None
        # an index value without a searchable word ("The", "A") would be "recognised" in every query
        vocabs = {group: [v for v in values if analyse(v)] for group, values in index.vocabulary().items()}
        for group, values in (self.run_vocabs or {}).items():
            vocabs[group] = list(dict.fromkeys(vocabs.get(group, []) + values))
        self.linker = EntityLinker(vocabs)

    def reopened(self) -> "SearchEngine":
        """This engine over its index as committed now: new products, their entity values, fusion."""
        return SearchEngine(self.index.reopened(), self.encoder, self._fusion)

    def with_encoder(self, encoder: "Encoder") -> "SearchEngine":
        """This engine with another encoder (e.g. one that batches queries); a fusion the index
        stores stays the index's, so a re-tuned fusion is served once committed."""
        return SearchEngine(self.index, encoder, self._fusion)

    def _check_model(self) -> None:
        if self.incompatible is not None:
            raise IncompatibleModelError(self.incompatible)

    @cached_property
    def speller(self) -> Speller:
        """Corrections towards the index's words (built at the first text search: image, category
        and "similar" searches never need it)."""
        return Speller(self.index.lexical.words, self.index.lexical.retriever.vocab_dict)

    @cached_property
    def suggester(self) -> Suggester:
        """Completions from the index's entity values and product words (built at the first use)."""
        return Suggester.of_index(self.index)

    def suggest(self, text: str, k: int = 8) -> dict:
        """Search-as-you-type: up to k completions of the query typed so far."""
        start = time.perf_counter()
        check_text(text)  # refused as a search would be; the text itself is completed as typed (a trailing space matters)
        suggestions: list[Suggestion] = self.suggester.suggest(text, check_k(k))
        return {"query": text, "suggestions": [s.to_json() for s in suggestions], "took_ms": round(_ms(start), 2)}

    def understand(self, text: str) -> tuple[dict[str, str], list[EntityMatch]]:
        """Entities recognised in the text: the run's entity values and the index's own."""
        return self.linker.entities(text)

    def search_text(self, text: str, k: int = 10, filters: Mapping | None = None, mode: str = "hybrid", strict: bool = False,
                    spell: bool = True) -> SearchResult:
        start = time.perf_counter()
        text, k = check_text(text), check_k(k)
        candidates = self.candidates(text, k, filters, mode, strict, spell)
        ranked = rank(candidates, self.fusion, k)
        hits = self.index.hits([(r.row, r.score, r.vid) for r in ranked])
        for hit, r in zip(hits, ranked):
            hit.sides = r.sides
        query = {"text": text, "searched": candidates.spelled.text, "filters": dict(filters or {}), "mode": mode, "strict": strict, "spell": spell}
        entity_filters = [self.entity_filter(m) for m in candidates.entities]
        return SearchResult(hits, query, candidates.entities, _ms(start), entity_filters, candidates.spelled.corrections)

    def entity_filter(self, match: EntityMatch) -> dict | None:
        """The filter (as the API takes it) selecting the products that carry a recognised entity."""
        clauses = self._entity_filters(self._entity_keys([match]))
        return {clauses[0].field: list(clauses[0].values)} if clauses else None

    def candidates(self, text: str, k: int, filters: Mapping | None = None, mode: str = "hybrid", strict: bool = False,
                   spell: bool = True) -> Candidates:
        """Each side's candidates for a text query (at least k, `fusion.depth` where they get fused
        or boosted) and the products' share of the recognised entities; with `spell`, for the
        query as corrected."""
        mode, clauses = check_mode(mode), self.index.parse_filters(filters)
        spelled = self.speller.correct(text) if spell else Spelled(text)
        text = spelled.text
        entities, matches = self.understand(text)
        entity_clauses = self._entity_filters(self._entity_keys(matches))
        if strict:
            clauses += entity_clauses
        depth = max(k, self.fusion.depth) if mode == "hybrid" or (entity_clauses and self.fusion.boost) else k
        sides: dict[str, list[Found]] = {}
        if mode != "lexical":
            self._check_model()
            run_entities = None if self.run_vocabs is None else {g: v for g, v in entities.items() if g in self.run_vocabs}
            vector = self.encoder.encode_texts([text], None if run_entities is None else [run_entities])[0]
            sides["vector"] = self.index.search_rows_many(vector[None], depth, clauses)[0]
        if mode != "vector":
            sides["lexical"] = self.index.search_lexical_rows(text, depth, clauses)
        rows = list({row for found in sides.values() for row, _, _ in found})
        coverage = self.index.lexical.coverage(text) if mode == "hybrid" else 1.0
        return Candidates(sides, spelled, matches, self._shares(rows, entity_clauses), coverage)

    def _entity_keys(self, matches: list[EntityMatch]) -> dict[str, set[tuple[str, ...]]]:
        """Recognised values per entity group that products can carry (attributes, category levels)."""
        fields = self.index.vocabulary()
        groups: dict[str, set[tuple[str, ...]]] = {}
        for match in matches:
            if match.group in fields or _is_category(match.group):
                groups.setdefault(match.group, set()).add(key(match.value))
        return groups

    def _shares(self, rows: list[int], entity_clauses: list[Filter]) -> dict[int, float]:
        """Each row's fraction of the recognised entity groups (one clause each) it carries."""
        if not entity_clauses or not rows:
            return {}
        counts = dict.fromkeys(rows, 0)
        for clause in entity_clauses:
            for row in self.index.store.rows_matching(clause, among=rows).tolist():
                counts[row] += 1
        return {row: n / len(entity_clauses) for row, n in counts.items()}

    def _entity_filters(self, groups: dict[str, set[tuple[str, ...]]]) -> list[Filter]:
        """One filter clause per recognised entity group (values of one group: any of them): what
        `strict` applies and what the boost counts."""
        vocabulary = self.index.vocabulary()
        clauses = []
        for group, values in groups.items():
            if _is_category(group):
                level = group.partition(":")[2]
                paths = [p for p in self.index.category_paths() if _path_matches(p.split(CATEGORY_SEP), level, values)]
                clauses.append(Filter(CATEGORY_FIELD, tuple(paths) or ("",)))  # "": no category, nothing matches
            else:
                clauses.append(Filter(group, tuple(v for v in vocabulary[group] if key(v) in values)))
        return clauses

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
        path, k = check_category(path), check_k(k)
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


def _path_matches(names: list[str], level: str, values: set[tuple[str, ...]]) -> bool:
    """Whether a category node (its path `names`) is named by a value at `level` ("" any level,
    a number, or "leaf"): its subtree is what the value means."""
    if level.isdigit() and len(names) != int(level) + 1:
        return False
    return key(names[-1]) in values


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


T = TypeVar("T")


class LiveEngine:
    """The engine a server answers with: it follows its index on disk. Once a writer has committed
    a new generation (`catalogclip index --update`), the next request opens it beside the old one
    and every later request gets the new engine; a request already running keeps the engine it
    got, and if the commit came in the middle of its reads (the old engine's metadata then names
    products or vectors its loaded vectors do not have) it runs once more on the new one."""

    def __init__(self, engine: SearchEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    def current(self) -> SearchEngine:
        engine = self._engine
        if not engine.index.is_stale():
            return engine
        with self._lock:  # one reopen per commit, however many requests notice it
            if self._engine is engine:
                self._engine = engine.reopened()
            return self._engine

    def answer(self, ask: Callable[[SearchEngine], T]) -> T:
        engine = self.current()
        try:
            return ask(engine)
        except (KeyError, IndexError):
            if not engine.index.is_stale():
                raise
            return ask(self.current())


def open_engine(
    index_path: str | Path,
    run: str | Path | None = None,
    device: str = "cpu",
    catalog_root: str | Path | None = None,
    need_model: bool = True,
    connection: "Connection | None" = None,
) -> SearchEngine:
    """An engine over an index, encoding queries with `run` (default: the run that built it).

    With `need_model`, a run other than the index's model is refused here, at once.
    """
    from catalogclip.embed import RunEncoder
    from catalogclip.train.runs import load_run

    index = ProductIndex.open(index_path, catalog_root, connection)
    run = run or index.info.get("run")
    if not run:
        raise ValueError(f"{index_path} does not record the run it was built with; give --run")
    loaded = load_run(run, device)
    engine = SearchEngine(index, RunEncoder(method=loaded.method, model_id=loaded.model_id))
    if need_model and engine.incompatible is not None:
        raise IncompatibleModelError(engine.incompatible)
    return engine
