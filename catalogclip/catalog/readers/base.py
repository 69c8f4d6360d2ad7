"""What every catalog reader shares: options, the registry and CSV plumbing."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Row
from catalogclip.registry import Registry

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


def csv_rows(path: Path, required: Iterable[str], problems: ProblemLog) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) per data row of a UTF-8 CSV file with a header.

    Raises ValueError naming the file and the first missing column, or the line near which
    the text is not UTF-8. Short rows and rows the csv module cannot parse are logged and skipped.
    """
    with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: spreadsheets often add a BOM
        reader = csv.DictReader(fh, restkey=EXTRA_FIELDS)
        try:
            yield from _dict_rows(path, reader, required, problems)
        except UnicodeDecodeError as exc:  # text is decoded in chunks: the line is approximate
            raise ValueError(f"{path}: not UTF-8 text near line {reader.reader.line_num + 1} ({exc.reason})") from None


def _dict_rows(
    path: Path, reader: csv.DictReader, required: Iterable[str], problems: ProblemLog
) -> Iterator[tuple[int, dict]]:
    header = [name.strip() for name in reader.fieldnames or ()]
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
