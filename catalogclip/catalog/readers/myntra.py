"""Kaggle "Fashion Product Images" (Myntra): `styles.csv` plus `images/<id>.jpg`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import (
    EXTRA_FIELDS,
    READERS,
    ReaderOptions,
    Source,
    category_path,
    csv_rows,
    resolve_image_dir,
)
from catalogclip.catalog.schema import products_from_rows

NAME = "productDisplayName"
CATEGORY_COLUMNS = ("masterCategory", "subCategory", "articleType")
ATTRIBUTE_COLUMNS = ("gender", "baseColour", "season", "usage", "year")
COLUMNS = ("id", *CATEGORY_COLUMNS, *ATTRIBUTE_COLUMNS, NAME)


def brand_from_name(name: str, stop_words: Iterable[str]) -> str:
    """The words before the first stop word ("Puma Men Grey T-shirt" -> "Puma"); "" if none."""
    stops = {word.casefold() for word in stop_words}
    words = name.split()
    for i, word in enumerate(words):
        if word.casefold() in stops:
            return " ".join(words[:i])
    return ""


def _raw_products(
    csv_path: Path, image_dir: Path, stop_words: tuple[str, ...], problems: ProblemLog, encoding: str | None
) -> Iterator[tuple[int, dict]]:
    for line, row in csv_rows(csv_path, COLUMNS, problems, encoding):
        # The real file has names with unquoted commas: the last column takes the extra fields.
        name = ",".join([row[NAME], *row.get(EXTRA_FIELDS, [])]).strip()
        product_id = row["id"].strip()
        attributes = {column: row[column].strip() for column in ATTRIBUTE_COLUMNS}
        attributes["brand"] = brand_from_name(name, stop_words)
        yield line, {
            "id": product_id,
            "title": name,
            "images": [str(image_dir / f"{product_id}.jpg")],
            "attributes": {k: v for k, v in attributes.items() if v},
            "category_path": category_path(row[column] for column in CATEGORY_COLUMNS),
        }


@READERS.register("myntra")
def read_myntra(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the dataset folder (or its styles.csv); images default to `<folder>/images`."""
    csv_path = src / "styles.csv" if src.is_dir() else src
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such file (expected the Myntra styles.csv)")
    image_dir = resolve_image_dir(options, csv_path.parent / "images")
    raw = _raw_products(csv_path, image_dir, options.brand_stop_words, problems, options.encoding)
    return Source(csv_path, csv_path.parent, products_from_rows(raw, csv_path, problems))
