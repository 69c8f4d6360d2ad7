"""Any CSV or TSV file, with a column mapping saying which columns are what: no code per shop.

    id: sku
    title: name
    description: details
    images: pictures          # one column, or a list of columns
    image_sep: ";"            # several images in one cell (default: the first of | ; , that splits it safely)
    category: department      # one column (split by category_sep), or a list of columns, one per level
    category_sep: ">"         # a cell naming several paths ("A > B, C") gives its first (see `first_path`)
    brand: maker
    attributes: [colour, size]   # columns kept as attributes, by their names (or {name: column})
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Mapping

from catalogclip.catalog.paths import is_url
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import (
    READERS,
    CsvLayout,
    ReaderOptions,
    Source,
    category_path,
    csv_rows,
    first_path,
    image_cell,
    parse_delimiter,
)
from catalogclip.catalog.readers.html import description_text
from catalogclip.catalog.schema import ImageRef, RowError, products_from_rows

LIST_FIELDS = ("images", "category")


@dataclass(frozen=True)
class ColumnMapping:
    id: str
    title: str
    images: tuple[str, ...]
    description: str | None = None
    image_sep: str | None = None  # None: see `image_list`
    category: tuple[str, ...] = ()
    category_sep: str | None = None
    brand: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)  # attribute name -> column
    delimiter: str | None = None  # None: guessed from the header

    @classmethod
    def from_dict(cls, raw: Mapping) -> "ColumnMapping":
        """From YAML or `--column` pairs; ValueError names an unknown or missing key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"column mapping: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        missing = [key for key in ("id", "title", "images") if not raw.get(key)]
        if missing:
            raise ValueError(f"column mapping: which column is '{missing[0]}'? (e.g. --column {missing[0]}=NAME)")
        values = dict(raw)
        for key in LIST_FIELDS:
            values[key] = _names(values.get(key))
        attributes = values.get("attributes") or {}
        values["attributes"] = dict(attributes) if isinstance(attributes, Mapping) else {c: c for c in _names(attributes)}
        if values.get("delimiter") is not None:
            values["delimiter"] = parse_delimiter(str(values["delimiter"]))
        return cls(**values)

    def columns(self) -> list[str]:
        """Every column the mapping names."""
        named = [self.id, self.title, *self.images, *self.category, *self.attributes.values()]
        return [c for c in dict.fromkeys([*named, self.description, self.brand]) if c]


def _names(value) -> tuple[str, ...]:
    """A list of column names from YAML (a list) or the command line ("a,b")."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def load_mapping(path: Path) -> dict:
    """A column mapping YAML file as a dict (ColumnMapping.from_dict validates it)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a column mapping must be a YAML mapping (id: COLUMN, title: COLUMN, ...)")
    return data


def _located(path: str, image_dir: Path | None) -> str:
    """`path` inside `image_dir` (--image-dir) when one is given, a rooted path too: Magento names
    its images from its media folder (`/m/b/x.jpg`). Confinement still applies to the result."""
    return path if image_dir is None or is_url(path) else str(image_dir / path.lstrip("/"))


def raw_product(row: Mapping[str, str], mapping: ColumnMapping, line: int, image_dir: Path | None = None) -> dict:
    images = [
        ImageRef(_located(path, image_dir), origin=(line, column))
        for column in mapping.images
        for path in image_cell(row[column], column, mapping.image_sep)
    ]
    sep = mapping.category_sep
    levels = [
        level for column in mapping.category for level in (first_path(row[column], sep) if sep else [row[column]])
    ]
    attributes = {name: row[column] for name, column in mapping.attributes.items()}
    if mapping.brand:
        attributes["brand"] = row[mapping.brand]
    return {
        "id": row[mapping.id],
        "title": row[mapping.title],
        "description": description_text(row[mapping.description]) if mapping.description else "",
        "images": list(dict.fromkeys(images)),  # Magento names its base image again among the additional ones
        "attributes": {name: value.strip() for name, value in attributes.items() if value.strip()},
        "category_path": category_path(levels),
    }


def _products(path: Path, problems: ProblemLog, options: ReaderOptions) -> Iterator[tuple[int, dict]]:
    mapping = options.columns
    image_dir = options.image_dir.resolve() if options.image_dir is not None else None
    for line, row in csv_rows(path, mapping.columns(), problems, options.encoding, CsvLayout(mapping.delimiter)):
        try:
            yield line, raw_product(row, mapping, line, image_dir)
        except RowError as exc:  # a broken JSON list of images
            problems.add("malformed row", path, line, str(exc))


@READERS.register("csv")
def read_mapped_csv(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the CSV/TSV file; `options.columns` says which columns are what; image paths start
    from SRC's folder, or from `options.image_dir`."""
    if options.columns is None:
        raise ValueError("csv: a column mapping is required (--columns FILE.yaml or --column id=COL --column title=COL --column images=COL)")
    if src.is_dir():
        raise ValueError(f"{src}: is a folder, expected a CSV or TSV file")
    raw = _products(src, problems, options)
    return Source(src, src.parent, products_from_rows(raw, src, problems))
