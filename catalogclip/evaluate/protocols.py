"""Evaluation protocols as data: queries, candidates and relevance, then one scoring loop.

A protocol turns an `Inventory` (the products and image rows under test) into `Task`s; a `Scorer`
(embeddings, or a text baseline) gives the scores of a chunk of queries against a task's candidates;
`run_task` ranks the relevant candidates chunk by chunk (`metrics.relevant_ranks`) and averages the
metrics. Protocols, by name (`PROTOCOLS`):

- ``full``: I2T and T2I over the whole test catalog (EI-CLIP's "full candidate"). A text query's
  relevant candidates are all images of its product; an image query's, its product's text.
- ``sample100``: each product against its positive plus 100 negatives drawn from other products of
  its leaf category (FashionBERT / Kaleido-BERT / EI-CLIP "sample 100"), one query per direction
  and product; a product's image is its first merchant image. The lists are seeded per product,
  saved by `CandidateLists.save` and reused, so models are compared on identical candidates. Where
  a leaf is too small, negatives come from its ancestors; the result says how many lists did
  (`negatives_check`) and carries a warning.
- ``category``: category-to-image retrieval (CLIP-ITA): every node of the category tree is a query,
  every product a candidate, relevant when the node is on the product's category path. Reported
  for all nodes, the root nodes, the leaf nodes and, given the training tree, the unseen nodes.
  A product's score is its fused product vector's when the embeddings have one (CLIP-ITA), else
  the max over its image vectors (a product matches when any of its images does).
- ``zeroshot-cls``: each image classified into the leaf categories (the full paths of the
  products); Acc@1 and Acc@5.

Scores are computed in chunks of queries sized to a memory budget, so a 35k x 35k evaluation
holds a few hundred MB of scores at a time and never the whole matrix. The two directions of
``full`` rank the rows and the columns of one matrix, which is then computed once for both
(`paired`), with the same ranks as ranking each direction on its own.
"""
from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from catalogclip.catalog.schema import Catalog, Product, all_category_nodes, category_nodes
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.metrics import Qrels, Ranks, hit_curve, mean_metrics, relevant_ranks, sum_r, top_k
from catalogclip.evaluate.paired import paired_ranks
from catalogclip.io import atomic_write_json, read_json
from catalogclip.registry import Registry

RETRIEVAL_METRICS = ("R@1", "R@5", "R@10", "MRR")
#: the CLIP-ITA paper's columns
CATEGORY_METRICS = ("P@1", "P@5", "P@10", "mAP@5", "mAP@10", "R-precision")
CLASSIFICATION_METRICS = ("Acc@1", "Acc@5")
#: R@K curves go up to this K
CURVE_MAX_K = 50
#: bytes of scores held at once per chunk of queries
CHUNK_BYTES = 256 * 2**20


# --- what is evaluated -------------------------------------------------------------------------


