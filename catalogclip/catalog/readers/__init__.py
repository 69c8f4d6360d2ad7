"""Catalog readers: each turns a foreign layout into the canonical `Catalog`.

    catalog = read_catalog("myntra", "/data/fashion-myntra", problems, ReaderOptions())

A reader (registered by name in `READERS`) parses its format into products with the line they
came from; `read_catalog` then applies what all formats share: duplicate ids are dropped,
images named by URL are downloaded (`catalogclip.catalog.download`), images outside the source's
folder (or the image folder the user named) are dropped unopened, the others are checked (stat,
optionally decoded), so a product left with no image is skipped, and attributes are normalised
(`catalogclip.catalog.normalise`; what changed goes to `problems.notes`).
"""
from __future__ import annotations

from pathlib import Path

from catalogclip.catalog.download import localise_images
from catalogclip.catalog.images import keep_usable_images
from catalogclip.catalog.normalise import normalise_catalog
from catalogclip.catalog.paths import ImageRoots
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import BRAND_STOP_WORDS, READERS, Reader, ReaderOptions, Source
from catalogclip.catalog.schema import Catalog, unique_products

# Importing the format modules registers them.
from catalogclip.catalog.readers import fashiongen, flipkart, jsonl, myntra  # noqa: F401
from catalogclip.catalog.readers import google_merchant, mapped_csv, shopify  # noqa: F401
from catalogclip.catalog.readers import grocery_store, woocommerce  # noqa: F401


def read_catalog(
    fmt: str, src: str | Path, problems: ProblemLog | None = None, options: ReaderOptions | None = None
) -> Catalog:
    """Read `src` in format `fmt`; bad rows, duplicate ids and unusable images are logged in `problems`.

    Raises KeyError for an unknown format, FileNotFoundError for a missing `src` and ValueError
    for a file that is not of the format (e.g. a missing column), each naming the file.
    """
    reader = READERS.get(fmt)
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    problems = problems if problems is not None else ProblemLog()
    options = options or ReaderOptions()
    source = reader(src, problems, options)
    # the image folder the user named and the download cache the import chose are roots too
    cache = options.download.cache_dir if options.download is not None else None
    roots = ImageRoots(source.root, tuple(p.resolve() for p in (options.image_dir, cache) if p is not None)).for_bulk()
    rows = list(unique_products(source.rows, source.file, problems))
    products, lines = [], {}
    for line, product in localise_images(rows, options.download, problems, source.file):
        product = keep_usable_images(
            product, roots, problems, source.file, line, options.verify_images, check_files=options.check_images
        )
        if product is not None:
            products.append(product)
            lines[product.id] = line
    if options.normalise:
        problems.notes += normalise_catalog(products, options.aliases).lines()
    problems.loaded += len(products)
    return Catalog(products, source.root, roots.extra, source.file, lines)


__all__ = ["BRAND_STOP_WORDS", "READERS", "Reader", "ReaderOptions", "Source", "read_catalog"]
