"""The ``milvus`` backend: an index's vectors, with the fields its filters need, in a Milvus collection.

The URI says which Milvus: a local file ending in ``.db`` is Milvus Lite (embedded in this
process, `pip install milvus-lite`), ``http(s)://host:19530`` a Milvus server or cluster (token
from `Connection.token` or ``CATALOGCLIP_MILVUS_TOKEN``; never written to the index).

One entity per product image: ``vid`` (the index's vector id, primary key), ``vector``, ``row``
(the product's row in the index metadata) and scalar columns for the filters: ``f<i>`` holds the
folded value of attribute i and ``n<i>`` its number, or ``m<i>`` (a JSON list) the folded values
of a multi-value ("Men | Women"; a range filter does not look inside those), and ``c<d>`` the
product's category path cut to depth d + 1. Columns are numbered, not named after attributes, so catalog field names never
enter an expression; the numbering is recorded in the index. Attributes and depths seen at build
time are typed columns (evaluated vectorised, also by Milvus Lite); ones that first appear in an
update go to Milvus's dynamic field under the same names, so expressions do not change. Filters
become a Milvus boolean expression over those columns, evaluated by Milvus during the vector
search. Every user value enters the expression as a string literal escaped by `string_literal`
(or as a number we formatted): Milvus Lite does not take filter templates (``{name}``
placeholders do not parse), so escaping is the one path that works on Lite and servers alike.

A build writes a fresh collection ``<alias>__<stamp>``; once the index folder is in place the
alias is switched to it (`publish`), so readers of the alias never see a half-built collection,
and older collections of the alias are dropped, except the one just replaced (processes that
opened the previous index keep answering until they reopen). Updates upsert new vectors at once
(ids the metadata has not committed are skipped by readers) and delete old ones only after the
metadata commit.
"""
from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from catalogclip.catalog.schema import Product, split_values
from catalogclip.search.backend import BACKENDS, EXACT_LIMIT, TOKEN_ENV, Connection, Selection, VectorParams
from catalogclip.search.query import CATEGORY_FIELD, CATEGORY_SEP, Filter
from catalogclip.search.text import fold
from catalogclip.search.store import as_number, category_prefixes

