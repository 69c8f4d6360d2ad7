"""Shopify's product CSV export: one row per variant and per image, rows of a product share its Handle.

The first row of a product holds its title, body, vendor, type, tags and option names; later
rows add variants (option values, a variant image) and images (Image Src at Image Position).
One product per Handle, as for Google's item_group_id (see `merge_variants`). Only products a
shopper can see are read: a first row whose Status is draft or archived, or whose Published is
FALSE (not on the online store), is skipped and counted with its Handle's other rows, as
WooCommerce's drafts are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import READERS, ReaderOptions, Source, csv_rows, merge_variants
from catalogclip.catalog.readers.html import html_to_text
from catalogclip.catalog.schema import ImageRef, join_values, products_from_rows

REQUIRED = ("Handle", "Title", "Image Src")
OPTIONS = (1, 2, 3)
NO_VARIANTS = ("Title", "Default Title")  # the option Shopify writes for a product without variants
HIDDEN_STATUS = ("draft", "archived")  # Status: active | draft | archived


def _attributes(row: dict, option_names: list[str]) -> dict[str, str]:
    attributes = {
        "brand": row.get("Vendor", ""),
        "type": row.get("Type", ""),
        "tags": join_values((row.get("Tags") or "").split(",")),
    }
    for i, name in zip(OPTIONS, option_names):
        value = (row.get(f"Option{i} Value") or "").strip()
        if name and value and (name, value) != NO_VARIANTS:
            attributes[name] = value
    return {key: value.strip() for key, value in attributes.items() if value and value.strip()}


def _images(rows: list[tuple[int, dict]]) -> list[ImageRef]:
    """Image Src by Image Position (rows without a position after, in row order), then variant
    images; each knows its row and column, for problem lines."""
    positioned = []
    for order, (line, row) in enumerate(rows):
        src = (row.get("Image Src") or "").strip()
        if src:
            position = (row.get("Image Position") or "").strip()
            key = int(position) if position.isdigit() else len(rows) + order
            positioned.append((key, order, ImageRef(src, origin=(line, "Image Src"))))
    images = [image for _, _, image in sorted(positioned)]
    for line, row in rows:
        src = (row.get("Variant Image") or "").strip()
        if src:
            images.append(ImageRef(src, origin=(line, "Variant Image")))
    return list(dict.fromkeys(images))


def _category(row: dict) -> list[str]:
    """Product Category's path (Shopify's taxonomy, `>`-separated), else the shop's own Type."""
    path = [node.strip() for node in (row.get("Product Category") or "").split(">") if node.strip()]
    return path or [node for node in [(row.get("Type") or "").strip()] if node]


def product_of(handle: str, rows: list[tuple[int, dict]]) -> dict:
    """The raw product of one Handle's rows (with their lines)."""
    option_names = [(rows[0][1].get(f"Option{i} Name") or "").strip() for i in OPTIONS]
    variants = [
        {
            "title": (row.get("Title") or "").strip(),
            "description": html_to_text(row.get("Body (HTML)") or ""),
            "attributes": _attributes(row, option_names),
            "category_path": _category(row),
        }
        for _, row in rows
    ]
    return merge_variants(handle, variants) | {"images": _images(rows)}


def _products(path: Path, problems: ProblemLog, encoding: str | None) -> Iterator[tuple[int, dict]]:
    handles: dict[str, list[tuple[int, dict]]] = {}
    for line, row in csv_rows(path, REQUIRED, problems, encoding):
        handle = row["Handle"].strip()
        if not handle:
            problems.add("malformed row", path, line, "field 'Handle' is empty")
            continue
        handles.setdefault(handle, []).append((line, row))
    for handle, rows in handles.items():
        line, first = rows[0]
        if (reason := _unpublished(first)) is None:
            yield line, product_of(handle, rows)
        else:
            problems.add("not published", path, line, reason + (f"; its other rows ({len(rows) - 1}) are left out with it" if len(rows) > 1 else ""))


def _unpublished(first: dict) -> str | None:
    """Why shoppers cannot see a product, from its first row (the one with product-level fields)."""
    status = (first.get("Status") or "").strip()
    if status.lower() in HIDDEN_STATUS:
        return f"field 'Status' is {status}"
    published = (first.get("Published") or "").strip()
    if published.lower() == "false":
        return f"field 'Published' is {published} (not on the online store)"
    return None


@READERS.register("shopify")
def read_shopify(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the exported products CSV; image paths that are not URLs start from its folder."""
    if src.is_dir():
        raise ValueError(f"{src}: is a folder, expected Shopify's products CSV export")
    return Source(src, src.parent, products_from_rows(_products(src, problems, options.encoding), src, problems))
