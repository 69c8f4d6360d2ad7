"""A training / embedding batch: what the data pipeline hands to a method."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch


#: an image-tower output's kind (see train/featcache.py) -> the Batch field that carries it cached,
#: which is also the name of the Backbone method that computes it from pixels
CACHED_IMAGE_FIELDS = {"features": "image_features", "tokens": "image_tokens", "prefix": "image_prefix"}


@dataclass
class Batch:
    #: (B,) integer key of each row's product: rows with equal keys are positives of each other
    product_keys: torch.Tensor
    #: raw product texts (the method decides how a product becomes text; see Method.product_text)
    texts: list[str]
    #: (B, 3, H, W) preprocessed images, unless a frozen tower's cached outputs are given instead
    images: torch.Tensor | None = None
    #: (B, F) cached pooled image-tower output
    image_features: torch.Tensor | None = None
    #: (B, N, C) cached image-tower tokens
    image_tokens: torch.Tensor | None = None
    #: (B, C, h, w) cached output of the frozen front of an image tower whose last blocks train
    image_prefix: torch.Tensor | None = None
    #: (B, F_txt) cached text-tower output of `texts`
    text_features: torch.Tensor | None = None
    #: (B, G) entity ids, one per attribute group
    entity_ids: torch.Tensor | None = None
    #: attribute text of each row's product ("brand: Puma, colour: Black"), for methods that set
    #: `uses_attribute_text` (CLIP-ITA)
    attribute_texts: list[str] | None = None
    #: category path texts (CLIP-ITA samples one node of each product's path)
    categories: list[str] | None = None
    #: (B,) key of each row's sampled category node: rows with equal keys share the category
    category_keys: torch.Tensor | None = None
    #: every node on each row's product path, root first (["A", "A > B", ...]): a sampled node is a
    #: positive of every row whose path holds it, not only of rows that sampled the same node
    category_path_nodes: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            f.name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for f in fields(self)
            for value in [getattr(self, f.name)]
        }
        return Batch(**moved)
