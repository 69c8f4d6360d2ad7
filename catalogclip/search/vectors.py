"""The ``faiss`` backend: an in-process FAISS inner-product index over L2-normalised vectors.

Kinds: ``flat`` (exact), ``flat_fp16`` (exact scan over vectors stored in half precision: half
the memory and the bytes a query reads), ``ivf`` (inverted lists, k-means trained),
``ivf_sq8`` / ``ivf_pq`` (inverted lists over 8-bit scalar-quantised / product-quantised codes:
4x / 16x smaller than fp32 at d=256) and ``hnsw`` (graph). Vector ids are positions, assigned in
order and never reused; deleting marks a tombstone in the index's metadata that every search
excludes (through an ID selector), and `compacted` rebuilds without them.

Filtered search never loses recall silently: a selective filter (at most `exact_limit` allowed
vectors) is answered exactly over the allowed vectors; a broader one uses the ANN index with the
filter applied inside the search and its breadth (nprobe / efSearch) scaled up by 1 / selectivity,
and falls back to exact search if the index still returns fewer results than asked for.

Threads: a single query is scanned by one thread (a second one only contends for memory
bandwidth); a batch of queries is one matrix product over the vectors, read once for all of them,
on every thread.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from catalogclip.catalog.schema import Product
from catalogclip.io import atomic_path
from catalogclip.search.backend import (  # noqa: F401  (AUTO_FLAT_MAX, choose_kind: re-exported)
    AUTO_FLAT_MAX,
    BACKENDS,
    EXACT_KINDS,
    EXACT_LIMIT,
    INDEX_KINDS,
    Connection,
    Selection,
    VectorParams,
    choose_kind,
)

_EXACT_CHUNK = 65_536
_IVF_KINDS = ("ivf", "ivf_sq8", "ivf_pq")


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Highest k scores, ties broken by smaller id so results are deterministic."""
    if len(scores) > k:
        keep = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))
    return scores[order], ids[order]


