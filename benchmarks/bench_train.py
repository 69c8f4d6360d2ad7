"""Training throughput (pairs/s) of catalogclip's trainer against a minimal hand-written loop.

Cases, on the synthetic catalog:
  twotower-cached    frozen towers, image/text tower outputs from the feature cache (heads train)
  twotower-uncached  frozen towers run on every batch (images decoded and preprocessed each step)
  openclip-vit-b-32  open_clip ViT-B-32, random weights, whole model trained, batch 32

For each case the same model and batches run twice: through `catalogclip.train.trainer` (with
its logging, progress bar, schedule and checkpoint) and through a bare loop of batch assembly,
forward, loss, backward, clipping and AdamW step. Throughput is measured after warm-up steps.

    python benchmarks/bench_train.py [--cases ...] [--steps N]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from catalogclip.catalog.synth import generate_catalog
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.data import iterate_batches
from catalogclip.train.trainer import Trainer, parameter_groups

CASES = {
    "twotower-cached": dict(spec="twotower", cache=True, batch=64),
    "twotower-uncached": dict(spec="twotower", cache=False, batch=64),
    "openclip-vit-b-32": dict(spec="openclip:ViT-B-32", cache=True, batch=32),
}


def config_for(case: dict, catalog: Path, cache: Path, steps: int) -> RunConfig:
    return RunConfig(
        method="clip",
        backbone=BackboneConfig(spec=case["spec"]),
        data=DataConfig(catalog=str(catalog), feature_cache=str(cache), cache_features=case["cache"]),
        optim=OptimConfig(epochs=100, batch_size=case["batch"], max_steps=steps, warmup_steps=2, log_every=5,
                          checkpoint_every=10**6, device="cpu"),
    )


def trainer_rate(config: RunConfig, run_dir: Path, warmup: int) -> float:
    """Pairs/s of the trainer between the end of step `warmup` and the step before the last
    (the last one also writes the run's final checkpoint, a one-time cost)."""
    stamps: list[float] = []
    trainer = Trainer(config, run_dir, on_step=lambda step, record: stamps.append(time.perf_counter()), progress=True)
    trainer.fit()
    stamps = stamps[:-1]
    pairs = (len(stamps) - warmup) * config.optim.batch_size
    return pairs / (stamps[-1] - stamps[warmup - 1])


def hand_loop_rate(config: RunConfig, run_dir: Path, warmup: int) -> float:
    """The same model and batches through a minimal loop: no logging, schedule or checkpoint."""
    trainer = Trainer(config, run_dir, progress=False)
    method, data = trainer.setup()
    method.train()
    opt = config.optim
    optimizer = torch.optim.AdamW(parameter_groups(method, opt.lr, opt.head_lr, opt.weight_decay))
    stamps = []
    batches = iterate_batches(method, data, opt.batch_size, opt.seed, epoch=0)
    for _ in range(opt.max_steps):
        batch = next(batches, None)
        if batch is None:
            batches = iterate_batches(method, data, opt.batch_size, opt.seed, epoch=1)
            batch = next(batches)
        loss = method.loss(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), opt.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    stamps = stamps[:-1]  # the same window as the trainer's
    pairs = (len(stamps) - warmup) * opt.batch_size
    return pairs / (stamps[-1] - stamps[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--products", type=int, default=160)
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 8, 8], help="steps per case, in --cases order")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_train.json")
    args = parser.parse_args()

    torch.set_num_threads(2)
    catalog = generate_catalog(args.work / "catalog", n_products=args.products, seed=0)
    results = {}
    for case_name, steps in zip(args.cases, args.steps):
        case = CASES[case_name]
        config = config_for(case, catalog, args.work / "featcache", steps)
        ours = trainer_rate(config, args.work / f"{case_name}-trainer", args.warmup)
        bare = hand_loop_rate(config, args.work / f"{case_name}-loop", args.warmup)
        results[case_name] = {
            "trainer_pairs_per_s": round(ours, 2), "hand_loop_pairs_per_s": round(bare, 2),
            "trainer_over_loop": round(ours / bare, 3), "overhead_percent": round(100 * (bare / ours - 1), 1),
            "batch_size": case["batch"], "steps": steps, "warmup_steps": args.warmup, "feature_cache": case["cache"],
        }
        print(case_name, json.dumps(results[case_name]), flush=True)
    atomic_write_json(args.out, {
        "benchmark": "bench_train",
        "command": "python " + " ".join(sys.argv),
        "settings": {"catalog": f"synthetic, {args.products} products x 3 views, 224 px", "method": "clip", "device": "cpu"},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "note": "2 shared CPU cores; other jobs may have run at the same time"},
        "results": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
