"""Scaling benchmark. Each part writes its own JSON under benchmarks/results/.

Part `vectors` (bench_scale_vectors.json): the vector-store backends at 100k and 1M product
vectors (d=256, the clustered vectors of bench_search.py, one image per product, a `brand`
attribute with 200 values so that `brand=b0` keeps 0.5% of the products):

1. exact search on FAISS: single-query latency p50/p99 for fp32 and fp16 storage on one thread,
   against the memory-bandwidth bound measured on the same machine in the same run (one pass
   over the stored vector bytes with numpy, one thread); and the cost per query when a batch of
   concurrent queries is scanned together (`ProductIndex.search_many`);
2. Milvus Lite vs FAISS through `ProductIndex` (so filters take each backend's real path:
   a SQLite mask for FAISS, a Milvus expression for Milvus): latency p50/p99 and recall@10 against
   FAISS exact, with and without the selective filter, for exact (flat) and compressed kinds;
3. compressed indexes on FAISS: bytes per index and recall@10 against exact.

    python benchmarks/bench_scale.py --part vectors                      # 100k and 1M (long)
    python benchmarks/bench_scale.py --part vectors --sizes 100000       # quicker
    python benchmarks/bench_scale.py --part vectors --sizes 1000000 --milvus-kinds --out bench_scale_vectors_1m.json

Part `ray` (bench_scale_ray.json): featurisation throughput of the embedding engines, the
twotower image tower filling a feature cache (decode, preprocess, forward, shards): the `local`
engine (one process) against the `ray` engine on a local Ray with 1 and 2 model actors. Each
variant runs in a fresh process, variants interleaved round by round; Ray's start-up (`ray.init`)
is outside the timing, its actors' start-up (model load, runtime calibration) inside it; the
steady rate runs from the first batch written to the last (shards of one batch here). On one
machine Ray cannot be faster than the cores it has: the ratio says what the engine costs here,
and the actor pool is what spreads the same job over a cluster's machines.

    python benchmarks/bench_scale.py --part ray [--images 256] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_search import DIM, clustered, machine, percentiles, recall  # noqa: E402

RESULTS = Path(__file__).parent / "results"
N_BRANDS = 200


# --- part `vectors` -------------------------------------------------------------------------------
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def read_pass_ms(data: np.ndarray) -> float:
    """One single-thread pass reading every byte of `data` once (an integer sum over it)."""
    words = data.reshape(-1).view(np.int64)
    start = time.perf_counter()
    words.sum()
    return (time.perf_counter() - start) * 1000


def timed(search, queries) -> tuple[list[float], list]:
    ms, found = [], []
    for q in queries:
        start = time.perf_counter()
        found.append(search(q))
        ms.append((time.perf_counter() - start) * 1000)
    return ms, found


def product_ids(hits) -> np.ndarray:
    return np.asarray([int(h.product.id) for h in hits])


def exact_faiss(data: np.ndarray, queries: np.ndarray, batch: int) -> dict:
    """fp32 / fp16 flat search on one thread against the memory-bandwidth bound, measured
    interleaved (a read pass, then a query, and so on) so that both see the same machine load;
    and the cost per query when `batch` concurrent queries are scanned together."""
    import faiss

    from catalogclip.search.vectors import VectorIndex

    out = {}
    for kind, stored in (("flat", data), ("flat_fp16", data.astype(np.float16))):
        index = VectorIndex.build(data, kind)
        faiss.omp_set_num_threads(1)
        bound, ms = [], []
        for q in queries:
            bound.append(read_pass_ms(stored))
            start = time.perf_counter()
            index.search(q, 10)
            ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        for i in range(0, len(queries), batch):
            index.search_many(queries[i : i + batch], 10)
        batched = (time.perf_counter() - start) * 1000 / len(queries)
        p, b = percentiles(ms), percentiles(bound)
        out[kind] = {
            "query": {**p, "min_ms": round(min(ms), 3)},
            "bandwidth_bound": {**b, "min_ms": round(min(bound), 3), "gb_per_s_at_min": round(stored.nbytes / min(bound) / 1e6, 1)},
            "p50_over_bound_p50": round(p["p50_ms"] / b["p50_ms"], 3), "min_over_bound_min": round(min(ms) / min(bound), 3),
            "stored_bytes": int(stored.nbytes), "index_bytes": index.nbytes,
            f"batched_{batch}_ms_per_query": round(batched, 3), "batched_speedup_per_query_vs_p50": round(p["p50_ms"] / batched, 2),
            "load_average": load_average(),
        }
        print(kind, json.dumps(out[kind]))
        del index
    return out


def compressed_faiss(data: np.ndarray, queries: np.ndarray, truth: list[np.ndarray], params) -> dict:
    from dataclasses import replace

    from catalogclip.search.vectors import VectorIndex

    out = {}
    for kind in ("flat", "flat_fp16", "ivf", "ivf_sq8", "ivf_pq", "hnsw"):
        if kind == "hnsw" and len(data) > 200_000:
            out[kind] = {"skipped": "hnsw build above 200k vectors not run here (build time on 2 cores)"}
            continue
        start = time.perf_counter()
        index = VectorIndex.build(data, kind, replace(params))
        build_s = time.perf_counter() - start
        ms, found = timed(lambda q: index.search(q, 10)[1], queries)
        out[kind] = {"bytes": index.nbytes, "bytes_per_vector": round(index.nbytes / len(data), 1), "build_s": round(build_s, 1),
                     "recall@10": round(recall(found, truth, 10), 4), **percentiles(ms), "params": index.params.to_json()}
        print("faiss", kind, json.dumps(out[kind]))
        del index
    return out


def synthetic_products(n: int):
    from catalogclip.catalog.schema import ImageRef, Product

    return [Product(str(i), f"p{i}", images=[ImageRef(f"{i}.jpg")], attributes={"brand": f"b{i % N_BRANDS}"}, category_path=["All"]) for i in range(n)]


def backends_compared(work: Path, data: np.ndarray, queries: np.ndarray, kinds: list[str], params) -> dict:
    """FAISS vs Milvus Lite through ProductIndex, unfiltered and with brand=b0 (0.5%)."""
    from dataclasses import replace

    from catalogclip.search.backend import Connection
    from catalogclip.search.index import ProductIndex

    products = synthetic_products(len(data))
    refs = [(i, 0) for i in range(len(data))]
    selective = {"brand": "b0"}
    out: dict = {}
    truth: dict = {}
    # faiss exact first: it is the truth (compressed faiss kinds: see `compressed_faiss`)
    runs = [("faiss", "flat", None)] + [("milvus", k, Connection("milvus", str(work / "milvus.db"), collection=k)) for k in kinds]
    for backend, kind, connection in runs:
        if kind == "hnsw" and len(data) > 200_000:
            out[f"{backend}-{kind}"] = {"skipped": "hnsw build above 200k vectors not run here (build time on 2 cores)"}
            continue
        start = time.perf_counter()
        index = ProductIndex.build(
            work / f"{backend}-{kind}", products, data, refs, model_id="bench", catalog_root=work, kind=kind, params=replace(params), connection=connection
        )
        row = {"build_s": round(time.perf_counter() - start, 1), "load_average": load_average()}
        for name, raw in (("unfiltered", None), ("brand_0.5pct", selective)):
            clauses = index.parse_filters(raw)
            ms, found = timed(lambda q: product_ids(index.search(q, 10, clauses)), queries)
            truth.setdefault(name, found)  # the first run, faiss exact, is the truth
            row[name] = {**percentiles(ms), "recall@10_vs_faiss_exact": round(recall(found, truth[name], 10), 4)}
        if "recall_at_10" in index.info:
            row["recall_reported_by_index"] = index.info["recall_at_10"]
        out[f"{backend}-{kind}"] = row
        print(backend, kind, json.dumps(row))
        index.close()
    return out


def bench_vectors(sizes: list[int], n_queries: int, kinds: list[str], batch: int, nlist: int, save) -> None:
    """Every size's figures, saved (`save(rows)`) as soon as that size is done."""
    import faiss

    from catalogclip.search.backend import VectorParams

    params = VectorParams(nlist=nlist)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, DIM), dtype=np.float32)
    rows: list[dict] = []
    for n in sizes:
        data = clustered(n, rng, centers)
        queries = clustered(n_queries, rng, centers)
        _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
        row = {"n": n, "dim": DIM, "queries": n_queries}
        row["exact_faiss"] = exact_faiss(data, queries, batch)
        row["compressed_faiss"] = compressed_faiss(data, queries, list(truth), params)
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            row["faiss_vs_milvus_lite"] = backends_compared(Path(tmp), data, queries, kinds, params)
        rows.append(row)
        save(rows)