def _block_top_k(queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the k best rows of `block` per query, unordered."""
    if len(queries) == 1:  # faiss, not numpy: a single-query BLAS gemv stalls for milliseconds on busy cores
        return faiss.knn(queries, block, k, metric=faiss.METRIC_INNER_PRODUCT)
    scores = queries @ block.T  # a batch: one matrix product, reading the block once for every query
    rows = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


@contextlib.contextmanager
def _threads(n_queries: int):
    """One OpenMP thread for a single query, all of them for a batch (per calling thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 if n_queries == 1 else os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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
        index = cls.empty(vectors.shape[1], choose_kind(kind, len(vectors)), params, train=vectors, seed=seed)
        index.add(vectors)
        return index

    @classmethod
    def empty(cls, dim: int, kind: str, params: VectorParams | None = None, train: np.ndarray | None = None, seed: int = 0) -> "VectorIndex":
        """An index with no vectors; ivf kinds are trained on `train` first."""
        params = params or VectorParams()
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "flat_fp16":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params.ef_construction
        elif kind in _IVF_KINDS:
            index = cls._trained_ivf(np.zeros((0, dim), np.float32) if train is None else train, kind, params, seed)
        else:
            raise ValueError(f"unknown index kind '{kind}' (known: {', '.join(INDEX_KINDS)})")
        return cls(index, kind, params)

    @staticmethod
    def _trained_ivf(vectors: np.ndarray, kind: str, params: VectorParams, seed: int) -> faiss.Index:
        n, dim = vectors.shape
        if n == 0:
            raise ValueError(f"an {kind} index needs vectors to train on; build a flat index for an empty catalog")
        # k-means needs ~40 points per list; fewer lists than that would leave lists empty
        params.nlist = params.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        params.nprobe = params.nprobe or min(params.nlist, max(8, params.nlist // 32))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivf_sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, params.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        else:
            params.pq_m = params.pq_m or max(1, dim // 4)
            if dim % params.pq_m or n < 256:
                raise ValueError(f"ivf_pq needs pq_m ({params.pq_m}) to divide the dimension ({dim}) and at least 256 vectors ({n} given)")
            index = faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, 64 * max(params.nlist, 256 if kind == "ivf_pq" else 0))
        rows = np.random.default_rng(seed).choice(n, sample, replace=False) if sample < n else slice(None)
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
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

    @property
    def nbytes(self) -> int:
        """Bytes the index takes in memory (its serialised size)."""
        return int(faiss.serialize_index(self.index).nbytes)

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
        if self.kind in _IVF_KINDS:  # keep the trained lists: only re-adding is needed
            index = faiss.clone_index(self.index)
            index.reset()
            index.make_direct_map()
            index.add(vectors)
            return VectorIndex(index, self.kind, self.params, self.exact_limit), mapping
        return VectorIndex.build(vectors, self.kind, self.params), mapping

    # --- search ---------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query vector among the `allowed` ids (bool mask; None: all)."""
        return self.search_many(np.reshape(query, (1, -1)), k, allowed)[0]

    def search_many(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """`search` for each row of `queries`, scanning the vectors once for the whole batch."""
        queries = np.ascontiguousarray(np.reshape(queries, (-1, self.dim)), dtype=np.float32)
        n_allowed = self.ntotal if allowed is None else int(allowed.sum())
        k = min(k, n_allowed)
        if k <= 0:
            return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        with _threads(len(queries)):
            if allowed is not None and n_allowed <= self.exact_limit:
                return self.exact_many(queries, np.flatnonzero(allowed), k)
            # a batch on fp32 vectors: one matrix product per block instead of one scan per query (fp16 blocks
            # would need converting first, which costs more than faiss's own per-query scans save)
            if len(queries) > 1 and self.kind == "flat":
                return self.exact_many(queries, None if allowed is None else np.flatnonzero(allowed), k)
            scores, ids = self._faiss_search(queries, k, allowed, n_allowed)
            out = []
            for query, row_scores, row_ids in zip(queries, scores, ids):
                keep = row_ids >= 0
                found = _top_k(row_scores[keep], row_ids[keep], k)
                if len(found[1]) < k:  # the ANN structure ran dry inside a filter: answer exactly instead
                    candidates = np.flatnonzero(allowed) if allowed is not None else np.arange(self.ntotal)
                    found = self.exact(query, candidates, k)
                out.append(found)
            return out

    def exact(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the given ids."""
        return self.exact_many(np.reshape(query, (1, -1)), ids, k)[0]

    def exact_many(self, queries: np.ndarray, ids: np.ndarray | None, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-k over the given ids (None: all) for each query, in blocks so memory stays bounded."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = self.ntotal if ids is None else len(ids)
        best_scores, best_ids = np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        for start in range(0, n, _EXACT_CHUNK):
            block_ids = np.arange(start, min(n, start + _EXACT_CHUNK)) if ids is None else ids[start : start + _EXACT_CHUNK]
            scores, rows = _block_top_k(queries, self._vectors(block_ids), min(k, len(block_ids)))
            best_scores, best_ids = np.concatenate([best_scores, scores], 1), np.concatenate([best_ids, block_ids[rows]], 1)
            if best_scores.shape[1] > k:
                keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
                best_scores, best_ids = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_ids, keep, 1)
        return [_top_k(row_scores, row_ids, k) for row_scores, row_ids in zip(best_scores, best_ids)]

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """fp32 vectors of sorted `ids`; exact kinds read their storage in place (a range is a view)."""
        if self.kind not in EXACT_KINDS:
            return self.reconstruct(ids)
        codes = faiss.rev_swig_ptr(self.index.codes.data(), self.index.codes.size())
        stored = codes.view(np.float32 if self.kind == "flat" else np.float16).reshape(self.ntotal, self.dim)
        contiguous = len(ids) and ids[-1] - ids[0] == len(ids) - 1
        block = stored[ids[0] : ids[-1] + 1] if contiguous else stored[ids]
        return block.astype(np.float32, copy=False)

    def _faiss_search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, n_allowed: int):
        # the selector reads `bitmap` during the search, so it stays referenced until we return
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")
        selector = None if bitmap is None else faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
        widen = self.ntotal / max(n_allowed, 1)  # a filter keeping 1/w of the vectors needs w times the breadth
        if self.kind in _IVF_KINDS:
            nprobe = min(self.params.nlist, math.ceil(self.params.nprobe * widen))
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=min(4096, max(k, math.ceil(self.params.ef_search * widen))))
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(queries, k, params=params)


# --- the backend ----------------------------------------------------------------------------------
def vector_file(generation: int) -> str:
    return f"vectors-{generation}.faiss"


class FaissStore:
    """`VectorStore` over a `VectorIndex` saved as ``vectors-<generation>.faiss`` in the index
    folder. Deleted ids stay in FAISS as tombstones: the selection's mask leaves them out."""

    def __init__(self, vectors: VectorIndex) -> None:
        self.vectors = vectors

    @property
    def kind(self) -> str:
        return self.vectors.kind

    @property
    def params(self) -> VectorParams:
        return self.vectors.params

    @property
    def dim(self) -> int:
        return self.vectors.dim

    @property
    def ntotal(self) -> int:
        return self.vectors.ntotal

    def location(self) -> dict:
        return {}

    def add(self, vids: np.ndarray, vectors: np.ndarray, payloads: Sequence[tuple[int, Product]]) -> None:
        if len(vids) and int(vids[0]) != self.ntotal:
            raise ValueError(f"faiss ids are positions: expected ids from {self.ntotal}, got {int(vids[0])}")
        self.vectors.add(vectors)

    def delete(self, vids: np.ndarray) -> None:
        """Nothing to do: the index marks them deleted and the mask leaves them out."""

    def reconstruct(self, vids: np.ndarray) -> np.ndarray:
        return self.vectors.reconstruct(vids)

    def search(self, queries: np.ndarray, k: int, selection: Selection) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.vectors.search_many(queries, k, selection.mask())

    def compact(self, live: np.ndarray) -> np.ndarray | None:
        if not self.ntotal or live.sum() >= self.ntotal / 2:  # compact only once mostly tombstones
            return None
        self.vectors, mapping = self.vectors.compacted(live)
        return mapping

    def persist(self, folder: Path, generation: int) -> None:
        with atomic_path(Path(folder) / vector_file(generation)) as tmp:
            self.vectors.save(tmp)

    def committed(self, folder: Path, old_generation: int) -> None:
        (Path(folder) / vector_file(old_generation)).unlink(missing_ok=True)

    def abandon(self, folder: Path, generation: int) -> None:
        (Path(folder) / vector_file(generation)).unlink(missing_ok=True)

    def publish(self) -> None:
        """Nothing to do: the index folder itself was swapped into place."""

    def close(self) -> None:
        """Nothing to release: the vectors are plain process memory."""


@BACKENDS.register("faiss")
class FaissBackend:
    kinds = INDEX_KINDS

    @staticmethod
    def create(
        folder: Path, dim: int, vectors: np.ndarray, kind: str, params: VectorParams, connection: Connection, products: Sequence[Product] = ()
    ) -> FaissStore:
        return FaissStore(VectorIndex.empty(dim, kind, params, train=vectors))

    @staticmethod
    def open(folder: Path, info: dict, connection: Connection) -> FaissStore:
        return FaissStore(VectorIndex.load(Path(folder) / vector_file(info["generation"]), info["kind"], info["params"]))
