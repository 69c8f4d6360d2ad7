"""Baseline table on fashion-myntra: BM25, MiniLM text-only and zero-shot twotower.

    python benchmarks/baselines_myntra.py [--myntra DIR] [--work DIR] [--backbone twotower]

Reads the Kaggle layout with the myntra reader, splits it 80/20 by product (seed 0), and scores
each baseline on the test side under `full`, `sample100`, `category` (all / root / leaf) and
`zeroshot-cls`, all on the same candidates. Eval folders and the HTML report go to --work (outside
the repository); the tables, settings and machine go to benchmarks/results/baselines_myntra.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import read_catalog
from catalogclip.catalog.splits import split_by_product
from catalogclip.evaluate.report import write_report
from catalogclip.evaluate.report.collect import load_entries
from catalogclip.evaluate.report.tables import build_tables
from catalogclip.evaluate.runner import CANDIDATES_FILE, EvalInputs, evaluate_baseline

RESULTS = Path(__file__).parent / "results" / "baselines_myntra.json"
PROTOCOLS = ["full", "sample100", "category", "zeroshot-cls"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--myntra", type=Path, default=Path("/work/shared/datasets/fashion-myntra"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/catalogclip-baselines-myntra"))
    parser.add_argument("--backbone", default="twotower")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    problems = ProblemLog()
    catalog = read_catalog("myntra", args.myntra, problems)
    split = split_by_product(catalog, test_fraction=0.2, seed=args.seed)
    inputs = EvalInputs(split.test, split.train, split.name, str(args.myntra))
    print(f"myntra: {len(catalog)} products ({problems.summary()}); test {len(split.test)} products", flush=True)

    timings, folders = {}, []
    candidates = None
    for name in ("bm25", "minilm", "zeroshot"):
        out = args.work / name
        start = time.perf_counter()
        evaluate_baseline(name, PROTOCOLS, out, inputs, backbone=args.backbone, candidates_path=candidates,
                          seed=args.seed, progress=lambda m: print(f"  {name}: {m}", flush=True))
        timings[name] = round(time.perf_counter() - start, 1)
        candidates = candidates or out / "eval" / CANDIDATES_FILE  # every baseline on the same sample100 lists
        folders.append(out)
        print(f"{name}: {timings[name]} s", flush=True)

    entries = load_entries(folders)
    tables = build_tables(entries, baseline="bm25")
    files = write_report(folders, args.work / "report", baseline="bm25", title="Baselines on fashion-myntra (test split)")
    for table in tables:
        print(f"\n{table.title}\n  {'model':<22}" + "".join(f"{c:>13}" for c in table.columns))
        for row in table.rows:
            print(f"  {row.label:<22}" + "".join(f"{100 * v:13.1f}" if v is not None else f"{'-':>13}" for v in row.values))
    test_images = sum(len(p.images) for p in split.test)
    report = {
        "benchmark": "baselines on fashion-myntra: BM25, MiniLM text-only, zero-shot twotower",
        "command": "python benchmarks/baselines_myntra.py " + " ".join(sys.argv[1:]),
        "settings": {
            "data": str(args.myntra), "reader": "myntra", "split": "by product, test_fraction 0.2",
            "seed": args.seed, "protocols": PROTOCOLS, "backbone": args.backbone,
            "products": len(catalog), "test_products": len(split.test), "test_images": test_images,
            "text_fields": "text-only baselines: a product-text query is title (+ description); an image is its "
                           "product's record minus the asked field (full/sample100: attribute values + category "
                           "path; category/zeroshot-cls: title + attribute values)",
            "zeroshot": "build_method('clip', backbone) with no training: pretrained towers, randomly "
                        "initialised (seeded) projection heads",
            "values": "fractions in [0, 1]; SumR in [0, 6]",
        },
        "seconds": timings,
        "tables": [t.to_json() for t in tables],
        "report_html": str(files.html),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "note": "timings taken on a shared machine (other engineers' jobs ran on the same 2 cores)"},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsaved {RESULTS}; report {files.html}")


if __name__ == "__main__":
    main()
