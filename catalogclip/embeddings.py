"""Embeddings of a catalog made by a trained run: the hand-off between `embed`, `evaluate` and `index`.

A folder holds ``embeddings.npz`` with L2-normalised float32 matrices and their row keys:

- ``image``  (n_images, d): one row per image; ``image_product`` (product id of each row),
  ``image_source`` (merchant / customer / ...), ``image_path``.
- ``text``   (n_products, d): the text side of each product (what a T2I query looks like);
  ``text_product`` (product id of each row).
- ``category`` (n_categories, d), optional: ``category_path`` (" > "-joined path of each row).
- ``product`` (n_products, d), optional: one fused vector per product from methods that have one
  (CLIP-ITA fuses image + attributes + title); rows follow ``text_product``.

and ``meta.json``: the run, backbone and method that made them, and the embedding dimension.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from catalogclip.io import atomic_path, atomic_write_json

if TYPE_CHECKING:
    from PIL import Image

    from catalogclip.catalog.vocab import EntityVocabs


@dataclass
class Embeddings:
    image: np.ndarray
    image_product: np.ndarray
    image_source: np.ndarray
    image_path: np.ndarray
    text: np.ndarray
    text_product: np.ndarray
    category: np.ndarray | None = None
    category_path: np.ndarray | None = None
    product: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        arrays = {
            "image": self.image.astype(np.float32),
            "image_product": self.image_product.astype(str),
            "image_source": self.image_source.astype(str),
            "image_path": self.image_path.astype(str),
            "text": self.text.astype(np.float32),
            "text_product": self.text_product.astype(str),
        }
        if self.category is not None:
            arrays["category"] = self.category.astype(np.float32)
            arrays["category_path"] = np.asarray(self.category_path).astype(str)
        if self.product is not None:
            arrays["product"] = self.product.astype(np.float32)
        with atomic_path(folder / "embeddings.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        atomic_write_json(folder / "meta.json", {**self.meta, "dim": self.dim})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Embeddings":
        folder = Path(folder)
        path = folder / "embeddings.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no embeddings here (make them with `catalogclip embed`)")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(meta=meta, **arrays)


class Encoder(Protocol):
    """A trained model seen from search and evaluation: it turns queries into vectors.

    `catalogclip.embed.RunEncoder(run_dir)` implements it for a trained run. All outputs are
    L2-normalised float32 arrays of shape (n, dim).
    """

    #: identifies the run and config that made the vectors; an index refuses another model's queries
    model_id: str
    dim: int
    #: entity vocabularies of an EI-CLIP run (for query understanding), else None
    vocabs: "EntityVocabs | None"

    def encode_texts(self, texts: list[str], entities: list[dict[str, str]] | None = None) -> np.ndarray: ...

    def encode_images(self, images: list["Image.Image"]) -> np.ndarray: ...

    def encode_categories(self, paths: list[str]) -> np.ndarray: ...
