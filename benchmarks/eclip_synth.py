"""ECLIP vs CLIP on the synthetic catalog: product retrieval, zero-shot grounding, full T2I/I2T.

ECLIP's claim is that instance-level learning wins on product retrieval (a busy customer shot
-> the merchant shots) and on grounding. Both methods get the same backbone, batch size and
number of steps:

1. `twotower`, image tower frozen: EfficientNet-Lite0's feature map (6x6 x 1280 at 192 px) is
   computed once into the feature cache; `clip` trains its two linear heads on the pooled tokens
   (the mean of the grid, which is exactly twotower's image feature: checked below), `eclip` its
   instance decoder on the grid. MiniLM (frozen) gives the text features. `clip` grounds with the
   dense map of its projected tokens (MaskCLIP style), `eclip` with the attention of its query.
2. A small open_clip ViT with random weights trained end to end on pixels (64 px, 8x8 patches),
   to show the ViT token path works; from scratch and this short, its numbers are near chance.

    python benchmarks/eclip_synth.py [--products 2000] [--steps 400] [--work out/eclip_synth] [--ablation]

The catalog, feature cache and runs stay in --work (reused by later runs). Prints the tables and
writes benchmarks/results/eclip_synth.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from catalogclip.catalog.schema import Catalog, read_jsonl
from catalogclip.catalog.splits import Split
from catalogclip.catalog.synth import generate_catalog
from catalogclip.embed import embed_catalog, embed_product_texts
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.grounding import evaluate_grounding, grounding_queries, image_size, iou, summarise
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate
from catalogclip.io import atomic_write_json
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.batch import Batch
from catalogclip.models.methods import METHODS, CLIPMethod, Method, build_method
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.data import load_rgb
from catalogclip.train.featcache import FeatureCache
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

RESULTS = Path(__file__).parent / "results" / "eclip_synth.json"
VIT_NAME = "catalogclip-bench-vit"
VIT_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}
ECLIP_OPTIONS = {"n_queries": 8, "n_layers": 2, "decoder_dim": 256, "heads": 4, "views_per_product": 3}


@METHODS.register("clip-pooled-tokens")
class PooledTokenCLIP(CLIPMethod):
    """`clip` whose image features are the mean of the cached token grid: for twotower that is its
    pooled image feature, so this is `clip`, fed from the same token cache as `eclip`."""

    image_input = "tokens"

    def image_features(self, batch: Batch) -> torch.Tensor:
        if batch.image_tokens is not None:
            return batch.image_tokens.float().mean(dim=1)
        return super().image_features(batch)


# --- data ---------------------------------------------------------------------------------------


def synthetic_catalog(folder: Path, products: int, views: int, image_size: int) -> tuple[Path, float]:
    """The catalog (made once; a finished catalog.jsonl means every image is there) and seconds spent."""
    path = folder / "catalog.jsonl"
    if path.exists() and len(read_jsonl(path)) == products:
        return path, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    generate_catalog(folder, n_products=products, seed=0, views=views, image_size=image_size)
    return path, time.perf_counter() - start


def all_image_paths(catalog: Catalog) -> list[Path]:
    return [catalog.image_path(image) for _, image in catalog.iter_images()]


def cached_embeddings(method: Method, catalog: Catalog, cache: FeatureCache, batch_size: int = 256) -> Embeddings:
    """`embed_catalog` for a frozen image tower, from the token cache (no image is encoded again)."""
    method.eval()
    rows = list(catalog.iter_images())
    tokens = cache.fill([catalog.image_path(im) for _, im in rows], load_rgb, progress=False)
    vectors = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = tokens[start : start + batch_size]
            batch = Batch(product_keys=torch.arange(len(chunk)), texts=[""] * len(chunk), image_tokens=chunk)
            vectors.append(method.embed_images(batch).float().numpy())
    products = catalog.products
    return Embeddings(
        image=np.concatenate(vectors),
        image_product=np.array([products[i].id for i, _ in rows], dtype=str),
        image_source=np.array([im.source for _, im in rows], dtype=str),
        image_path=np.array([str(catalog.image_path(im)) for _, im in rows], dtype=str),
        text=embed_product_texts(method, [method.product_text(p) for p in products]),
        text_product=np.array([p.id for p in products], dtype=str),
        meta={"method": method.name, "backbone": method.backbone.config.spec},
    )


# --- runs ---------------------------------------------------------------------------------------


def run_config(method: str, options: dict, backbone: BackboneConfig, catalog: Path, cache: Path, args, steps: int,
               n_pairs: int) -> RunConfig:
    # enough epochs that the cosine schedule ends at `steps`
    epochs = max(1, math.ceil(steps * args.batch_size / n_pairs))
    return RunConfig(
        method=method,
        method_options=options,
        backbone=backbone,
        data=DataConfig(catalog=str(catalog), test_fraction=0.2, split_seed=0, feature_cache=str(cache)),
        optim=OptimConfig(epochs=epochs, batch_size=args.batch_size, max_steps=steps, warmup_steps=20, log_every=50,
                          checkpoint_every=10**9, device="cpu", seed=0),
    )


def train_and_evaluate(name: str, config: RunConfig, run_dir: Path, cache: FeatureCache | None) -> dict:
    """Train one run, then every protocol on its test split."""
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = train(config, run_dir, progress=False)
    train_s = time.perf_counter() - started
    run = load_run(run_dir)
    catalog = read_jsonl(config.data.catalog)
    test = Split.load(run_dir / "split.json", catalog).test
    started = time.perf_counter()
    out = {
        "method": config.method,
        "steps": result.steps,
        "last_loss": round(result.last_loss, 4),
        "train_seconds": round(train_s, 1),
        "trainable_parameters": sum(p.numel() for p in run.method.parameters() if p.requires_grad),
        **retrieval(run.method, test, cache),
    }
    cache_dir = cache.folder.parent if cache is not None else None
    try:
        grounding = {region: evaluate_grounding(run.method, test, region=region, cache_dir=cache_dir, progress=False)
                     for region in ("mass", "area")}
        out["grounding"] = {region: {k: g[k] for k in ("n", "Acc@0.5", "Acc@0.7", "mIoU")} | {"by_source": g["by_source"]}
                            for region, g in grounding.items()}
    except ValueError as exc:  # clip on ViT patch tokens has no dense map
        out["grounding"] = {"not available": str(exc)}
    if config.method == "eclip":  # the same model, each image as its single most salient instance
        run.method.config.salient_query = "argmax"
        out["argmax_salient_query"] = retrieval(run.method, test, cache)
    out["eval_seconds"] = round(time.perf_counter() - started, 1)
    print_run(name, out)
    return out


def retrieval(method: Method, test: Catalog, cache: FeatureCache | None) -> dict:
    """`full` (I2T, T2I, SumR) and `product` (fine, coarse) numbers on the test split."""
    emb = cached_embeddings(method, test, cache) if cache is not None else embed_catalog(method, test, progress=False)
    inventory = Inventory.from_embeddings(emb, test)
    scorer = EmbeddingScorer(emb, inventory)
    full, product = evaluate("full", inventory, scorer), evaluate("product", inventory, scorer)
    return {
        "full": {task: full["tasks"][task]["metrics"]["all"] for task in ("i2t", "t2i")} | {"SumR": full["summary"]["SumR"]},
        "product": {level: product["tasks"][level]["metrics"]["all"] | {"queries": product["tasks"][level]["n_queries"]}
                    for level in ("fine", "coarse")},
    }


def relative_size(catalog: Catalog, ref) -> tuple[float, float]:
    width, height = image_size(catalog.image_path(ref))
    return (ref.bbox[2] - ref.bbox[0]) / width, (ref.bbox[3] - ref.bbox[1]) / height


def prior_boxes(train: Catalog, test: Catalog) -> dict:
    """Grounding without a model: the whole image, and a centred box of the mean training box size."""
    out = {}
    for source in ("customer", "merchant"):
        rel_w, rel_h = np.mean([relative_size(train, ref) for _, ref in grounding_queries(train, [source])], axis=0)
        whole, centred = [], []
        for _, ref in grounding_queries(test, [source]):
            w, h = image_size(test.image_path(ref))
            bw, bh = rel_w * w, rel_h * h
            whole.append(iou((0, 0, w, h), ref.bbox))
            centred.append(iou(((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2), ref.bbox))
        out[source] = {"whole image": summarise(whole), "centred mean-size box": summarise(centred)}
    return out


# --- printing -----------------------------------------------------------------------------------


def print_run(name: str, r: dict) -> None:
    fine, coarse = r["product"]["fine"], r["product"]["coarse"]
    g = r["grounding"]["mass"]["by_source"]["customer"] if "mass" in r["grounding"] else None
    print(f"\n== {name}: {r['steps']} steps, {r['train_seconds']} s training, {r['trainable_parameters']:,} trainable parameters")
    print("  product fine   " + "  ".join(f"{k} {100 * fine[k]:5.1f}" for k in ("R@1", "R@5", "R@10", "mAP@1", "mAP@5", "mAP@10")))
    print("  product coarse " + "  ".join(f"{k} {100 * coarse[k]:5.1f}" for k in ("R@1", "R@5", "R@10", "mAP@1", "mAP@5", "mAP@10")))
    print("  full i2t       " + "  ".join(f"{k} {100 * r['full']['i2t'][k]:5.1f}" for k in ("R@1", "R@5", "R@10")) +
          "   t2i " + "  ".join(f"{k} {100 * r['full']['t2i'][k]:5.1f}" for k in ("R@1", "R@5", "R@10")) +
          f"   SumR {100 * r['full']['SumR']:.1f}")
    if g is None:
        print(f"  grounding: not available ({r['grounding']['not available']})")
    else:
        print(f"  grounding (customer shots, mass rule) Acc@0.5 {100 * g['Acc@0.5']:.1f}  Acc@0.7 {100 * g['Acc@0.7']:.1f}"
              f"  mIoU {100 * g['mIoU']:.1f}")
    if "argmax_salient_query" in r:
        hard = r["argmax_salient_query"]["product"]["fine"]
        print(f"  product fine with the argmax salient query: R@1 {100 * hard['R@1']:.1f}  mAP@10 {100 * hard['mAP@10']:.1f}")


def verdict(clip: dict, eclip: dict) -> dict:
    """Does ECLIP win? Compared on fine-grained product mAP@10 and customer-shot grounding Acc@0.5."""
    def grounding(r: dict) -> float:
        return max(r["grounding"][region]["by_source"]["customer"]["Acc@0.5"] for region in r["grounding"])

    return {
        "product_fine_mAP@10": {"clip": clip["product"]["fine"]["mAP@10"], "eclip": eclip["product"]["fine"]["mAP@10"],
                                "eclip_wins": eclip["product"]["fine"]["mAP@10"] > clip["product"]["fine"]["mAP@10"]},
        "grounding_customer_Acc@0.5 (best region rule)": {"clip": grounding(clip), "eclip": grounding(eclip),
                                                          "eclip_wins": grounding(eclip) > grounding(clip)},
        "full_SumR": {"clip": clip["full"]["SumR"], "eclip": eclip["full"]["SumR"],
                      "eclip_wins": eclip["full"]["SumR"] > clip["full"]["SumR"]},
    }


# --- main ---------------------------------------------------------------------------------------


def twotower_part(args, catalog_path: Path, cache_root: Path) -> dict:
    backbone = BackboneConfig(spec="twotower", embed_dim=256, image_size=args.image_size)
    catalog = read_jsonl(catalog_path)
    probe = build_method("eclip", backbone, ECLIP_OPTIONS)
    cache = FeatureCache(cache_root, probe.backbone, kind="tokens")
    started = time.perf_counter()
    paths = all_image_paths(catalog)
    todo = len(cache.missing(paths))
    cache.fill(paths, load_rgb, batch_size=32)
    cache_s = time.perf_counter() - started
    pooled_equal = pooled_tokens_are_features(probe, paths[:4])
    n_pairs = int(0.8 * len(paths))
    results = {
        "token_cache": {"images": len(paths), "computed_now": todo, "seconds": round(cache_s, 1),
                        "images_per_s": round(todo / cache_s, 2) if todo else None,
                        "grid": list(probe.backbone.token_grid()), "token_dim": probe.backbone.token_dim},
        "clip_pooled_tokens_equal_twotower_features": pooled_equal,
    }
    runs = {  # name: (method, options, run folder)
        "clip": ("clip-pooled-tokens", {}, "twotower-clip"),
        "eclip": ("eclip", ECLIP_OPTIONS, "twotower-eclip"),
    }
    if args.ablation:
        only_itc = {**ECLIP_OPTIONS, "weight_inter": 0.0, "weight_intra": 0.0}
        runs["eclip (image-text loss only)"] = ("eclip", only_itc, "twotower-eclip-itc")
    for name, (method, options, folder) in runs.items():
        config = run_config(method, options, backbone, catalog_path, cache_root, args, args.steps, n_pairs)
        results[name] = train_and_evaluate(f"twotower / {name}", config, args.work / "runs" / folder, cache)
        results[name]["config"] = config.to_dict()
    split = Split.load(args.work / "runs" / "twotower-clip" / "split.json", catalog)
    results["grounding_priors"] = prior_boxes(split.train, split.test)
    results["verdict"] = verdict(results["clip"], results["eclip"])
    return results


@torch.no_grad()
def pooled_tokens_are_features(method: Method, paths: list[Path]) -> bool:
    transform = method.backbone.image_transform(train=False)
    pixels = torch.stack([transform(load_rgb(p)) for p in paths])
    method.backbone.eval()
    return bool(torch.allclose(method.backbone.image_tokens(pixels).mean(dim=1), method.backbone.image_features(pixels), atol=1e-5))


def vit_part(args, catalog_path: Path) -> dict:
    import open_clip

    config_path = args.work / f"{VIT_NAME}.json"
    config_path.write_text(json.dumps(VIT_CONFIG))
    open_clip.add_model_config(config_path)
    backbone = BackboneConfig(spec=f"openclip:{VIT_NAME}")
    n_pairs = int(0.8 * 3 * args.products)
    results = {"open_clip_config": VIT_CONFIG}
    for name, method, options in (("clip", "clip", {}), ("eclip", "eclip", {**ECLIP_OPTIONS, "decoder_dim": 128})):
        config = run_config(method, options, backbone, catalog_path, args.work / "featcache", args, args.vit_steps, n_pairs)
        results[name] = train_and_evaluate(f"open_clip ViT (random init) / {name}", config, args.work / "runs" / f"vit-{name}", None)
        results[name]["config"] = config.to_dict()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--vit-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--ablation", action="store_true", help="also eclip with the image-text loss only")
    parser.add_argument("--skip-vit", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("out/eclip_synth"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    load_before = os.getloadavg()
    started = time.perf_counter()
    catalog_path, synth_s = synthetic_catalog(args.work / "catalog", args.products, args.views, args.image_size)
    results = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "note": "timings taken on a shared 2-core machine (other engineers' jobs running); load average "
                            f"{load_before[0]:.1f} at start"},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"eclip_options": ECLIP_OPTIONS, "split": "by product, 20% test, seed 0",
           "grounding": "threshold 0.5 of the min-max scaled map; regions: mass (most attention) and area (largest)"},
        "catalog": {"path": str(catalog_path), "synth_seconds": round(synth_s, 1)},
        "twotower": twotower_part(args, catalog_path, args.work / "featcache"),
    }
    if not args.skip_vit:
        results["vit"] = vit_part(args, catalog_path)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_end"] = round(os.getloadavg()[0], 1)
    atomic_write_json(RESULTS, results)
    print("\nverdict (twotower):", json.dumps(results["twotower"]["verdict"], indent=1))
    print(f"total {results['total_seconds']} s; saved {RESULTS}")


if __name__ == "__main__":
    main()