@dataclass
class Inventory:
    """The products and image rows under evaluation.

    Rows of each side: ``text`` and ``product`` rows are product indices, ``image`` rows index
    `image_product`, ``category`` rows index `categories`.
    """

    products: list[Product]
    image_product: np.ndarray  # (n_images,) product index of each image row
    image_paths: np.ndarray  # (n_images,) the image file of each row
    image_sources: np.ndarray  # (n_images,) merchant / customer / ...
    #: (n_images,) row of each image in the Embeddings it came from (or in catalog order)
    image_index: np.ndarray
    categories: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.categories = all_category_nodes(self.products)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> "Inventory":
        """Every product and image of a catalog (for scorers that do not look at pixels)."""
        rows = list(catalog.iter_images())
        return cls(
            products=list(catalog.products),
            image_product=np.array([i for i, _ in rows], dtype=np.int64),
            image_paths=np.array([os.path.abspath(catalog.image_path(im)) for _, im in rows], dtype=str),
            image_sources=np.array([im.source for _, im in rows], dtype=str),
            image_index=np.arange(len(rows), dtype=np.int64),
        )

    @classmethod
    def from_embeddings(cls, embeddings: Embeddings, catalog: Catalog) -> "Inventory":
        """The catalog's products that have a text row and at least one image row in `embeddings`
        (images that could not be read are missing there), with those image rows."""
        with_text = set(embeddings.text_product.tolist())
        with_image = set(embeddings.image_product.tolist())
        products = [p for p in catalog if p.id in with_text and p.id in with_image]
        if not products:
            raise ValueError("no product of the catalog is in the embeddings (were they made from another catalog?)")
        index = {p.id: i for i, p in enumerate(products)}
        rows = np.array([i for i, pid in enumerate(embeddings.image_product) if pid in index], dtype=np.int64)
        return cls(
            products=products,
            image_product=np.array([index[pid] for pid in embeddings.image_product[rows]], dtype=np.int64),
            image_paths=np.array([os.path.abspath(path) for path in embeddings.image_path[rows]], dtype=str),
            image_sources=embeddings.image_source[rows].astype(str),
            image_index=rows,
        )

    @property
    def product_ids(self) -> np.ndarray:
        return np.array([p.id for p in self.products], dtype=str)

    def size(self, side: str) -> int:
        return {"text": len(self.products), "product": len(self.products), "image": len(self.image_product),
                "category": len(self.categories)}[side]

    @cached_property
    def representative_images(self) -> np.ndarray:
        """Per product, the image row that stands for it: its first merchant image, else its first."""
        rows = np.arange(len(self.image_product))
        first = np.full(len(self.products), len(rows), dtype=np.int64)
        np.minimum.at(first, self.image_product, rows)
        merchant = first.copy()
        is_merchant = self.image_sources == "merchant"
        merchant[np.unique(self.image_product[is_merchant])] = len(rows)
        np.minimum.at(merchant, self.image_product[is_merchant], rows[is_merchant])
        return merchant

    def describe(self, side: str, row: int) -> dict:
        """What a row is, for example grids: its key, a label and an image file (if any)."""
        if side == "category":
            return {"key": self.categories[row], "label": self.categories[row]}
        if side == "image":
            product = self.products[self.image_product[row]]
            return {"key": str(self.image_paths[row]), "label": product.title, "product": product.id,
                    "image": str(self.image_paths[row])}
        product = self.products[row]
        out = {"key": product.id, "label": product.title, "product": product.id}
        if side == "product":  # a product candidate is shown by its image; a text query by its text
            out["image"] = str(self.image_paths[self.representative_images[row]])
        return out


@dataclass
class Task:
    """One ranking problem: queries of one side against candidates of another.

    `qrels` index `candidates` (or, with `shortlists`, each query's own shortlist). `groups` name
    subsets of the queries reported separately (``all`` is always reported).
    """

    name: str
    query_side: str
    candidate_side: str
    queries: np.ndarray  # rows of the query side
    candidates: np.ndarray  # rows of the candidate side
    qrels: Qrels
    metrics: tuple[str, ...]
    shortlists: np.ndarray | None = None  # (n_queries, m) positions in `candidates`
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    #: per query, candidates (positions like `qrels`) left out of its ranking: scored below every other
    #: candidate, which is the same as absent; for per-query lists of unequal length
    excluded: Qrels | None = None


ScoreFn = Callable[[np.ndarray], np.ndarray]


class Scorer(Protocol):
    """Scores queries against a task's candidates: `score_fn(task)(query_rows)` gives a
    (len(query_rows), len(task.candidates)) float array, higher is better."""

    name: str

    def score_fn(self, task: Task) -> ScoreFn: ...

    def describe(self) -> dict: ...


# --- scoring with embeddings -------------------------------------------------------------------


