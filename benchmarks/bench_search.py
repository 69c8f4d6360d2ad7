"""Search benchmark: index build throughput, query latency / QPS, ANN recall, and a loopback load test.

1. Build throughput: `catalogclip.search.build.build_index` on a synthetic catalog (images on
   disk -> model -> index), images/s, with the `tiny` backbone and, if its weights are
   installed, `twotower` (EfficientNet-Lite0 + MiniLM), both untrained (speed does not depend on training).
2. Vector index at 10k / 100k / 1M vectors (d=256, clustered random vectors: a mixture of
   Gaussians, so that nearest neighbours mean something, which they do not for uniform noise):
   build time, single-query latency p50/p99 and QPS for flat (exact), ivf and hnsw, and
   recall@10 of each ANN index against exact search; also with a selective (0.5%) and a
   broad (20%) filter, against exact search inside the filter.
3. Load test: the FastAPI service in a child process on 127.0.0.1, concurrent clients for a
   fixed time sending text / filtered / similar / product requests; errors (must be 0) and p50/p99.

    python benchmarks/bench_search.py                 # everything (about 10-15 minutes on 2 cores)
    python benchmarks/bench_search.py --sizes 10000   # quick

Results: benchmarks/results/bench_search.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_search.json"
DIM = 256


def machine() -> dict:
    import faiss
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "note": "timings taken on a shared 2-core machine while other engineers ran jobs: treat them as rough",
    }


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


# --- 1. build throughput ------------------------------------------------------------------------
def untrained_encoder(spec: str, seed: int = 0):
    import torch

    from catalogclip.embed import RunEncoder
    from catalogclip.models.backbones.base import BackboneConfig
    from catalogclip.models.methods import build_method

    torch.manual_seed(seed)
    method = build_method("clip", BackboneConfig(spec=spec))
    return RunEncoder(method=method, model_id=f"bench-{spec}")


def bench_build(work: Path, n_products: int) -> dict:
    from catalogclip.catalog.schema import read_jsonl
    from catalogclip.catalog.synth import generate_catalog
    from catalogclip.search.build import BuildOptions, build_index

    catalog = read_jsonl(generate_catalog(work / "catalog", n_products=n_products, views=2, image_size=224))
    n_images = sum(len(p.images) for p in catalog)
    out = {"products": n_products, "images": n_images, "image_size": 224}
    for spec in ("tiny", "twotower"):
        try:
            encoder = untrained_encoder(spec)
        except Exception as exc:  # twotower needs its pretrained weights packages
            out[spec] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        start = time.perf_counter()
        index = build_index(encoder, catalog, work / f"idx-{spec}", BuildOptions(progress=False, batch_size=32))
        seconds = time.perf_counter() - start
        out[spec] = {"seconds": round(seconds, 2), "images_per_s": round(n_images / seconds, 1), "kind": index.kind}
        print(f"build {spec}: {n_images} images in {seconds:.1f}s = {n_images / seconds:.1f} images/s")
    return out


# --- 2. vector index ----------------------------------------------------------------------------
def clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    # noise as large as the centres: clusters overlap, so neighbourhoods are not trivially one cluster
    x = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def time_queries(index, queries: np.ndarray, k: int, allowed=None) -> tuple[list[float], list[np.ndarray]]:
    ms, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = index.search(q, k, allowed)
        ms.append((time.perf_counter() - start) * 1000)
        found.append(ids)
    return ms, found


def recall(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / max(1, min(k, len(t))) for f, t in zip(found, truth)]))


def bench_vectors(sizes: list[int], kinds: list[str], n_queries: int, hnsw_max: int) -> list[dict]:
    import faiss

    from catalogclip.search.vectors import VectorIndex

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((1000, DIM), dtype=np.float32)
    rows = []
    for n in sizes:
        data = clustered(n, rng, centers)
        queries = clustered(n_queries, rng, centers)
        masks = {}
        for name, fraction in (("selective_0.5pct", 0.005), ("broad_20pct", 0.2)):
            mask = np.zeros(n, bool)
            mask[rng.choice(n, int(n * fraction), replace=False)] = True
            masks[name] = mask
        exact_truth: dict = {}
        for kind in kinds:
            if kind == "hnsw" and n > hnsw_max:
                rows.append({"n": n, "kind": kind, "skipped": f"hnsw build above {hnsw_max} vectors not run (build time)"})
                continue
            faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use every core
            start = time.perf_counter()
            index = VectorIndex.build(data, kind)
            build_s = time.perf_counter() - start
            faiss.omp_set_num_threads(1)  # one query at a time: threads only add contention (as in `serve`)
            row = {"n": n, "kind": kind, "build_s": round(build_s, 2), "vectors_per_s": round(n / build_s), "params": index.params.to_json()}
            ms, found = time_queries(index, queries, 10)
            row.update(percentiles(ms), qps=round(1000 / np.mean(ms), 1))
            if kind == "flat":
                exact_truth["all"] = found
                for name, mask in masks.items():
                    exact_truth[name] = [index.exact(q, np.flatnonzero(mask), 10)[1] for q in queries]
            else:
                row["recall@10"] = round(recall(found, exact_truth["all"], 10), 4)
            if kind == "ivf":  # what 4x the default breadth buys
                default, index.params.nprobe = index.params.nprobe, min(index.params.nlist, 4 * index.params.nprobe)
                ms4, found4 = time_queries(index, queries, 10)
                row[f"nprobe_{index.params.nprobe}"] = {**percentiles(ms4), "recall@10": round(recall(found4, exact_truth["all"], 10), 4)}
                index.params.nprobe = default
            for name, mask in masks.items():
                ms_f, found_f = time_queries(index, queries, 10, mask)
                row[name] = {**percentiles(ms_f), "recall@10": round(recall(found_f, exact_truth[name], 10), 4)}
            rows.append(row)
            print(json.dumps(row))
            del index
    return rows


# --- 3. load test -------------------------------------------------------------------------------
def serve_child(index_dir: str, port: int) -> None:
    """Child process: serve the benchmark index with the same (seeded) untrained encoder."""
    from catalogclip.search.engine import SearchEngine
    from catalogclip.search.index import ProductIndex
    from catalogclip.search.service import serve

    serve(SearchEngine(ProductIndex.open(index_dir), untrained_encoder("tiny")), "127.0.0.1", port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_load(index_dir: Path, clients: int, seconds: float) -> dict:
    import httpx

    port = free_port()
    child = subprocess.Popen([sys.executable, __file__, "--serve-child", str(index_dir), str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the service did not come up")
        ids = [p["id"] for p in httpx.get(f"{base}/search", params={"q": "shirt", "k": 50}).json()["results"]]
        words = ["black", "puma", "running", "shoes", "red", "striped", "shirt", "watch", "backpack", "denim", "leather", "women", "men"]
        requests = [
            lambda c, r: c.get("/search", params={"q": " ".join(r.choice(words, 3)), "k": 10}),
            lambda c, r: c.get("/search", params={"q": str(r.choice(words)), "k": 10, "filters": json.dumps({"colour": ["Black", "Red"]})}),
            lambda c, r: c.get(f"/products/{r.choice(ids)}/similar", params={"k": 10}),
            lambda c, r: c.get(f"/products/{r.choice(ids)}"),
        ]
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=base, timeout=30) as c:
                while time.monotonic() < stop:
                    start = time.perf_counter()
                    try:
                        response = requests[int(rng.integers(len(requests)))](c, rng)
                        status = response.status_code
                    except httpx.HTTPError as exc:
                        status = f"{type(exc).__name__}"
                    elapsed = (time.perf_counter() - start) * 1000
                    with lock:
                        latencies.append(elapsed)
                        if status != 200:
                            errors.append(str(status))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    finally:
        child.terminate()
        child.wait(30)
    out = {"clients": clients, "seconds": round(wall, 1), "requests": len(latencies), "errors": len(errors),
           "error_kinds": sorted(set(errors)), "qps": round(len(latencies) / wall, 1), **percentiles(latencies)}
    print("load:", json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest size an hnsw index is built for")
    parser.add_argument("--build-products", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-seconds", type=float, default=20)
    parser.add_argument("--serve-child", nargs=2, metavar=("INDEX", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        serve_child(args.serve_child[0], int(args.serve_child[1]))
        return
    settings = {k: v for k, v in vars(args).items() if k != "serve_child"} | {"dim": DIM, "k": 10}
    with tempfile.TemporaryDirectory() as tmp:
        build = bench_build(Path(tmp), args.build_products)
        load = bench_load(Path(tmp) / "idx-tiny", args.clients, args.load_seconds)
    vectors = bench_vectors(args.sizes, args.kinds, args.queries, args.hnsw_max)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "settings": settings, "build": build, "vector_index": vectors, "load_test": load}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
