"""Evaluation speed: the `full` protocol on random embeddings, chunked (ours) vs a naive full matrix.

    python benchmarks/bench_eval.py [--sizes 5000 10000 35000] [--naive-max 20000] [--dim 512]

n products with one image each and d-dimensional random unit vectors: I2T and T2I over n x n
candidates. "ours" is `catalogclip.evaluate.protocols.evaluate("full", ...)` (chunked matrix
products, ranks of the relevant items by counting). "naive" computes the whole n x n score matrix
and sorts every row of it (and of its transpose) with numpy. Each measurement runs in a fresh
process; peak memory is the peak of the bytes allocated (numpy arrays, via tracemalloc) while the
evaluation runs, on top of the embeddings themselves. The naive sort needs ~12 n^2 bytes, so it only runs up to --naive-max.
Both must give identical metrics where both run. Saves benchmarks/results/bench_eval.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_eval.json"
METRICS = ("R@1", "R@5", "R@10", "MRR")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _measured(work) -> dict:
    """Seconds and peak bytes allocated (numpy arrays are traced by tracemalloc) while `work` runs."""
    tracemalloc.start()
    start = time.perf_counter()
    metrics = work()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"seconds": seconds, "peak_alloc_bytes": peak, "process_peak_rss_bytes": _peak_rss_bytes(), "metrics": metrics}


def _embeddings(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, dim), dtype=np.float32)
    # noisy copies, cosine ~0.16 to their text: random pairs reach ~0.2 at 35k, so R@1 is neither 0 nor 1
    image = text + 6.0 * rng.standard_normal((n, dim), dtype=np.float32)
    for m in (text, image):
        m /= np.linalg.norm(m, axis=1, keepdims=True)
    return text, image


def run_ours(n: int, dim: int) -> dict:
    from catalogclip.catalog.schema import Catalog, ImageRef, Product
    from catalogclip.embeddings import Embeddings
    from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate

    text, image = _embeddings(n, dim)
    ids = np.array([f"p{i}" for i in range(n)])
    catalog = Catalog([Product(pid, pid, images=[ImageRef(f"{pid}.jpg")]) for pid in ids])
    emb = Embeddings(image, ids, np.full(n, "merchant"), np.array([f"{pid}.jpg" for pid in ids]), text, ids)
    inventory = Inventory.from_embeddings(emb, catalog)

    def work() -> dict:
        result = evaluate("full", inventory, EmbeddingScorer(emb, inventory), n_examples=0)
        return {t: {m: result["tasks"][t]["metrics"]["all"][m] for m in METRICS} for t in ("i2t", "t2i")}

    return _measured(work)


def run_naive(n: int, dim: int) -> dict:
    text, image = _embeddings(n, dim)

    def work() -> dict:
        scores = text @ image.T  # the whole n x n matrix
        metrics = {}
        for task, matrix in (("t2i", scores), ("i2t", scores.T)):
            order = np.argsort(-matrix, axis=1, kind="stable")  # full sort of every row
            ranks = np.argmax(order == np.arange(n)[:, None], axis=1) + 1  # the relevant item is the diagonal
            del order
            metrics[task] = {**{f"R@{k}": float((ranks <= k).mean()) for k in (1, 5, 10)}, "MRR": float((1 / ranks).mean())}
        return metrics

    return _measured(work)


def _in_child(kind: str, n: int, dim: int) -> dict:
    """One measurement in a fresh process, so that peak memory is its own."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(dim)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 35000])
    parser.add_argument("--naive-max", type=int, default=20000, help="largest n the naive method is run at")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, dim = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps((run_ours if kind == "ours" else run_naive)(n, dim)))
        return

    import torch

    rows = []
    for n in args.sizes:
        row = {"n": n, "load_average_1min_before": round(os.getloadavg()[0], 2), "ours": _in_child("ours", n, args.dim)}
        if n <= args.naive_max:
            row["naive"] = _in_child("naive", n, args.dim)
            row["speedup"] = row["naive"]["seconds"] / row["ours"]["seconds"]
            row["memory_ratio"] = row["naive"]["peak_alloc_bytes"] / row["ours"]["peak_alloc_bytes"]
            row["same_metrics"] = all(
                abs(row["ours"]["metrics"][t][m] - row["naive"]["metrics"][t][m]) < 1e-12 for t in ("i2t", "t2i") for m in METRICS
            )
        rows.append(row)
        naive = row.get("naive")
        print(f"n={n:>6}  ours {row['ours']['seconds']:7.2f} s  {row['ours']['peak_alloc_bytes'] / 2**30:5.2f} GiB"
              + (f"   naive {naive['seconds']:7.2f} s  {naive['peak_alloc_bytes'] / 2**30:5.2f} GiB"
                 f"   speedup x{row['speedup']:.1f}  memory /{row['memory_ratio']:.1f}  same metrics: {row['same_metrics']}"
                 if naive else "   naive: not run (memory)"), flush=True)
    report = {
        "benchmark": "full protocol (I2T + T2I) on random unit embeddings, one image per product",
        "command": "python benchmarks/bench_eval.py " + " ".join(sys.argv[1:]),
        "settings": {"dim": args.dim, "sizes": args.sizes, "naive_max": args.naive_max, "metrics": METRICS,
                     "ours": "catalogclip.evaluate.protocols.evaluate('full') with default chunk budget",
                     "naive": "full n x n score matrix + numpy stable argsort of every row, both directions"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "note": "timings taken on a shared machine (other engineers' jobs ran on the same 2 cores)"},
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