def run_vectors(args) -> None:
    import milvus_lite
    import pymilvus

    settings = {"sizes": args.sizes, "queries": args.queries, "milvus_kinds": args.milvus_kinds, "batch": args.batch, "k": 10, "nlist": args.nlist,
                "brands": N_BRANDS, "threads_per_single_query": 1, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}
    out = RESULTS / args.out

    def save(rows: list[dict]) -> None:
        versions = {"pymilvus": pymilvus.__version__, "milvus_lite": milvus_lite.__version__, "load_average_end": load_average()}
        result = {"machine": {**machine(), **versions}, "settings": settings, "sizes": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {out}")

    bench_vectors(args.sizes, args.queries, args.milvus_kinds, args.batch, args.nlist, save)


# --- part `ray` ----------------------------------------------------------------------------------
RAY_VARIANTS = {"local": None, "ray-1-worker": 1, "ray-2-workers": 2}


class Stamped:
    """An engine around another that notes when each shard (here: each batch) reaches the sink."""

    def __init__(self, inner) -> None:
        self.inner, self.stamps, self.rows = inner, [], []

    def run(self, job, shards, sink, progress=True):
        def stamped(result):
            sink(result)
            self.stamps.append(time.perf_counter())
            self.rows.append(len(result.shard.paths))

        self.inner.run(job, shards, stamped, progress)


def ray_part_variant(variant: str, paths: list[Path], batch: int, threads: int, work: Path) -> tuple[dict, np.ndarray]:
    """Images/s of one engine filling a fresh feature cache (whole job, and steady: from the first
    batch written to the last), and the rows it cached."""
    import torch

    from catalogclip.featurise.engines import make_engine
    from catalogclip.models.backbones.base import build_backbone
    from catalogclip.train.data import load_rgb
    from catalogclip.train.featcache import FeatureCache

    torch.set_num_threads(threads)
    workers = RAY_VARIANTS[variant]
    engine = make_engine("local")
    if workers is not None:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        engine = make_engine("ray", workers=workers, cpus_per_worker=max(1, threads // workers))
    engine = Stamped(engine)
    backbone = build_backbone("twotower").eval()
    start = time.perf_counter()
    cache = FeatureCache(work / variant, backbone, shard_rows=batch, engine=engine)
    rows = cache.fill(paths, load_rgb, batch_size=batch, progress=False)
    whole = len(paths) / (time.perf_counter() - start)
    steady = (len(paths) - engine.rows[0]) / (engine.stamps[-1] - engine.stamps[0])
    return {"images_per_s": whole, "steady_images_per_s": steady}, rows.float().numpy()


def run_ray_part(args: argparse.Namespace) -> None:
    from bench_featurise import image_paths

    work = Path(tempfile.mkdtemp(prefix="bench-scale-ray-"))
    paths, data = image_paths(args.images, work)
    paths_file = work / "paths.txt"
    paths_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
    rates: dict[str, list[float]] = {v: [] for v in RAY_VARIANTS}
    steady: dict[str, list[float]] = {v: [] for v in RAY_VARIANTS}
    rows: dict[str, np.ndarray] = {}
    loads = []
    for round_no in range(args.rounds):
        for variant in RAY_VARIANTS:
            loads.append(os.getloadavg()[0])
            out = work / f"{variant}-{round_no}.npy"
            command = [sys.executable, __file__, "--part", "ray", "--worker", variant, "--paths-file", str(paths_file),
                       "--rows-out", str(out), "--work", str(work / f"w{round_no}"), "--threads", str(args.threads), "--image-batch", str(args.image_batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            answer = json.loads(done.stdout.strip().splitlines()[-1])
            rates[variant].append(answer["images_per_s"])
            steady[variant].append(answer["steady_images_per_s"])
            rows[variant] = np.load(out)
            print(f"round {round_no} {variant:14s} {rates[variant][-1]:7.1f} img/s, steady {steady[variant][-1]:7.1f} (load {loads[-1]:.2f})", flush=True)
    loads.append(os.getloadavg()[0])
    results = {}
    for variant, values in rates.items():
        results[variant] = {
            "images_per_s": [round(v, 1) for v in values],
            "x_local": round(float(np.mean([v / l for v, l in zip(values, rates["local"])])), 3),
            "steady_images_per_s": [round(v, 1) for v in steady[variant]],
            "steady_x_local": round(float(np.mean([v / l for v, l in zip(steady[variant], steady["local"])])), 3),
            "max_abs_diff_to_local": float(np.abs(rows[variant] - rows["local"]).max()),
        }
        print(variant, json.dumps(results[variant]), flush=True)
    import ray
    import torch

    from catalogclip.io import atomic_write_json

    atomic_write_json(RESULTS / "bench_scale_ray.json", {
        "benchmark": "bench_scale --part ray",
        "command": "python " + " ".join(sys.argv),
        "settings": {"images": len(paths), "data": data, "batch_size": args.image_batch, "rounds": args.rounds, "threads": args.threads,
                     "model": "twotower image tower (EfficientNet-Lite0), runtime auto, feature cache fill",
                     "ray": f"local Ray, {os.cpu_count()} CPUs; a worker = one model actor with threads / workers threads"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "ray": ray.__version__,
                    "load_average_1min": {"min": min(loads), "max": max(loads)},
                    "note": "2 CPU cores shared with other engineers' jobs: compare the ratios, taken side by side"},
        "results": results,
    })
    print(f"-> {RESULTS / 'bench_scale_ray.json'}")


def ray_worker(args: argparse.Namespace) -> None:
    paths = [Path(line) for line in Path(args.paths_file).read_text().splitlines()]
    rates, rows = ray_part_variant(args.worker, paths, args.image_batch, args.threads, Path(args.work))
    np.save(args.rows_out, rows)
    print(json.dumps(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["vectors", "ray"], default="vectors")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--milvus-kinds", nargs="*", default=["flat", "ivf_sq8", "hnsw"], help="none: faiss only")
    parser.add_argument("--batch", type=int, default=64, help="concurrent queries scanned together")
    parser.add_argument("--out", default="bench_scale_vectors.json", help="results file name under benchmarks/results/")
    parser.add_argument("--nlist", type=int, default=1024, help="ivf lists (fewer than the default 4 sqrt(n) at 1M: k-means time on 2 cores)")
    parser.add_argument("--images", type=int, default=256, help="ray: images to featurise")
    parser.add_argument("--rounds", type=int, default=2, help="ray: interleaved rounds")
    parser.add_argument("--image-batch", type=int, default=32, help="ray: images per model call")
    parser.add_argument("--threads", type=int, default=2, help="ray: compute threads in all (split among the actors)")
    parser.add_argument("--worker", choices=list(RAY_VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "ray":
        ray_worker(args) if args.worker else run_ray_part(args)
    if args.part == "vectors":
        run_vectors(args)


if __name__ == "__main__":
    main()
