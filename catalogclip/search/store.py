"""The metadata side of an index: products, their vectors and their filterable fields, in SQLite.

One file (``meta.sqlite``) holds every product as JSON, which vector ids belong to which product
image, an attribute table and a category-prefix table that filters are answered from, and the
index's info. Changes are made inside one transaction and become visible only on `commit`, so
the metadata and the vector file it names change together.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from catalogclip.catalog.schema import Product, product_from_json, split_values
from catalogclip.search.query import CATEGORY_FIELD, CATEGORY_SEP, Filter
from catalogclip.search.text import fold

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (vid INTEGER PRIMARY KEY, row INTEGER NOT NULL, image INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vectors_row ON vectors(row);
CREATE TABLE IF NOT EXISTS attrs (row INTEGER NOT NULL, field TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, num REAL);
CREATE INDEX IF NOT EXISTS attrs_key ON attrs(field, key);
CREATE INDEX IF NOT EXISTS attrs_num ON attrs(field, num);
CREATE INDEX IF NOT EXISTS attrs_row ON attrs(row);
CREATE TABLE IF NOT EXISTS categories (row INTEGER NOT NULL, path TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS categories_path ON categories(path);
CREATE INDEX IF NOT EXISTS categories_row ON categories(row);
"""


def as_number(value: str) -> float | None:
    try:
        number = float(value.replace(",", ""))
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def category_prefixes(path: list[str]) -> list[str]:
    return [CATEGORY_SEP.join(path[: i + 1]) for i in range(len(path))]


#: what `committed` reads: a new generation (vectors, products) or revision (settings such as the fusion)
COMMIT_KEYS = ("generation", "revision")


