"""CLIP-ITA on fashion-myntra: category-to-product retrieval at the three levels of its tree.

    python benchmarks/clipita_myntra.py [--myntra DIR] [--work /tmp/clipita_myntra] [--cache /tmp/featcache]
                                        [--epochs 10] [--prepare-only]

Table (the `category` protocol, all category nodes of the test products as queries, the test
products as candidates): BM25, MiniLM text-only, zero-shot twotower, CLIP-ITA I / IA / ITA (weighted
fusion) and ITA with MLP fusion, with P@1/5/10, mAP@5/10 and R-precision per tree level; once on a
split by product and once on a split holding out whole leaf categories (the "unseen" group there is
every held-out leaf). Also: ITA scored through its image vectors alone (what an image index holds).

The backbone is `twotower` with both towers frozen (only projection heads, the category head and the
fusion train). Tower outputs are read from the on-disk feature cache (`--cache`, shared by all runs
and reruns; the first run fills it), so embedding the test products does not run the towers again:
the same cached features the training used. Nothing is written into the repository but the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, all_category_nodes, read_jsonl, write_jsonl
from catalogclip.embed import embed_category_paths, embed_fused_products, product_image
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.baselines import text_baseline
from catalogclip.evaluate.protocols import CATEGORY_METRICS, PROTOCOLS, EmbeddingScorer, Inventory, ProtocolOptions, run_task, seen_categories
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.models.batch import Batch
from catalogclip.models.methods import Method, build_method
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.data import attribute_text, load_rgb, readable_images
from catalogclip.train.featcache import FeatureCache
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

RESULTS = Path(__file__).parent / "results" / "clipita_myntra.json"
MYNTRA = Path("/work/shared/datasets/fashion-myntra")
BACKBONE = BackboneConfig(spec="twotower", embed_dim=256)
MODELS = {  # name -> clipita options
    "CLIP-I": {"variant": "I"},
    "CLIP-IA": {"variant": "IA"},
    "CLIP-ITA": {"variant": "ITA"},
    "CLIP-ITA-mlp": {"variant": "ITA", "fusion": "mlp"},  # MLP fusion instead of the weighted sum
}


def machine() -> dict:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "note": "timings taken on a shared machine (2 cores, other engineers' jobs running)"}


def load_catalog(myntra: Path, work: Path) -> Catalog:
    """The canonical import of the dataset (made once, outside the repository)."""
    path = work / "catalog.jsonl"
    if not path.exists():
        from catalogclip.catalog.readers import read_catalog

        write_jsonl(read_catalog("myntra", myntra, ProblemLog()), path)
    return read_jsonl(path, image_root=myntra / "images")  # written outside the dataset's folder


def readable(catalog: Catalog) -> Catalog:
    """The products whose representative image decodes (the feature cache cannot hold the others)."""
    images = [catalog.image_path(product_image(p)) for p in catalog]
    ok = readable_images(images, ProblemLog())
    return catalog.with_products([p for p, good in zip(catalog, ok) if good])


def product_strings(catalog: Catalog) -> list[str]:
    """Every string the frozen text tower sees: titles, attribute texts, category nodes."""
    return [p.title for p in catalog] + [attribute_text(p) for p in catalog] + all_category_nodes(catalog)


def prepare(catalog: Catalog, cache: Path) -> dict:
    """Fill the feature cache: image features of every product image, text features of every string."""
    backbone = build_backbone(BACKBONE)
    images, texts = FeatureCache(cache, backbone, "features"), FeatureCache(cache, backbone, "text")
    paths = [catalog.image_path(product_image(p)) for p in catalog]
    strings = list(dict.fromkeys(product_strings(catalog)))
    todo = {"images": len(images.missing(paths)), "strings": len(texts.missing(strings))}
    started = time.perf_counter()
    images.fill(paths, load_rgb, batch_size=32)
    image_s = time.perf_counter() - started
    texts.fill(strings, batch_size=128)
    return {"computed": todo, "image_seconds": round(image_s, 1), "text_seconds": round(time.perf_counter() - started - image_s, 1)}


@torch.no_grad()
def cached_embeddings(method: Method, catalog: Catalog, cache: Path) -> Embeddings:
    """What `embed_catalog` makes (one representative image per product), from cached tower outputs."""
    method.eval()
    products = catalog.products
    paths = [catalog.image_path(product_image(p)) for p in products]
    features = FeatureCache(cache, method.backbone, "features").fill(paths, load_rgb, progress=False).float()
    titles = FeatureCache(cache, method.backbone, "text").fill([method.product_text(p) for p in products], progress=False).float()
    keys = torch.arange(len(products))
    image = method.embed_images(Batch(keys, [""] * len(products), image_features=features)).numpy()
    text = method.embed_texts(Batch(keys, [p.title for p in products], text_features=titles)).numpy()
    categories = all_category_nodes(catalog)
    fused = embed_fused_products(method, products, list(features)) if method.embed_products is not None else None
    ids = np.array([p.id for p in products], dtype=str)
    return Embeddings(image=image, image_product=ids, image_source=np.array(["merchant"] * len(ids)),
                      image_path=np.array([str(p) for p in paths]), text=text, text_product=ids,
                      category=embed_category_paths(method, categories), category_path=np.array(categories, dtype=str),
                      product=fused)


def category_table(inventory: Inventory, scorer, seen: set[str]) -> dict:
    """The `category` protocol with one group per tree level (and the unseen categories)."""
    task = PROTOCOLS.get("category")(inventory, ProtocolOptions(seen_categories=seen))[0]
    depth = np.array([node.count(" > ") + 1 for node in inventory.categories])
    levels = {f"level{d}": np.flatnonzero(depth == d) for d in sorted(set(depth.tolist()))}
    task = replace(task, groups={**levels, "unseen": task.groups["unseen"]})
    result = run_task(task, scorer, inventory, n_examples=0)
    return {"metrics": result["metrics"], "n_queries": result["n_queries_per_group"],
            "n_candidates": result["n_candidates"], "seconds": result["seconds"]}


def train_run(name: str, options: dict, catalog: Catalog, catalog_path: Path, split_by: str, work: Path, cache: Path, epochs: int) -> Path:
    run_dir = work / f"{split_by}-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = RunConfig(
        method="clipita",
        method_options=options,
        backbone=BACKBONE,
        data=DataConfig(catalog=str(catalog_path), image_root=str(catalog.image_roots[0]), split_by=split_by, test_fraction=0.2,
                        split_seed=0, feature_cache=str(cache)),
        optim=OptimConfig(epochs=epochs, batch_size=256, head_lr=1e-3, warmup_steps=20, log_every=20,
                          checkpoint_every=10**6, device="cpu", seed=0),
    )
    train(config, run_dir, progress=False)
    return run_dir


def evaluate_split(split_by: str, catalog: Catalog, catalog_path: Path, work: Path, cache: Path, epochs: int) -> dict:
    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name, options in MODELS.items():
        started = time.perf_counter()
        run_dir = train_run(name, options, catalog, catalog_path, split_by, work, cache, epochs)
        timings[f"train {name}"] = round(time.perf_counter() - started, 1)
        run = load_run(run_dir)
        full = read_jsonl(catalog_path, image_root=catalog.image_roots[0])
        ids = run.split_ids()
        train_side, test = full.subset(ids["train"]), full.subset(ids["test"])
        seen = seen_categories(train_side)
        method = run.method
        method.prime_text_features(product_strings(test), cache)
        emb = cached_embeddings(method, test, cache)
        inventory = Inventory.from_embeddings(emb, test)
        rows[name] = {**category_table(inventory, EmbeddingScorer(emb, inventory), seen), "learned": method.log_values()}
        if name == "CLIP-ITA":  # what an image index of this run would rank with: image vectors only
            image_only = replace(emb, product=None)
            rows["CLIP-ITA via image vectors"] = category_table(inventory, EmbeddingScorer(image_only, inventory), seen)
        print(f"[{split_by}] {name}: level3 mAP@10 {rows[name]['metrics']['level3']['mAP@10']:.3f} "
              f"({timings[f'train {name}']:.0f} s)", flush=True)
    inventory = Inventory.from_catalog(test)
    for name in ("bm25", "minilm"):
        started = time.perf_counter()
        rows[{"bm25": "BM25", "minilm": "MiniLM text-only"}[name]] = category_table(inventory, text_baseline(name, inventory), seen)
        timings[name] = round(time.perf_counter() - started, 1)
    torch.manual_seed(0)  # twotower's projection heads are random until trained
    zeroshot = build_method("clip", BACKBONE)
    emb = cached_embeddings(zeroshot, test, cache)
    inventory = Inventory.from_embeddings(emb, test)
    rows["zero-shot twotower"] = category_table(inventory, EmbeddingScorer(emb, inventory), seen)
    return {"n_train": len(train_side), "n_test": len(test), "rows": rows, "seconds": timings}


def ordering(split: dict, level: str, metric: str = "mAP@10") -> dict:
    """Does the paper's finding hold: ITA > IA > I, and multimodal > text-only, at `level`?"""
    value = {name: row["metrics"][level][metric] for name, row in split["rows"].items()}
    text_best = max(value["BM25"], value["MiniLM text-only"])
    multimodal = [value["CLIP-I"], value["CLIP-IA"], value["CLIP-ITA"]]
    return {
        "level": level,
        "metric": metric,
        "ITA > IA > I": value["CLIP-ITA"] > value["CLIP-IA"] > value["CLIP-I"],
        "CLIP-ITA > best text-only": value["CLIP-ITA"] > text_best,
        "every CLIP-ITA variant > best text-only": min(multimodal) > text_best,
        "values": {k: round(v, 4) for k, v in value.items()},
    }


