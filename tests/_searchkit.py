"""Shared by the search tests: a toy encoder whose right answers are known, and a tiny catalog.

`PaletteEncoder` maps an image to its nearest palette colour and a text to the colour words it
mentions, so "red" must retrieve the red products. Images are small solid-colour PNGs.
"""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl, write_jsonl

PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
COLOURS = list(PALETTE)
DIM = len(COLOURS) + 4  # palette dims + a few hashed dims so unrelated queries still get vectors


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def _hashed(text: str) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[len(COLOURS) + hashlib.md5(text.encode()).digest()[0] % 4] = 1.0
    return v


class PaletteEncoder:
    """An `Encoder`: colour of the image vs colour words of the text (plus hashed noise dims)."""

    def __init__(self, model_id: str = "palette-v1", vocabs: dict | None = None, dim: int = DIM) -> None:
        self.model_id = model_id
        self.dim = dim
        self.vocabs = vocabs
        self.text_calls: list[tuple[list[str], list[dict] | None]] = []

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        palette = np.array(list(PALETTE.values()), np.float32)
        out = np.zeros((len(images), DIM), np.float32)
        for row, image in enumerate(images):
            mean = np.asarray(image.convert("RGB"), np.float32).reshape(-1, 3).mean(0)
            distance = np.linalg.norm(palette - mean, axis=1)
            out[row, : len(COLOURS)] = np.exp(-distance / 40.0)
            out[row, len(COLOURS):] = 0.05
        return _unit(out)

    def encode_texts(self, texts: list[str], entities: list[dict] | None = None) -> np.ndarray:
        self.text_calls.append((list(texts), entities))
        out = np.stack([_hashed(t) * 0.05 for t in texts])
        for row, text in enumerate(texts):
            words = text.lower().split()
            for col, colour in enumerate(COLOURS):
                out[row, col] += float(colour in words)
            for group, value in (entities[row] if entities else {}).items():
                if group == "colour" and value.lower() in PALETTE:
                    out[row, COLOURS.index(value.lower())] += 1.0
        return _unit(out)

    def encode_categories(self, paths: list[str]) -> np.ndarray:
        return _unit(np.stack([_hashed(p) + 0.01 for p in paths]))


def product(pid: str, colour: str, brand: str, category: list[str], price: float, views: int = 1) -> Product:
    return Product(
        id=pid,
        title=f"{brand} {colour.title()} {category[-1]}",
        images=[ImageRef(f"images/{pid}_{v}.png") for v in range(views)],
        attributes={"brand": brand, "colour": colour.title(), "price": f"{price:g}"},
        category_path=category,
    )


SHOES = ["Footwear", "Shoes"]
SHIRTS = ["Apparel", "Topwear", "Shirts"]
JEANS = ["Apparel", "Bottomwear", "Jeans"]


def standard_products() -> list[Product]:
    """12 products: every colour twice, two brands, three categories, prices 10..120."""
    brands = ["Puma", "Diesel"]
    categories = [SHOES, SHIRTS, JEANS]
    return [
        product(f"p{i:02d}", COLOURS[i % 6], brands[i % 2], categories[i % 3], 10.0 * (i + 1), views=1 + i % 2)
        for i in range(12)
    ]


def write_images(root: Path, products: list[Product]) -> None:
    for p in products:
        colour = PALETTE[p.attributes["colour"].lower()]
        for image in p.images:
            path = root / image.path
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), colour).save(path)


def write_catalog(root: Path, products: list[Product] | None = None, name: str = "catalog.jsonl") -> Path:
    """A catalog (`name`) plus solid-colour images under `root`; returns the JSONL path."""
    products = standard_products() if products is None else products
    write_images(root, products)
    return write_jsonl(Catalog(products, root), root / name)


def written(root: Path, products: list[Product], name: str) -> Catalog:
    """`products` (and their images) written under `root` as catalog `name`, read back: another
    version of a shop's catalog, for updates."""
    return read_jsonl(write_catalog(root, products, name))


def png_bytes(colour: str, size: int = 8) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", (size, size), PALETTE[colour]).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def serving(app) -> Iterator[str]:
    """An ASGI app served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
