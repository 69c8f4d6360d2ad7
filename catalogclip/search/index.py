"""A product search index: image vectors in a vector store plus product metadata in SQLite.

On disk an index is a folder::

    IDX/meta.sqlite          products, vector ids, filter tables, info (model, run, config, backend, kind)
    IDX/vectors-<gen>.faiss  with the faiss backend: the vectors; <gen> is the generation in meta.sqlite
    IDX/lexical-<gen>/       BM25 over the products' text (catalogclip/search/lexical.py)

The vectors live in the backend recorded in the index (backend.py: ``faiss`` beside the metadata,
or a ``milvus`` collection). Every image of a product is one vector; a product scores as its
best-matching image. A build is written to a temporary folder (and a new collection) and swapped
in whole; an update (add / delete products) makes the backend's new state and the lexical folder
durable, then commits
the metadata that names it in one SQLite transaction, so a crash leaves the previous state
readable. The index records the model that made its vectors and refuses queries from any other.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from catalogclip.catalog.paths import ImageRoots, OutsideRootError
from catalogclip.catalog.schema import Product
from catalogclip.search.backend import EXACT_KINDS, Connection, Selection, VectorParams, VectorStore, backend, choose_kind
from catalogclip.search.lexical import LexicalIndex, LexicalParams, lexical_folder
from catalogclip.search.query import CATEGORY_FIELD, CATEGORY_SEP, Filter, QueryError, parse_filters
from catalogclip.search.store import COMMIT_KEYS, MetadataStore
from catalogclip.search.text import fold

FORMAT_VERSION = 2  # 2: a lexical (BM25) side
META_FILE = "meta.sqlite"


class IncompatibleModelError(ValueError):
    """The query comes from a model other than the one the index was built with."""


@dataclass
class Hit:
    product: Product
    score: float
    image: int  # which of the product's images matched best
    #: per retrieval side that found it ("vector", "lexical"): {"score": ..., "rank": ...}
    sides: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.product.id, "score": round(self.score, 6), "image": self.image, "sides": self.sides, "product": self.product.to_json()}


#: a search result before its product is loaded: (product row, score, vector id or None)
Found = tuple[int, float, "int | None"]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


#: tries to open an index whose writers keep committing while it is read
OPEN_ATTEMPTS = 5


class ProductIndex:
    def __init__(
        self, path: Path, store: MetadataStore, vectors: VectorStore, catalog_root: Path | None = None, lexical: LexicalIndex | None = None
    ) -> None:
        self.path = path
        self.store = store
        self.vectors = vectors
        self.lexical = lexical
        self._lexical_stale = lexical is None  # rebuilt from the store at the next commit
        self.info = store.info()
        self._root_override = catalog_root
        self._connection: Connection | None = None  # where `open` found the vectors, for reopening
        self._meta_file = _file_identity(path / META_FILE)  # a rebuild swaps in another folder, hence another file
        self.catalog_root = Path(catalog_root or self.info.get("catalog_root") or path)
        self.roots = ImageRoots(self.catalog_root, tuple(Path(p) for p in self.info.get("image_roots") or ()))
        self._refresh()

    # --- opening and building -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, catalog_root: str | Path | None = None, connection: Connection | None = None) -> "ProductIndex":
        """Open an index; `catalog_root` overrides where product images are looked up, and
        `connection` where its backend's vectors are (e.g. another Milvus URI, a token)."""
        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a search index (no {META_FILE}; build one with `catalogclip index`)")
        store = MetadataStore(path / META_FILE)
        info = store.info()
        if info.get("format") != FORMAT_VERSION:
            store.close()
            raise ValueError(f"{path}: index format {info.get('format')} is not {FORMAT_VERSION}; rebuild it with `catalogclip index`")
        name = info.get("backend", "faiss")
        connection = connection or Connection()
        if connection.backend not in (None, name):
            store.close()
            raise ValueError(f"{path} keeps its vectors in {name}, not {connection.backend}")
        root = Path(catalog_root) if catalog_root else None
        for _ in range(OPEN_ATTEMPTS):
            info = store.info()
            try:
                vectors = backend(name).open(path, info, connection)
                lexical = LexicalIndex.load(path / lexical_folder(info["generation"]))
            except FileNotFoundError:
                if store.info()["generation"] == info["generation"]:
                    store.close()
                    raise
                continue  # a writer committed and removed this generation's files: open the new one
            index = cls(path, store, vectors, root, lexical)
            index._connection = connection
            # the same generation before the files were loaded and after the metadata was read: no commit in between
            if index.info["generation"] == info["generation"] == store.info()["generation"]:
                return index
        store.close()
        raise RuntimeError(f"{path}: writers committed {OPEN_ATTEMPTS} times while the index was being opened; open it again")

    @classmethod
    def build(
        cls,
        path: str | Path,
        products: Sequence[Product],
        vectors: np.ndarray,
        refs: Sequence[tuple[int, int]],
        *,
        model_id: str,
        catalog_root: str | Path,
        image_roots: Sequence[str | Path] = (),
        run: str | None = None,
        config: Mapping | None = None,
        kind: str = "auto",
        params: VectorParams | None = None,
        connection: Connection | None = None,
        lexical: LexicalParams | None = None,
    ) -> "ProductIndex":
        """Build an index of `products`; row r of `vectors` is image refs[r] = (product number,
        image number); `lexical` sets how their text is weighted for BM25. The folder appears complete or not at all; with a backend that keeps its
        vectors elsewhere, readers of the index's name see the new vectors once it is in place."""
        path = Path(path)
        vectors = _normalise(vectors)
        if len(vectors) != len(refs):
            raise ValueError(f"{len(vectors)} vectors but {len(refs)} image references")
        connection = replace(connection or Connection(), backend=(connection and connection.backend) or "faiss")
        chosen = backend(connection.backend)
        kind = choose_kind(kind, len(vectors), chosen.kinds)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            store = MetadataStore(tmp / META_FILE)
            index = chosen.create(tmp, int(vectors.shape[1]), vectors, kind, params or VectorParams(), connection, products)
            store.set_info(
                format=FORMAT_VERSION,
                model_id=model_id,
                dim=int(vectors.shape[1]),
                backend=connection.backend,
                kind=kind,
                params=index.params.to_json(),
                run=run,
                config=dict(config or {}),
                catalog_root=str(Path(catalog_root).resolve()),
                image_roots=[str(Path(p).resolve()) for p in image_roots],
                built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                generation=0,
                lexical=(lexical or LexicalParams()).to_json(),
            )
            built = cls(tmp, store, index)
            built._store_products(products, np.arange(len(refs)), refs, vectors)
            if kind not in EXACT_KINDS:
                store.set_info(recall_at_10=sampled_recall(index, vectors))
            built.commit()
            built.close()
            _replace_folder(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        opened = cls.open(path, connection=connection)
        opened.vectors.publish()
        return opened

    def close(self) -> None:
        self.store.close()
        self.vectors.close()

    def reload(self, connection: Connection | None = None) -> None:
        """Reopen the index as committed now: another writer may have updated or rebuilt it."""
        fresh = self.reopened(connection)
        self.close()
        self.__dict__.update(fresh.__dict__)

    def reopened(self, connection: Connection | None = None) -> "ProductIndex":
        """The index as committed now, opened beside this one (which stays as it is)."""
        return ProductIndex.open(self.path, self._root_override, connection or self._connection)

    def is_stale(self) -> bool:
        """A writer has committed a generation after the one this index holds, or rebuilt the index
        (while a rebuild swaps its folder in, for an instant there is none: not stale yet)."""
        current = _file_identity(self.path / META_FILE)
        if current is None:
            return False
        return current != self._meta_file or self.store.committed() != tuple(self.info.get(key) for key in COMMIT_KEYS)

    # --- what it holds ------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def kind(self) -> str:
        return self.info["kind"]

    @property
    def backend(self) -> str:
        return self.info.get("backend", "faiss")

    def __len__(self) -> int:
        return self.store.count()

    def check_model(self, model_id: str, dim: int) -> None:
        """Raise IncompatibleModelError unless queries from this model can search this index."""
        if model_id != self.model_id or dim != self.dim:
            run = Path(self.info["run"]).name if self.info.get("run") else "unknown run"
            raise IncompatibleModelError(  # names, not paths: the service shows this message
                f"index '{self.path.name}' was built with model '{self.model_id}' (dim {self.dim}, run {run}); "
                f"queries come from model '{model_id}' (dim {dim}): query it with the run it was built "
                f"with, or rebuild it with `catalogclip index --run <run>`"
            )

    def product(self, product_id: str) -> Product:
        found = self.store.product(product_id)
        if found is None:
            raise KeyError(f"no product '{product_id}' in index '{self.path.name}'")
        return found[1]

    def image_file(self, product: Product, image: int) -> Path:
        """The real file of a product's image; KeyError when there is no such image or it lies
        outside the catalog's roots (so it is never opened)."""
        if not 0 <= image < len(product.images):
            raise KeyError(f"product '{product.id}' has no image {image} (it has {len(product.images)})")
        try:
            return self.roots.resolve(product.images[image].path)
        except OutsideRootError:
            raise KeyError(f"image {image} of product '{product.id}' is outside the catalog root") from None

    def product_vector(self, product_id: str) -> np.ndarray:
        """The mean of a product's image vectors, normalised: its query vector for "similar"."""
        found = self.store.product(product_id)
        if found is None:
            raise KeyError(f"no product '{product_id}' in index '{self.path.name}'")
        vids = [v for v, _ in self.store.vectors_of(found[0])]
        return _normalise(self.vectors.reconstruct(np.asarray(vids)).mean(axis=0))

    def facets(self) -> dict[str, dict]:
        if self._facets is None:  # a full scan of the attribute table: once per committed state
            self._facets = self.store.facets()
        return self._facets

    def vocabulary(self) -> dict[str, dict[str, int]]:
        """Entity values this index knows, each with how many products carry it: each text field's
        values and, as "category", the name of every category node (what query understanding
        recognises when a run has no vocabs)."""
        if self._vocabulary is None:
            names: dict[str, int] = {}
            for path, count in self.category_counts().items():
                name = path.rsplit(CATEGORY_SEP, 1)[-1]
                names[name] = names.get(name, 0) + count
            self._vocabulary = {**self.store.text_values(), CATEGORY_FIELD: names}
        return self._vocabulary

    def category_counts(self) -> dict[str, int]:
        """Every category node's path ("A > B" form) -> how many products lie under it; read once
        per committed state for the paths, the tree and the vocabulary."""
        if self._category_counts is None:
            self._category_counts = self.store.category_counts()
        return self._category_counts

    def category_paths(self) -> list[str]:
        """Every category node's path, "A > B" form."""
        if self._paths is None:
            self._paths = list(self.category_counts())
        return self._paths

    def set_info(self, **values) -> None:
        """Record settings (e.g. the tuned fusion) in the index's info, committed at once under a new
        revision, so that servers reopen with them."""
        if self._lexical_stale:  # committing now would publish products without their vectors' file
            raise RuntimeError(f"{self.path} has uncommitted product changes: commit them first")
        self.store.set_info(**values, revision=(self.store.committed()[1] or 0) + 1)
        self.store.commit()
        self.info = self.store.info()

    def category_tree(self) -> list[dict]:
        """Nested [{"name", "path", "count", "children"}], counting products under each node."""
        if self._tree is None:
            self._tree = self._build_category_tree()
        return self._tree

    def _build_category_tree(self) -> list[dict]:
        root: dict = {"children": {}}
        for path, count in self.category_counts().items():
            node = root
            for name in path.split(CATEGORY_SEP):
                node = node["children"].setdefault(name, {"name": name, "children": {}})
            node.update(path=path, count=count)

        def listed(node: dict) -> list[dict]:
            return [{**child, "children": listed(child)} for child in node["children"].values()]

        return listed(root)

    def parse_filters(self, raw: Mapping | None) -> list[Filter]:
        """Validate user filters against this index's fields (QueryError names the bad one)."""
        filters = parse_filters(raw, self._fields)
        for clause in filters:
            if clause.is_range and not self._fields.get(clause.field):
                raise QueryError(f"filter '{clause.field}' has non-numeric values: give values, not a range")
        return [self._as_spelled(clause) if clause.field == CATEGORY_FIELD else clause for clause in filters]

    def _as_spelled(self, clause: Filter) -> Filter:
        """A category clause naming the paths as this index spells them: categories match ignoring
        case and accents, as attribute values do ("apparel" selects "Apparel"), on every backend,
        since the backends then compare exact paths. A path the index lacks stays, selecting nothing."""
        if self._spellings is None:  # built whole before it is shared: other request threads read it
            spellings: dict[str, list[str]] = {}
            for path in self.category_paths():
                spellings.setdefault(fold(path), []).append(path)
            self._spellings = spellings
        return replace(clause, values=tuple(p for value in clause.values for p in self._spellings.get(fold(value), [value])))

    # --- search -------------------------------------------------------------------------------
    # Searches come in two forms: Hits (products loaded), and `Found` rows (product row, score,
    # vector id or None) for callers that rank many candidates and load only the winners.
    def search(self, query: np.ndarray, k: int = 10, filters: Sequence[Filter] = (), exclude: str | None = None) -> list[Hit]:
        """The k products whose best image scores highest against a query vector."""
        return self.search_many(np.reshape(query, (1, -1)), k, filters, exclude)[0]

    def search_many(self, queries: np.ndarray, k: int = 10, filters: Sequence[Filter] = (), exclude: str | None = None) -> list[list[Hit]]:
        """`search` for a batch of queries sharing the filters: one scan of the vectors serves the
        whole batch, which is much cheaper per query than one scan each (concurrent requests)."""
        return [self.hits(found) for found in self.search_rows_many(queries, k, filters, exclude)]

    def search_rows_many(self, queries: np.ndarray, k: int = 10, filters: Sequence[Filter] = (), exclude: str | None = None) -> list[list[Found]]:
        """`search_many` as `Found` rows."""
        queries = _normalise(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IncompatibleModelError(f"query vector has dimension {queries.shape[-1]}, index '{self.path.name}' has {self.dim}")
        found = self.store.product(exclude) if exclude is not None else None
        selection = Selection(filters, found[0] if found else None, lambda: self._allowed(filters, exclude))
        # a product owns at most `_max_images` vectors, so this many vectors hold the top k products
        return [self._best_rows(scores, vids, k) for scores, vids in self.vectors.search(queries, k * self._max_images, selection)]

    def search_lexical(self, text: str, k: int = 10, filters: Sequence[Filter] = (), exclude: str | None = None) -> list[Hit]:
        """The k products whose text scores highest for BM25 against `text` (score = BM25 score);
        only products sharing at least one term with the query."""
        return self.hits(self.search_lexical_rows(text, k, filters, exclude))

    def search_lexical_rows(self, text: str, k: int = 10, filters: Sequence[Filter] = (), exclude: str | None = None) -> list[Found]:
        """`search_lexical` as `Found` rows."""
        scores, rows = self.lexical.search(text, k, self._row_mask(filters, exclude))
        return [(row, score, None) for score, row in zip(scores.tolist(), rows.tolist())]

    def hits(self, found: Sequence[Found]) -> list[Hit]:
        """Hits of `Found` rows, in their order (image 0 where no vector matched)."""
        products = self.store.products_by_row(row for row, _, _ in found)
        images = self.store.image_of(vid for _, _, vid in found if vid is not None)
        return [Hit(products[row], score, 0 if vid is None else images[vid]) for row, score, vid in found]

    def _best_rows(self, scores: np.ndarray, vids: np.ndarray, k: int) -> list[Found]:
        """Each product's best vector, best first; ids this index does not know (vectors another
        writer added but whose metadata is not committed) are skipped."""
        best: dict[int, tuple[float, int]] = {}
        for score, vid in zip(scores.tolist(), vids.tolist()):
            row = int(self._vector_rows[vid]) if 0 <= vid < len(self._vector_rows) else -1
            if row >= 0:
                best.setdefault(row, (score, vid))
        return [(row, score, vid) for row, (score, vid) in list(best.items())[:k]]

    def _allowed(self, filters: Sequence[Filter], exclude: str | None) -> np.ndarray | None:
        """Bool mask over vector ids that a search may return (None: every vector)."""
        keep = self._row_mask(filters, exclude)
        if keep is None:
            live = self._vector_rows >= 0
            return None if live.all() else live
        return keep[self._vector_rows]

    def _row_mask(self, filters: Sequence[Filter], exclude: str | None) -> np.ndarray | None:
        """Bool mask over product rows that a search may return (None: every product)."""
        if not filters and exclude is None:
            return None
        n_rows = int(self._vector_rows.max(initial=-1)) + 2  # the last slot stays False for row -1
        keep = np.ones(n_rows, dtype=bool)
        keep[-1] = False
        for clause in filters:
            selected = np.zeros(n_rows, dtype=bool)
            selected[self.store.rows_matching(clause)] = True
            keep &= selected
        if exclude is not None:
            found = self.store.product(exclude)
            if found is not None:
                keep[found[0]] = False
        return keep

    # --- updates ------------------------------------------------------------------------------
    def add(self, products: Sequence[Product], vectors: np.ndarray, refs: Sequence[tuple[int, int]]) -> None:
        """Add products (replacing any with the same id); visible after `commit`."""
        if len(vectors) != len(refs):
            raise ValueError(f"{len(vectors)} vectors but {len(refs)} image references")
        vectors = _normalise(vectors)
        if len(refs) and vectors.shape[1] != self.dim:
            raise IncompatibleModelError(f"vectors have dimension {vectors.shape[1]}, index '{self.path.name}' has {self.dim}")
        self.delete(p.id for p in products)
        first = self.vectors.ntotal
        self._store_products(products, np.arange(first, first + len(refs), dtype=np.int64), refs, vectors)
        self._lexical_stale = True

    def delete(self, product_ids) -> int:
        """Remove products by id (unknown ids are ignored); returns how many were removed."""
        removed = 0
        for product_id in product_ids:
            vids = self.store.delete_product(product_id)
            if vids is not None:
                self._vector_rows[vids] = -1
                self.vectors.delete(np.asarray(vids, dtype=np.int64))
                self._lexical_stale = True
                removed += 1
        return removed

    def commit(self) -> None:
        """Make the vectors and the lexical index durable under a new generation, then commit the
        metadata naming it."""
        live = self._vector_rows >= 0
        mapping = self.vectors.compact(live)
        if mapping is not None:
            self.store.renumber_vectors(mapping)
        old, new = self.info["generation"], self.info["generation"] + 1
        self.vectors.persist(self.path, new)
        if self._lexical_stale:
            self.lexical = LexicalIndex.build(self.store.rows_and_products(), LexicalParams(**self.info["lexical"]))
            self._lexical_stale = False
        try:
            self.lexical.save(self.path / lexical_folder(new))
            self.store.set_info(generation=new, products=self.store.count(), vectors=int(live.sum()), **self.vectors.location())
            self.store.commit()
        except BaseException:
            self.vectors.abandon(self.path, new)
            shutil.rmtree(self.path / lexical_folder(new), ignore_errors=True)
            raise
        self.vectors.committed(self.path, old)
        shutil.rmtree(self.path / lexical_folder(old), ignore_errors=True)
        self.info = self.store.info()
        self._refresh()

    def _store_products(self, products: Sequence[Product], vids: np.ndarray, refs: Sequence[tuple[int, int]], vectors: np.ndarray) -> None:
        per_product: dict[int, list[tuple[int, int]]] = {}
        for vid, (product_no, image_no) in zip(vids.tolist(), refs):
            per_product.setdefault(product_no, []).append((vid, image_no))
        payload: dict[int, tuple[int, Product]] = {}
        for product_no, product in enumerate(products):
            pairs = per_product.get(product_no, [])
            row = self.store.add_product(product, pairs)
            payload.update((v, (row, product)) for v, _ in pairs)
        self.vectors.add(vids, vectors, [payload[v] for v in vids.tolist()])
        grown = np.full(self.vectors.ntotal, -1, dtype=np.int64)
        grown[: len(self._vector_rows)] = self._vector_rows
        grown[vids] = [payload[v][0] for v in vids.tolist()]
        self._vector_rows = grown
        self._max_images = self._count_max_images()

    def _refresh(self) -> None:
        self._vector_rows = self.store.vector_rows(self.vectors.ntotal)
        self._fields = self.store.fields()
        self._facets: dict | None = None
        self._tree: list[dict] | None = None
        self._vocabulary: dict[str, dict[str, int]] | None = None
        self._category_counts: dict[str, int] | None = None
        self._paths: list[str] | None = None
        self._spellings: dict[str, list[str]] | None = None  # fold(path) -> category paths
        self._max_images = self._count_max_images()

    def _count_max_images(self) -> int:
        live = self._vector_rows[self._vector_rows >= 0]
        return max(1, int(np.bincount(live).max(initial=0))) if len(live) else 1


def sampled_recall(vectors: VectorStore, stored: np.ndarray, k: int = 10, n_queries: int = 200, seed: int = 0) -> dict:
    """Recall@k of an approximate store against exact search over the vectors it holds
    (`stored`, ids 0..n-1), for a seeded sample of them as queries."""
    import faiss

    rng = np.random.default_rng(seed)
    queries = stored[rng.choice(len(stored), min(n_queries, len(stored)), replace=False)]
    _, truth = faiss.knn(queries, stored, min(k, len(stored)), metric=faiss.METRIC_INNER_PRODUCT)
    found = vectors.search(queries, k, Selection())
    hits = [len(set(t.tolist()) & set(f[1].tolist())) / len(t) for t, f in zip(truth, found)]
    return {"recall": round(float(np.mean(hits)), 4), "k": k, "queries": len(queries)}


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def check_replaceable(target: str | Path) -> None:
    """An index may be written at `target` only if nothing or an older index is there."""
    target = Path(target)
    if target.exists() and not (target / META_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a search index; refusing to replace it")


def _replace_folder(new: Path, target: Path) -> None:
    """Move a finished folder onto `target`, replacing an existing index (never anything else)."""
    check_replaceable(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["Hit", "IncompatibleModelError", "ProductIndex", "check_replaceable", "sampled_recall"]