def print_table(title: str, split: dict) -> None:
    levels = [g for g in next(iter(split["rows"].values()))["metrics"] if g.startswith("level") or g == "unseen"]
    print(f"\n{title} ({split['n_train']} train / {split['n_test']} test products)")
    for level in levels:
        n = next(iter(split["rows"].values()))["n_queries"][level]
        if not n:
            continue
        print(f"  {level} ({n} queries)" + "".join(f"{m:>12}" for m in CATEGORY_METRICS))
        for name, row in split["rows"].items():
            print(f"    {name:<30}" + "".join(f"{row['metrics'][level][m]:>12.3f}" for m in CATEGORY_METRICS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--myntra", type=Path, default=MYNTRA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipita_myntra"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/featcache"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-products", type=int, default=None,
                        help="Use the first N products of the import (the feature cache fills in that order).")
    parser.add_argument("--prepare-only", action="store_true", help="Only fill the feature cache.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; with cached features 1 is fastest on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    catalog = readable(load_catalog(args.myntra, args.work))
    catalog = catalog.with_products(catalog.products[: args.max_products])
    catalog_path = write_jsonl(catalog, args.work / "catalog.readable.jsonl")
    cache_fill = prepare(catalog, args.cache)
    print(f"feature cache ready: {cache_fill}", flush=True)
    if args.prepare_only:
        return
    splits = {by: evaluate_split(by, catalog, catalog_path, args.work, args.cache, args.epochs) for by in ("product", "leaf")}
    print_table("split by product", splits["product"])
    print_table("held-out leaf categories", splits["leaf"])
    findings = {"product split": ordering(splits["product"], "level3"),
                "leaf split (unseen leaves)": ordering(splits["leaf"], "unseen")}
    print(json.dumps(findings, indent=2))
    atomic_write_json(RESULTS, {
        "command": "python benchmarks/clipita_myntra.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "settings": {
            "dataset": str(args.myntra), "products": len(catalog), "max_products": args.max_products,
            "backbone": BACKBONE.__dict__,
            "models": MODELS, "epochs": args.epochs, "batch_size": 256, "head_lr": 1e-3, "test_fraction": 0.2,
            "split_seed": 0, "train_seed": 0, "metrics": CATEGORY_METRICS,
            "protocol": "category: queries = every node of the test products' paths, candidates = test products; "
                        "levelN = nodes at depth N; unseen = nodes absent from the training products",
            "features": "frozen towers, cached (float16) tower outputs of each product's representative image",
        },
        "feature_cache_fill": cache_fill,
        "splits": splits,
        "findings": findings,
        "total_seconds": round(time.perf_counter() - started, 1),
    })
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
