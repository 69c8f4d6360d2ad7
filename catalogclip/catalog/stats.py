"""What a catalog holds: products, images, attribute groups, the category tree."""
from __future__ import annotations

from collections import Counter

from catalogclip.catalog.images import image_problem
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, is_url, split_values

EXAMPLES = 5  # unusable image paths listed (all of them are counted)
NOT_DOWNLOADED = "not downloaded"


def _spread(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}


def attribute_stats(catalog: Catalog, top: int = 5) -> dict[str, dict]:
    """Per attribute group, highest coverage first: distinct values, coverage (share of products
    with the group), top values; each value of a multi-value ("Men | Women") counts on its own."""
    n = len(catalog) or 1
    values: dict[str, Counter] = {}
    having: Counter = Counter()
    for product in catalog:
        for group, value in product.attributes.items():
            having[group] += 1
            values.setdefault(group, Counter()).update(split_values(value))
    return {
        group: {
            "distinct": len(values[group]),
            "coverage": round(having[group] / n, 4),
            "top": [[value, count] for value, count in values[group].most_common(top)],
        }
        for group in sorted(values, key=lambda g: (-having[g], g))
    }


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
    """Images that are missing or empty on disk, by stat (no image is opened), and URLs an
    import kept unresolved (--no-download)."""
    kinds: Counter = Counter()
    examples = []
    for _, image in catalog.iter_images():
        problem = (NOT_DOWNLOADED, "a URL, not a file") if is_url(image.path) else image_problem(catalog.image_path(image))
        if problem is not None:
            kinds[problem[0]] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{image.path}: {problem[1]}")
    return {"unusable": sum(kinds.values()), "by_kind": dict(kinds), "examples": examples}


def problem_stats(problems: ProblemLog) -> dict:
    """Problems met while loading the catalog: counts per kind and the first few."""
    return {"total": len(problems), "by_kind": dict(problems.counts()), "examples": [str(p) for p in problems.problems[:EXAMPLES]]}


def catalog_stats(
    catalog: Catalog, top: int = 5, check_images: bool = True, problems: ProblemLog | None = None
) -> dict:
    """A JSON-ready summary of the catalog; `check_images` stats every image file; `problems`
    (those met loading it) are summarised too."""
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
    if problems is not None:
        stats["problems"] = problem_stats(problems)
    return stats
