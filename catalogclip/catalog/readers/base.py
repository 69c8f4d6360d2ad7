"""What every catalog reader shares: options, the registry and CSV plumbing."""
from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from catalogclip.catalog.paths import is_url
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Row, RowError, join_values
from catalogclip.catalog.textfile import text_lines
from catalogclip.registry import Registry

if TYPE_CHECKING:
    from catalogclip.catalog.download import DownloadOptions
    from catalogclip.catalog.normalise import Aliases
    from catalogclip.catalog.readers.mapped_csv import ColumnMapping

# Words that end the brand at the start of a Myntra product name ("Puma Men Grey T-shirt").
BRAND_STOP_WORDS = (
    "Men", "Women", "Man", "Woman", "Boys", "Girls", "Boy", "Girl", "Unisex", "Kids", "Kid",
    "Baby", "Infant", "Infants", "Mens", "Womens", "Men's", "Women's", "Boy's", "Girl's", "Girls's",
)


@dataclass(frozen=True)
class ReaderOptions:
    """Settings for readers; each reader uses the ones that concern its format."""

    # flipkart, myntra: folder holding the image files (default: `images/` beside the source);
    # csv: the folder image paths start from, rooted ones too (default: the source's folder);
    # fashiongen: folder the embedded images are extracted into (required).
    image_dir: Path | None = None
    brand_stop_words: tuple[str, ...] = BRAND_STOP_WORDS  # myntra
    check_images: bool = True  # drop images that do not exist (stat only)
    verify_images: bool = False  # also decode every image (slow)
    # Text encoding of the source; None: UTF-8, or what an XML feed declares.
    encoding: str | None = None
    columns: "ColumnMapping | None" = None  # csv: which columns are what
    normalise: bool = True  # unify attribute names and value spellings (catalogclip.catalog.normalise)
    aliases: "Aliases | None" = None  # a shop's own synonyms for normalisation
    download: "DownloadOptions | None" = None  # images by URL: fetched into a cache; None: kept as URLs


@dataclass
class Source:
    """What a reader found: products with the line they came from, before image checks."""

    file: Path  # the file problems are reported against
    root: Path  # the folder relative image paths start from
    rows: Iterable[Row]


Reader = Callable[[Path, ProblemLog, ReaderOptions], Source]
READERS: Registry[Reader] = Registry("catalog format")


EXTRA_FIELDS = "__extra__"
"""Key of a CSV row's fields beyond the header (a list), e.g. from unquoted commas."""

DELIMITERS = (",", ";", "\t", "|")
"""The delimiters a CSV file's header is searched for; a tie goes to the first."""
_QUOTED = re.compile(r'"[^"]*"')
_DELIMITER_NAMES = {"\\t": "\t", "tab": "\t"}


@dataclass(frozen=True)
class CsvLayout:
    """How a CSV (or TSV) file splits into rows and fields."""

    delimiter: str | None = None  # None: guessed from the header (see `guess_delimiter`)
    quoting: int = csv.QUOTE_MINIMAL  # csv.QUOTE_NONE: a quote is text (Google's TSV has no quoting)
    pad_short_rows: bool = False  # a row short of the header: padded with "" (True), or a malformed row
    keep_extra_fields: bool = True  # fields beyond the header: under EXTRA_FIELDS (True), or a malformed row


def guess_delimiter(header: str) -> str:
    """The one of `DELIMITERS` the header line holds most often outside quotes (a comma if none)."""
    bare = _QUOTED.sub("", header)
    return max(DELIMITERS, key=bare.count)


def parse_delimiter(text: str) -> str:
    """A delimiter as a user writes it: one character, `\\t` or the word `tab`; ValueError otherwise."""
    delimiter = _DELIMITER_NAMES.get(text.strip().lower(), text)
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"delimiter {text!r}: expected one character such as , ; | or \\t (or the word tab)")
    return delimiter


def csv_rows(
    path: Path,
    required: Iterable[str],
    problems: ProblemLog,
    encoding: str | None = None,
    layout: CsvLayout = CsvLayout(),
    header: Callable[[str], str] = str.strip,
) -> Iterator[tuple[int, dict]]:
    """(line the row starts on, {column: value}) per data row of a CSV (or TSV) file with a header.

    Raises ValueError naming the file and the first missing column, or the header's line when
    the csv module cannot parse it. Rows that do not fit the header (see `CsvLayout`) and rows
    the csv module cannot parse are logged and skipped; bytes that do not decode, see
    `text_lines`. `header` turns the header's names into the row's keys.
    """
    lines = text_lines(path, problems, encoding or "utf-8")
    first = next(lines, "")
    delimiter = layout.delimiter or guess_delimiter(first)
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter, quoting=layout.quoting)
    names = _header(path, reader, required, header)
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: a problem names the row's first
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.add("malformed row", path, start, f"CSV: {exc}")
            continue
        if fields:  # not a blank line
            row = _fit(fields, names, layout)
            if row is None:
                problems.add("malformed row", path, start, f"{len(fields)} fields, the header has {len(names)}")
            else:
                yield start, row


def _header(path: Path, reader, required: Iterable[str], name: Callable[[str], str]) -> list[str]:
    try:
        header = [name(column) for column in next(reader, [])]
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: cannot read the CSV header: {exc}") from None
    if not header:
        raise ValueError(f"{path}: empty file, expected a CSV header")
    missing = [column for column in required if column not in header]
    if missing:
        raise ValueError(f"{path}: missing column '{missing[0]}' (found: {', '.join(header)})")
    return header


