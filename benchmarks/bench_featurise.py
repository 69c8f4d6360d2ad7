"""Featurisation speed of the twotower image tower (EfficientNet-Lite0): today's path vs the tuned ones.

Every variant runs in its own persistent process (glibc's allocator settings are process-wide and
sticky); the images are cut into chunks and each chunk goes through every variant in turn, so the
ratios compare timings taken seconds apart on a machine whose load changes by the minute:

  today            the path before this work: decode + preprocess + PyTorch forward, batch by batch,
                   in one thread, default glibc allocator (what FeatureCache.fill did)
  bare-torch       the same bare loop after `tune_allocator()`
  cache-torch      the project's feature cache (`FeatureCache.fill`, local engine) on PyTorch
  bare-onnx        a bare decode + preprocess + ONNX Runtime loop, tuned allocator
  cache-onnx       the project's feature cache on ONNX Runtime
  cache-auto       the project's feature cache as it runs by default (runtime chosen on the first batch)
  index-auto       `catalogclip index`'s embedding step (`search.build.embed_images`) with a twotower run's
                   encoder (tower + projection head), as it runs by default

Each timed call covers decoding, preprocessing, the forward pass and, for the project's paths,
writing the shards; a variant's first call also opens its runtime (ONNX export, the `auto`
calibration) and is reported apart (`first_call_s`). Every variant's features are compared with
today's (min cosine over all images).

    python benchmarks/bench_featurise.py [--images 512] [--chunk 64] [--threads 2]

Results: benchmarks/results/bench_featurise.json.
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

RESULTS = Path(__file__).parent / "results" / "bench_featurise.json"
MYNTRA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "fashion-myntra" / "images"
VARIANTS = ["today", "bare-torch", "cache-torch", "bare-onnx", "cache-onnx", "cache-auto", "index-auto"]
#: bare loop each project path is held against (same runtime, same process settings)
BARE_OF = {"cache-torch": "bare-torch", "cache-onnx": "bare-onnx", "cache-auto": "bare-onnx", "index-auto": "bare-onnx"}


def image_paths(n: int, work: Path) -> tuple[list[Path], str]:
    """The first `n` Myntra images where the data set is here, else synthetic catalog images."""
    if MYNTRA.is_dir():
        paths = sorted(MYNTRA.glob("*.jpg"))[:n]
        if len(paths) == n:
            return paths, f"fashion-myntra, first {n} images (JPEG, 224 px)"
    from catalogclip.catalog.synth import generate_catalog

    catalog = generate_catalog(work / "synth", n_products=-(-n // 3), seed=0)
    paths = sorted((catalog.parent / "images").glob("*"))[:n]
    return paths, f"synthetic catalog, {n} images"


# --- one variant, in a persistent process --------------------------------------------------------
def bare_loop(backbone, paths: list[Path], batch: int, tower) -> np.ndarray:
    import torch

    from catalogclip.train.data import load_rgb

    transform = backbone.image_transform(train=False)
    rows = [tower(torch.stack([transform(load_rgb(p)) for p in paths[i : i + batch]])) for i in range(0, len(paths), batch)]
    return np.concatenate(rows)


def untrained_clip():
    """`clip` on twotower with seeded heads: the same model in every process."""
    import torch

    from catalogclip.models.methods import build_method, method_config

    torch.manual_seed(0)
    return build_method("clip", "twotower", method_config("clip", {})).eval()


def prepare(variant: str, batch: int, work: Path):
    """The variant's job for one chunk of images: paths -> (rows, what ran the model)."""
    from catalogclip.catalog.schema import Catalog, ImageRef, Product
    from catalogclip.embed import RunEncoder
    from catalogclip.featurise.allocator import tune_allocator
    from catalogclip.featurise.runtime import OnnxTower, TorchTower, TowerOutputs
    from catalogclip.search.build import embed_images
    from catalogclip.train.data import load_rgb
    from catalogclip.train.featcache import FeatureCache

    method = untrained_clip()
    backbone = method.backbone
    if variant != "today":
        tune_allocator()
    if variant.startswith("bare-") or variant == "today":
        tower = OnnxTower(TowerOutputs(backbone)) if variant == "bare-onnx" else TorchTower(TowerOutputs(backbone))
        return lambda paths, k: (bare_loop(backbone, paths, batch, tower), tower.name)
    if variant.startswith("cache-"):
        cache = FeatureCache(work / variant, backbone, runtime=variant.split("-", 1)[1])

        def fill(paths, k):
            rows = cache.fill(paths, load_rgb, batch_size=batch, progress=False).float().numpy()
            return rows, cache.forward.open(None).name
        return fill
    encoder = RunEncoder(method=method, model_id="bench")

    def index(paths, k):  # `index`'s embedding step over the chunk as a catalog
        catalog = Catalog([Product(id=str(i), title="x", images=[ImageRef(str(p))]) for i, p in enumerate(paths)], Path("/"))
        vectors, _ = embed_images(encoder, catalog, work / f"{variant}-{k}", batch_size=batch, progress=False)
        return vectors, encoder.image_job().forward.tower.open(None).name
    return index


