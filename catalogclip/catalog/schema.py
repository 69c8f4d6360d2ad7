"""The canonical catalog: products with images, attributes and a category path.

On disk a catalog is JSON Lines, one product per line; image paths are relative to the
file's folder and must lie inside it (or inside an image root configured by whoever runs the
command; see `catalogclip.catalog.paths`)::

    {"id": "p1", "title": "Puma Men Black Running Shoes", "description": "", "images": [{"path": "images/p1.jpg", "source": "merchant"}], "attributes": {"brand": "Puma", "colour": "Black"}, "category_path": ["Footwear", "Shoes", "Sports Shoes"]}

`images` may also be a list of plain path strings, or http(s) URLs kept unresolved (an import
with `--no-download`). A `bbox` on an image is the product's box in pixels, ``[x0, y0, x1, y1]``.
An attribute holding several values (a T-shirt for "Men | Women") joins them with `MULTI_SEP`.
Titles and descriptions longer than `MAX_TEXT` characters are refused (a row with a 1 MB title
is a mistake or an attack, never a product name).
A `split` on an image is the split a data set itself assigns it ("train", "val", "test"), kept
for `split_by_image_tag`; images without one belong to every side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from catalogclip.catalog.images import keep_usable_images
from catalogclip.catalog.paths import OUTSIDE_ROOT, ImageRoots, OutsideRootError, is_url
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.textfile import text_lines

MULTI_SEP = " | "
"""Separates the values of a multi-valued attribute: attributes stay dict[str, str]."""


def split_values(value: str) -> list[str]:
    """The values of an attribute (one, or several joined with MULTI_SEP)."""
    return [part.strip() for part in value.split(MULTI_SEP.strip()) if part.strip()]


def join_values(values: Iterable[str]) -> str:
    """Distinct non-empty values in first-seen order, joined with MULTI_SEP."""
    return MULTI_SEP.join(dict.fromkeys(v.strip() for v in values if v and v.strip()))

MAX_TEXT = {"title": 1_000, "description": 50_000}
"""Longest accepted text per field, in characters."""


@dataclass(frozen=True)
class ImageRef:
    path: str
    source: str = "merchant"
    bbox: tuple[float, float, float, float] | None = None
    #: the data set's own split of this image (None: the image belongs to every side)
    split: str | None = None
    #: where an importer found it: (line, column) of the source, for problem lines; never written
    origin: tuple[int, str] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict:
        out: dict = {"path": self.path, "source": self.source}
        if self.bbox is not None:
            out["bbox"] = [round(float(v), 2) for v in self.bbox]
        if self.split is not None:
            out["split"] = self.split
        return out


@dataclass
class Product:
    id: str
    title: str
    description: str = ""
    images: list[ImageRef] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)
    category_path: list[str] = field(default_factory=list)

    def category(self, depth: int | None = None, sep: str = " > ") -> str:
        """The category path as text, cut to `depth` levels (None: the whole path)."""
        path = self.category_path if depth is None else self.category_path[:depth]
        return sep.join(path)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "images": [im.to_json() for im in self.images],
            "attributes": dict(self.attributes),
            "category_path": list(self.category_path),
        }


def category_nodes(path: list[str], sep: str = " > ") -> list[str]:
    """Every node on a root-to-leaf path as text: ["A", "A > B", "A > B > C"]."""
    return [sep.join(path[: depth + 1]) for depth in range(len(path))]


def all_category_nodes(products: Iterable[Product]) -> list[str]:
    """Every node of the products' category tree, in first-seen order."""
    nodes: dict[str, None] = {}
    for product in products:
        nodes.update(dict.fromkeys(category_nodes(product.category_path)))
    return list(nodes)


@dataclass(frozen=True)
class ImageFile:
    """An image of a catalog with the real file it names (inside the catalog's roots)."""

    product: int  # product number in the catalog
    number: int  # image number within the product
    image: ImageRef
    path: Path


