"""The vector-store seam: where an index keeps its image vectors and how it searches them.

`ProductIndex` (index.py) keeps products, filters' metadata and the vector id -> product map in
SQLite and talks to its vectors only through the `VectorStore` protocol below. Backends are
registered by name in `BACKENDS` and chosen per index when it is built (the name is recorded in
the index, so opening needs no flag):

- ``faiss`` (default, vectors.py): an in-process FAISS index saved beside the metadata;
- ``milvus`` (milvus.py): a Milvus collection, either Milvus Lite in a local file or a Milvus
  server / cluster, with the filters evaluated inside Milvus.

Vector ids are assigned by the index (``0, 1, 2, ...``, never reused), so every backend maps an
id to the same product row. A search asks for more vectors than products (a product owns one
vector per image) and the index keeps each product's best image.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from catalogclip.catalog.schema import Product
from catalogclip.registry import Registry
from catalogclip.search.query import Filter

#: where a Milvus token may come from besides `Connection.token`
TOKEN_ENV = "CATALOGCLIP_MILVUS_TOKEN"
#: kinds every backend understands; "auto" picks one by catalog size (`choose_kind`)
INDEX_KINDS = ("flat", "flat_fp16", "ivf", "ivf_sq8", "ivf_pq", "hnsw")
EXACT_KINDS = ("flat", "flat_fp16")
#: below this many vectors `auto` builds an exact index (a flat scan is then a few milliseconds)
AUTO_FLAT_MAX = 100_000
#: above this many vectors `auto` compresses the vectors (8-bit scalar quantisation: 4x smaller)
AUTO_COMPRESS_MIN = 2_000_000
#: a filter allowing at most this many vectors is searched exactly (or with full ANN breadth) over them
EXACT_LIMIT = 20_000


@dataclass
class VectorParams:
    """How the ANN structure is built and searched (stored with the index)."""

    nlist: int = 0  # ivf*: number of lists (0: about 4 * sqrt(n))
    nprobe: int = 0  # ivf*: lists visited per query (0: nlist / 32, at least 8)
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    pq_m: int = 0  # ivf_pq: sub-quantisers (0: dim / 4, i.e. 4 dimensions per byte)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def choose_kind(kind: str, n_vectors: int, supported: Sequence[str] = INDEX_KINDS) -> str:
    if kind == "auto":
        kind = "flat" if n_vectors <= AUTO_FLAT_MAX else "ivf" if n_vectors < AUTO_COMPRESS_MIN else "ivf_sq8"
    if kind not in supported:
        raise ValueError(f"unknown index kind '{kind}' for this backend (known: auto, {', '.join(supported)})")
    return kind


@dataclass
class Selection:
    """Which vectors a search may return. Backends that filter themselves (Milvus) read `filters`
    and `exclude_row`; in-process ones (FAISS) call `mask`: a bool array over vector ids of the
    live vectors that pass (None: every vector), computed from the metadata on demand."""

    filters: Sequence[Filter] = ()
    exclude_row: int | None = None
    mask: Callable[[], np.ndarray | None] = field(default=lambda: None)


@dataclass
class Connection:
    """Which backend an index uses and where it keeps its vectors, when that is not the index
    folder (Milvus). `backend` None means "faiss" for a build and "whatever the index records"
    when opening; `uri` / `token` given when opening override the recorded URI (another replica,
    a token). The token is never written to the index.
    """

    backend: str | None = None
    uri: str | None = None
    token: str | None = None
    collection: str | None = None

    def shareable(self) -> dict:
        """The connection as JSON for worker processes; a token goes to them through the
        environment (CATALOGCLIP_MILVUS_TOKEN), not into a command line or a spec."""
        if self.token:
            os.environ[TOKEN_ENV] = self.token
        return {"backend": self.backend, "uri": self.uri, "collection": self.collection}


class VectorStore(Protocol):
    """What an index needs from a vector backend."""

    kind: str
    params: VectorParams

    @property
    def dim(self) -> int: ...

    @property
    def ntotal(self) -> int:
        """The next vector id: ids below it were assigned (some may since be deleted)."""

    def location(self) -> dict:
        """JSON-able facts recorded in the index so `open` can find the vectors again."""

    def add(self, vids: np.ndarray, vectors: np.ndarray, payloads: Sequence[tuple[int, Product]]) -> None:
        """Store unit vectors under ids `vids`; payloads[i] = (product row, product) of vids[i]."""

    def delete(self, vids: np.ndarray) -> None:
        """Forget vectors; a search must not return them once the index is committed."""

    def reconstruct(self, vids: np.ndarray) -> np.ndarray: ...

    def search(self, queries: np.ndarray, k: int, selection: Selection) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query row: (scores, vector ids), best first, at most k, within `selection`."""

    def compact(self, live: np.ndarray) -> np.ndarray | None:
        """Drop deleted vectors' space if worth it; returns old -> new ids (-1: gone) when ids changed."""

    def persist(self, folder: Path, generation: int) -> None:
        """Make the vectors as they are now durable as `generation` (before the metadata commit)."""

    def committed(self, folder: Path, old_generation: int) -> None:
        """The metadata naming the new generation is committed: let go of the old one."""

    def abandon(self, folder: Path, generation: int) -> None:
        """A generation that was persisted but never committed: remove it."""

    def publish(self) -> None:
        """A freshly built index is in place: make it the one readers of its name see."""

    def close(self) -> None: ...


class Backend(Protocol):
    """A registered backend: makes a new store, or opens the one an index records."""

    kinds: Sequence[str]

    def create(
        self, folder: Path, dim: int, vectors: np.ndarray, kind: str, params: VectorParams, connection: Connection, products: Sequence[Product]
    ) -> VectorStore:
        """An empty store of `kind`, trained on `vectors` where the kind needs training, with room
        for the filter fields of `products` (what the build will add)."""

    def open(self, folder: Path, info: dict, connection: Connection) -> VectorStore: ...


BACKENDS: Registry[Backend] = Registry("vector store backend")


def backend(name: str) -> Backend:
    _register_builtin()
    return BACKENDS.get(name)


def _register_builtin() -> None:
    # imported here, not at the top: each backend module imports this one for the registry
    import catalogclip.search.milvus  # noqa: F401  (registers "milvus"; pymilvus is imported only when used)
    import catalogclip.search.vectors  # noqa: F401  (registers "faiss")


__all__ = [
    "AUTO_COMPRESS_MIN", "AUTO_FLAT_MAX", "BACKENDS", "Backend", "Connection", "EXACT_KINDS", "EXACT_LIMIT", "INDEX_KINDS",
    "Selection", "TOKEN_ENV", "VectorParams", "VectorStore", "backend", "choose_kind",
]
