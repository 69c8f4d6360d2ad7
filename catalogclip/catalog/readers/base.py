"""What every catalog reader shares: options, the registry and CSV plumbing."""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Row, join_values
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


def csv_rows(
    path: Path,
    required: Iterable[str],
    problems: ProblemLog,
    encoding: str | None = None,
    delimiter: str | None = None,
    header: Callable[[str], str] = str.strip,
) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) per data row of a CSV (or TSV) file with a header.

    Raises ValueError naming the file and the first missing column. Short rows and rows the csv
    module cannot parse are logged and skipped; bytes that do not decode, see `text_lines`.
    `delimiter` None: a tab when the header holds more tabs than commas, else a comma;
    `header` turns the header's names into the row's keys.
    """
    lines = text_lines(path, problems, encoding or "utf-8")
    first = next(lines, "")
    if delimiter is None:
        delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.DictReader(itertools.chain([first], lines), restkey=EXTRA_FIELDS, delimiter=delimiter)
    yield from _dict_rows(path, reader, required, problems, header)


def _dict_rows(
    path: Path, reader: csv.DictReader, required: Iterable[str], problems: ProblemLog, header_name: Callable[[str], str]
) -> Iterator[tuple[int, dict]]:
    header = [header_name(name) for name in reader.fieldnames or ()]
    if not header:
        raise ValueError(f"{path}: empty file, expected a CSV header")
    missing = [name for name in required if name not in header]
    if missing:
        raise ValueError(f"{path}: missing column '{missing[0]}' (found: {', '.join(header)})")
    reader.fieldnames = header
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # DictReader.line_num is only updated after a good row; its csv reader's is current.
            problems.add("malformed row", path, reader.reader.line_num, f"CSV: {exc}")
            continue
        if None in row.values():  # DictReader fills a short row's absent fields with None
            given = sum(value is not None for value in row.values())
            problems.add("malformed row", path, reader.line_num, f"{given} fields, the header has {len(header)}")
            continue
        yield reader.line_num, row


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


def category_path(levels: Iterable[str | None]) -> list[str]:
    """The category levels up to the first empty one: a gap would put a node under the wrong parent."""
    path = []
    for level in levels:
        node = (level or "").strip()
        if not node:
            break
        path.append(node)
    return path