@dataclass
class Catalog:
    """Products plus the folder their relative image paths start from.

    `image_roots` are other folders images may live in, set explicitly by whoever configures
    the command (never read from the catalog itself). `file` and `lines` (product id -> line)
    say where each product came from, for problem reports.
    """

    products: list[Product]
    root: Path = field(default_factory=Path)
    image_roots: tuple[Path, ...] = ()
    file: Path | None = None
    lines: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._by_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __getitem__(self, product_id: str) -> Product:
        return self.products[self.index_of(product_id)]

    def index_of(self, product_id: str) -> int:
        if self._by_id is None:
            self._by_id = {p.id: i for i, p in enumerate(self.products)}
        return self._by_id[product_id]

    @property
    def roots(self) -> ImageRoots:
        return ImageRoots(self.root, tuple(Path(p) for p in self.image_roots))

    def with_products(self, products: list[Product]) -> "Catalog":
        """Other products under the same roots and source file."""
        return Catalog(products, self.root, self.image_roots, self.file, self.lines)

    def subset(self, product_ids: Iterable[str]) -> "Catalog":
        return self.with_products([self[pid] for pid in product_ids])

    def image_path(self, image: ImageRef) -> Path:
        """The real file of an image; raises OutsideRootError when it lies outside the roots."""
        return self.roots.resolve(image.path)

    def iter_images(self) -> Iterator[tuple[int, ImageRef]]:
        """(product index, image) for every image of every product."""
        for i, product in enumerate(self.products):
            for image in product.images:
                yield i, image

    def image_files(self, problems: ProblemLog, sources: Iterable[str] | None = None) -> list[ImageFile]:
        """Every image (of the given sources) inside the roots; the others are logged, never opened."""
        sources = None if sources is None else set(sources)
        files, roots = [], self.roots.for_bulk()
        for p, product in enumerate(self.products):
            for n, image in enumerate(product.images):
                if sources is not None and image.source not in sources:
                    continue
                try:
                    files.append(ImageFile(p, n, image, roots.resolve(image.path)))
                except OutsideRootError:
                    self.report_image(problems, OUTSIDE_ROOT, p, n, "not opened")
        return files

    def confined(self, problems: ProblemLog) -> "Catalog":
        """The catalog without images outside its roots (each logged); a product left without
        an image is dropped."""
        kept, roots = [], self.roots.for_bulk()
        for product in self.products:
            where = self.file or self.root
            product = keep_usable_images(product, roots, problems, where, self.lines.get(product.id), check_files=False)
            if product is not None:
                kept.append(product)
        return self.with_products(kept)

    def report_image(self, problems: ProblemLog, kind: str, product: int, number: int, reason: str) -> None:
        """Log a problem with one image, naming the catalog file, the product's line and the field."""
        found = self.products[product]
        path = found.images[number].path
        message = f"field 'images[{number}].path' = '{path}': {reason} (product '{found.id}')"
        problems.add(kind, self.file or self.root, self.lines.get(found.id), message)

    def attribute_groups(self) -> list[str]:
        groups: dict[str, None] = {}
        for product in self.products:
            groups.update(dict.fromkeys(product.attributes))
        return list(groups)


class RowError(ValueError):
    """A catalog row that cannot become a product; the message names the field."""


def _checked_text(value, field_name: str, allow_empty: bool = False) -> str:
    text = _as_str(value, field_name, allow_empty=allow_empty)
    if len(text) > MAX_TEXT[field_name]:
        raise RowError(f"field '{field_name}' has {len(text):,} characters (at most {MAX_TEXT[field_name]:,})")
    return text


def _as_str(value, field_name: str, *name_args, allow_empty: bool = False) -> str:
    """`value` as a stripped string; the error names the field (`field_name % name_args`,
    formatted only on error: this runs for every value of every row)."""
    if type(value) is str:
        stripped = value.strip()
        if stripped or allow_empty:
            return stripped
    elif value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return _as_str("" if value is None else str(value), field_name, *name_args, allow_empty=allow_empty)
    else:
        raise RowError(f"field '{field_name % name_args}' must be a string, got {type(value).__name__}")
    raise RowError(f"field '{field_name % name_args}' is empty")


def _attribute_text(value, key: str) -> str:
    """An attribute value as text: a list as a multi-value ("Red | Blue"), a number or bool as
    JSON writes it (12, 0.5, true): a shop's JSON says `"weight_kg": 0.5`, not `"0.5"`."""
    if isinstance(value, list):
        items = (_scalar_text(item, "attributes.%s[%d]", key, i, allow_empty=True) for i, item in enumerate(value))
        return join_values(items)
    return _scalar_text(value, "attributes.%s", key)


def _scalar_text(value, field_name: str, *name_args, allow_empty: bool = False) -> str:
    if isinstance(value, (bool, float)):
        return json.dumps(value)
    return _as_str(value, field_name, *name_args, allow_empty=allow_empty)


def _parse_image(raw, index: int) -> ImageRef:
    where = f"images[{index}]"
    if isinstance(raw, str):
        return ImageRef(_image_path(raw, where))
    if isinstance(raw, ImageRef):  # from a reader, with its origin
        return replace(raw, path=_image_path(raw.path, where))
    if not isinstance(raw, dict):
        raise RowError(f"field '{where}' must be a path or an object")
    source = _as_str(raw.get("source") or "merchant", "%s.source", where)
    bbox = raw.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise RowError(f"field '{where}.bbox' must be [x0, y0, x1, y1]")
        if bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
            raise RowError(f"field '{where}.bbox' has x1 <= x0 or y1 <= y0")
        bbox = tuple(float(v) for v in bbox)
    split = raw.get("split")
    split = None if split is None else _as_str(split, "%s.split", where)
    return ImageRef(_image_path(raw.get("path"), f"{where}.path"), source, bbox, split)


