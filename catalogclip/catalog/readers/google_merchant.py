"""Google Merchant Center product feeds: TSV, or XML (RSS 2.0 / Atom with the `g:` namespace).

Variants (rows sharing an `item_group_id`) become one product: what the shop sells as one
thing, so the variants' images are positives of each other rather than negatives in training.
Its id is the item_group_id; attributes that differ between the variants (colour, size) become
multi-values ("Red | Blue"); its images are all the variants' images in feed order.
"""
from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable, Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import (
    READERS,
    CsvLayout,
    ReaderOptions,
    Source,
    csv_rows,
    first_path,
    group_variants,
    image_list,
)
from catalogclip.catalog.readers.html import plain_text
from catalogclip.catalog.schema import ImageRef, products_from_rows
from catalogclip.catalog.textfile import text_lines

G_NS = "http://base.google.com/ns/1.0"
ATTRIBUTES = ("brand", "color", "gender", "age_group", "material", "pattern", "size")
REQUIRED = ("id", "title", "image_link")
ITEM_TAGS = {"item", "entry"}  # RSS 2.0, Atom
# Google's TSV has no quoting (a quote is text) and drops a row's trailing empty fields;
# a row longer than the header would put values under the wrong fields.
TSV_LAYOUT = CsvLayout("\t", csv.QUOTE_NONE, pad_short_rows=True, keep_extra_fields=False)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]*encoding=["']([A-Za-z0-9._-]+)["']""")


def field_name(name: str) -> str:
    """A feed field's name without namespace or `g:` prefix, as in the spec ("image link" -> image_link)."""
    name = name.rsplit("}", 1)[-1].strip().lower()
    return name.removeprefix("g:").replace(" ", "_")


def category_path(fields: dict[str, list[str]]) -> list[str]:
    """The shop's own `product_type` path when there is one (the first of several), else the
    Google taxonomy path (a numeric taxonomy id has no names to offer: no path; its names may
    hold commas, "Food, Beverages & Tobacco", and it is one path)."""
    for name in ("product_type", "google_product_category"):
        for value in fields.get(name, []):
            levels = first_path(value, ">") if name == "product_type" else value.split(">")
            path = [node.strip() for node in levels if node.strip()]
            if path and not (len(path) == 1 and path[0].isdigit()):
                return path
    return []


def raw_product(fields: dict[str, list[str]], line: int) -> dict:
    """One feed item ({field: [values]}, starting on `line`) as a raw canonical product; each
    image knows its line and field (a variant's line is not its product's)."""
    first = {name: next((v.strip() for v in values if v.strip()), "") for name, values in fields.items()}
    urls = [("image_link", first.get("image_link", ""))]
    urls += [("additional_image_link", url.strip()) for url in fields.get("additional_image_link", [])]
    images = [ImageRef(url, origin=(line, name)) for name, url in urls if url]
    return {
        "id": first.get("id", ""),
        "group": first.get("item_group_id") or first.get("id", ""),
        "title": first.get("title", ""),
        "description": plain_text(first.get("description", "")),  # often HTML, in CDATA or not
        "images": list(dict.fromkeys(images)),
        "attributes": {name: first[name] for name in ATTRIBUTES if first.get(name)},
        "category_path": category_path(fields),
    }


def _tsv_items(path: Path, problems: ProblemLog, encoding: str) -> Iterator[tuple[int, dict]]:
    for line, row in csv_rows(path, REQUIRED, problems, encoding, TSV_LAYOUT, header=field_name):
        fields = {name: [value] for name, value in row.items()}
        # XML repeats the element, one URL each; TSV separates the URLs by commas
        fields["additional_image_link"] = image_list(row.get("additional_image_link", ""), ",")
        yield line, raw_product(fields, line)


def _declared_encoding(path: Path) -> str:
    with path.open("rb") as fh:
        match = _XML_ENCODING.match(fh.readline())
    return match.group(1).decode() if match else "utf-8"


def _xml_items(path: Path, problems: ProblemLog, encoding: str | None) -> Iterator[tuple[int, dict]]:
    """Items of an XML feed with the line each starts on (fed line by line, so events know it)."""
    parser = ET.XMLPullParser(events=("start", "end"))
    start_line, depth = 0, 0
    for line_no, text in enumerate(text_lines(path, problems, encoding or _declared_encoding(path)), start=1):
        try:
            parser.feed(text)
            events = list(parser.read_events())
        except ET.ParseError as exc:
            problems.add("malformed row", path, line_no, f"XML: {exc}; the rest of the file is ignored")
            return
        for event, element in events:
            if field_name(element.tag) not in ITEM_TAGS:
                continue
            if event == "start":
                start_line, depth = (line_no, 1) if depth == 0 else (start_line, depth + 1)
                continue
            depth -= 1
            if depth == 0:
                fields: dict[str, list[str]] = {}
                for child in element:
                    fields.setdefault(field_name(child.tag), []).append(child.text or "")
                element.clear()  # keep memory flat on large feeds
                yield start_line, raw_product(fields, start_line)


def _is_xml(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


@READERS.register("google-merchant")
def read_google_merchant(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the feed file, TSV or XML (told apart by its first bytes)."""
    if src.is_dir():
        raise ValueError(f"{src}: is a folder, expected a Google Merchant feed (.tsv, .txt or .xml)")
    if _is_xml(src):
        items: Iterable[tuple[int, dict]] = _xml_items(src, problems, options.encoding)
    else:
        items = _tsv_items(src, problems, options.encoding or "utf-8")
    return Source(src, src.parent, products_from_rows(group_variants(items), src, problems))