DEFAULT_ALIAS = "catalogclip"
#: our kinds -> Milvus index types (fp16 storage is a faiss kind: Milvus Lite has no FLOAT16_VECTOR)
INDEX_TYPES = {"flat": "FLAT", "ivf": "IVF_FLAT", "ivf_sq8": "IVF_SQ8", "ivf_pq": "IVF_PQ", "hnsw": "HNSW"}
_MAX_TEXT = 65_535  # Milvus's longest VARCHAR
_MAX_EF = 4096
_BATCH = 2000  # entities per insert call (a gRPC message stays well under its size limit)
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def string_literal(value: str) -> str:
    """`value` as a double-quoted Milvus string literal: backslash, quote and line breaks escaped,
    so that no value can end the literal (tested against Milvus Lite's own tokenizer)."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def _number(value: float) -> str:
    return repr(float(value))


class Columns:
    """Attribute name -> column number, and the category depths, of one collection."""

    def __init__(self, attributes: dict[str, int] | None = None, depth: int = 0, multi: Sequence[int] = ()) -> None:
        self.attributes = dict(attributes or {})
        self.depth = depth
        self.multi = set(multi)  # columns some product gives several values

    def to_json(self) -> dict:
        return {"attributes": self.attributes, "depth": self.depth, "multi": sorted(self.multi)}

    def see(self, products: Sequence[Product]) -> None:
        for product in products:
            for name, value in product.attributes.items():
                column = self.attributes.setdefault(name, len(self.attributes))
                if len(split_values(value)) > 1:
                    self.multi.add(column)
            self.depth = max(self.depth, len(product.category_path))

    def entity(self, vid: int, vector: np.ndarray, row: int, product: Product) -> dict:
        out = {"vid": vid, "vector": vector.tolist(), "row": row}
        out.update({f"c{d}": p for d, p in enumerate(category_prefixes(product.category_path))})
        for name, value in product.attributes.items():
            column, values = self.attributes[name], split_values(value)
            if len(values) > 1:
                out[f"m{column}"] = [fold(v) for v in values]
                continue
            out[f"f{column}"] = fold(value)
            number = as_number(value)
            if number is not None:
                out[f"n{column}"] = number
        return out

    def expression(self, filters: Sequence[Filter], exclude_row: int | None = None) -> str:
        """The Milvus expression selecting the vectors of products that pass every clause."""
        clauses = []
        for clause in filters:
            if clause.field == CATEGORY_FIELD:
                by_depth: dict[int, list[str]] = {}
                for path in clause.values:
                    by_depth.setdefault(path.count(CATEGORY_SEP), []).append(string_literal(path))
                clauses.append(" or ".join(f"c{d} in [{', '.join(paths)}]" for d, paths in sorted(by_depth.items())))
            elif clause.field not in self.attributes:
                clauses.append("false")  # no product has this field (the metadata check lets it through)
            elif clause.is_range:  # a range has at least one bound (parse_filters)
                column = f"n{self.attributes[clause.field]}"
                bounds = [f"{column} >= {_number(clause.low)}"] if clause.low is not None else []
                bounds += [f"{column} <= {_number(clause.high)}"] if clause.high is not None else []
                clauses.append(" and ".join(bounds))
            else:
                column = self.attributes[clause.field]
                values = ", ".join(string_literal(fold(v)) for v in clause.values)
                multi = f" or json_contains_any(m{column}, [{values}])" if column in self.multi else ""
                clauses.append(f"f{column} in [{values}]{multi}")
        if exclude_row is not None:
            clauses.append(f"row != {int(exclude_row)}")
        return " and ".join(f"({c})" for c in clauses)


def _resolve_uri(uri: str | None) -> str:
    if not uri:
        raise ValueError("the milvus backend needs --uri: a local .db file (Milvus Lite) or http(s)://host:19530")
    if "://" in uri:
        return uri
    if not uri.endswith(".db"):
        raise ValueError(f"{uri}: a Milvus Lite URI is a local file ending in .db (or give http(s)://host:port)")
    return str(Path(uri).resolve())


def _client(uri: str, token: str | None):
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise ImportError("the milvus backend needs pymilvus (and milvus-lite for local files): pip install 'catalogclip[milvus]'") from None
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return MilvusClient(uri=uri, token=token or os.environ.get(TOKEN_ENV, ""))


def _alias_name(name: str | None) -> str:
    alias = re.sub(r"[^A-Za-z0-9_]", "_", name or DEFAULT_ALIAS)  # Milvus names: ASCII letters, digits, _
    return alias if re.match(r"[A-Za-z_]", alias) else f"_{alias}"


class MilvusStore:
    """`VectorStore` over one Milvus collection."""

    def __init__(
        self, client, uri: str, collection: str, alias: str, kind: str, params: VectorParams, dim: int, next_vid: int, columns: Columns
    ) -> None:
        self.client = client
        self.columns = columns
        self.uri = uri
        self.collection = collection
        self.alias = alias
        self.kind = kind
        self.params = params
        self._dim = dim
        self._next_vid = next_vid
        self._pending_deletes: list[int] = []

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return self._next_vid

    def location(self) -> dict:
        return {"uri": self.uri, "collection": self.collection, "alias": self.alias, "next_vid": self._next_vid, "columns": self.columns.to_json()}

    # --- writes -------------------------------------------------------------------------------
    def add(self, vids: np.ndarray, vectors: np.ndarray, payloads: Sequence[tuple[int, Product]]) -> None:
        self.columns.see([p for _, p in payloads])
        # upsert: ids of an update that crashed before its metadata commit are reused, not duplicated
        for start in range(0, len(vids), _BATCH):
            end = start + _BATCH
            batch = [self.columns.entity(int(v), x, row, p) for v, x, (row, p) in zip(vids[start:end], vectors[start:end], payloads[start:end])]
            self.client.upsert(self.collection, batch)
        if len(vids):
            self._next_vid = max(self._next_vid, int(vids.max()) + 1)

    def delete(self, vids: np.ndarray) -> None:
        self._pending_deletes += [int(v) for v in vids]  # applied once the metadata no longer names them

    def compact(self, live: np.ndarray) -> np.ndarray | None:
        """Never renumbers: Milvus reclaims deleted entities' space itself."""
        return None

    def persist(self, folder: Path, generation: int) -> None:
        self.client.flush(self.collection)

    def committed(self, folder: Path, old_generation: int) -> None:
        if self._pending_deletes:
            self.client.delete(self.collection, ids=self._pending_deletes)
            self._pending_deletes = []

    def abandon(self, folder: Path, generation: int) -> None:
        self._pending_deletes = []  # the upserted vectors stay, unknown to the metadata, until their ids are reused

    def publish(self) -> None:
        """Point the alias at this collection; drop the alias's older collections but the one replaced."""
        replaced = self._aliased()
        if replaced is None:
            self.client.create_alias(self.collection, self.alias)
        elif replaced != self.collection:
            self.client.alter_alias(self.collection, self.alias)
        for name in self.client.list_collections():
            if name.startswith(f"{self.alias}__") and name not in (self.collection, replaced):
                self.client.drop_collection(name)

    def _aliased(self) -> str | None:
        if self.alias not in self.client.list_aliases().get("aliases", []):
            return None
        return self.client.describe_alias(self.alias)["collection_name"]

    def close(self) -> None:
        self.client.close()

    # --- reads --------------------------------------------------------------------------------
    def reconstruct(self, vids: np.ndarray) -> np.ndarray:
        ids = [int(v) for v in vids]
        found = {e["vid"]: e["vector"] for e in self.client.get(self.collection, ids=ids, output_fields=["vector"])}
        return np.asarray([found[v] for v in ids], dtype=np.float32).reshape(len(ids), self._dim)

    def search(self, queries: np.ndarray, k: int, selection: Selection) -> list[tuple[np.ndarray, np.ndarray]]:
        expression = self.columns.expression(selection.filters, selection.exclude_row)
        results = self.client.search(
            self.collection,
            data=np.asarray(queries, dtype=np.float32).tolist(),
            anns_field="vector",
            limit=k,
            filter=expression,
            output_fields=["row"],
            search_params={"metric_type": "IP", "params": self._search_params(selection, k)},
        )
        return [
            (np.asarray([h.distance for h in hits], np.float32), np.asarray([h.id for h in hits], np.int64))
            for hits in results
        ]

    def _search_params(self, selection: Selection, k: int) -> dict:
        if self.kind == "flat":
            return {}
        mask = selection.mask() if selection.filters else None
        n_allowed = self._next_vid if mask is None else int(mask.sum())
        selective = mask is not None and n_allowed <= EXACT_LIMIT
        # the filter is applied inside the ANN search: a filter keeping 1/w of the vectors needs w
        # times the breadth, and a selective one all of it (every list; the widest HNSW candidate list)
        widen = self._next_vid / max(1, n_allowed)
        if self.kind.startswith("ivf"):
            return {"nprobe": self.params.nlist if selective else min(self.params.nlist, math.ceil(self.params.nprobe * widen))}
        ef = _MAX_EF if selective else math.ceil(self.params.ef_search * widen)
        return {"ef": min(_MAX_EF, max(k, ef))}


