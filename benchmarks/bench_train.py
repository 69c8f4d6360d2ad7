"""Training throughput (pairs/s) of catalogclip's trainer against a minimal hand-written loop.

Cases, on the synthetic catalog:
  twotower-cached    frozen towers, image/text tower outputs from the feature cache (heads train)
  twotower-uncached  frozen towers run on every batch (images decoded and preprocessed each step)
  openclip-vit-b-32  open_clip ViT-B-32, random weights, whole model trained, batch 32
  openclip-vit-b-32-bf16-256  the same at batch 256 in bf16 autocast, with augmentation: the GPU case
                              (images decoded by the trainer's loader workers, `--device cuda`)
  openclip-vit-b-32-bf16-256-noaug  the same with the eval preprocessing only (cheaper to decode)

With `--repeats N` the trainer and the bare loop alternate N times each and medians are reported
(a data-bound GPU run varies from run to run).

For each case the same model and batches run twice: through `catalogclip.train.trainer` (with
its logging, progress bar, schedule and checkpoint) and through a bare loop of batch assembly,
forward, loss, backward, clipping and AdamW step (bf16 autocast where the trainer uses it), fed by
the same loader. Throughput is measured between the end of the warm-up steps and the step before the
last, the device synchronised at both ends.

    python benchmarks/bench_train.py [--cases ...] [--steps N] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from catalogclip.catalog.synth import generate_catalog
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.data import iterate_batches, loader_workers
from catalogclip.train.trainer import Trainer, parameter_groups, resolve_device

CASES = {
    "twotower-cached": dict(spec="twotower", cache=True, batch=64),
    "twotower-uncached": dict(spec="twotower", cache=False, batch=64),
    "openclip-vit-b-32": dict(spec="openclip:ViT-B-32", cache=True, batch=32),
    "openclip-vit-b-32-bf16-256": dict(spec="openclip:ViT-B-32", cache=True, batch=256, augment=True),
    "openclip-vit-b-32-bf16-256-noaug": dict(spec="openclip:ViT-B-32", cache=True, batch=256),
}


def config_for(case: dict, catalog: Path, cache: Path, steps: int, device: str) -> RunConfig:
    return RunConfig(
        method="clip",
        backbone=BackboneConfig(spec=case["spec"], augment=case.get("augment", False)),
        data=DataConfig(catalog=str(catalog), feature_cache=str(cache), cache_features=case["cache"]),
        optim=OptimConfig(epochs=100, batch_size=case["batch"], max_steps=steps, warmup_steps=2, log_every=5,
                          checkpoint_every=10**6, device=device),
    )


class Window:
    """Wall time from the end of step `warmup` to the end of step `last` (the step before the final
    one, which also writes the run's checkpoint), the device synchronised at both ends only."""

    def __init__(self, device: torch.device, warmup: int, last: int) -> None:
        self.device, self.warmup, self.last = device, warmup, last
        self.stamps: dict[int, float] = {}

    def __call__(self, step: int, record: dict | None = None) -> None:
        if step in (self.warmup, self.last):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps[step] = time.perf_counter()

    def pairs_per_s(self, batch_size: int) -> float:
        return (self.last - self.warmup) * batch_size / (self.stamps[self.last] - self.stamps[self.warmup])


def trainer_rate(config: RunConfig, run_dir: Path, warmup: int) -> float:
    """Pairs/s of the trainer, with its logging, progress bar, schedule and checkpoints."""
    device = resolve_device(config.optim.device)
    window = Window(device, warmup, config.optim.max_steps - 1)
    Trainer(config, run_dir, on_step=window, progress=True).fit()
    return window.pairs_per_s(config.optim.batch_size)


def hand_loop_rate(config: RunConfig, run_dir: Path, warmup: int) -> float:
    """The same model and batches through a minimal loop: no logging, schedule or checkpoint."""
    trainer = Trainer(config, run_dir, progress=False)
    method, data = trainer.setup()
    method.train()
    opt = config.optim
    optimizer = torch.optim.AdamW(parameter_groups(method, opt.lr, opt.head_lr, opt.weight_decay))
    window = Window(trainer.device, warmup, opt.max_steps - 1)
    workers = loader_workers(config.data.loader_workers, data, trainer.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=trainer.device.type == "cuda" and opt.amp)
    step, epoch = 0, 0
    while step < opt.max_steps:
        for batch in iterate_batches(method, data, opt.batch_size, opt.seed, epoch, workers=workers):
            with autocast:
                loss = method.loss(batch.to(trainer.device))["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), opt.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window(step)
            if step == opt.max_steps:
                break
        epoch += 1
    return window.pairs_per_s(opt.batch_size)


def machine(device: str) -> dict:
    facts = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "load_average": os.getloadavg()}
    if device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=[c for c in CASES if "bf16" not in c], choices=list(CASES))
    parser.add_argument("--products", type=int, default=160)
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 8, 8, 8], help="steps per case, in --cases order")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of the trainer and the bare loop per case")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_train.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    catalog = generate_catalog(args.work / "catalog", n_products=args.products, seed=0)
    results = {}
    for case_name, steps in zip(args.cases, args.steps):
        case = CASES[case_name]
        config = config_for(case, catalog, args.work / "featcache", steps, args.device)
        ours_runs, bare_runs = [], []
        for repeat in range(args.repeats):
            ours_runs.append(trainer_rate(config, args.work / f"{case_name}-trainer-{repeat}", args.warmup))
            bare_runs.append(hand_loop_rate(config, args.work / f"{case_name}-loop-{repeat}", args.warmup))
        ours, bare = statistics.median(ours_runs), statistics.median(bare_runs)
        results[case_name] = {
            "trainer_pairs_per_s": round(ours, 2), "hand_loop_pairs_per_s": round(bare, 2),
            "trainer_over_loop": round(ours / bare, 3), "overhead_percent": round(100 * (bare / ours - 1), 1),
            "batch_size": case["batch"], "steps": steps, "warmup_steps": args.warmup, "feature_cache": case["cache"],
            "bf16_autocast": config.optim.amp and args.device.startswith("cuda"),
            "augment": config.backbone.augment, "repeats": {"trainer": [round(r, 2) for r in ours_runs], "hand_loop": [round(r, 2) for r in bare_runs]},
        }
        print(case_name, json.dumps(results[case_name]), flush=True)
    atomic_write_json(args.out, {
        "benchmark": "bench_train",
        "command": "python " + " ".join(sys.argv),
        "settings": {"catalog": f"synthetic, {args.products} products x 3 views, 224 px", "method": "clip", "device": args.device,
                     "loader_workers": "auto (DataConfig.loader_workers=None)"},
        "machine": machine(args.device),
        "results": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
