"""WooCommerce's product CSV export (Products > Export): one row per product and per variation.

A variation (Type "variation", its Parent `id:N` or the parent's SKU) is merged into its parent,
as Google's item_group_id and Shopify's Handle are (see `merge_variants`): one product, whose
attributes hold every value of its variations and whose images add theirs. A variation whose
parent is not in the file stays a product of its own (a note says so). Only published rows are
read: drafts and private products (with their variations) and disabled variations are skipped
and counted, as are hidden products (`Visibility in catalog` hidden: published, but shoppers only
reach them by a direct link) and grouped products (a listing of other products, each exported on
its own).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import READERS, ReaderOptions, Source, category_path, csv_rows, image_list, merge_variants
from catalogclip.catalog.readers.html import description_text
from catalogclip.catalog.schema import join_values, products_from_rows, split_values

REQUIRED = ("ID", "Type", "Name", "Images")
UNPUBLISHED = {"-1": "draft", "0": "private, or a disabled variation"}  # the export's Published codes
_ATTRIBUTE_NAME = re.compile(r"Attribute (\d+) name")
_LIST_SEP = re.compile(r"(?<!\\),")  # `\,` is a comma inside an item
NOTED_LINES = 5  # lines named in the note on variations without their parent


def split_list(cell: str | None) -> list[str]:
    """The items of a list cell (Categories, Tags, attribute values): comma-separated."""
    items = (item.replace("\\,", ",").strip() for item in _LIST_SEP.split(cell or ""))
    return [item for item in items if item]


def _description(row: dict) -> str:
    """Short description then Description as plain text; the export writes newlines as a literal `\\n`."""
    texts = (description_text(row.get(column) or "") for column in ("Short description", "Description"))
    return " ".join(dict.fromkeys(text for text in texts if text))


def _attributes(row: dict, other_categories: list[str]) -> dict[str, str]:
    """Each `Attribute N` under its own name (a global one's `pa_` prefix dropped), brand from a
    Brand attribute or the Brands column, Tags and the categories after the first as multi-values."""
    values: dict[str, list[str]] = {"brand": split_list(row.get("Brands"))}
    for column, name in row.items():
        number = _ATTRIBUTE_NAME.fullmatch(column)
        name = (name or "").strip().removeprefix("pa_") if number else ""
        if name:
            key = "brand" if name.casefold() == "brand" else name
            values.setdefault(key, []).extend(split_list(row.get(f"Attribute {number[1]} value(s)")))
    values |= {"tags": split_list(row.get("Tags")), "categories": other_categories}
    return {key: joined for key, items in values.items() if (joined := join_values(items))}


def raw_variant(row: dict) -> dict:
    """One row as a raw product (`merge_variants`'s input); the category path is the first
    category's levels (`Clothing > Hoodies`), the others go to the `categories` attribute."""
    categories = split_list(row.get("Categories"))
    return {
        "title": row["Name"].strip(),
        "description": _description(row),
        "images": image_list(row["Images"], ","),  # commas inside a URL (Cloudinary) stay
        "attributes": _attributes(row, categories[1:]),
        "category_path": category_path(categories[0].split(">")) if categories else [],
    }


@dataclass
class _Group:
    """A product's row (line, fields) and the rows of its variations."""

    line: int
    row: dict
    variations: list[dict] = field(default_factory=list)

    def product(self) -> dict:
        merged = merge_variants(self.row["ID"].strip(), [raw_variant(r) for r in (self.row, *self.variations)])
        # the parent lists a variable attribute's options ("Red | Blue"), each variation one of them
        merged["attributes"] = {key: join_values(split_values(value)) for key, value in merged["attributes"].items()}
        return merged


def _types(row: dict) -> set[str]:
    """The Type cell's words: "variation, virtual" -> {"variation", "virtual"}."""
    return {word.strip().lower() for word in row["Type"].split(",")}


def _left_out(row: dict) -> tuple[str, str] | None:
    """(problem kind, message) when a row is not read as a product: unpublished, hidden or grouped."""
    status = (row.get("Published") or "").strip()
    if status in UNPUBLISHED:
        return "not published", f"field 'Published' is {status} ({UNPUBLISHED[status]})"
    if (row.get("Visibility in catalog") or "").strip().lower() == "hidden":
        return "hidden product", "field 'Visibility in catalog' is hidden (neither the shop pages nor its search show it)"
    if "grouped" in _types(row):
        return "grouped product", "a grouped product lists other products, each read on its own"
    return None


def _rows_with_id(path: Path, problems: ProblemLog, encoding: str | None) -> Iterator[tuple[int, dict]]:
    for line, row in csv_rows(path, REQUIRED, problems, encoding):
        if row["ID"].strip():
            yield line, row
        else:
            problems.add("malformed row", path, line, "field 'ID' is empty")


def _groups(path: Path, problems: ProblemLog, encoding: str | None) -> tuple[list[_Group], list[_Group]]:
    """Products with their published variations, and the published variations whose parent is not in the file."""
    groups: list[_Group] = []
    parents: dict[str, _Group] = {}  # by `id:N` and by SKU, as a variation's Parent names it
    variations: list[tuple[int, dict]] = []
    for line, row in _rows_with_id(path, problems, encoding):
        if "variation" in _types(row):
            variations.append((line, row))
            continue
        groups.append(_Group(line, row))
        for key in (f"id:{row['ID'].strip()}", (row.get("SKU") or "").strip()):
            if key:
                parents.setdefault(key, groups[-1])
    orphans = []
    for line, row in variations:
        parent = parents.get((row.get("Parent") or "").strip())
        if (reason := _left_out(row)) is not None:
            kind, message = reason
            problems.add(kind, path, line, message)
        elif parent is not None:
            parent.variations.append(row)
        else:
            orphans.append(_Group(line, row))
    return groups, orphans


def _orphan_note(path: Path, orphans: list[_Group]) -> str:
    lines = ", ".join(str(group.line) for group in orphans[:NOTED_LINES]) + (", ..." if len(orphans) > NOTED_LINES else "")
    return f"{path}: variations whose parent is not in the file kept as products of their own: {len(orphans)} (lines {lines})"


def _products(path: Path, problems: ProblemLog, encoding: str | None) -> Iterator[tuple[int, dict]]:
    groups, orphans = _groups(path, problems, encoding)
    if orphans:
        problems.notes.append(_orphan_note(path, orphans))
    for group in sorted(groups + orphans, key=lambda g: g.line):
        reason = _left_out(group.row)
        if reason is None:
            yield group.line, group.product()
            continue
        kind, message = reason
        variations = f"; its variations ({len(group.variations)}) are left out with it" if group.variations else ""
        problems.add(kind, path, group.line, message + variations)


@READERS.register("woocommerce")
def read_woocommerce(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the exported products CSV; image paths that are not URLs start from its folder."""
    if src.is_dir():
        raise ValueError(f"{src}: is a folder, expected WooCommerce's product CSV export")
    return Source(src, src.parent, products_from_rows(_products(src, problems, options.encoding), src, problems))
