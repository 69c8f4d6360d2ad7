"""Product retrieval (protocol `product`): ECLIP's image-to-image product search.

Queries are the images of one source (`ProtocolOptions.query_source`, default customer shots),
candidates the images of another (`gallery_source`, default merchant shots) of every product under
test. Two tasks, ECLIP's two granularities:

- ``fine`` (fine-grained): relevant = gallery images of the query's own product;
- ``coarse``: relevant = gallery images of any product in the query's leaf category (or, with
  `coarse_depth`, its category cut to that many levels: the Grocery Store's coarse class).

Metrics: R@1/5/10 and mAP@1/5/10 (see `metrics`). A query with nothing relevant among the
candidates is left out (`n_queries` says how many were kept). When query and gallery source are
the same, each query is ranked against every candidate but itself (a per-query shortlist).
With `gallery_distractors`, the images of that source of the *other* products are added to the
gallery and are never relevant: whether the merchant shot beats in-domain photos of other products
(the query's own product's images of that source are left out of its ranking).
"""
from __future__ import annotations

import numpy as np

from catalogclip.evaluate.metrics import Qrels
from catalogclip.evaluate.protocols import PROTOCOLS, Inventory, ProtocolOptions, Task

PRODUCT_METRICS = ("R@1", "R@5", "R@10", "mAP@1", "mAP@5", "mAP@10")


def _source_rows(inv: Inventory, source: str) -> np.ndarray:
    rows = np.flatnonzero(inv.image_sources == source)
    if not len(rows):
        found = ", ".join(sorted(set(inv.image_sources.tolist()))) or "none"
        raise ValueError(f"product retrieval: no image of source '{source}' under test (sources: {found})")
    return rows


def _task(name: str, labels: np.ndarray, queries: np.ndarray, gallery: np.ndarray,
          distractors: np.ndarray | None = None, products: np.ndarray | None = None) -> Task:
    """Images with equal labels are relevant to each other; with queries among the candidates, a
    query's own image is taken out of its shortlist. `distractors` (image rows) follow the gallery
    as candidates that are never relevant, minus those of the query's own product (`products`)."""
    same_set = np.array_equal(queries, gallery)
    positions = np.arange(len(gallery))
    lists = []
    for q, row in enumerate(queries):
        shortlist = positions[positions != q] if same_set else positions
        lists.append(np.flatnonzero(labels[gallery[shortlist]] == labels[row]))
    kept = np.array([q for q, relevant in enumerate(lists) if len(relevant)], dtype=np.int64)
    if not len(kept):
        raise ValueError(f"product retrieval ({name}): no query image has a relevant candidate image")
    shortlists = np.stack([positions[positions != q] for q in kept]) if same_set else None
    candidates, excluded = gallery, None
    if distractors is not None:
        candidates = np.concatenate([gallery, distractors])
        excluded = Qrels.from_labels(products[queries[kept]], products[distractors])
        excluded = Qrels(excluded.indptr, excluded.indices + len(gallery))
    return Task(name, "image", "image", queries[kept], candidates, Qrels.from_lists([lists[q] for q in kept]),
                PRODUCT_METRICS, shortlists, excluded=excluded)


@PROTOCOLS.register("product")
def product_tasks(inv: Inventory, options: ProtocolOptions) -> list[Task]:
    queries = _source_rows(inv, options.query_source)
    gallery = _source_rows(inv, options.gallery_source)
    distractors = None
    if options.gallery_distractors is not None:
        if options.gallery_source in (options.gallery_distractors, options.query_source):
            raise ValueError("product retrieval: distractors need a gallery source other than theirs and the queries'")
        distractors = _source_rows(inv, options.gallery_distractors)
    # a product without a category path shares its "leaf" with no other product
    coarse = np.array([" > ".join(p.category_path[: options.coarse_depth]) or f"<no category: {p.id}>"
                       for p in inv.products], dtype=str)
    return [
        _task("fine", inv.image_product, queries, gallery, distractors, inv.image_product),
        _task("coarse", coarse[inv.image_product], queries, gallery, distractors, inv.image_product),
    ]
