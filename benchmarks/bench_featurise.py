"""Featurisation speed of the twotower image tower (EfficientNet-Lite0): today's path vs the tuned ones.

Every variant runs in its own fresh process (glibc's allocator settings are process-wide and
sticky), the variants interleaved round by round, so each ratio compares runs taken side by side:

  today            the path before this work: decode + preprocess + PyTorch forward, batch by batch,
                   in one thread, default glibc allocator (what FeatureCache.fill did)
  bare-torch       the same bare loop after `tune_allocator()`
  cache-torch      the project's feature cache (`FeatureCache.fill`, local engine) on PyTorch
  bare-onnx        a bare decode + preprocess + ONNX Runtime loop, tuned allocator
  cache-onnx       the project's feature cache on ONNX Runtime
  cache-auto       the project's feature cache as it runs by default (runtime chosen on the first batch)
  index-auto       `catalogclip index`'s embedding step (`search.build.embed_images`) with a twotower run's
                   encoder (tower + projection head), as it runs by default

Timings cover the whole job after the model is built: opening the runtime (ONNX export, the
`auto` calibration), decoding, preprocessing, the forward pass and, for the project's paths,
writing the shards. Every variant's features are compared with today's (min cosine over images).

    python benchmarks/bench_featurise.py [--images 512] [--rounds 2] [--threads 2]

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


# --- one variant, in a fresh process ------------------------------------------------------------
def bare_loop(backbone, paths: list[Path], batch: int, tower) -> np.ndarray:
    from catalogclip.train.data import load_rgb

    transform = backbone.image_transform(train=False)
    import torch

    rows = [tower(torch.stack([transform(load_rgb(p)) for p in paths[i : i + batch]])) for i in range(0, len(paths), batch)]
    return np.concatenate(rows)


def run_variant(variant: str, paths: list[Path], batch: int, work: Path) -> tuple[float, np.ndarray, str]:
    import torch

    from catalogclip.featurise.allocator import tune_allocator
    from catalogclip.featurise.runtime import OnnxTower, TorchTower, TowerOutputs
    from catalogclip.train.data import load_rgb
    from catalogclip.train.featcache import FeatureCache

    method = untrained_clip()
    backbone = method.backbone
    if variant != "today":
        tune_allocator()
    start = time.perf_counter()
    runtime = ""
    if variant in ("today", "bare-torch"):
        tower = TorchTower(TowerOutputs(backbone))
        rows, runtime = bare_loop(backbone, paths, batch, tower), tower.name
    elif variant == "bare-onnx":
        tower = OnnxTower(TowerOutputs(backbone))
        rows, runtime = bare_loop(backbone, paths, batch, tower), tower.name
    elif variant.startswith("cache-"):
        cache = FeatureCache(work / variant, backbone, runtime=variant.split("-", 1)[1])
        rows = cache.fill(paths, load_rgb, batch_size=batch, progress=False).float().numpy()
        runtime = json.loads(next(cache.folder.glob("shard-*.json")).read_text())["runtime"]
    else:  # index-auto
        rows, runtime = index_vectors(method, paths, batch, work / variant)
    seconds = time.perf_counter() - start
    return len(paths) / seconds, rows, runtime


def untrained_clip():
    """`clip` on twotower with seeded heads: the same model in every process."""
    import torch

    from catalogclip.models.methods import build_method, method_config

    torch.manual_seed(0)
    return build_method("clip", "twotower", method_config("clip", {})).eval()


def index_vectors(method, paths: list[Path], batch: int, work: Path) -> tuple[np.ndarray, str]:
    """`index`'s embedding step with a method's `RunEncoder`."""
    from catalogclip.catalog.schema import Catalog, ImageRef, Product
    from catalogclip.embed import RunEncoder
    from catalogclip.search.build import embed_images

    catalog = Catalog([Product(id=str(i), title="x", images=[ImageRef(str(p))]) for i, p in enumerate(paths)], Path("/"))
    encoder = RunEncoder(method=method, model_id="bench")
    vectors, _ = embed_images(encoder, catalog, work, batch_size=batch, progress=False)
    # vectors are the projection of the features: compare the projections of today's features instead
    return vectors, "auto (the runtime is not recorded outside the feature cache)"


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    paths = [Path(line) for line in Path(args.paths_file).read_text().splitlines()]
    rate, rows, runtime = run_variant(args.worker, paths, args.batch, Path(args.work))
    np.save(args.rows_out, rows)
    print(json.dumps({"images_per_s": rate, "runtime": runtime}))


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
    parser.add_argument("--rounds", type=int, default=2)
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
    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    runtimes: dict[str, str] = {}
    rows: dict[str, np.ndarray] = {}
    loads = []
    for round_no in range(args.rounds):
        for variant in args.variants:
            loads.append(os.getloadavg()[0])
            out = work / f"{variant}-{round_no}.npy"
            command = [sys.executable, __file__, "--worker", variant, "--paths-file", str(paths_file), "--rows-out", str(out),
                       "--work", str(work / f"w{round_no}"), "--threads", str(args.threads), "--batch", str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rates[variant].append(result["images_per_s"])
            runtimes[variant] = result["runtime"]
            rows[variant] = np.load(out)
            print(f"round {round_no} {variant:12s} {result['images_per_s']:7.1f} img/s  ({result['runtime']}, load {loads[-1]:.2f})", flush=True)
    loads.append(os.getloadavg()[0])

    results = {}
    for variant in args.variants:
        per_round = [r / t for r, t in zip(rates[variant], rates["today"])] if "today" in rates else []
        reference = rows["today"]
        if variant == "index-auto":
            reference = projected(reference)
        entry = {
            "images_per_s": [round(r, 1) for r in rates[variant]],
            "runtime": runtimes[variant],
            "min_cosine_to_today": min_cosine(rows[variant], reference) if "today" in rows else None,
        }
        if per_round:
            entry["x_today_per_round"] = [round(x, 2) for x in per_round]
            entry["x_today"] = round(float(np.mean(per_round)), 2)
        bare = BARE_OF.get(variant)
        if bare in rates:
            vs = [r / b for r, b in zip(rates[variant], rates[bare])]
            entry[f"x_{bare}"] = round(float(np.mean(vs)), 3)
        results[variant] = entry
        print(variant, json.dumps(entry), flush=True)

    import onnxruntime
    import torch

    payload = {
        "benchmark": "bench_featurise",
        "command": "python " + " ".join(sys.argv),
        "settings": {"images": len(paths), "data": data, "batch_size": args.batch, "rounds": args.rounds,
                     "torch_threads": args.threads, "model": "twotower image tower (EfficientNet-Lite0, 224 px)",
                     "order": "variants interleaved within each round, each in a fresh process"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "load_average_1min": {"min": min(loads), "max": max(loads)},
                    "note": "2 CPU cores shared with other engineers' jobs: compare the ratios, taken side by side"},
        "results": results,
    }
    from catalogclip.io import atomic_write_json

    atomic_write_json(args.out, payload)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
