"""ECLIP vs CLIP (and EI-CLIP, CLIP-ITA) on real customer photos: the Grocery Store Dataset.

81 products, each one web "iconic" shot (merchant) and 35-143 smartphone photos taken in stores
(customer: shelves, bins, hands, other products around), English descriptions, 9 brands on the
31 carton packages, category tree Top > Coarse > Fine. Two settings:

- (a) seen products, unseen photos: `split_by: image` (the data set's train.txt photos train,
  its test.txt photos are the queries); gallery = the 81 merchant shots, and again with the other
  products' test photos added to the gallery as distractors;
- (b) unseen products: a seeded 25% product split, once per split seed (`--product-splits`, 5 by
  default: 20 held-out products move the figures a lot); queries = every photo of the held-out
  products, gallery = their merchant shots. "b, split S" is one split; "b, all splits" their mean.

Every row gets the same backbone (`twotower`, both towers frozen, 224 px: a 7x7 x 1280 token grid
per image, read from one token cache), steps, batch size and images. `clip`, `eiclip` and
`clipita` read the mean of the token grid (= twotower's pooled feature), `eclip` its instance
decoder reads the grid. Text = title + description. Product retrieval fine (same product) and
coarse (same coarse class: `coarse_depth` 2), full I2T/T2I (description -> photos), category ->
products (CLIP-ITA's protocol) on every row. Each (setting, row, seed) is written to the JSON as
soon as it is done, and a rerun skips what is there (with the same settings).

ECLIP's settings (ECLIP below) were chosen with `--select`: the candidates train and are scored on
validation catalogs that hold no test photo and no held-out product ((a) the data set's val
photos are the queries; (b) each split's training products split again, 25%, same seed), results in
`eclip_grocery_selection_<steps>steps.json`.

    python benchmarks/eclip_grocery.py --data ../shared/datasets/grocery-store [--seeds 0 1 2] [--steps 150]
    python benchmarks/eclip_grocery.py --select --seeds 0 1      # the choice of ECLIP's settings
    python benchmarks/eclip_grocery.py --settings b --train-products 30 --rows clip "eclip (+ inter + intra)"
                                      # (b) with fewer training products: does ECLIP's gap grow with them?
    python benchmarks/eclip_grocery.py --image-trainable-blocks 1 --tower-lr 3e-4 --rows clip "eclip (+ inter + intra)"
                                      # every row also trains the image tower's last block (from a cache of
                                      # its frozen front); results named _1_trainable_blocks_lr0.0003
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import replace
from functools import partial
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from catalogclip.catalog.readers import read_catalog
from catalogclip.catalog.schema import Catalog, read_jsonl, write_jsonl
from catalogclip.catalog.splits import Split, make_split
from catalogclip.embed import embed_catalog, image_tower_outputs
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, ProtocolOptions, evaluate
from catalogclip.io import atomic_write_json, read_json
from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.models.batch import CACHED_IMAGE_FIELDS, Batch
from catalogclip.models.category import CLIPITAMethod
from catalogclip.models.methods import METHODS, CLIPMethod, EIClipMethod
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.models.instance import saliency_weighted, text_selection, token_weights
from catalogclip.train.data import image_cache, load_rgb, tower_kind
from catalogclip.train.featcache import FeatureCache, cacheable
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

RESULTS = Path(__file__).parent / "results" / "eclip_grocery{batches}.json"
SELECTION = Path(__file__).parent / "results" / "eclip_grocery_selection_{steps}steps{batches}.json"
TRAIN_PRODUCTS = Path(__file__).parent / "results" / "eclip_grocery_{n}_training_products{batches}.json"
#: how batches are drawn for every row: random images, each product also bringing its main (web)
#: shot (`data.main_shot_in_batch`, chosen on the validation catalogs), or plain random images
BATCHES = {"main-shot": "", "random": "_random_batches"}
TEXT = {"text_fields": ["title", "description"]}
#: the ECLIP candidates (`--select`) are this with their changes: random batches, as CLIP's (a batch
#: packed with 3 views per product holds 32 of the 81 products; a random one holds most of them and
#: still repeats products, about 1.2 images each, which the losses need), and the token skip (each
#: instance also gets a linear projection of the tokens its query won) with the decoder's own term
#: starting at zero
BASE = {**TEXT, "n_queries": 8, "n_layers": 2, "decoder_dim": 128, "heads": 4, "views_per_product": 1,
        "token_skip": True, "zero_init_decoder": True}
NO_SKIP = {"token_skip": False, "zero_init_decoder": False}
#: 2 instance queries, and a text that weighs them softly (temperature 1: training contrasts nearly
#: the mix of instances that the index stores, instead of the one instance a sharp softmax picks)
SOFT = {**BASE, "n_queries": 2, "select_temperature": 1.0}
#: chosen on the validation catalogs (CANDIDATES below; README): that, with one decoder layer
ECLIP = {**SOFT, "n_layers": 1}
#: row name -> (method, options)
ROWS = {
    "clip": ("clip-pooled-tokens", TEXT),
    "eiclip (brand)": ("eiclip-pooled-tokens", {**TEXT, "entity_groups": ["brand"]}),
    "eclip, image-text loss only": ("eclip", {**ECLIP, "weight_inter": 0.0, "weight_intra": 0.0}),
    "eclip, + inter": ("eclip", {**ECLIP, "weight_intra": 0.0}),
    "eclip (+ inter + intra)": ("eclip", ECLIP),
    "eclip, no token skip": ("eclip", {**ECLIP, **NO_SKIP}),
    "eclip, 3 views per product": ("eclip", {**ECLIP, "views_per_product": 3}),
    "clipita (ITA)": ("clipita-pooled-tokens", {"variant": "ITA"}),
    # the title names the fine class, which is the leaf: ITA can match a leaf by its text alone
    "clipita (I)": ("clipita-pooled-tokens", {"variant": "I"}),
}
#: the ECLIP variants compared with `clip` on the validation catalogs (`--select`)
CANDIDATES = {
    "eclip, before (3 views per product, no token skip)": ("eclip", {**BASE, **NO_SKIP, "views_per_product": 3}),
    "eclip, random batches, no token skip": ("eclip", {**BASE, **NO_SKIP}),
    "eclip, random batches, no token skip, decoder_dim 256": ("eclip", {**BASE, **NO_SKIP, "decoder_dim": 256}),
    "eclip, random batches, token skip": ("eclip", {**BASE, "zero_init_decoder": False}),
    "eclip, 3 views per product, token skip": ("eclip", {**BASE, "zero_init_decoder": False, "views_per_product": 3}),
    "eclip, 2 views per product, token skip": ("eclip", {**BASE, "zero_init_decoder": False, "views_per_product": 2}),
    "eclip, random batches, token skip, decoder_dim 256": ("eclip", {**BASE, "zero_init_decoder": False, "decoder_dim": 256}),
    "eclip, random batches, token skip from zero": ("eclip", BASE),
    "eclip, token skip from zero, weight_intra 2": ("eclip", {**BASE, "weight_intra": 2.0}),
    "eclip, token skip from zero, decoder_dim 256": ("eclip", {**BASE, "decoder_dim": 256}),
    "eclip, token skip from zero, n_queries 4": ("eclip", {**BASE, "n_queries": 4}),
    "eclip, token skip from zero, n_queries 2": ("eclip", {**BASE, "n_queries": 2}),
    "eclip, n_queries 2, inter and intra weights 0.5": ("eclip", {**BASE, "n_queries": 2, "weight_inter": 0.5, "weight_intra": 0.5}),
    "eclip, n_queries 2, select_temperature 1": ("eclip", SOFT),
    "eclip, n_queries 2, select_temperature 0.3": ("eclip", {**SOFT, "select_temperature": 0.3}),
    "eclip, select_temperature 1, n_queries 4": ("eclip", {**SOFT, "n_queries": 4}),
    "eclip, select_temperature 1, weight_inter 2": ("eclip", {**SOFT, "weight_inter": 2.0}),
    "eclip, select_temperature 1, n_layers 1 (chosen)": ("eclip", ECLIP),
    # with the tower's last blocks trained the inter-product loss is what lifts (b): weigh it more
    "eclip (chosen), weight_inter 2": ("eclip", {**ECLIP, "weight_inter": 2.0}),
    "eclip (chosen), weight_inter 4": ("eclip", {**ECLIP, "weight_inter": 4.0}),
}
ALL_ROWS = {**ROWS, **CANDIDATES}
SETTINGS = {
    "a": {"what": "seen products, unseen photos (the data set's train/test photo lists)", "split_by": "image"},
    "b": {"what": "unseen products (25% of the products held out)", "split_by": "product"},
}
POOLED = "b, all splits"
#: runs in this order, every tier over all seeds and settings before the next, so that a partial
#: table (the budget ran out) holds the main comparison first
TIERS = (("clip", "eclip (+ inter + intra)"), ("eclip, no token skip", "eclip, 3 views per product"),
         ("eclip, image-text loss only", "eclip, + inter"), ("eiclip (brand)", "clipita (ITA)", "clipita (I)"),
         tuple(CANDIDATES))
PRODUCT_KEYS = ("R@1", "R@5", "R@10", "mAP@10")


class PooledTokens:
    """Image features = the mean of the cached token grid, which is exactly twotower's pooled feature:
    `clip`, `eiclip` and `clipita` read the same token cache as `eclip` (one tower pass per image)."""

    image_input = "tokens"

    def image_features(self, batch: Batch) -> torch.Tensor:
        cached = batch.image_tokens if batch.image_tokens is not None else batch.image_features
        if cached is not None and cached.dim() == 3:
            return cached.float().mean(dim=1)
        return super().image_features(batch)


for _base in (CLIPMethod, EIClipMethod, CLIPITAMethod):
    METHODS.register(f"{_base.name}-pooled-tokens")(type(f"PooledToken{_base.__name__}", (PooledTokens, _base), {}))


def grocery_catalog(data: Path, work: Path) -> tuple[Path, Path]:
    """The data set through the `grocery-store` reader, as canonical JSONL, and the image root it
    is read with (the images stay in the data set's folder)."""
    path = work / "grocery.jsonl"
    catalog = read_catalog("grocery-store", data)
    if not path.exists():
        write_jsonl(catalog, path)
    return path, catalog.root.resolve()


def setting_keys(settings: list[str], product_splits: list[int]) -> list[str]:
    """What results are kept under: "a", and "b, split S" for every product split seed S."""
    return [key for setting in settings for key in
            ([setting] if SETTINGS[setting]["split_by"] == "image" else [f"{setting}, split {s}" for s in product_splits])]


def parse_key(key: str) -> tuple[str, int]:
    """"b, split 3" -> ("b", 3); "a" -> ("a", 0)."""
    setting, _, split = key.partition(", split ")
    return setting, int(split or 0)


def validation_catalog(catalog: Catalog, key: str) -> Catalog:
    """The catalog that a setting's choices are made on, so that no test photo or held-out product
    of it informs them: (a) the data set's val photos become the queries (its test photos are left
    out); (b) the split's training products alone, split again the same way (25%, same seed)."""
    setting, split = parse_key(key)
    if setting == "a":
        return catalog.with_products([
            replace(p, images=[replace(im, split="test") if im.split == "val" else im for im in p.images if im.split != "test"])
            for p in catalog])
    return make_split(catalog, "product", 0.25, split).train


def fewer_training_products(catalog: Catalog, key: str, n: int) -> Catalog:
    """(b) with only `n` of a split's training products (a seeded choice) and the same held-out
    products, fixed by image tags (every image of a training product "train", of a held-out one
    "test"), so that the held-out side does not move with `n`."""
    setting, split_seed = parse_key(key)
    if setting != "b":
        raise ValueError("--train-products applies to setting (b) only")
    split = make_split(catalog, "product", 0.25, split_seed)
    train = sorted(p.id for p in split.train)
    if not 1 <= n <= len(train):
        raise ValueError(f"--train-products must be between 1 and {len(train)}, got {n}")
    kept = set(random.Random(split_seed).sample(train, n))
    held_out = {p.id for p in split.test}
    return catalog.with_products([
        replace(p, images=[replace(im, split="train" if p.id in kept else "test") for im in p.images])
        for p in catalog if p.id in kept | held_out])


def setting_catalogs(catalog: Catalog, path: Path, image_root: Path, keys: list[str], variant: str,
                     derive: Callable[[Catalog, str], Catalog] | None) -> dict[str, tuple[Path, Catalog]]:
    """(JSONL path, catalog) each setting trains and is scored on: the whole data set, or what
    `derive` makes of it for the setting (written beside `path` with `variant` in the name, read
    with the same image root)."""
    if derive is None:
        return {key: (path, catalog) for key in keys}
    out = {}
    for key in keys:
        derived = path.with_name(f"{path.stem}-{variant}-{key.replace(', split ', '')}.jsonl")
        write_jsonl(derive(catalog, key), derived)
        out[key] = (derived, read_jsonl(derived, image_root=image_root))
    return out


def split_of(key: str, args) -> tuple[str, int]:
    """(split kind, split seed) a setting's runs use: with --train-products the image tags that
    `fewer_training_products` wrote."""
    setting, split_seed = parse_key(key)
    return ("image" if args.train_products else SETTINGS[setting]["split_by"]), split_seed


def backbone_config(args) -> BackboneConfig:
    """Every row's backbone: towers frozen, or the image tower's last blocks trained (`--image-trainable-blocks`)."""
    extra = {"image_trainable_blocks": args.image_trainable_blocks} if args.image_trainable_blocks else {}
    return BackboneConfig(spec=args.backbone, embed_dim=256, extra=extra)


def run_config(method: str, options: dict, catalog: Path, cache: Path, key: str, seed: int, args,
               batches_per_epoch: int) -> RunConfig:
    split_by, split_seed = split_of(key, args)
    return RunConfig(
        method=method,
        method_options=options,
        backbone=backbone_config(args),
        data=DataConfig(catalog=str(catalog), image_root=str(args.image_root), split_by=split_by,
                        test_fraction=0.25, split_seed=split_seed, main_shot_in_batch=args.batches == "main-shot",
                        feature_cache=str(cache)),
        # enough epochs that the cosine schedule ends at `steps`
        optim=OptimConfig(epochs=max(1, math.ceil(args.steps / batches_per_epoch)), batch_size=args.batch_size, lr=args.tower_lr,
                          max_steps=args.steps, warmup_steps=20, log_every=50, checkpoint_every=10**9, device="cpu",
                          seed=seed),
    )


def fill_token_cache(catalog: Catalog, cache: Path, config: BackboneConfig) -> dict:
    """Every image's token grid in the cache (one tower pass per image, shared by all runs), or with
    trained last blocks the frozen front's output."""
    built = build_backbone(config)
    kind = "prefix" if built.has_frozen_image_prefix else "tokens"
    if not cacheable(built, kind):
        return {"not cached": f"{config.spec} trains its whole image tower"}
    tokens = FeatureCache(cache, built, kind=kind)
    pruned = tokens.prune()["rows dropped"]  # a re-extracted data set (new mtimes) leaves a whole stale copy
    paths = [catalog.image_path(image) for _, image in catalog.iter_images()]
    missing = len(tokens.missing(paths))
    started = time.perf_counter()
    tokens.fill(paths, load_rgb, batch_size=32)
    return {"kind": kind, "images": len(paths), "computed_now": missing, "stale_rows_pruned": pruned,
            "seconds": round(time.perf_counter() - started, 1), "namespace": tokens.folder.name}


def tower_suffix(args) -> str:
    """What results files and run folders of trained tower blocks add to their names."""
    if not args.image_trainable_blocks:
        return ""
    lr = "" if args.tower_lr == OptimConfig.lr else f"_lr{args.tower_lr:g}"
    return f"_{args.image_trainable_blocks}_trainable_blocks{lr}"


def tower_training(args) -> str:
    if not args.image_trainable_blocks:
        return "towers frozen"
    return f"text tower frozen, image tower's last {args.image_trainable_blocks} block(s) + head conv trained at lr {args.tower_lr:g}"


def run_folder(runs: Path, key: str, row: str, seed: int) -> Path:
    return runs / key.replace(", split ", "-split") / f"{row.replace(' ', '_').replace(',', '').replace('+', 'p')}-s{seed}"


def batches_per_epoch(split: Split, options: dict, batch_size: int) -> int:
    """About how many batches an epoch has (product-packed batches use `views_per_product` images each)."""
    views = options.get("views_per_product", 1)
    images = [len(p.images) if views == 1 else min(views, len(p.images)) for p in split.train]
    return max(1, math.ceil(sum(images) / batch_size))


def metrics(result: dict, task: str, keys: tuple[str, ...], group: str = "all") -> dict:
    values = result["tasks"][task]["metrics"][group]
    return {k: round(values[k], 4) for k in keys} | {"queries": result["tasks"][task]["n_queries_per_group"][group]}


def evaluate_run(run_dir: Path, catalog: Catalog, cache: Path) -> dict:
    """Every protocol on the run's test side, from the token cache."""
    run = load_run(run_dir)
    test = Split.load(run_dir / "split.json", catalog).test
    embeddings = embed_catalog(run.method, test, cache_dir=cache, progress=False)
    inventory = Inventory.from_embeddings(embeddings, test)
    scorer = EmbeddingScorer(embeddings, inventory)
    out = {}
    for name, options in (("product", ProtocolOptions(coarse_depth=2)),
                          ("product + distractors", ProtocolOptions(coarse_depth=2, gallery_distractors="customer"))):
        result = evaluate("product", inventory, scorer, options)
        out[name] = {level: metrics(result, level, PRODUCT_KEYS) | {"candidates": result["tasks"][level]["n_candidates"]}
                     for level in ("fine", "coarse")}
    full = evaluate("full", inventory, scorer)
    out["full"] = {task: metrics(full, task, ("R@1", "R@5", "R@10")) for task in ("i2t", "t2i")}
    out["full"]["SumR"] = round(full["summary"]["SumR"], 4)
    category = evaluate("category", inventory, scorer)
    out["category"] = {group: metrics(category, "category", ("P@1", "mAP@10"), group) for group in ("all", "leaf")}
    if (run_dir / "gates.json").exists():
        out["gates"] = read_json(run_dir / "gates.json")
    return out


@torch.no_grad()
def index_time_variants(run_dir: Path, catalog: Catalog, cache: Path) -> dict:
    """Product retrieval (fine, setting's gallery) of one eclip run with other text-free image embeddings:
    the saliency-weighted instances (what ECLIP indexes), the most salient query, the plain mean of
    the instances, an oracle that lets each image's own product text select its instance
    (uses the answer: an upper bound on what better saliency could give), and the instances
    without the decoder's term (the token skip alone, for runs with `token_skip`: how much the
    decoder adds)."""
    run = load_run(run_dir)
    method = run.method.eval()
    test = Split.load(run_dir / "split.json", catalog).test
    embeddings = embed_catalog(method, test, cache_dir=cache, progress=False)
    tokens = image_tower_outputs(method, [Path(p) for p in embeddings.image_path], 64, image_cache(method, cache), False)
    texts = torch.from_numpy(embeddings.text)
    text_of = {pid: i for i, pid in enumerate(embeddings.text_product)}
    own = torch.tensor([text_of[pid] for pid in embeddings.image_product])
    variants: dict[str, list[torch.Tensor]] = {"saliency-weighted": [], "most salient query": [], "mean of instances": [],
                                               "oracle: own text selects": []}
    if method.token_proj is not None:
        variants["token skip alone (no decoder term)"] = []
    for start in range(0, len(tokens), 256):
        outputs = tokens[start : start + 256].float()  # tokens, or the tower's frozen front when its last blocks train
        chunk = method.image_tokens(Batch(product_keys=torch.arange(len(outputs)), texts=[""] * len(outputs),
                                          **{CACHED_IMAGE_FIELDS[tower_kind(method)]: outputs}))
        inst = method.instances(Batch(product_keys=torch.arange(len(chunk)), texts=[""] * len(chunk), image_tokens=chunk))
        rows = torch.arange(len(chunk))
        variants["saliency-weighted"].append(saliency_weighted(inst.embeddings, inst.saliency))
        variants["most salient query"].append(inst.embeddings[rows, inst.saliency.argmax(dim=-1)])
        variants["mean of instances"].append(F.normalize(inst.embeddings.mean(dim=1), dim=-1))
        weights, _ = text_selection(inst.embeddings, texts[own[start : start + 256]], method.config.select_temperature)
        variants["oracle: own text selects"].append(F.normalize(torch.einsum("bn,bne->be", weights[rows, rows], inst.embeddings), dim=-1))
        if method.token_proj is not None:
            skip = F.normalize(method.token_proj(token_weights(inst.assignment) @ chunk), dim=-1)
            variants["token skip alone (no decoder term)"].append(saliency_weighted(skip, inst.saliency))
    out = {}
    for name, parts in variants.items():
        emb = replace(embeddings, image=torch.cat(parts).numpy())
        inventory = Inventory.from_embeddings(emb, test)
        result = evaluate("product", inventory, EmbeddingScorer(emb, inventory), ProtocolOptions(coarse_depth=2))
        out[name] = metrics(result, "fine", ("R@1", "mAP@10"))
    return out


def summarise(runs: dict) -> dict:
    """Mean and sample std over seeds of every number, per (setting, row)."""
    def leaves(d: dict, prefix: str = "") -> dict:
        flat = {}
        for k, v in d.items():
            if isinstance(v, dict):
                flat.update(leaves(v, f"{prefix}{k}/"))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                flat[f"{prefix}{k}"] = v
        return flat

    out = {}
    for setting, rows in sorted(runs.items(), key=lambda item: parse_key(item[0])):
        for row in sorted(rows, key=list(ALL_ROWS).index):
            flat = [leaves(r) for r in rows[row].values()]
            keys = [k for k in flat[0] if all(k in f for f in flat)]
            out.setdefault(setting, {})[row] = {
                "seeds": sorted(rows[row]),
                **{k: {"mean": round(float(np.mean([f[k] for f in flat])), 4),
                       "std": round(float(np.std([f[k] for f in flat], ddof=1)), 4) if len(flat) > 1 else None}
                   for k in keys},
            }
    splits = [key for key in out if parse_key(key)[0] == "b" and key != POOLED]
    if len(splits) > 1:
        out[POOLED] = pooled_over_splits([out[key] for key in splits], splits)
    return out


def pooled_over_splits(splits: list[dict], names: list[str]) -> dict:
    """(b) over the product splits, per row that has the same seeds in every split: the mean of the
    splits' means, and as "std" the seeds' spread within a split (root mean square of the splits'
    stds), so that a gap between rows is weighed against training noise, not against how easy
    each split's products are."""
    out = {}
    for row, first in splits[0].items():
        if not all(row in split and split[row]["seeds"] == first["seeds"] for split in splits):
            continue
        keys = [k for k in first if k != "seeds" and all(k in split[row] for split in splits)]
        out[row] = {"seeds": first["seeds"], "splits": names, **{
            k: {"mean": round(float(np.mean([split[row][k]["mean"] for split in splits])), 4),
                "std": None if first[k]["std"] is None else
                round(float(np.sqrt(np.mean([split[row][k]["std"] ** 2 for split in splits]))), 4)}
            for k in keys}}
    return out


def paired_gaps(runs: dict, splits: list[str], name: str, key: str) -> dict:
    """ECLIP minus CLIP run by run, paired on (split, seed) (the same products, seed and batches):
    how many pairs ECLIP wins, and a paired t-test of the mean gap, which a reader may weigh beside
    the spread rule (it treats the pairs as independent draws, which splits of one catalog are not quite)."""
    task, level, metric = key.split("/")
    pairs = [(runs[split]["clip"][seed][task][level][metric], runs[split][name][seed][task][level][metric])
             for split in splits for seed in runs[split][name] if seed in runs[split]["clip"]]
    clip, eclip = map(np.array, zip(*pairs))
    return {"pairs": len(pairs), "eclip ahead in": int((eclip > clip).sum()), "mean gap": round(float((eclip - clip).mean()), 4),
            "std of the gaps": round(float((eclip - clip).std(ddof=1)), 4),
            "paired t-test p (two-sided)": round(float(stats.ttest_rel(eclip, clip).pvalue), 4)}


def verdict(summary: dict, runs: dict) -> dict:
    """ECLIP (the chosen configuration, and every candidate) vs CLIP on customer -> merchant retrieval:
    does the mean gap exceed the larger of the two rows' seed spreads? Over (b)'s splits also the
    run-by-run paired gaps."""
    out = {}
    for setting, rows in summary.items():
        for name in ("eclip (+ inter + intra)", *CANDIDATES):
            if "clip" not in rows or name not in rows:
                continue
            for key in ("product/fine/R@1", "product/fine/mAP@10"):
                clip, eclip = rows["clip"][key], rows[name][key]
                spread = max(clip["std"] or 0.0, eclip["std"] or 0.0)
                gap = eclip["mean"] - clip["mean"]
                out[f"{setting}: {name} vs clip: {key}"] = {
                    "clip": clip["mean"], "eclip": eclip["mean"], "gap": round(gap, 4), "largest std": spread,
                    "seeds": len(rows[name]["seeds"]), "eclip wins by more than the spread": gap > spread}
                if setting == POOLED:
                    gaps = [summary[split][name][key]["mean"] - summary[split]["clip"][key]["mean"] for split in rows[name]["splits"]]
                    out[f"{setting}: {name} vs clip: {key}"]["eclip ahead on splits"] = f"{sum(g > 0 for g in gaps)} of {len(gaps)}"
                    out[f"{setting}: {name} vs clip: {key}"]["paired runs"] = paired_gaps(runs, rows[name]["splits"], name, key)
    return out


TABLE = (("fine R@1", "product/fine/R@1"), ("fine mAP@10", "product/fine/mAP@10"), ("coarse R@1", "product/coarse/R@1"),
         ("coarse mAP@10", "product/coarse/mAP@10"), ("+distr. fine R@1", "product + distractors/fine/R@1"),
         ("T2I R@1", "full/t2i/R@1"), ("T2I R@10", "full/t2i/R@10"), ("category mAP@10", "category/all/mAP@10"))


def print_table(summary: dict) -> None:
    """Markdown: mean ± std (in %) over the seeds of every (setting, row)."""
    for setting, rows in summary.items():
        what = ("mean over the product splits; ± = the seeds' spread within a split (root mean square)" if setting == POOLED
                else SETTINGS[parse_key(setting)[0]]["what"])
        print(f"\nsetting ({setting}): {what}\n")
        print("| row | seeds | " + " | ".join(name for name, _ in TABLE) + " |")
        print("|---" * (len(TABLE) + 2) + "|")
        for row, values in rows.items():
            cells = [f"{100 * values[k]['mean']:.1f}" + (f" ± {100 * values[k]['std']:.1f}" if values[k]["std"] is not None else "")
                     if k in values else "" for _, k in TABLE]
            print(f"| {row} | {len(values['seeds'])} | " + " | ".join(cells) + " |")


def update_results(path: Path, results: dict, change) -> None:
    """Apply `change` to the results file under a lock (several processes may share it, each running
    other rows), keeping what the others wrote; `results` (settings, machine) is this process's."""
    with open(Path(tempfile.gettempdir()) / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_json(path) if path.exists() else {}
        if current.get("settings") != results["settings"]:
            current = {}
        current.update({k: v for k, v in results.items() if k not in ("runs", "index_time_variants")})
        current.setdefault("runs", {})
        change(current)
        current["summary"] = summarise(current["runs"])
        current["verdict"] = verdict(current["summary"], current["runs"])
        current["machine"]["load_average_end"] = round(os.getloadavg()[0], 1)
        atomic_write_json(path, current)
        results.update(current)


def record(path: Path, results: dict, setting: str, row: str, seed: int, out: dict) -> None:
    def add(current: dict) -> None:
        current["runs"].setdefault(setting, {}).setdefault(row, {})[str(seed)] = out

    update_results(path, results, add)


def print_row(setting: str, row: str, seed: int, r: dict) -> None:
    fine, coarse, dis = r["product"]["fine"], r["product"]["coarse"], r["product + distractors"]["fine"]
    print(f"[{setting}] {row:30s} seed {seed}: fine R@1 {100 * fine['R@1']:5.1f} mAP@10 {100 * fine['mAP@10']:5.1f} | "
          f"coarse R@1 {100 * coarse['R@1']:5.1f} | +distractors fine R@1 {100 * dis['R@1']:5.1f} | "
          f"T2I R@1 {100 * r['full']['t2i']['R@1']:5.1f} | category mAP@10 {100 * r['category']['all']['mAP@10']:5.1f} "
          f"| {r['train_seconds']} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/grocery-store"))
    parser.add_argument("--work", type=Path, default=Path("out/eclip_grocery"))
    parser.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: WORK/featcache)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--product-splits", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="split seeds of setting (b): each holds out another 25%% of the products")
    parser.add_argument("--train-products", type=int, default=None,
                        help="(b) with only this many of each split's training products, the held-out ones unchanged "
                             f"(results: {TRAIN_PRODUCTS.name.format(n='N', batches='')})")
    parser.add_argument("--batches", choices=list(BATCHES), default="main-shot",
                        help="every row's batches: random images, each product bringing its web shot (main-shot), "
                             "or random images alone (results named with _random_batches)")
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ALL_ROWS),
                        help="default: the table's rows, with --select the candidates")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-trainable-blocks", type=int, default=0,
                        help="train the image tower's last N blocks (and head conv) in every row, from a cache of "
                             "its frozen front (results named with _N_trainable_blocks)")
    parser.add_argument("--tower-lr", type=float, default=OptimConfig.lr,
                        help="learning rate of the trained tower blocks (the heads and decoder keep theirs)")
    parser.add_argument("--backbone", default="twotower", help="`tiny` for a quick check of the pipeline")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"default {RESULTS.name.format(batches='')}, with --select "
                             f"{SELECTION.name.format(steps='STEPS', batches='')}")
    parser.add_argument("--select", action="store_true",
                        help="train and score on the validation catalogs (val photos; products carved from the "
                             "training ones) to choose settings; test photos and held-out products stay unseen")
    parser.add_argument("--diagnose", action="store_true",
                        help="then score the eclip runs' index-time variants (saliency, argmax, mean, text oracle)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.work / "featcache"
    catalog_path, args.image_root = grocery_catalog(args.data, args.work)
    catalog = read_jsonl(catalog_path, image_root=args.image_root)
    if args.select and args.train_products:
        parser.error("--select and --train-products do not combine")
    template = SELECTION if args.select else TRAIN_PRODUCTS if args.train_products else RESULTS
    suffix = BATCHES[args.batches] + tower_suffix(args)
    args.results = args.results or Path(str(template).format(steps=args.steps, n=args.train_products, batches=suffix))
    keys = setting_keys(args.settings, args.product_splits)
    variant, derive = (("val", validation_catalog) if args.select else
                       (f"{args.train_products}products", partial(fewer_training_products, n=args.train_products))
                       if args.train_products else ("runs", None))
    catalogs = setting_catalogs(catalog, catalog_path, args.image_root, keys, variant, derive)
    runs = args.work / (("select" if args.select else variant) + suffix)
    settings = {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads, "batches": args.batches,
                "backbone": f"{args.backbone} ({tower_training(args)}), 224 px, embed_dim 256",
                "eclip_options": BASE if args.select else ECLIP, "text": "title. description",
                "product protocol": "queries = customer photos of the test side; gallery = its merchant shots; coarse = "
                                    "same Top > Coarse; '+ distractors' adds the other products' customer photos "
                                    "(never relevant) to the gallery",
                "settings": SETTINGS, "scored on": "validation" if args.select else "test",
                **({"training products per split": args.train_products} if args.train_products else {})}
    results = read_json(args.results) if args.results.exists() else {}
    if results.get("settings") != settings:
        results = {"settings": settings, "runs": {}}
    results["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "note": "a shared 2-core machine",
                          "load_average_start": round(os.getloadavg()[0], 1)}
    results["token_cache"] = fill_token_cache(catalog, cache, backbone_config(args))
    print("token cache:", results["token_cache"], flush=True)
    args.rows = args.rows or (["clip", *CANDIDATES] if args.select else list(ROWS))
    todo = [(key, row, seed) for tier in TIERS for seed in args.seeds for key in keys
            for row in tier if row in args.rows]
    for key, row, seed in todo:
        if str(seed) in results["runs"].get(key, {}).get(row, {}):
            continue
        method, options = ALL_ROWS[row]
        run_dir = run_folder(runs, key, row, seed)
        shutil.rmtree(run_dir, ignore_errors=True)
        key_path, key_catalog = catalogs[key]
        split_by, split_seed = split_of(key, args)
        split = make_split(key_catalog, split_by, 0.25, split_seed)
        config = run_config(method, options, key_path, cache, key, seed, args,
                            batches_per_epoch(split, options, args.batch_size))
        started = time.perf_counter()
        trained = train(config, run_dir, progress=False)
        out = {"steps": trained.steps, "last_loss": round(trained.last_loss, 4),
               "train_seconds": round(time.perf_counter() - started, 1), **evaluate_run(run_dir, key_catalog, cache)}
        print_row(key, row, seed, out)
        record(args.results, results, key, row, seed, out)
    if args.diagnose:
        for key, row, seed in todo:
            if ALL_ROWS[row][0] == "eclip" and str(seed) in results["runs"].get(key, {}).get(row, {}):
                variants = index_time_variants(run_folder(runs, key, row, seed), catalogs[key][1], cache)
                print(f"[{key}] {row} seed {seed} index-time variants:", json.dumps(variants), flush=True)
                update_results(args.results, results, lambda current: current.setdefault("index_time_variants", {})
                               .setdefault(key, {}).setdefault(row, {}).__setitem__(str(seed), variants))
    print_table(results.get("summary", {}))
    print(json.dumps(results.get("verdict", {}), indent=1))


if __name__ == "__main__":
    main()
