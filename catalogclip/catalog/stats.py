"""What a catalog holds: products, images, attribute groups, the category tree."""
from __future__ import annotations

from collections import Counter

from catalogclip.catalog.images import image_problem
from catalogclip.catalog.schema import Catalog

EXAMPLES = 5  # unusable image paths listed (all of them are counted)


def _spread(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}


def attribute_stats(catalog: Catalog, top: int = 5) -> dict[str, dict]:
    """Per attribute group: distinct values, coverage (share of products with it), top values."""
    n = len(catalog) or 1
    stats = {}
    for group in catalog.attribute_groups():
        values = Counter(p.attributes[group] for p in catalog if group in p.attributes)
        stats[group] = {
            "distinct": len(values),
            "coverage": round(sum(values.values()) / n, 4),
            "top": [[value, count] for value, count in values.most_common(top)],
        }
    return stats


def category_stats(catalog: Catalog) -> dict:
    """Depth of the paths and nodes per level: a node is a distinct path prefix, so a name
    under two parents ("Accessories > Bags", "Apparel > Bags") is two nodes but one name."""
    depths = [len(p.category_path) for p in catalog]
    levels: list[set[tuple[str, ...]]] = [set() for _ in range(max(depths, default=0))]
    for product in catalog:
        for depth in range(1, len(product.category_path) + 1):
            levels[depth - 1].add(tuple(product.category_path[:depth]))
    return {
        "depth": _spread(depths),
        "nodes_per_level": [len(level) for level in levels],
        "names_per_level": [len({node[-1] for node in level}) for level in levels],
        "leaves": len({tuple(p.category_path) for p in catalog if p.category_path}),
        "without_category": depths.count(0),
    }


def image_file_stats(catalog: Catalog) -> dict:
    """Images that are missing or empty on disk, by stat (no image is opened)."""
    kinds: Counter = Counter()
    examples = []
    for _, image in catalog.iter_images():
        problem = image_problem(catalog.image_path(image))
        if problem is not None:
            kinds[problem[0]] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{image.path}: {problem[1]}")
    return {"unusable": sum(kinds.values()), "by_kind": dict(kinds), "examples": examples}


def catalog_stats(catalog: Catalog, top: int = 5, check_images: bool = True) -> dict:
    """A JSON-ready summary of the catalog; `check_images` stats every image file."""
    per_product = [len(p.images) for p in catalog]
    stats = {
        "products": len(catalog),
        "images": sum(per_product),
        "images_per_product": _spread(per_product),
        "image_sources": dict(Counter(image.source for _, image in catalog.iter_images()).most_common()),
        "attributes": attribute_stats(catalog, top),
        "category": category_stats(catalog),
    }
    if check_images:
        stats["image_files"] = image_file_stats(catalog)
    return stats
