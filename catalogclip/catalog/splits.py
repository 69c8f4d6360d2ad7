"""Train/test splits: by product (every image of a product on one side), or by the data set's image tags.

`split_by_product` holds out a random share of products; `split_by_leaf` holds out whole leaf
categories (a leaf is the full category path), for tests on categories never seen in training;
`split_by_image_tag` keeps every product on both sides and splits its images by their `split` tag
(seen products, unseen photos: a data set's own train/test lists, e.g. the Grocery Store Dataset's).
Splits depend only on the set of product ids (and category paths) and the seed, not on the
order of the catalog. On disk a split is ``{"by", "seed", "test_fraction", "train": [ids], "test": [ids]}``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from catalogclip.catalog.schema import Catalog
from catalogclip.io import atomic_write_json, read_json

SPLIT_KINDS = ("product", "leaf", "image")
#: image tags of each side of an "image" split; untagged images (merchant shots) are on both sides
IMAGE_TAGS = {"train": ("train",), "test": ("test",)}


@dataclass
class Split:
    train: Catalog
    test: Catalog
    name: str  # how it was made: "product" or "leaf"
    seed: int = 0
    test_fraction: float = 0.2

    def to_json(self) -> dict:
        return {
            "by": self.name,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "train": [p.id for p in self.train],
            "test": [p.id for p in self.test],
        }

    def save(self, path: str | Path, image_root: Path | None = None) -> Path:
        """Write the split; `image_root` records where images outside the split's folder live."""
        atomic_write_json(path, {**self.to_json(), **({"image_root": str(image_root)} if image_root else {})})
        return Path(path)

    @classmethod
    def from_json(cls, obj: dict, catalog: Catalog, where: str = "split") -> "Split":
        """Rebuild a split of `catalog` from its id lists; raises ValueError naming the bad field."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: a split must be a JSON object")
        by = obj.get("by", "product")
        if by not in SPLIT_KINDS:
            raise ValueError(f"{where}: field 'by' must be one of {', '.join(SPLIT_KINDS)}, got {by!r}")
        if by == "image":  # the sides follow from the catalog's tags; the id lists only record them
            return split_by_image_tag(catalog)
        known, sides = _ids(catalog), {}
        for side in ("train", "test"):
            ids = obj.get(side)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"{where}: field '{side}' must be a list of product ids")
            missing = next((i for i in ids if i not in known), None)
            if missing is not None:
                raise ValueError(f"{where}: {side} product '{missing}' is not in the catalog")
            sides[side] = ids
        both = set(sides["train"]) & set(sides["test"])
        if both:
            raise ValueError(f"{where}: product '{sorted(both)[0]}' is on both sides")
        return cls(catalog.subset(sides["train"]), catalog.subset(sides["test"]), by,
                   int(obj.get("seed", 0)), float(obj.get("test_fraction", 0.2)))

    @classmethod
    def load(cls, path: str | Path, catalog: Catalog) -> "Split":
        path = Path(path)
        obj = read_json(path)
        return cls.from_json(obj, catalog, where=str(path))


def _ids(catalog: Catalog) -> set[str]:
    return {p.id for p in catalog}


def _check(catalog: Catalog, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    if len(catalog) < 2:
        raise ValueError(f"cannot split a catalog of {len(catalog)} product(s): need at least 2")


def _sides(catalog: Catalog, test_ids: set[str]) -> tuple[Catalog, Catalog]:
    """Train and test catalogs, each keeping the catalog's order."""
    train = [p.id for p in catalog if p.id not in test_ids]
    test = [p.id for p in catalog if p.id in test_ids]
    return catalog.subset(train), catalog.subset(test)


def split_by_product(catalog: Catalog, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Hold out round(n * test_fraction) random products (at least one on each side)."""
    _check(catalog, test_fraction)
    ids = sorted(_ids(catalog))
    random.Random(seed).shuffle(ids)
    n_test = min(max(round(len(ids) * test_fraction), 1), len(ids) - 1)
    train, test = _sides(catalog, set(ids[:n_test]))
    return Split(train, test, "product", seed, test_fraction)


def split_by_leaf(catalog: Catalog, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Hold out whole leaf categories, about `test_fraction` of the products.

    Leaves are shuffled and the prefix whose product count is closest to the target goes to
    test (at least one leaf on each side). Products without a category path cannot stand for
    an unseen category, so they always train.
    """
    _check(catalog, test_fraction)
    counts: dict[tuple[str, ...], int] = {}
    for product in catalog:
        if product.category_path:
            leaf = tuple(product.category_path)
            counts[leaf] = counts.get(leaf, 0) + 1
    if len(counts) < 2:
        raise ValueError(f"cannot hold out leaf categories: the catalog has {len(counts)} leaf (need at least 2)")
    leaves = sorted(counts)
    random.Random(seed).shuffle(leaves)
    target = len(catalog) * test_fraction
    cumulative, best_k, best_gap = 0, 1, float("inf")
    for k, leaf in enumerate(leaves[:-1], start=1):
        cumulative += counts[leaf]
        if abs(cumulative - target) < best_gap:
            best_k, best_gap = k, abs(cumulative - target)
    held_out = set(leaves[:best_k])
    test_ids = {p.id for p in catalog if tuple(p.category_path) in held_out}
    train, test = _sides(catalog, test_ids)
    return Split(train, test, "leaf", seed, test_fraction)


def split_by_image_tag(catalog: Catalog) -> Split:
    """Every product on both sides, each side with the images tagged for it (`IMAGE_TAGS`) plus the
    untagged ones; a product with no image on a side is left out of it."""
    if not any(image.split is not None for _, image in catalog.iter_images()):
        raise ValueError("cannot split by image tag: no image of the catalog has a 'split' tag")
    sides = []
    for tags in IMAGE_TAGS.values():
        kept = [replace(p, images=[im for im in p.images if im.split is None or im.split in tags]) for p in catalog]
        sides.append(catalog.with_products([p for p in kept if p.images]))
    return Split(sides[0], sides[1], "image", 0, 0.0)


def make_split(catalog: Catalog, by: str = "product", test_fraction: float = 0.2, seed: int = 0) -> Split:
    """A split chosen by name: "product", "leaf" or "image" (`test_fraction` and `seed` unused)."""
    if by == "product":
        return split_by_product(catalog, test_fraction, seed)
    if by == "leaf":
        return split_by_leaf(catalog, test_fraction, seed)
    if by == "image":
        return split_by_image_tag(catalog)
    raise ValueError(f"unknown split kind '{by}' (known: {', '.join(SPLIT_KINDS)})")