def _image_path(value, where: str) -> str:
    path = _as_str(value, where)
    if "\x00" in path:
        raise RowError(f"field '{where}' holds a NUL character")
    return path


def product_from_json(raw) -> Product:
    """Validate one decoded JSON object; raises RowError naming the bad field."""
    if not isinstance(raw, dict):
        raise RowError(f"a product must be a JSON object, got {type(raw).__name__}")
    images = raw.get("images")
    if not isinstance(images, list) or not images:
        raise RowError("field 'images' must be a non-empty list")
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise RowError("field 'attributes' must be an object")
    category = raw.get("category_path") or []
    if not isinstance(category, list):
        raise RowError("field 'category_path' must be a list")
    return Product(
        id=_as_str(raw.get("id"), "id"),
        title=_checked_text(raw.get("title"), "title"),
        description=_checked_text(raw.get("description"), "description", allow_empty=True),
        images=[_parse_image(im, i) for i, im in enumerate(images)],
        attributes={
            _as_str(k, "attributes key"): text
            for k, v in attributes.items()
            if v not in (None, "") and (text := _attribute_text(v, k))
        },
        category_path=[_as_str(c, "category_path[%d]", i) for i, c in enumerate(category)],
    )


Row = tuple[int | None, Product]
"""A product with the line (or row) of the source it came from, for problem reports."""


def products_from_rows(
    rows: Iterable[tuple[int | None, object]], file: str | Path, problems: ProblemLog
) -> Iterator[Row]:
    """Validate decoded rows (see `product_from_json`); a bad row is logged and skipped."""
    for line_no, raw in rows:
        try:
            yield line_no, product_from_json(raw)
        except RowError as exc:
            problems.add("malformed row", file, line_no, str(exc))


def unique_products(rows: Iterable[Row], file: str | Path, problems: ProblemLog) -> Iterator[Row]:
    """Drop (and log) products whose id was already seen; the first one wins."""
    seen: set[str] = set()
    for line_no, product in rows:
        if product.id in seen:
            problems.add("duplicate id", file, line_no, f"id '{product.id}' already seen")
            continue
        seen.add(product.id)
        yield line_no, product


def _json_rows(path: Path, problems: ProblemLog, encoding: str) -> Iterator[tuple[int, object]]:
    for line_no, line in enumerate(text_lines(path, problems, encoding), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add("malformed row", path, line_no, f"invalid JSON: {exc.msg}")


def iter_jsonl(path: str | Path, problems: ProblemLog, encoding: str = "utf-8") -> Iterator[Row]:
    """(line number, product) for every valid row; malformed rows are logged, ids not deduplicated;
    bytes that do not decode are replaced and logged (see `text_lines`)."""
    path = Path(path)
    return products_from_rows(_json_rows(path, problems, encoding), path, problems)


def read_jsonl(path: str | Path, problems: ProblemLog | None = None, image_root: str | Path | None = None) -> Catalog:
    """Load a canonical catalog; bad rows, duplicate ids and images outside the catalog's folder
    (or `image_root`) are logged and skipped; a product left without an image is skipped.

    Images are not opened (nor stat-ed): loading stays fast on large catalogs.
    """
    path = Path(path)
    problems = problems if problems is not None else ProblemLog()
    rows = list(unique_products(iter_jsonl(path, problems), path, problems))
    lines = {product.id: line for line, product in rows}
    extra = (Path(image_root),) if image_root is not None else ()
    catalog = Catalog([product for _, product in rows], path.parent, extra, path, lines).confined(problems)
    problems.loaded += len(catalog)
    return catalog


def write_jsonl(catalog: Catalog, path: str | Path) -> Path:
    """Write a catalog atomically; image paths are made relative to the new file's folder."""
    from catalogclip.io import atomic_write_text

    path = Path(path)
    out_root = path.parent.resolve()
    lines = []
    for product in catalog.products:
        row = product.to_json()
        for im_row, image in zip(row["images"], product.images):
            if not is_url(image.path):
                im_row["path"] = relative_path(catalog.image_path(image), out_root)
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return path


def external_image_root(catalog: Catalog, folder: str | Path) -> Path | None:
    """The root a copy of `catalog` written into `folder` must be read with (``--image-root``,
    ``data.image_root``) because some of its images lie outside `folder`; None when none does."""
    inside = ImageRoots(Path(folder))
    for _, image in catalog.iter_images():
        path = None if is_url(image.path) else catalog.image_path(image)
        if path is not None and not inside.inside(path):
            return next(Path(root).resolve() for root in (catalog.root, *catalog.image_roots) if ImageRoots(Path(root)).inside(path))
    return None


def relative_path(path: Path, root: Path) -> str:
    """`path` (resolved) relative to `root` in POSIX form, or absolute where it lies outside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return str(resolved)