class MetadataStore:
    """SQLite-backed product metadata; safe to share between the threads of a server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._lock = threading.RLock()
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # --- info ---------------------------------------------------------------------------------
    def info(self) -> dict:
        return {key: json.loads(value) for key, value in self._rows("SELECT key, value FROM info")}

    def committed(self) -> tuple:
        """The committed generation and settings revision (one lookup: servers ask before every request)."""
        found = dict(self._rows(f"SELECT key, value FROM info WHERE key IN ({', '.join('?' * len(COMMIT_KEYS))})", COMMIT_KEYS))
        return tuple(json.loads(found[key]) if key in found else None for key in COMMIT_KEYS)

    def set_info(self, **values) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)",
                [(k, json.dumps(v, default=str)) for k, v in values.items()],
            )

    # --- writes (visible after commit) --------------------------------------------------------
    def add_product(self, product: Product, vectors: Iterable[tuple[int, int]]) -> int:
        """Store a product and its (vector id, image number) pairs; returns its row."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO products (id, data) VALUES (?, ?)",
                (product.id, json.dumps(product.to_json(), ensure_ascii=False)),
            )
            row = int(cur.lastrowid)
            self._db.executemany("INSERT INTO vectors (vid, row, image) VALUES (?, ?, ?)", [(v, row, i) for v, i in vectors])
            self._db.executemany(
                "INSERT INTO attrs (row, field, key, value, num) VALUES (?, ?, ?, ?, ?)",
                # One row per value of a multi-value ("Men | Women"): a filter on either finds it.
                [(row, f, fold(v), v, as_number(v)) for f, value in product.attributes.items() for v in split_values(value)],
            )
            self._db.executemany(
                "INSERT INTO categories (row, path) VALUES (?, ?)",
                [(row, p) for p in category_prefixes(product.category_path)],
            )
        return row

    def delete_product(self, product_id: str) -> list[int] | None:
        """Remove a product; returns the vector ids it had (to be tombstoned), None if unknown."""
        with self._lock:
            found = self._db.execute("SELECT row FROM products WHERE id = ?", (product_id,)).fetchone()
            if found is None:
                return None
            row = found[0]
            vids = [v for (v,) in self._db.execute("SELECT vid FROM vectors WHERE row = ?", (row,))]
            for table in ("products", "vectors", "attrs", "categories"):
                self._db.execute(f"DELETE FROM {table} WHERE row = ?", (row,))
        return vids

    def renumber_vectors(self, mapping: np.ndarray) -> None:
        """Apply old vid -> new vid (-1: gone) after the vector file was compacted."""
        with self._lock:
            old = self._db.execute("SELECT vid, row, image FROM vectors").fetchall()
            self._db.execute("DELETE FROM vectors")
            self._db.executemany(
                "INSERT INTO vectors (vid, row, image) VALUES (?, ?, ?)",
                [(int(mapping[v]), r, i) for v, r, i in old if mapping[v] >= 0],
            )

    def commit(self) -> None:
        with self._lock:
            self._db.commit()

    def rollback(self) -> None:
        with self._lock:
            self._db.rollback()

    # --- reads --------------------------------------------------------------------------------
    def count(self) -> int:
        return self._rows("SELECT COUNT(*) FROM products")[0][0]

    def vector_rows(self, n_vectors: int) -> np.ndarray:
        """Product row of each of the first `n_vectors` vector ids, -1 for vectors no product owns
        (deleted). Ids past them are left out: a reader that loaded its vectors just before another
        writer committed more sees the index as it was, not an out-of-range id."""
        out = np.full(n_vectors, -1, dtype=np.int64)
        pairs = np.asarray(self._rows("SELECT vid, row FROM vectors"), dtype=np.int64).reshape(-1, 2)
        pairs = pairs[pairs[:, 0] < n_vectors]
        out[pairs[:, 0]] = pairs[:, 1]
        return out

    def products_by_row(self, rows: Iterable[int]) -> dict[int, Product]:
        rows = [int(r) for r in rows]
        found = self._rows(f"SELECT row, data FROM products WHERE row IN ({','.join('?' * len(rows))})", rows)
        return {row: product_from_json(json.loads(data)) for row, data in found}

    def ids_by_row(self, rows: Iterable[int]) -> dict[int, str]:
        rows = [int(r) for r in rows]
        return dict(self._rows(f"SELECT row, id FROM products WHERE row IN ({','.join('?' * len(rows))})", rows))

    def product(self, product_id: str) -> tuple[int, Product] | None:
        found = self._rows("SELECT row, data FROM products WHERE id = ?", (product_id,))
        if not found:
            return None
        row, data = found[0]
        return row, product_from_json(json.loads(data))

    def iter_products(self) -> Iterator[Product]:
        for (data,) in self._rows("SELECT data FROM products ORDER BY row"):
            yield product_from_json(json.loads(data))

    def rows_and_products(self) -> Iterator[tuple[int, Product]]:
        for row, data in self._rows("SELECT row, data FROM products ORDER BY row"):
            yield row, product_from_json(json.loads(data))

    def product_ids(self) -> set[str]:
        return {pid for (pid,) in self._rows("SELECT id FROM products")}

    def vectors_of(self, row: int) -> list[tuple[int, int]]:
        return [(v, i) for v, i in self._rows("SELECT vid, image FROM vectors WHERE row = ? ORDER BY image", (row,))]

    def image_of(self, vids: Iterable[int]) -> dict[int, int]:
        vids = [int(v) for v in vids]
        found = self._rows(f"SELECT vid, image FROM vectors WHERE vid IN ({','.join('?' * len(vids))})", vids)
        return dict(found)

    def fields(self) -> dict[str, bool]:
        """Attribute field -> whether every value of it is a number (so ranges apply)."""
        rows = self._rows("SELECT field, COUNT(*) = COUNT(num) FROM attrs GROUP BY field ORDER BY field")
        return {field: bool(numeric) for field, numeric in rows}

    def text_values(self) -> dict[str, dict[str, int]]:
        """Every distinct value (ignoring case) of each non-numeric field, with how many products carry it."""
        numeric = self.fields()
        rows = self._rows("SELECT field, MIN(value), COUNT(*) FROM attrs GROUP BY field, key ORDER BY field, key")
        out: dict[str, dict[str, int]] = {}
        for field, value, count in rows:
            if not numeric[field]:
                out.setdefault(field, {})[value] = count
        return out

    def facets(self, limit: int = 50) -> dict[str, dict]:
        """Per field: the most frequent values with counts, or the range of a numeric field."""
        out: dict[str, dict] = {}
        for field, numeric in self.fields().items():
            if numeric:
                low, high = self._rows("SELECT MIN(num), MAX(num) FROM attrs WHERE field = ?", (field,))[0]
                out[field] = {"type": "range", "min": low, "max": high}
                continue
            values = self._rows(
                "SELECT MIN(value), COUNT(*) AS n FROM attrs WHERE field = ? GROUP BY key ORDER BY n DESC, MIN(value) LIMIT ?",
                (field, limit),
            )
            out[field] = {"type": "values", "values": [{"value": v, "count": n} for v, n in values]}
        return out

    def category_counts(self) -> dict[str, int]:
        return dict(self._rows("SELECT path, COUNT(*) FROM categories GROUP BY path ORDER BY path"))

    def rows_matching(self, clause: Filter, among: Sequence[int] | None = None) -> np.ndarray:
        """Rows of the products one filter clause selects (only those `among` these rows, if given)."""
        if clause.field == CATEGORY_FIELD:
            sql = f"SELECT row FROM categories WHERE path IN ({','.join('?' * len(clause.values))})"
            params: list = list(clause.values)
        elif clause.is_range:
            sql, params = "SELECT row FROM attrs WHERE field = ? AND num IS NOT NULL", [clause.field]
            if clause.low is not None:
                sql, params = sql + " AND num >= ?", params + [clause.low]
            if clause.high is not None:
                sql, params = sql + " AND num <= ?", params + [clause.high]
        else:
            keys = [fold(v) for v in clause.values]
            sql = f"SELECT row FROM attrs WHERE field = ? AND key IN ({','.join('?' * len(keys))})"
            params = [clause.field, *keys]
        if among is not None:  # a few hundred rows: look them up by row, not every row holding the value
            table = "categories" if clause.field == CATEGORY_FIELD else "attrs"
            sql = sql.replace(f"FROM {table}", f"FROM {table} INDEXED BY {table}_row")
            sql, params = sql + f" AND row IN ({','.join('?' * len(among))})", [*params, *map(int, among)]
        return np.asarray([r for (r,) in self._rows(sql, params)], dtype=np.int64)
