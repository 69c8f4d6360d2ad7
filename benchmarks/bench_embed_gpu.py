"""Image-embedding throughput on a GPU: the project's path against bare loops of the same model.

The model is a `clip` method on an open_clip backbone (ViT-B-32 by default, random weights: the
speed does not depend on them), fp32, on `--device`. Variants, each over the same images:

  model-only   the forward pass alone on pixel tensors already on the device (the ceiling)
  bare         decode + preprocess + forward, batch by batch, in one thread
  bare-loader  the same fed by a torch DataLoader (`--workers` decoding processes, pinned memory)
  project      the project's embedding path as `index` and `embed` run it: `featurise` on the
               `local` engine with the method's `MethodImages`, as it runs by default (on more
               than 4 cores: decoder processes ahead of the model)
  project-threads    the same with decoder threads (one per core up to 8) instead of processes
  project-2-threads  the same with 2 decoder threads (the engine's default before this benchmark)

Each variant's features are compared with `bare`'s (min cosine). The first pass of each variant
is a warm-up (CUDA kernels, cuDNN autotuning, file cache) and is not timed.

    python benchmarks/bench_embed_gpu.py --device cuda [--images 4096] [--batch 256]

Results: benchmarks/results/bench_embed_gpu.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from catalogclip.catalog.synth import generate_catalog
from catalogclip.embed import MethodImages, embed_tower_outputs
from catalogclip.featurise.engines import ImageJob, LocalEngine, default_decode_processes, featurise
from catalogclip.featurise.runtime import min_cosine
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method, method_config
from catalogclip.train.data import load_rgb


class Decoded(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.transform(load_rgb(self.paths[k]))


def synced(device: torch.device, fn):
    """Seconds `fn()` took, the device synchronised before and after, and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def variants(method, paths: list[Path], batch: int, workers: int, device: torch.device) -> dict:
    transform = method.backbone.image_transform(train=False)

    @torch.no_grad()
    def embed(pixels: torch.Tensor) -> np.ndarray:
        """Tower then the method's head, the pieces `MethodImages` runs, without the engine around them."""
        return embed_tower_outputs(method, method.backbone.image_features(pixels.to(device, non_blocking=True)))

    def model_only() -> np.ndarray:
        pixels = torch.randn(batch, 3, *transform_size(method), device=device)
        return np.concatenate([embed(pixels) for _ in range(0, len(paths), batch)])

    def bare() -> np.ndarray:
        return np.concatenate([embed(torch.stack([transform(load_rgb(p)) for p in paths[i : i + batch]])) for i in range(0, len(paths), batch)])

    def bare_loader() -> np.ndarray:
        loader = torch.utils.data.DataLoader(Decoded(paths, transform), batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4)
        return np.concatenate([embed(pixels) for pixels in loader])

    def project(engine: LocalEngine) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            job = ImageJob(load_rgb, transform, MethodImages(method, runtime="torch"), batch)
            return featurise(job, paths, engine, progress=False)[0]

        return run

    return {"model-only": model_only, "bare": bare, "bare-loader": bare_loader,
            "project-2-threads": project(LocalEngine(decode_threads=2, decode_processes=0)),
            "project-threads": project(LocalEngine(decode_processes=0)), "project": project(LocalEngine())}


def transform_size(method) -> tuple[int, int]:
    size = method.backbone.preprocess.size
    return size, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="openclip:ViT-B-32")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="DataLoader processes of bare-loader")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-embed-gpu"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_embed_gpu.json")
    args = parser.parse_args()

    device = torch.device(args.device)
    catalog = generate_catalog(args.work / "catalog", n_products=-(-args.images // 3), seed=0)
    paths = sorted((catalog.parent / "images").glob("*"))[: args.images]
    torch.manual_seed(0)
    method = build_method("clip", BackboneConfig(spec=args.backbone), method_config("clip", {})).to(device).eval()
    results, reference = {}, None
    for name, run in variants(method, paths, args.batch, args.workers, device).items():
        run()  # warm-up
        seconds, rows = synced(device, run)
        results[name] = {"images_per_s": round(len(paths) / seconds, 1), "seconds": round(seconds, 3)}
        if name == "bare":
            reference = rows
        elif reference is not None and name != "model-only":
            results[name]["min_cosine_to_bare"] = round(min_cosine(reference, rows), 6)
        print(name, json.dumps(results[name]), flush=True)
    for name in ("bare", "bare-loader"):
        results["project"][f"over_{name}"] = round(results["project"]["images_per_s"] / results[name]["images_per_s"], 3)
    atomic_write_json(args.out, {
        "benchmark": "bench_embed_gpu",
        "command": "python " + " ".join(sys.argv),
        "settings": {"backbone": f"{args.backbone}, random weights, fp32", "method": "clip", "images": len(paths),
                     "image_files": "synthetic catalog images (PNG/JPEG)", "batch": args.batch,
                     "bare_loader_workers": args.workers, "project_decoders": {"threads": LocalEngine().decode_threads, "processes": default_decode_processes()}},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "results": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
