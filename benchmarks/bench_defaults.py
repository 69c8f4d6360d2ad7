"""Do the default training settings converge on a small and a large catalog? (issue 11, item 6)

Trains `clip` on the `twotower` backbone (frozen towers from the feature cache, trained heads)
with every setting at its default except the step budget, and scores each finished run on its
catalog's 20% product test split (full protocol: every test image against every test title).
Rows per catalog:

  old default       5 epochs (the fixed default before step budgets)
  default           no flags: epochs from `optim.step_budget`, capped at `optim.max_epochs`
  budget B          step budget B without the epoch cap, B in --budgets (the convergence curve)

Each row is a complete run (warmup + cosine over its own length), so R@1 against steps is the
quality a run of that length reaches. "converged" = the default's mean R@1 is within
--tolerance points of the best row.

    python benchmarks/bench_defaults.py --threads 1 \\
        [--myntra-catalog /work/cache/myntra/catalog.readable.jsonl --myntra-images ../shared/datasets/fashion-myntra/images \\
         --myntra-cache /work/cache/myntra/featcache --myntra-products 8000]

The committed results were made in pieces merged row by row into one JSON: the small sweep
(default budgets), the Myntra sweep (--skip-small, --budgets 500 1000 4000), then, after the
defaults were set from them, the "default (no flags)" rows again plus Myntra budgets 8000 and
16000 (--rows). The Myntra feature cache is the one helper "eval" filled (twotower, in catalog
order, hence the first 8,000 products).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from catalogclip.catalog.schema import read_jsonl, write_jsonl
from catalogclip.catalog.splits import make_split
from catalogclip.catalog.synth import generate_catalog
from catalogclip.embed import embed_catalog
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

NO_CAP = 10**6


def r_at_1(run_dir: Path, test, cache: Path) -> dict:
    embeddings = embed_catalog(load_run(run_dir).method, test, cache_dir=cache, progress=False)
    inventory = Inventory.from_embeddings(embeddings, test)
    result = evaluate("full", inventory, EmbeddingScorer(embeddings, inventory))
    out = {f"{task} R@1": round(100 * result["tasks"][task]["metrics"]["all"]["R@1"], 2) for task in ("i2t", "t2i")}
    out["mean R@1"] = round((out["i2t R@1"] + out["t2i R@1"]) / 2, 2)
    return out


def rows(budgets: list[int], only: list[str] | None) -> dict[str, dict]:
    out = {"old default (5 epochs)": {"epochs": 5}, "default (no flags)": {}}
    out.update({f"budget {b}": {"step_budget": b, "max_epochs": NO_CAP} for b in budgets})
    return {name: optim for name, optim in out.items() if only is None or name in only}


def sweep(name: str, catalog_path: Path, image_root: str | None, cache: Path, work: Path, rows_to_run: dict, seeds: list[int]) -> dict:
    catalog = read_jsonl(catalog_path, image_root=image_root)
    test = make_split(catalog, "product", 0.2, 0).test
    table: dict[str, dict] = {}
    for row, optim in rows_to_run.items():
        per_seed = []
        for seed in seeds:
            config = RunConfig(
                method="clip",
                backbone=BackboneConfig(spec="twotower"),
                data=DataConfig(catalog=str(catalog_path), image_root=image_root, feature_cache=str(cache)),
                optim=OptimConfig(seed=seed, checkpoint_every=NO_CAP, log_every=100, device="cpu", **optim),
            )
            run_dir = work / name / f"{row.replace(' ', '_').replace('(', '').replace(')', '')}-seed{seed}"
            started = time.perf_counter()
            result = train(config, run_dir, progress=False)
            seconds = time.perf_counter() - started
            scores = r_at_1(run_dir, test, cache)
            plan = result.plan
            per_seed.append({**scores, "epochs": plan.epochs, "steps": plan.steps, "train_seconds": round(seconds, 1)})
            print(f"{name:6s} {row:24s} seed {seed}: {plan}  ->  {scores}", flush=True)
        table[row] = {
            "epochs": per_seed[0]["epochs"], "steps": per_seed[0]["steps"], "pairs": result.pairs,
            "mean R@1": round(sum(s["mean R@1"] for s in per_seed) / len(per_seed), 2),
            "seeds": per_seed,
        }
    return {"catalog": str(catalog_path), "products": len(catalog), "test_products": len(test), "rows": table}


def with_gaps(result: dict) -> dict:
    """The sweep with its best row and how far the defaults fall short of it."""
    table = result["rows"]
    best = max(table.values(), key=lambda r: r["mean R@1"])
    return {
        **result,
        "best": {"steps": best["steps"], "mean R@1": best["mean R@1"]},
        "default_gap_to_best": round(best["mean R@1"] - table["default (no flags)"]["mean R@1"], 2),
        "old_default_gap_to_best": round(best["mean R@1"] - table["old default (5 epochs)"]["mean R@1"], 2),
    }


def myntra_catalog(args) -> Path:
    """The Myntra catalog, or its first --myntra-products products written beside the work folder."""
    if args.myntra_products is None:
        return args.myntra_catalog
    full = read_jsonl(args.myntra_catalog, image_root=args.myntra_images)
    return write_jsonl(full.with_products(full.products[: args.myntra_products]), args.work / f"myntra-{args.myntra_products}.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-defaults"))
    parser.add_argument("--small-products", type=int, default=500)
    parser.add_argument("--small-views", type=int, default=2)
    parser.add_argument("--small-cache", type=Path, default=Path("/work/cache/robust-defaults/featcache"))
    parser.add_argument("--myntra-catalog", type=Path, default=None, help="canonical Myntra catalog (skipped when absent)")
    parser.add_argument("--myntra-images", type=str, default=None, help="the image root the Myntra catalog needs")
    parser.add_argument("--myntra-cache", type=Path, default=None)
    parser.add_argument("--myntra-products", type=int, default=None, help="the first N products only (the cache fills in that order)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--skip-small", action="store_true", help="run the Myntra sweep only (results are merged into --out)")
    parser.add_argument("--rows", nargs="+", default=None, help="run only these rows (e.g. 'default (no flags)'); merged into --out")
    parser.add_argument("--tolerance", type=float, default=1.0, help="points of mean R@1 that count as converged")
    parser.add_argument("--prepare-only", action="store_true", help="only make the small catalog and its feature cache")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_defaults.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    small_dir = args.small_cache.parent / f"synth{args.small_products}"
    small = small_dir / "catalog.jsonl"
    if not small.exists():
        generate_catalog(small_dir, args.small_products, 0, args.small_views, 224, 1)
    catalogs = {} if args.skip_small else {"small": (small, None, args.small_cache)}
    if args.myntra_catalog is not None:
        catalogs["myntra"] = (myntra_catalog(args), args.myntra_images, args.myntra_cache)
    if args.prepare_only:  # the first run of a sweep fills the feature cache
        catalogs = {"small": catalogs["small"]}
        args.budgets, args.seeds = [], [0]
    to_run = rows(args.budgets, args.rows)
    results = {name: sweep(name, path, root, cache, args.work, to_run, args.seeds) for name, (path, root, cache) in catalogs.items()}
    earlier = json.loads(args.out.read_text())["catalogs"] if args.out.exists() else {}
    for name, result in results.items():  # sweeps run separately add up in one file, row by row
        result["rows"] = {**earlier.get(name, {}).get("rows", {}), **result["rows"]}
    results = {name: with_gaps(result) for name, result in {**earlier, **results}.items()}
    defaults = OptimConfig()
    summary = {
        name: {
            "default plan": f"{r['rows']['default (no flags)']['epochs']} epochs, {r['rows']['default (no flags)']['steps']} steps",
            "default converged": r["default_gap_to_best"] <= args.tolerance,
            "default gap to best (R@1 points)": r["default_gap_to_best"],
            "old default gap to best (R@1 points)": r["old_default_gap_to_best"],
        }
        for name, r in results.items()
    }
    print(summary)
    atomic_write_json(args.out, {
        "benchmark": "bench_defaults",
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "method": "clip", "backbone": "twotower, both towers frozen (features cached), linear heads, embed_dim 256",
            "defaults": {"step_budget": defaults.step_budget, "max_epochs": defaults.max_epochs, "batch_size": defaults.batch_size,
                         "head_lr": defaults.head_lr, "warmup_steps": defaults.warmup_steps},
            "small": f"synthetic, {args.small_products} products x {args.small_views} images, seed 0",
            "split": "by product, 20% test, seed 0", "protocol": "full; mean R@1 = (I2T R@1 + T2I R@1) / 2",
            "seeds": args.seeds, "tolerance": args.tolerance,
        },
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "note": "2 shared CPU cores; other engineers' jobs ran at the same time"},
        "summary": summary,
        "catalogs": results,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