class EmbeddingScorer:
    """Dot products of L2-normalised embeddings (cosine similarity), computed chunk by chunk."""

    name = "embeddings"

    def __init__(
        self,
        embeddings: Embeddings,
        inventory: Inventory,
        category_vectors: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.inventory = inventory
        self.category_vectors = dict(category_vectors or {})
        if embeddings.category is not None:
            for path, vector in zip(embeddings.category_path, embeddings.category):
                self.category_vectors.setdefault(str(path), vector)
        self._text_rows = {pid: i for i, pid in enumerate(embeddings.text_product)}

    @property
    def fused_products(self) -> bool:
        return self.embeddings.product is not None

    def describe(self) -> dict:
        return {"scorer": self.name, **self.embeddings.meta,
                "product_scores": "fused product vector" if self.fused_products else "max over its images"}

    def vectors(self, side: str) -> np.ndarray:
        """The vectors of every row of a side (``product`` only for fused product vectors)."""
        inv, emb = self.inventory, self.embeddings
        if side == "image":
            return emb.image[inv.image_index]
        if side == "category":
            missing = [c for c in inv.categories if c not in self.category_vectors]
            if missing:
                raise KeyError(f"no embedding for category '{missing[0]}' ({len(missing)} missing); embed the catalog's categories")
            return np.stack([self.category_vectors[c] for c in inv.categories]).astype(np.float32)
        rows = [self._text_rows[p.id] for p in inv.products]
        return (emb.product if side == "product" else emb.text)[rows]

    def score_fn(self, task: Task) -> ScoreFn:
        if task.query_side == "product":
            raise ValueError("product-side queries are not supported")
        queries = self.vectors(task.query_side)
        if task.candidate_side == "product" and not self.fused_products:
            return self._max_over_images(queries, task.candidates)
        candidates = np.ascontiguousarray(self.vectors(task.candidate_side)[task.candidates])
        return lambda rows: queries[rows] @ candidates.T

    def _max_over_images(self, queries: np.ndarray, products: np.ndarray) -> ScoreFn:
        """A product's score is the best score of any of its images."""
        inv = self.inventory
        order = np.argsort(inv.image_product, kind="stable")
        images = np.ascontiguousarray(self.vectors("image")[order])
        starts = np.searchsorted(inv.image_product[order], np.arange(len(inv.products)))

        def scores(rows: np.ndarray) -> np.ndarray:
            per_product = np.maximum.reduceat(queries[rows] @ images.T, starts, axis=1)
            return per_product[:, products]

        return scores


# --- protocols ---------------------------------------------------------------------------------


@dataclass
class CandidateLists:
    """sample100 lists: query product id -> candidate product ids (the positive among them, in
    a seeded random order). Saved as JSON so another model is scored on the same candidates."""

    seed: int
    n_negatives: int
    lists: dict[str, list[str]]

    def to_json(self) -> dict:
        return {"protocol": "sample100", "seed": self.seed, "n_negatives": self.n_negatives, "lists": self.lists}

    def save(self, path: str | Path) -> Path:
        atomic_write_json(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CandidateLists":
        path = Path(path)
        obj = read_json(path)
        lists = obj.get("lists") if isinstance(obj, dict) else None
        if not isinstance(lists, dict) or not all(isinstance(v, list) for v in lists.values()):
            raise ValueError(f"{path}: field 'lists' must map product ids to lists of product ids")
        for query, candidates in lists.items():
            if candidates.count(query) != 1:
                raise ValueError(f"{path}: the list of '{query}' must hold its own product exactly once")
        return cls(int(obj.get("seed", 0)), int(obj.get("n_negatives", 100)), lists)


def draw_candidate_lists(inventory: Inventory, n_negatives: int = 100, seed: int = 0) -> CandidateLists:
    """For each product, `n_negatives` other products of its leaf category, then (when the leaf
    is too small) of its parent, up to the root and the whole catalog, plus itself, shuffled.

    Each product's draw is seeded by (seed, its id), so it does not depend on catalog order.
    """
    # work on products in id order, so that a draw does not depend on the catalog's order
    ids = sorted(p.id for p in inventory.products)
    path_of = {p.id: tuple(p.category_path) for p in inventory.products}
    paths = [path_of[pid] for pid in ids]
    pools: dict[tuple[str, ...], list[int]] = {}
    for i, path in enumerate(paths):
        for depth in range(len(path) + 1):
            pools.setdefault(path[:depth], []).append(i)
    pool_arrays = {key: np.array(members, dtype=np.int64) for key, members in pools.items()}
    lists: dict[str, list[str]] = {}
    for i, path in enumerate(paths):
        rng = np.random.default_rng([seed, zlib.crc32(ids[i].encode())])
        chosen = np.array([i], dtype=np.int64)
        for depth in range(len(path), -1, -1):
            need = n_negatives + 1 - len(chosen)
            if need <= 0:
                break
            pool = np.setdiff1d(pool_arrays[path[:depth]], chosen)
            chosen = np.concatenate([chosen, rng.choice(pool, size=min(need, len(pool)), replace=False)])
        lists[ids[i]] = [ids[j] for j in rng.permutation(chosen)]
    return CandidateLists(seed, n_negatives, lists)


@dataclass
class ProtocolOptions:
    seed: int = 0
    n_negatives: int = 100
    #: sample100 lists to reuse (None: drawn with `seed` and `n_negatives`)
    candidate_lists: CandidateLists | None = None
    #: category nodes of the training catalog; nodes outside it are reported as "unseen"
    seen_categories: set[str] | None = None
    #: image sources of queries and gallery of the `product` protocol (evaluate/product_retrieval.py)
    query_source: str = "customer"
    gallery_source: str = "merchant"
    #: `product`: images of this source of *other* products join the gallery, never relevant (None: none)
    gallery_distractors: str | None = None
    #: `product`: "coarse" relevance = the same first `coarse_depth` category levels (None: the whole path)
    coarse_depth: int | None = None


PROTOCOLS: Registry[Callable[[Inventory, ProtocolOptions], list[Task]]] = Registry("protocol")
#: modules that register more protocols when imported
_PROTOCOL_MODULES = ("catalogclip.evaluate.product_retrieval",)


def protocol_names() -> list[str]:
    """Every registered protocol (importing the modules that register some)."""
    import importlib

    for module in _PROTOCOL_MODULES:
        importlib.import_module(module)
    return PROTOCOLS.names()


@PROTOCOLS.register("full")
def full_tasks(inv: Inventory, options: ProtocolOptions) -> list[Task]:
    products, images = np.arange(len(inv.products)), np.arange(len(inv.image_product))
    return [
        Task("i2t", "image", "text", images, products, Qrels.from_labels(inv.image_product, products), RETRIEVAL_METRICS),
        Task("t2i", "text", "image", products, images, Qrels.from_labels(products, inv.image_product), RETRIEVAL_METRICS),
    ]


@PROTOCOLS.register("sample100")
def sample100_tasks(inv: Inventory, options: ProtocolOptions) -> list[Task]:
    lists = candidate_lists_for(inv, options)
    index = {pid: i for i, pid in enumerate(inv.product_ids)}
    missing = next((pid for ids in lists.lists.values() for pid in ids if pid not in index), None)
    if missing is not None:
        raise ValueError(f"candidate lists name product '{missing}', which is not in the evaluated catalog")
    queries = np.array([index[q] for q in lists.lists], dtype=np.int64)
    width = max(len(c) for c in lists.lists.values())
    if any(len(c) != width for c in lists.lists.values()):
        raise ValueError("candidate lists must all have the same length")
    shortlists = np.array([[index[c] for c in cands] for cands in lists.lists.values()], dtype=np.int64)
    qrels = Qrels.from_lists([np.flatnonzero(row == q) for row, q in zip(shortlists, queries)])
    firsts, products = inv.representative_images, np.arange(len(inv.products))
    return [
        Task("i2t", "image", "text", firsts[queries], products, qrels, RETRIEVAL_METRICS, shortlists),
        Task("t2i", "text", "image", queries, firsts, qrels, RETRIEVAL_METRICS, shortlists),
    ]


@PROTOCOLS.register("category")
def category_tasks(inv: Inventory, options: ProtocolOptions) -> list[Task]:
    node_index = {node: i for i, node in enumerate(inv.categories)}
    relevant: list[list[int]] = [[] for _ in inv.categories]
    for p, product in enumerate(inv.products):
        for node in category_nodes(product.category_path):
            relevant[node_index[node]].append(p)
    if not inv.categories:
        raise ValueError("the catalog has no category paths: the category protocol needs them")
    parents = {node.rsplit(" > ", 1)[0] for node in inv.categories if " > " in node}
    groups = {
        "root": np.array([i for i, n in enumerate(inv.categories) if " > " not in n], dtype=np.int64),
        "leaf": np.array([i for i, n in enumerate(inv.categories) if n not in parents], dtype=np.int64),
    }
    if options.seen_categories is not None:
        groups["unseen"] = np.array(
            [i for i, n in enumerate(inv.categories) if n not in options.seen_categories], dtype=np.int64
        )
    nodes = np.arange(len(inv.categories))
    products = np.arange(len(inv.products))
    return [Task("category", "category", "product", nodes, products, Qrels.from_lists(relevant), CATEGORY_METRICS,
                 groups=groups)]


@PROTOCOLS.register("zeroshot-cls")
def zeroshot_tasks(inv: Inventory, options: ProtocolOptions) -> list[Task]:
    node_index = {node: i for i, node in enumerate(inv.categories)}
    labelled = [i for i, p in enumerate(inv.products) if p.category_path]
    leaves = sorted({node_index[inv.products[i].category()] for i in labelled})
    if not leaves:
        raise ValueError("the catalog has no category paths: zero-shot classification needs them")
    class_of = {leaf: k for k, leaf in enumerate(leaves)}
    product_class = {i: class_of[node_index[inv.products[i].category()]] for i in labelled}
    images = np.array([r for r, p in enumerate(inv.image_product) if p in product_class], dtype=np.int64)
    qrels = Qrels.from_lists([[product_class[inv.image_product[r]]] for r in images])
    return [Task("zeroshot-cls", "image", "category", images, np.array(leaves, dtype=np.int64), qrels,
                 CLASSIFICATION_METRICS)]


# --- running -----------------------------------------------------------------------------------


def _example_positions(n_queries: int, n_examples: int) -> set[int]:
    """Which queries a result shows with their top candidates: spread evenly over the queries."""
    return set(np.linspace(0, n_queries - 1, min(n_examples, n_queries)).astype(int).tolist()) if n_queries else set()


def _chunk_rows(task: Task, inventory: Inventory, chunk_bytes: int) -> int:
    # 8 bytes per score: the float32 scores plus the comparison masks made from them
    return max(1, chunk_bytes // (8 * max(inventory.size("image"), len(task.candidates))))


def run_task(task: Task, scorer: Scorer, inventory: Inventory, n_examples: int = 8, top: int = 5,
             chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Rank, average and describe one task: metrics per group, R@K curve and example queries."""
    started = time.perf_counter()
    scores_of = scorer.score_fn(task)
    n_queries = len(task.queries)
    chunk = _chunk_rows(task, inventory, chunk_bytes)
    examples = _example_positions(n_queries, n_examples)
    parts: list[Ranks] = []
    shown: dict[int, np.ndarray] = {}
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        scores = scores_of(task.queries[start:stop])
        if task.shortlists is not None:
            scores = np.take_along_axis(scores, task.shortlists[start:stop], axis=1)
        if task.excluded is not None:
            scores = _exclude(scores, task.excluded.rows(start, stop))
        parts.append(relevant_ranks(scores, task.qrels.rows(start, stop)))
        shown.update({q: scores[q - start] for q in examples if start <= q < stop})
    return _task_result(task, inventory, Ranks.concat(parts), shown, top, started)


def _exclude(scores: np.ndarray, excluded: Qrels) -> np.ndarray:
    """The scores with each query's excluded candidates below all others (ranked after them: as if absent)."""
    scores = scores.copy()
    scores[np.repeat(np.arange(len(scores)), excluded.n_relevant), excluded.indices] = scores.min() - 1.0
    return scores


def _task_result(task: Task, inventory: Inventory, ranks: Ranks, shown: dict[int, np.ndarray], top: int,
                 started: float) -> dict:
    groups = {"all": ranks, **{name: ranks.subset(rows) for name, rows in task.groups.items()}}
    return {
        "query_side": task.query_side,
        "candidate_side": task.candidate_side,
        "n_queries": len(task.queries),
        "n_candidates": int(task.shortlists.shape[1]) if task.shortlists is not None else len(task.candidates),
        "n_queries_per_group": {name: r.n_queries for name, r in groups.items()},
        "metrics": {name: mean_metrics(r, task.metrics) for name, r in groups.items()},
        "curve": {"k": list(range(1, CURVE_MAX_K + 1)), "R@K": hit_curve(ranks, CURVE_MAX_K).tolist()},
        "examples": [
            {"query": inventory.describe(task.query_side, int(task.queries[q])),
             "top": _top_candidates(task, inventory, q, shown[q], top)}
            for q in sorted(shown)
        ],
        "seconds": round(time.perf_counter() - started, 3),
    }


def transposed_pair(tasks: Sequence[Task], scorer: Scorer) -> tuple[Task, Task] | None:
    """(rows task, columns task) when two tasks rank the rows and the columns of one score matrix
    whose columns each have one relevant row (I2T + T2I of `full`), and the scorer has the vectors."""
    if len(tasks) != 2 or not isinstance(scorer, EmbeddingScorer):
        return None
    for rows, cols in (tasks, tasks[::-1]):
        if (rows.shortlists is None and cols.shortlists is None and rows.query_side == cols.candidate_side
                and rows.candidate_side == cols.query_side and "product" not in (rows.query_side, rows.candidate_side)
                and np.array_equal(rows.queries, cols.candidates) and np.array_equal(rows.candidates, cols.queries)
                and (cols.qrels.n_relevant == 1).all() and _same_pairs(rows.qrels, cols.qrels)):
            return rows, cols
    return None


def _same_pairs(rows: Qrels, cols: Qrels) -> bool:
    """Whether `cols` holds exactly the (query, candidate) pairs of `rows`, transposed."""
    pairs = np.stack([np.repeat(np.arange(rows.n_queries), rows.n_relevant), rows.indices], axis=1)
    flipped = np.stack([cols.indices, np.repeat(np.arange(cols.n_queries), cols.n_relevant)], axis=1)
    return len(pairs) == len(flipped) and np.array_equal(pairs[np.lexsort(pairs.T[::-1])], flipped[np.lexsort(flipped.T[::-1])])


def run_transposed_pair(rows: Task, cols: Task, scorer: EmbeddingScorer, inventory: Inventory, n_examples: int = 8,
                        top: int = 5, chunk_bytes: int = CHUNK_BYTES) -> dict[str, dict]:
    """Both tasks of a `transposed_pair` from one pass over their score matrix (see `paired`)."""
    started = time.perf_counter()
    row_vectors = scorer.vectors(rows.query_side)[rows.queries]
    column_vectors = scorer.vectors(rows.candidate_side)[rows.candidates]
    paired = paired_ranks(
        row_vectors, column_vectors, rows.qrels, cols.qrels.indices, _chunk_rows(rows, inventory, chunk_bytes),
        _example_positions(len(rows.queries), n_examples), _example_positions(len(cols.queries), n_examples),
    )
    return {
        rows.name: _task_result(rows, inventory, paired.rows, paired.row_scores, top, started),
        cols.name: _task_result(cols, inventory, paired.columns, paired.column_scores, top, started),
    }


def _top_candidates(task: Task, inventory: Inventory, q: int, scores: np.ndarray, top: int) -> list[dict]:
    relevant = set(task.qrels.row(q).tolist())
    positions = task.shortlists[q] if task.shortlists is not None else None
    out = []
    for position in top_k(scores[None, :], top)[0]:
        candidate = int(positions[position] if positions is not None else position)
        row = int(task.candidates[candidate])
        out.append({**inventory.describe(task.candidate_side, row), "score": float(scores[position]),
                    "relevant": int(position) in relevant})
    return out


def evaluate(protocol: str, inventory: Inventory, scorer: Scorer, options: ProtocolOptions | None = None,
             n_examples: int = 8, chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Every number of one protocol for one model, as a JSON-ready dict."""
    options = options or ProtocolOptions()
    protocol_names()
    settings: dict = {}
    if protocol == "sample100":
        lists = candidate_lists_for(inventory, options)
        options = replace(options, candidate_lists=lists)
        settings.update(seed=lists.seed, n_negatives=lists.n_negatives, **negatives_check(lists, inventory))
    tasks = PROTOCOLS.get(protocol)(inventory, options)
    pair = transposed_pair(tasks, scorer)
    results = run_transposed_pair(*pair, scorer, inventory, n_examples, chunk_bytes=chunk_bytes) if pair else {}
    results.update({t.name: run_task(t, scorer, inventory, n_examples, chunk_bytes=chunk_bytes)
                    for t in tasks if t.name not in results})
    results = {t.name: results[t.name] for t in tasks}  # in the protocol's task order
    summary = {}
    if {"i2t", "t2i"} <= set(results):
        summary["SumR"] = sum_r(results["i2t"]["metrics"]["all"], results["t2i"]["metrics"]["all"])
    return {
        "protocol": protocol,
        "model": scorer.describe(),
        "n_products": len(inventory.products),
        "n_images": len(inventory.image_product),
        "settings": settings,
        "tasks": results,
        "summary": summary,
    }


def negatives_check(lists: CandidateLists, inventory: Inventory) -> dict:
    """Where each sample100 list's negatives come from, and a warning when they are not what the
    protocol's name promises (n_negatives products of the query's own leaf category).

    A list's level is the deepest category level all its negatives share with the query: "leaf",
    "level N" (they had to be filled from an ancestor) or "whole test set".
    """
    path = {p.id: tuple(p.category_path) for p in inventory.products}
    levels: dict[str, int] = {}
    for query, candidates in lists.lists.items():
        own = path.get(query, ())
        shared = min((_shared_depth(own, path.get(c, ())) for c in candidates if c != query), default=len(own))
        level = "leaf" if shared == len(own) else f"level {shared}" if shared else "whole test set"
        levels[level] = levels.get(level, 0) + 1
    width = max((len(c) for c in lists.lists.values()), default=0)
    wider = {level: n for level, n in levels.items() if level != "leaf"}
    problems = []
    if wider:
        drawn = ", ".join(f"{n} from {level}" for level, n in sorted(wider.items()))
        problems.append(f"{sum(wider.values())} of {len(lists.lists)} products have fewer than {lists.n_negatives} other "
                        f"products in their leaf category; their negatives were drawn from wider categories instead ({drawn})")
    if width < lists.n_negatives + 1:
        problems.append(f"the test set is too small for {lists.n_negatives} negatives: each list holds {width} candidates")
    warning = "sample100 is easier than its name says: " + "; ".join(problems) + "." if problems else None
    return {"negatives_from": dict(sorted(levels.items())), "warning": warning}


def _shared_depth(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    depth = 0
    while depth < min(len(a), len(b)) and a[depth] == b[depth]:
        depth += 1
    return depth


def candidate_lists_for(inventory: Inventory, options: ProtocolOptions) -> CandidateLists:
    """The sample100 lists the protocol uses with these options (to save them for reuse)."""
    return options.candidate_lists or draw_candidate_lists(inventory, options.n_negatives, options.seed)


def seen_categories(catalog: Catalog | Sequence[Product]) -> set[str]:
    """Every category node of a (training) catalog."""
    return set(all_category_nodes(catalog))