def _fit(fields: list[str], header: list[str], layout: CsvLayout) -> dict | None:
    """The row as {column: value}, or None when its length does not fit the header and `layout`."""
    surplus = len(fields) - len(header)
    if (surplus < 0 and not layout.pad_short_rows) or (surplus > 0 and not layout.keep_extra_fields):
        return None
    row = dict(zip(header, fields + [""] * -surplus))
    if surplus > 0:
        row[EXTRA_FIELDS] = fields[len(header):]
    return row


IMAGE_SEPARATORS = ("|", ";", ",")
"""What separates the images of one cell, tried in this order (see `image_list`)."""
_FILE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{2,5}$")


def json_list(text: str, column: str) -> list:
    """A cell holding a JSON list (empty: []); RowError naming the column when it is not one."""
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list):
        raise RowError(f"field '{column}' is not a JSON list")
    return value


def image_cell(text: str, column: str, sep: str | None = None) -> list[str]:
    """The images one cell names, in every shape exports use: a JSON list (`["a.jpg", "b.jpg"]`),
    one path or URL, or several separated (see `image_list`). RowError for a broken JSON list."""
    text = text.strip()
    if text.startswith("["):
        return list(dict.fromkeys(_image_path(str(entry)) for entry in json_list(text, column) if str(entry).strip()))
    return image_list(text, sep)


def image_list(text: str, sep: str | None = None) -> list[str]:
    """The images of a cell separated by `sep` (None: the first of `IMAGE_SEPARATORS` that splits
    it, see `_split_at`), each once, Windows `\\` as `/`."""
    separators = (sep,) if sep else IMAGE_SEPARATORS
    text = text.strip(" " + "".join(separators))
    pieces = [text]
    for candidate in separators:
        pieces = _split_at(text, candidate)
        if len(pieces) > 1:
            break
    return list(dict.fromkeys(_image_path(piece) for piece in pieces if piece.strip()))


def _split_at(text: str, sep: str) -> list[str]:
    """`text` split at `sep` where each piece stands alone as an image, else [text]. In a list of
    URLs a separator counts only before the next URL, so the commas of Cloudinary's
    `.../w_600,h_600/x.jpg` stay; in a list of paths every piece must end in a file extension."""
    if is_url(text):
        return re.split(rf"{re.escape(sep)}\s*(?=https?://)", text)
    pieces = [piece.strip() for piece in text.split(sep) if piece.strip()]
    return pieces if all(_FILE_SUFFIX.search(piece) and not is_url(piece) for piece in pieces) else [text]


def _image_path(entry: str) -> str:
    entry = entry.strip()
    return entry if is_url(entry) else entry.replace("\\", "/")  # images\a.jpg from a Windows shop


def group_variants(items: Iterable[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
    """Raw products sharing a "group" key merged into one (see `merge_variants`), at the line
    and in the order of each group's first row."""
    groups: dict[str, tuple[int, list[dict]]] = {}
    for line, raw in items:
        groups.setdefault(raw.pop("group"), (line, []))[1].append(raw)
    for group, (line, variants) in groups.items():
        yield line, merge_variants(group, variants)


def merge_variants(group: str, variants: list[dict]) -> dict:
    """One raw product from its variants: id `group`, the first non-empty title, description and
    category; every image once, in order; each attribute's distinct values as a multi-value."""
    def first(key: str):
        return next((v[key] for v in variants if v.get(key)), variants[0].get(key))

    attributes: dict[str, list[str]] = {}
    for variant in variants:
        for key, value in variant.get("attributes", {}).items():
            attributes.setdefault(key, []).append(value)
    return {
        "id": group,
        "title": first("title"),
        "description": first("description") or "",
        "images": list(dict.fromkeys(image for v in variants for image in v.get("images", []))),
        "attributes": {key: join_values(values) for key, values in attributes.items()},
        "category_path": first("category_path") or [],
    }


def resolve_image_dir(options: ReaderOptions, default: Path) -> Path:
    """The image folder from the options, else `default`; absolute so it survives relocation."""
    return (options.image_dir if options.image_dir is not None else default).resolve()


_PATHS_COMMA = re.compile(r"(?<!\\),")  # WooCommerce writes a comma inside a name as "\,"


def first_path(text: str, sep: str) -> list[str]:
    """The levels of the first category path of a cell that may name several, comma-separated
    (WooCommerce `Clothing > Hoodies, Sale`, Magento `Gear/Bags,Collections/New`, Google's
    product_type `Men > Shirts, Sale > Shirts`): one path is what the schema holds. A comma
    separates paths only when the text before it is a path (holds `sep`), so
    `Food, Beverages & Tobacco > Drinks` stays one path."""
    first = _PATHS_COMMA.split(text)[0]
    path = first if sep in first else text
    return [level.strip().replace("\\,", ",") for level in path.split(sep)]


def category_path(levels: Iterable[str | None]) -> list[str]:
    """The category levels up to the first empty one: a gap would put a node under the wrong parent."""
    path = []
    for level in levels:
        node = (level or "").strip()
        if not node:
            break
        path.append(node)
    return path
