"""Fashion-Gen HDF5: one row per image, several rows per product; images are extracted to JPEG."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import READERS, ReaderOptions, Source, category_path
from catalogclip.catalog.schema import products_from_rows

IMAGES = "input_image"
PRODUCT_ID = "input_productID"
TEXT_KEYS = {"title": "input_name", "description": "input_description"}
ATTRIBUTE_KEYS = {
    "brand": "input_brand",
    "gender": "input_gender",
    "season": "input_season",
    "composition": "input_composition",
}
CATEGORY_KEYS = ("input_category", "input_subcategory")
REQUIRED = (IMAGES, PRODUCT_ID, TEXT_KEYS["title"])
BLOCK = 256  # rows read per HDF5 access: one row at a time is very slow
JPEG_QUALITY = 95


def decode_text(value) -> str:
    """A fixed-length HDF5 string (bytes, UTF-8 or else latin-1, space/NUL padded) as text."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    return str(value).strip(" \t\r\n\x00")


def _column(h5, key: str, start: int, stop: int) -> list[str]:
    return [decode_text(v) for v in h5[key][start:stop]] if key in h5 else [""] * (stop - start)


def _extract_rows(h5, image_dir: Path) -> dict[str, tuple[int, dict]]:
    """Products by id (first row index, raw product); each row's image is written as a JPEG."""
    from PIL import Image

    text_keys = {**TEXT_KEYS, **ATTRIBUTE_KEYS}
    products: dict[str, tuple[int, dict]] = {}
    n_rows = len(h5[IMAGES])
    for start in range(0, n_rows, BLOCK):
        stop = min(start + BLOCK, n_rows)
        pixels = h5[IMAGES][start:stop]
        ids = _column(h5, PRODUCT_ID, start, stop)
        texts = {name: _column(h5, key, start, stop) for name, key in text_keys.items()}
        categories = [_column(h5, key, start, stop) for key in CATEGORY_KEYS]
        for offset, product_id in enumerate(ids):
            row = start + offset
            if product_id not in products:
                products[product_id] = (row, _raw_product(product_id, texts, categories, offset))
            images = products[product_id][1]["images"]
            path = image_dir / f"{product_id}_{len(images)}.jpg"
            Image.fromarray(np.asarray(pixels[offset], dtype=np.uint8)).save(path, quality=JPEG_QUALITY)
            images.append(str(path))
    return products


def _raw_product(product_id: str, texts: dict[str, list[str]], categories: list[list[str]], i: int) -> dict:
    return {
        "id": product_id,
        "title": texts["title"][i],
        "description": texts["description"][i],
        "images": [],
        "attributes": {name: texts[name][i] for name in ATTRIBUTE_KEYS if texts[name][i]},
        "category_path": category_path(level[i] for level in categories),
    }


def _open(src: Path):
    import h5py

    try:
        return h5py.File(src, "r")
    except OSError as exc:
        raise ValueError(f"{src}: not a readable HDF5 file ({exc})") from None


def _rows(src: Path, image_dir: Path) -> Iterator[tuple[int, dict]]:
    with _open(src) as h5:
        for key in REQUIRED:
            if key not in h5:
                raise ValueError(f"{src}: missing key '{key}' (found: {', '.join(sorted(h5))})")
        image_dir.mkdir(parents=True, exist_ok=True)
        products = _extract_rows(h5, image_dir)
    yield from products.values()


@READERS.register("fashiongen")
def read_fashiongen(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    """SRC is the .h5 file; lines in problem reports are 0-based HDF5 row indices."""
    if options.image_dir is None:
        raise ValueError("fashiongen: an image folder to extract the images into is required")
    image_dir = options.image_dir.resolve()
    return Source(src, image_dir, products_from_rows(_rows(src, image_dir), src, problems))
