"""The vector side of an index: a FAISS inner-product index over L2-normalised vectors.

Three kinds: ``flat`` (exact), ``ivf`` (inverted lists, k-means trained) and ``hnsw`` (graph).
Vector ids are positions, assigned in order and never reused; deleting marks a tombstone that
every search excludes (through an ID selector), and `compacted` rebuilds without them.

Filtered search never loses recall silently: a selective filter (at most `exact_limit` allowed
vectors) is answered exactly over the allowed vectors; a broader one uses the ANN index with the
filter applied inside the search and its breadth (nprobe / efSearch) scaled up by 1 / selectivity,
and falls back to exact search if the index still returns fewer results than asked for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

INDEX_KINDS = ("flat", "ivf", "hnsw")
#: below this many vectors `auto` builds an exact index (a flat scan is then a few milliseconds)
AUTO_FLAT_MAX = 100_000
#: a filter allowing at most this many vectors is searched exactly over them
EXACT_LIMIT = 20_000
_EXACT_CHUNK = 65_536


@dataclass
class VectorParams:
    """How the ANN structure is built and searched (stored with the index)."""

    nlist: int = 0  # ivf: number of lists (0: about 4 * sqrt(n))
    nprobe: int = 0  # ivf: lists visited per query (0: nlist / 32, at least 8)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128

    def to_json(self) -> dict:
        return dict(self.__dict__)


def choose_kind(kind: str, n_vectors: int) -> str:
    if kind == "auto":
        return "flat" if n_vectors <= AUTO_FLAT_MAX else "ivf"
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind '{kind}' (known: auto, {', '.join(INDEX_KINDS)})")
    return kind


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Highest k scores, ties broken by smaller id so results are deterministic."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


@dataclass
class VectorIndex:
    index: faiss.Index
    kind: str
    params: VectorParams = field(default_factory=VectorParams)
    exact_limit: int = EXACT_LIMIT

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, kind: str = "auto", params: VectorParams | None = None, seed: int = 0) -> "VectorIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        kind = choose_kind(kind, n)
        params = params or VectorParams()
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.ef_construction
        else:
            index = cls._trained_ivf(vectors, params, seed)
        index.add(vectors)
        return cls(index, kind, params)

    @staticmethod
    def _trained_ivf(vectors: np.ndarray, params: VectorParams, seed: int) -> faiss.Index:
        n, dim = vectors.shape
        if n == 0:
            raise ValueError("an ivf index needs vectors to train on; build a flat index for an empty catalog")
        # k-means needs ~40 points per list; fewer lists than that would leave lists empty
        params.nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        params.nprobe = params.nprobe or min(params.nlist, max(8, params.nlist // 32))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, 64 * params.nlist)
        rows = np.random.default_rng(seed).choice(n, sample, replace=False) if sample < n else slice(None)
        index.train(vectors[rows])
        index.make_direct_map()  # lets `reconstruct` fetch vectors for exact filtered search
        return index

    @classmethod
    def load(cls, path: str | Path, kind: str, params: dict) -> "VectorIndex":
        return cls(faiss.read_index(str(path)), kind, VectorParams(**params))

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append vectors; returns their ids."""
        first = self.ntotal
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return np.arange(first, self.ntotal, dtype=np.int64)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def compacted(self, keep: np.ndarray) -> tuple["VectorIndex", np.ndarray]:
        """A copy holding only the vectors where `keep` is true, and the old -> new id map."""
        kept = np.flatnonzero(keep)
        mapping = np.full(self.ntotal, -1, dtype=np.int64)
        mapping[kept] = np.arange(len(kept))
        vectors = np.concatenate([self.reconstruct(kept[i : i + _EXACT_CHUNK]) for i in range(0, len(kept), _EXACT_CHUNK)] or [np.zeros((0, self.dim), np.float32)])
        if self.kind == "ivf":  # keep the trained lists: only re-adding is needed
            index = faiss.clone_index(self.index)
            index.reset()
            index.make_direct_map()
            index.add(vectors)
            return VectorIndex(index, self.kind, self.params, self.exact_limit), mapping
        return VectorIndex.build(vectors, self.kind, self.params), mapping

    # --- search ---------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query vector among the `allowed` ids (bool mask; None: all)."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        n_allowed = self.ntotal if allowed is None else int(allowed.sum())
        k = min(k, n_allowed)
        if k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if allowed is not None and n_allowed <= self.exact_limit:
            return self.exact(query[0], np.flatnonzero(allowed), k)
        scores, ids = self._faiss_search(query, k, allowed, n_allowed)
        if len(ids) < k:  # the ANN structure ran dry inside a filter: answer exactly instead
            candidates = np.flatnonzero(allowed) if allowed is not None else np.arange(self.ntotal)
            return self.exact(query[0], candidates, k)
        return scores, ids

    def exact(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the given ids, in chunks so memory stays bounded."""
        best_scores, best_ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        for start in range(0, len(ids), _EXACT_CHUNK):
            chunk = ids[start : start + _EXACT_CHUNK]
            # faiss.knn, not numpy: a single-query BLAS gemv stalls for milliseconds on busy cores
            scores, rows = faiss.knn(query.reshape(1, -1), self.reconstruct(chunk), min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            found = rows[0] >= 0
            best_scores, best_ids = _top_k(np.concatenate([best_scores, scores[0][found]]), np.concatenate([best_ids, chunk[rows[0][found]]]), k)
        return best_scores, best_ids

    def _faiss_search(self, query: np.ndarray, k: int, allowed: np.ndarray | None, n_allowed: int):
        # the selector reads `bitmap` during the search, so it stays referenced until we return
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")
        selector = None if bitmap is None else faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
        widen = self.ntotal / max(n_allowed, 1)  # a filter keeping 1/w of the vectors needs w times the breadth
        if self.kind == "ivf":
            nprobe = min(self.params.nlist, math.ceil(self.params.nprobe * widen))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=min(4096, max(k, math.ceil(self.params.ef_search * widen))))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(query, k, params=params)
        keep = ids[0] >= 0
        return _top_k(scores[0][keep], ids[0][keep], k)