def worker(args: argparse.Namespace) -> None:
    """Loads the model, then featurises the chunk numbers it reads from stdin, timing each."""
    import torch

    torch.set_num_threads(args.threads)
    paths = [Path(line) for line in Path(args.paths_file).read_text().splitlines()]
    chunks = [paths[i : i + args.chunk] for i in range(0, len(paths), args.chunk)]
    run = prepare(args.worker, args.batch, Path(args.work))
    print("ready", flush=True)
    outputs = []
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        k = int(line)
        start, cpu_start = time.perf_counter(), time.process_time()
        rows, runtime = run(chunks[k], k)
        print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start, "runtime": runtime}), flush=True)
        outputs.append(rows)
    np.save(args.rows_out, np.concatenate(outputs))


# --- the driver ----------------------------------------------------------------------------------
def projected(features: np.ndarray) -> np.ndarray:
    """Today's features through the same untrained clip head `index-auto` uses (seeded identically)."""
    import torch

    from catalogclip.embed import embed_tower_outputs

    return embed_tower_outputs(untrained_clip(), torch.from_numpy(features))


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    from catalogclip.featurise.runtime import min_cosine as cosine

    return round(cosine(a, b), 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=64, help="images per timed call; the first call of each variant is its warm-up")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--rows-out", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    work = Path(tempfile.mkdtemp(prefix="bench-featurise-"))
    paths, data = image_paths(args.images, work)
    paths_file = work / "paths.txt"
    paths_file.write_text("".join(f"{p.resolve()}\n" for p in paths))
    workers = {
        variant: subprocess.Popen(
            [sys.executable, __file__, "--worker", variant, "--paths-file", str(paths_file), "--rows-out", str(work / f"{variant}.npy"),
             "--work", str(work / variant), "--threads", str(args.threads), "--batch", str(args.batch), "--chunk", str(args.chunk)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for variant in args.variants
    }
    for variant, proc in workers.items():
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"{variant} did not start")
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    cpu_seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    runtimes: dict[str, str] = {}
    loads = [os.getloadavg()[0]]
    n_chunks = -(-len(paths) // args.chunk)
    for k in range(n_chunks):
        order = args.variants[k % len(args.variants):] + args.variants[: k % len(args.variants)]  # rotate: no fixed position
        for variant in order:
            proc = workers[variant]
            proc.stdin.write(f"{k}\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            seconds[variant].append(answer["seconds"])
            cpu_seconds[variant].append(answer["cpu_seconds"])
            runtimes[variant] = answer["runtime"]
        loads.append(os.getloadavg()[0])
        print(f"chunk {k}: " + ", ".join(f"{v} {args.chunk / seconds[v][-1]:.1f}" for v in args.variants) + f" img/s (load {loads[-1]:.2f})", flush=True)
    for proc in workers.values():
        proc.stdin.write("quit\n")
        proc.stdin.close()
        proc.wait()
    rows = {v: np.load(work / f"{v}.npy") for v in args.variants}

    results = {}
    steady = {v: (len(paths) - args.chunk) / sum(seconds[v][1:]) for v in args.variants}  # after each variant's first call
    # CPU time (all threads) per image: what the work costs, whatever share of the cores the scheduler gave the process
    cpu_ms = {v: 1000 * sum(cpu_seconds[v][1:]) / (len(paths) - args.chunk) for v in args.variants}
    for variant in args.variants:
        entry = {"images_per_s": round(steady[variant], 2), "cpu_ms_per_image": round(cpu_ms[variant], 1),
                 "first_call_s": round(seconds[variant][0], 2), "runtime": runtimes[variant]}
        if "today" in steady:
            entry["cpu_x_today"] = round(cpu_ms["today"] / cpu_ms[variant], 2)
            per_chunk = [t / s for s, t in zip(seconds[variant][1:], seconds["today"][1:])]
            reference = projected(rows["today"]) if variant == "index-auto" else rows["today"]
            entry.update(x_today=round(steady[variant] / steady["today"], 2),
                         x_today_per_chunk={"min": round(min(per_chunk), 2), "median": round(float(np.median(per_chunk)), 2), "max": round(max(per_chunk), 2)},
                         min_cosine_to_today=min_cosine(rows[variant], reference))
        bare = BARE_OF.get(variant)
        if bare in steady:
            entry[f"x_{bare}"] = round(steady[variant] / steady[bare], 3)
        results[variant] = entry
        print(variant, json.dumps(entry), flush=True)

    import onnxruntime
    import torch

    from catalogclip.io import atomic_write_json

    atomic_write_json(args.out, {
        "benchmark": "bench_featurise",
        "command": "python " + " ".join(sys.argv),
        "settings": {"images": len(paths), "data": data, "chunk": args.chunk, "batch_size": args.batch, "torch_threads": args.threads,
                     "model": "twotower image tower (EfficientNet-Lite0, 224 px); index-auto adds an untrained clip projection head",
                     "order": "one persistent process per variant; each chunk of images goes through every variant in turn (rotating order)",
                     "images_per_s": "steady rate over all chunks after each variant's first (warm-up) call",
                     "cpu_ms_per_image": "process CPU time (all threads) per image over the same chunks; on a loaded machine a process "
                                         "with more runnable threads gets a larger share of the cores, which wall-clock ratios include "
                                         "and CPU-time ratios do not"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "load_average_1min": {"min": min(loads), "max": max(loads)},
                    "note": "2 CPU cores shared with other engineers' jobs: compare the ratios, taken side by side"},
        "results": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
