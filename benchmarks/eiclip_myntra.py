"""EI-CLIP's ablation on real Myntra products (issue 3's evidence).

Rows, as in the EI-CLIP paper's Table: 1 zero-shot (untrained heads), 2 CLIP on the title,
3 CLIP on title + entities as text, 4 EI-CLIP with equal gates, 5 EI-CLIP with learned gates.
Backbone: twotower (frozen EfficientNet-Lite0 + frozen MiniLM, trained heads: LiT-style, the
only setting that trains in minutes on 2 CPU cores). Full-candidate I2T / T2I on the seeded 20%
product test split. Results: benchmarks/results/eiclip_myntra.json.

    python benchmarks/eiclip_myntra.py [--myntra ../shared/datasets/fashion-myntra] [--work /tmp/eiclip-myntra]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from catalogclip.catalog.readers import read_catalog
from catalogclip.catalog.schema import read_jsonl, write_jsonl
from catalogclip.catalog.splits import make_split
from catalogclip.embed import embed_catalog
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

ENTITIES = ["brand", "category:2", "baseColour", "season", "usage", "gender"]  # category:2 = articleType
ROWS = {
    "1 zero-shot": None,
    "2 CLIP title": ("clip", {}),
    "3 CLIP title+entities as text": ("clip", {"entities_as_text": ["brand", "baseColour", "season", "usage", "gender"]}),
    "4 EI-CLIP equal gates": ("eiclip", {"entity_groups": ENTITIES, "gates": "equal"}),
    "5 EI-CLIP gated": ("eiclip", {"entity_groups": ENTITIES}),
}
#: diagnostics, run with --rows: which entity groups carry the gain
DIAGNOSTIC_ROWS = {
    "5a EI-CLIP gated, brand only": ("eiclip", {"entity_groups": ["brand"]}),
    "5b EI-CLIP gated, all but brand": ("eiclip", {"entity_groups": [g for g in ENTITIES if g != "brand"]}),
}
ROWS.update(DIAGNOSTIC_ROWS)


def myntra_catalog(source: Path, work: Path) -> Path:
    path = work / "catalog.jsonl"
    if not path.exists():
        write_jsonl(read_catalog("myntra", source), path)
    return path


def full_protocol(method, test, cache: Path) -> dict:
    embeddings = embed_catalog(method, test, cache_dir=cache, progress=False)
    inventory = Inventory.from_embeddings(embeddings, test)
    result = evaluate("full", inventory, EmbeddingScorer(embeddings, inventory))
    pick = ("R@1", "R@5", "R@10")
    out = {f"{task.upper()} {m}": round(100 * result["tasks"][task]["metrics"]["all"][m], 2) for task in ("i2t", "t2i") for m in pick}
    out["SumR"] = round(100 * result["summary"]["SumR"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--myntra", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/fashion-myntra")
    parser.add_argument("--work", type=Path, default=Path("/tmp/eiclip-myntra"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/featcache"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="+", default=[r for r in ROWS if r not in DIAGNOSTIC_ROWS])
    parser.add_argument("--threads", type=int, default=1, help="torch threads; with cached features 1 is fastest on a shared machine")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eiclip_myntra.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    catalog_path = myntra_catalog(args.myntra, args.work)
    image_root = str(args.myntra / "images")  # the catalog is written outside the dataset's folder
    catalog = read_jsonl(catalog_path, image_root=image_root)
    test = make_split(catalog, "product", 0.2, 0).test
    backbone = BackboneConfig(spec="twotower", embed_dim=256)
    table: dict[str, dict] = {}
    for seed in args.seeds:
        for row in args.rows:
            started = time.perf_counter()
            if ROWS[row] is None:
                torch.manual_seed(seed)
                method, extra = build_method("clip", backbone), {}
            else:
                name, options = ROWS[row]
                config = RunConfig(
                    method=name, method_options=options, backbone=backbone,
                    data=DataConfig(catalog=str(catalog_path), image_root=image_root, feature_cache=str(args.cache)),
                    optim=OptimConfig(epochs=args.epochs, batch_size=args.batch_size, head_lr=args.head_lr, seed=seed,
                                      warmup_steps=50, log_every=50, checkpoint_every=10**6),
                )
                run_dir = args.work / f"{name}-{row.split()[0]}-seed{seed}"
                train(config, run_dir, progress=False)
                method = load_run(run_dir).method
                gates = run_dir / "gates.json"
                extra = {"gates": json.loads(gates.read_text())} if gates.exists() else {}
            metrics = full_protocol(method, test, args.cache)
            table.setdefault(row, {})[f"seed{seed}"] = {**metrics, **extra, "seconds": round(time.perf_counter() - started, 1)}
            print(row, f"seed {seed}", json.dumps(table[row][f"seed{seed}"]), flush=True)
    result = {
        "benchmark": "eiclip_myntra",
        "command": "python " + " ".join(sys.argv),
        "settings": {
            "catalog": "fashion-myntra via the myntra reader (11,882 products)", "split": "by product, 20% test, seed 0",
            "test_products": len(test), "protocol": "full (all test images x all test products)",
            "backbone": "twotower, both towers frozen, linear heads, embed_dim 256",
            "entities": ENTITIES, "epochs": args.epochs, "batch_size": args.batch_size, "head_lr": args.head_lr,
            "seeds": args.seeds,
        },
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__,
                    "note": "2 shared CPU cores; other jobs ran at the same time"},
        "rows": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
