"""Two probes behind the README's Grocery Store findings that are not options of the library:

- `decoder-lr FACTOR`: the chosen-before-one-layer ECLIP (`SOFT` in eclip_grocery.py) with its
  decoder, instance projection and saliency head at FACTOR x the head learning rate, on the
  validation catalogs (the optimiser's parameter groups patched here); every other argument goes
  to eclip_grocery.py, results in `eclip_grocery_probe_decoder_lr<FACTOR>.json`;
- `gallery-text RUNS`: for the (b) runs of `clip` and `eclip (+ inter + intra)` under RUNS
  (eclip_grocery.py's run folders), product retrieval with the web shots embedded otherwise:
  CLIP's and ECLIP's with the product's own text added, ECLIP's with the text weighing the web
  shot's instances (what an index could do: it knows its products' texts; the queries stay
  text-free), results in `eclip_grocery_probe_gallery_text.json`.

    python benchmarks/eclip_grocery_probes.py decoder-lr 0.1 --select --batches random --seeds 0 1
    python benchmarks/eclip_grocery_probes.py gallery-text out/eclip_grocery/runs_random_batches
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import eclip_grocery as eg
from catalogclip.catalog.schema import read_jsonl
from catalogclip.catalog.splits import Split
from catalogclip.embed import embed_catalog, image_tower_outputs
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, ProtocolOptions, evaluate
from catalogclip.io import atomic_write_json
from catalogclip.models.batch import Batch
from catalogclip.models.instance import text_selection
from catalogclip.train import trainer
from catalogclip.train.data import image_cache
from catalogclip.train.runs import load_run

RESULTS = Path(__file__).parent / "results"
DECODER_PARTS = ("decoder.", "instance_proj.", "saliency.")


def decoder_lr(factor: float, argv: list[str]) -> None:
    """eclip_grocery.py's main on one extra candidate whose decoder parts learn at `factor` x."""
    new_parts = trainer.parameter_groups

    def groups(method, lr, head_lr, weight_decay):
        out = new_parts(method, lr, head_lr, weight_decay)
        decoder = {id(p) for name, p in method.named_parameters() if name.startswith(DECODER_PARTS)}
        out[0]["params"] = [p for p in out[0]["params"] if id(p) not in decoder]
        params = [p for name, p in method.named_parameters() if name.startswith(DECODER_PARTS) and p.requires_grad]
        return [*out, {"params": params, "lr": head_lr * factor, "weight_decay": weight_decay}]

    trainer.parameter_groups = groups
    name = f"eclip, n_queries 2, select_temperature 1, decoder lr x{factor}"
    eg.CANDIDATES[name] = eg.ALL_ROWS[name] = ("eclip", eg.SOFT)
    eg.TIERS = (tuple(eg.ALL_ROWS),)
    sys.argv = [sys.argv[0], *argv, "--rows", name, "--results", str(RESULTS / f"eclip_grocery_probe_decoder_lr{factor}.json")]
    eg.main()


def product_r1(embeddings, test) -> float:
    inventory = Inventory.from_embeddings(embeddings, test)
    result = evaluate("product", inventory, EmbeddingScorer(embeddings, inventory), ProtocolOptions(coarse_depth=2))
    return round(result["tasks"]["fine"]["metrics"]["all"]["R@1"], 4)


@torch.no_grad()
def gallery_variants(run_dir: Path, catalog) -> dict[str, float]:
    """Fine R@1 of one run with its web shots embedded as they are, with their product's text
    added, and (ECLIP) with that text weighing their instances."""
    run = load_run(run_dir)
    method, cache = run.method.eval(), run.feature_cache_dir()
    test = Split.load(run_dir / "split.json", catalog).test
    emb = embed_catalog(method, test, cache_dir=cache, progress=False)
    source = {str(test.image_path(image)): image.source for product in test for image in product.images}
    merchant = torch.from_numpy(np.array([source.get(str(p)) == "merchant" for p in emb.image_path]))
    texts = torch.from_numpy(emb.text)
    text_of = {pid: i for i, pid in enumerate(emb.text_product)}
    own = torch.tensor([text_of[pid] for pid in emb.image_product])
    images = torch.from_numpy(emb.image)
    with_text = images.clone()
    with_text[merchant] = F.normalize(images[merchant] + texts[own[merchant]], dim=-1)
    out = {"as indexed": product_r1(emb, test), "web shots + own text": product_r1(replace(emb, image=with_text.numpy()), test)}
    if hasattr(method, "instances"):
        rows = torch.nonzero(merchant).flatten()
        tokens = image_tower_outputs(method, [Path(emb.image_path[r]) for r in rows.tolist()], 64, image_cache(method, cache), False)
        inst = method.instances(Batch(product_keys=torch.arange(len(rows)), texts=[""] * len(rows), image_tokens=tokens.float()))
        weights, _ = text_selection(inst.embeddings, texts[own[rows]], method.config.select_temperature)
        diagonal = torch.arange(len(rows))
        selected = images.clone()
        selected[rows] = F.normalize(torch.einsum("bn,bne->be", weights[diagonal, diagonal], inst.embeddings), dim=-1)
        out["web shots' instances weighed by own text"] = product_r1(replace(emb, image=selected.numpy()), test)
    return out


def gallery_text(runs: Path, data: Path, seeds: list[int]) -> None:
    catalog_path, image_root = eg.grocery_catalog(data, runs.parent)
    catalog = read_jsonl(catalog_path, image_root=image_root)
    per_run: dict = {}
    results: dict[str, list[dict]] = {}
    for key in eg.setting_keys(["b"], [0, 1, 2, 3, 4]):
        for row in ("clip", "eclip (+ inter + intra)"):
            for seed in seeds:
                result = gallery_variants(eg.run_folder(runs, key, row, seed), catalog)
                per_run.setdefault(row, {}).setdefault(key, {})[str(seed)] = result
                results.setdefault(row, []).append(result)
                print(key, row, seed, result, flush=True)
    means = {row: {name: round(float(np.mean([r[name] for r in rs])), 4) for name in rs[0]} for row, rs in results.items()}
    atomic_write_json(RESULTS / "eclip_grocery_probe_gallery_text.json",
                      {"runs": str(runs), "what": "fine R@1, (b) customer photos -> web shots, mean over 5 splits x seeds",
                       "mean": means, "per_run": per_run})
    print(means)


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1:2] == ["decoder-lr"]:
        decoder_lr(float(sys.argv[2]), sys.argv[3:])
    elif sys.argv[1:2] == ["gallery-text"]:
        gallery_text(Path(sys.argv[2]), Path("../shared/datasets/grocery-store"), [0, 1, 2])
    else:
        sys.exit(__doc__)
