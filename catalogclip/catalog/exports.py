"""A canonical catalog written as a shop's export: WooCommerce's product CSV, which the
`woocommerce` reader reads back. The demo imports its synthetic catalog this way (a shop's path
into catalogclip), and the tests check that the round trip keeps what the export can carry.

An export holds what a shop has: titles, descriptions (as HTML), one category path, attributes
and the merchant's images. Customer shots, boxes and the data set's splits have no column in it.
"""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

from catalogclip.catalog.schema import Catalog, Product, relative_path, is_url, split_values
from catalogclip.io import atomic_write_text

FIXED_COLUMNS = ("ID", "Type", "SKU", "Name", "Published", "Short description", "Description", "Categories", "Tags", "Images", "Brands")


def _list_cell(values: list[str]) -> str:
    """WooCommerce's list cell: comma-separated, a comma inside a value escaped as `\\,`."""
    return ", ".join(value.replace(",", "\\,") for value in values)


def _images(product: Product, catalog: Catalog, out_root: Path) -> list[str]:
    """The merchant shots (all images where there is none), as paths from the export's folder."""
    shots = [im for im in product.images if im.source == "merchant"] or product.images
    return [im.path if is_url(im.path) else relative_path(catalog.image_path(im), out_root) for im in shots]


def _row(product: Product, catalog: Catalog, out_root: Path) -> dict[str, str]:
    attributes = {name: value for name, value in product.attributes.items() if name != "brand"}
    row = {
        "ID": product.id,
        "Type": "simple",
        "SKU": product.id,
        "Name": product.title,
        "Published": "1",
        "Description": f"<p>{html.escape(product.description)}</p>" if product.description else "",
        "Categories": " > ".join(level.replace(",", "\\,") for level in product.category_path),
        "Images": _list_cell(_images(product, catalog, out_root)),
        "Brands": _list_cell(split_values(product.attributes.get("brand", ""))),
    }
    for number, (name, value) in enumerate(attributes.items(), start=1):
        row |= {f"Attribute {number} name": name, f"Attribute {number} value(s)": _list_cell(split_values(value)),
                f"Attribute {number} visible": "1", f"Attribute {number} global": "0"}
    return row


def write_woocommerce_csv(catalog: Catalog, path: str | Path) -> Path:
    """Write `catalog` as WooCommerce's product CSV export at `path` (atomically); image paths
    are written relative to its folder, which must hold the images or be above them."""
    path = Path(path)
    out_root = path.parent.resolve()
    rows = [_row(product, catalog, out_root) for product in catalog]
    width = max((sum(1 for column in row if column.endswith(" name")) for row in rows), default=0)
    attributes = [f"Attribute {n} {part}" for n in range(1, width + 1) for part in ("name", "value(s)", "visible", "global")]
    text = io.StringIO()
    writer = csv.DictWriter(text, [*FIXED_COLUMNS, *attributes], restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())
    return path