def _index_params(kind: str, params: VectorParams, n: int, dim: int) -> dict:
    if kind.startswith("ivf"):
        params.nlist = params.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), max(1, n // 39)))
        params.nprobe = params.nprobe or min(params.nlist, max(8, params.nlist // 32))
        built = {"nlist": params.nlist}
        if kind == "ivf_pq":
            params.pq_m = params.pq_m or max(1, dim // 4)
            built.update(m=params.pq_m, nbits=8)
        return built
    if kind == "hnsw":
        return {"M": params.hnsw_m, "efConstruction": params.ef_construction}
    return {}


@BACKENDS.register("milvus")
class MilvusBackend:
    kinds = tuple(INDEX_TYPES)

    @staticmethod
    def create(
        folder: Path, dim: int, vectors: np.ndarray, kind: str, params: VectorParams, connection: Connection, products: Sequence[Product] = ()
    ) -> MilvusStore:
        from pymilvus import DataType

        uri = _resolve_uri(connection.uri)
        client = _client(uri, connection.token)
        alias = _alias_name(connection.collection)
        collection = f"{alias}__{uuid.uuid4().hex[:16]}"
        columns = Columns()
        columns.see(products)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=True, description="catalogclip product image vectors")
        schema.add_field("vid", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("row", DataType.INT64)
        for column in columns.attributes.values():
            schema.add_field(f"f{column}", DataType.VARCHAR, max_length=_MAX_TEXT, nullable=True)
            schema.add_field(f"n{column}", DataType.DOUBLE, nullable=True)
            if column in columns.multi:
                schema.add_field(f"m{column}", DataType.JSON, nullable=True)
        for depth in range(columns.depth):
            schema.add_field(f"c{depth}", DataType.VARCHAR, max_length=_MAX_TEXT, nullable=True)
        index_params = client.prepare_index_params()
        built = _index_params(kind, params, len(vectors), dim)
        # pymilvus 3 sends build parameters as flat key-value pairs, which Milvus Lite 3.2 ignores
        # (it reads only a JSON "params" entry, and builds with its defaults); send both
        index_params.add_index("vector", index_type=INDEX_TYPES[kind], metric_type="IP", params={**built, "params": built} if built else {})
        client.create_collection(collection, schema=schema, index_params=index_params, consistency_level="Strong")
        return MilvusStore(client, uri, collection, alias, kind, params, dim, 0, columns)

    @staticmethod
    def open(folder: Path, info: dict, connection: Connection) -> MilvusStore:
        uri = _resolve_uri(connection.uri or info["uri"])
        client = _client(uri, connection.token)
        if not client.has_collection(info["collection"]):
            client.close()
            raise FileNotFoundError(f"{folder}: its Milvus collection '{info['collection']}' is not at {uri} (dropped, or another URI?)")
        client.load_collection(info["collection"])
        params = VectorParams(**info["params"])
        columns = Columns(**info["columns"])
        return MilvusStore(client, uri, info["collection"], info["alias"], info["kind"], params, int(info["dim"]), int(info["next_vid"]), columns)
