"""Flipkart e-commerce sample CSV (uniq_id, product_name, product_category_tree, image, ...)."""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import urlsplit

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import (
    READERS,
    ReaderOptions,
    Source,
    csv_rows,
    image_cell,
    json_list,
    resolve_image_dir,
)
from catalogclip.catalog.schema import RowError, products_from_rows

COLUMNS = ("uniq_id", "product_name", "product_category_tree", "image")
# A JSON string, or the two Ruby tokens that differ from JSON; strings match first, so "=>"
# or "nil" inside a value are left alone.
_RUBY_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|=>|\bnil\b')
_RUBY_TO_JSON = {"=>": ":", "nil": "null"}


def parse_specifications(text: str) -> dict[str, str]:
    """Key/value pairs of `{"product_specification"=>[{"key"=>"Fabric", "value"=>"Cotton"}, ...]}`.

    Entries without a key (or value) are dropped; the first value of a repeated key wins.
    Raises ValueError when the text is not such a hash.
    """
    if not text.strip():
        return {}
    as_json = _RUBY_TOKEN.sub(lambda m: _RUBY_TO_JSON.get(m.group(0), m.group(0)), text)
    try:
        data = json.loads(as_json, strict=False)  # strict=False: values may hold raw newlines
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a specification hash ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise ValueError("not a specification hash")
    entries = data.get("product_specification") or []
    if isinstance(entries, dict):  # a single entry is not wrapped in a list
        entries = [entries]
    specs: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("a specification entry is not a hash")
        key, value = (str(entry.get(name) or "").strip() for name in ("key", "value"))
        if key and value:
            specs.setdefault(key, value)
    return specs


def _names_product(node: str, product_name: str) -> bool:
    """Whether a tree node is the product's own name, maybe extended or cut short with '...'."""
    node, name = node.casefold(), product_name.casefold().strip()
    if not name:
        return False
    if node.startswith(name):
        return True
    stem = node[:-3].rstrip() if node.endswith("...") else ""
    return bool(stem) and name.startswith(stem)


def category_from_tree(text: str, product_name: str) -> list[str]:
    """`["A >> B >> C"]` as ["A", "B", "C"], without a last node naming the product itself."""
    tree = json_list(text, "product_category_tree")
    nodes = [node.strip() for node in " >> ".join(map(str, tree)).split(">>") if node.strip()]
    if nodes and _names_product(nodes[-1], product_name):
        nodes.pop()
    return nodes


def image_names(text: str) -> list[str]:
    """File names in the `image` column, duplicates removed. The column comes in three shapes
    (see `image_cell`): a JSON list of URLs, one URL, or a bare file name; a URL counts by its
    file name."""
    names = (PurePosixPath(urlsplit(entry).path).name for entry in image_cell(text, "image"))
    return list(dict.fromkeys(name for name in names if name))


def _raw_products(
    csv_path: Path, image_dir: Path, problems: ProblemLog, encoding: str | None
) -> Iterator[tuple[int, dict]]:
    for line, row in csv_rows(csv_path, COLUMNS, problems, encoding):
        name = row["product_name"].strip()
        try:
            category = category_from_tree(row["product_category_tree"], name)
            images = [str(image_dir / file_name) for file_name in image_names(row["image"])]
        except RowError as exc:
            problems.add("malformed row", csv_path, line, str(exc))
            continue
        try:
            attributes = parse_specifications(row.get("product_specifications") or "")
        except ValueError as exc:
            problems.add("bad specifications", csv_path, line, f"product_specifications ignored: {exc}")
            attributes = {}
        brand = (row.get("brand") or "").strip()
        if brand:
            attributes["brand"] = brand
        yield line, {
            "id": row["uniq_id"],
            "title": name,
            "description": row.get("description") or "",
            "images": images,
            "attributes": attributes,
            "category_path": category,
        }


def find_csv(folder: Path) -> Path:
    """The one CSV file in `folder`; ValueError naming the folder when there is none or several."""
    found = sorted(folder.glob("*.csv"))
    if len(found) != 1:
        names = ", ".join(path.name for path in found) or "none"
        raise ValueError(f"{folder}: expected one Flipkart CSV file in the folder, found {names}")
    return found[0]


@READERS.register("flipkart")
def read_flipkart(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the CSV file or the folder holding it; images are looked up by file name in
    `<csv folder>/images` (the sample's image URLs are only names: they are not downloaded)."""
    csv_path = find_csv(src) if src.is_dir() else src
    image_dir = resolve_image_dir(options, csv_path.parent / "images")
    raw = _raw_products(csv_path, image_dir, problems, options.encoding)
    return Source(csv_path, csv_path.parent, products_from_rows(raw, csv_path, problems))
