"""Hybrid search latency: each text-search mode (vector, lexical, hybrid) at 100k products.

The lexical side is real text: Myntra's product records (titles, attributes, category paths from
../shared/datasets/fashion-myntra/styles.csv, via the `myntra` reader) repeated until there are
`--products` of them, each copy perturbed (a word of its title dropped, its colour swapped for
another Myntra colour) so copies are not identical documents. The vector side is one random unit
vector per product (d=256; a random query encoder), which is all latency depends on there.
Queries are shopper-style phrases made from random products' labels ("navy blue shirts", "puma
men tshirt", "women casual heels"). Timings are single-threaded, end to end through
`SearchEngine.search_text` (entity recognition, both sides, fusion, boost, product loading).
Every such query names entities, so every mode takes 100 candidates a side for the entity boost;
"vector, no boost" is the vector mode with the boost off (k candidates), for reference.

Also: the lexical side's build time at that size, and an update (`add` + `commit`) of 100
products, which re-indexes every product's text (BM25's statistics are the whole catalog's).

    python benchmarks/bench_hybrid.py                       # 100k products, 300 queries per mode
    python benchmarks/bench_hybrid.py --products 20000      # quick

Results: benchmarks/results/bench_hybrid.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_hybrid.json"
STYLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "fashion-myntra" / "styles.csv"
DIM = 256


class RandomTextEncoder:
    """An `Encoder` whose text vectors are random but fixed per text (latency needs no model)."""

    model_id = "bench-random"
    dim = DIM
    vocabs = None

    def encode_texts(self, texts, entities=None):
        out = np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(DIM) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def myntra_products(path: Path) -> list:
    from catalogclip.catalog.readers import ReaderOptions, read_catalog

    return list(read_catalog("myntra", path, options=ReaderOptions(check_images=False)))


def perturbed(products: list, n: int, seed: int = 0) -> list:
    """`n` products: the originals, then perturbed copies (a title word dropped, colour swapped)."""
    rng = random.Random(seed)
    colours = sorted({p.attributes.get("baseColour") for p in products if p.attributes.get("baseColour")})
    out = list(products[:n])
    while len(out) < n:
        p = rng.choice(products)
        words = p.title.split()
        if len(words) > 2:
            del words[rng.randrange(len(words))]
        attributes = dict(p.attributes)
        old = attributes.get("baseColour")
        if old:
            attributes["baseColour"] = rng.choice(colours)
            words = [attributes["baseColour"] if w == old else w for w in words]
        out.append(replace(p, id=f"{p.id}-{len(out)}", title=" ".join(words), attributes=attributes))
    return out


def shopper_queries(products: list, n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    templates = [("baseColour", "category"), ("brand", "category"), ("gender", "category"), ("gender", "usage", "category"), ("category",)]
    queries = []
    while len(queries) < n:
        p, fields = rng.choice(products), rng.choice(templates)
        words = [p.category_path[-1] if f == "category" else p.attributes.get(f, "") for f in fields]
        if all(words):
            queries.append(" ".join(words).lower())
    return queries


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--styles", type=Path, default=STYLES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from catalogclip.search.engine import SearchEngine
    from catalogclip.search.fusion import FusionConfig
    from catalogclip.search.index import ProductIndex
    from catalogclip.search.lexical import LexicalIndex, LexicalParams

    products = perturbed(myntra_products(args.styles.resolve()), args.products)
    vectors = np.random.default_rng(0).standard_normal((len(products), DIM)).astype(np.float32)
    refs = [(i, 0) for i in range(len(products))]
    results: dict = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_before": os.getloadavg(),
                    "note": "a shared 2-core machine with other jobs running: compare modes within this run, not across runs"},
        "settings": {"products": len(products), "dim": DIM, "queries_per_mode": args.queries, "k": 10, "threads": 1,
                     "source": "Myntra styles.csv records, repeated with perturbed copies; random vectors"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        lexical = LexicalIndex.build(enumerate(products), LexicalParams())
        results["lexical_build_s"] = round(time.perf_counter() - started, 2)
        results["lexical_vocabulary"] = len(lexical.retriever.vocab_dict)
        started = time.perf_counter()
        index = ProductIndex.build(Path(tmp) / "idx", products, vectors, refs, model_id=RandomTextEncoder.model_id, catalog_root=tmp)
        results["index_build_s"] = round(time.perf_counter() - started, 2)
        engine = SearchEngine(index, RandomTextEncoder())
        unboosted = SearchEngine(index, RandomTextEncoder(), FusionConfig(boost=0.0))
        queries = shopper_queries(products, args.queries)
        for text in queries[:20]:  # warm caches (stemmer, SQLite pages)
            engine.search_text(text, 10, mode="hybrid")
        runs = {"vector": (engine, "vector"), "lexical": (engine, "lexical"), "hybrid": (engine, "hybrid"), "vector, no boost": (unboosted, "vector")}
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for text in queries:  # modes interleaved per query so load changes hit each alike
            for name, (searcher, mode) in runs.items():
                started = time.perf_counter()
                searcher.search_text(text, 10, mode=mode)
                timings[name].append((time.perf_counter() - started) * 1000)
        results["latency"] = {mode: percentiles(ms) for mode, ms in timings.items()}
        base = results["latency"]["vector"]["p50_ms"]
        results["p50_relative_to_vector"] = {mode: round(v["p50_ms"] / base, 2) for mode, v in results["latency"].items()}
        started = time.perf_counter()
        new = [replace(p, id=f"new-{i}") for i, p in enumerate(products[:100])]
        index.add(new, vectors[:100], [(i, 0) for i in range(100)])
        index.commit()
        results["update_100_products_s"] = round(time.perf_counter() - started, 2)
        results["example"] = {q: [h.product.title for h in engine.search_text(q, 3, mode="hybrid").hits] for q in queries[:3]}
    results["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
