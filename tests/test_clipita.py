"""CLIP-ITA: the multi-positive category loss, the fused product encoder, and what it learns."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl, write_jsonl
from catalogclip.embed import embed_catalog, embed_fused_products
from catalogclip.evaluate.baselines import text_baseline
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.batch import Batch
from catalogclip.models.category import MAX_CATEGORY_DEPTH, category_keys, category_positive_mask
from catalogclip.models.methods import build_method
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.catalog.schema import category_nodes
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

# a 3-level tree with 4 leaves; each leaf has its own image colour where the image carries the category
LEAVES = {
    ("Apparel", "Topwear", "Shirts"): (220, 40, 40),
    ("Apparel", "Bottomwear", "Jeans"): (40, 180, 60),
    ("Footwear", "Shoes", "Sneakers"): (40, 70, 220),
    ("Footwear", "Flats", "Sandals"): (230, 210, 40),
}
BRANDS = ["Acme", "Zeta", "Orbit", "Nova", "Pico"]


def tiny_method(**options):
    return build_method("clipita", BackboneConfig(spec="tiny", embed_dim=16), options)


# --- the loss --------------------------------------------------------------------------------


def test_positive_mask_comes_from_paths_not_only_equal_nodes():
    # row 1 sampled the root "A": it is a positive of row 0 too (A lies on A > B), not of row 2
    nodes, on_path = category_keys(["A > B", "A", "D"], [category_nodes(["A", "B"]), category_nodes(["A", "C"]), ["D"]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(category_positive_mask(nodes, on_path), expected)


def test_rows_without_a_category_are_positives_of_nothing():
    nodes, on_path = category_keys(["", "A"], [[], ["A"]])
    torch.testing.assert_close(category_positive_mask(nodes, on_path), torch.tensor([[0.0, 0.0], [0.0, 1.0]]))


def test_paths_deeper_than_supported_are_refused():
    path = [f"L{i}" for i in range(MAX_CATEGORY_DEPTH + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_CATEGORY_DEPTH} levels"):
        category_keys(["L0"], [category_nodes(path)])


def test_loss_matches_hand_computed_value_and_trains_the_temperature():
    """Categories c_i = e_i, products p_j given, temperature 1: logits L[i, j] = p_j[i].

    L = [[.6, 0, 0], [.8, .6, 0], [0, .8, 1]]; positives (node on path) P = [[1,0,0], [1,1,0], [0,0,1]].
    category -> product rows:  -log(sum_P e^L / sum e^L) per row, then the same over columns.
    """
    method = tiny_method(variant="I")
    categories = torch.eye(3)
    products = torch.tensor([[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])
    method.embed_categories = lambda paths: categories
    method.embed_products = lambda batch: products
    with torch.no_grad():
        method.logit_scale.fill_(0.0)
    batch = Batch(
        product_keys=torch.arange(3), texts=["", "", ""], categories=["A > B", "A", "D"],
        category_path_nodes=[category_nodes(["A", "B"]), category_nodes(["A", "C"]), ["D"]],
    )
    e = math.exp
    rows = [
        -math.log(e(0.6) / (e(0.6) + 2)),
        -math.log((e(0.8) + e(0.6)) / (e(0.8) + e(0.6) + 1)),
        -math.log(e(1.0) / (1 + e(0.8) + e(1.0))),
    ]
    columns = [
        -math.log((e(0.6) + e(0.8)) / (e(0.6) + e(0.8) + 1)),
        -math.log(e(0.6) / (1 + e(0.6) + e(0.8))),
        -math.log(e(1.0) / (2 + e(1.0))),
    ]
    loss = method.loss(batch)["loss"]
    assert float(loss.detach()) == pytest.approx((sum(rows) / 3 + sum(columns) / 3) / 2, rel=1e-5)
    loss.backward()
    assert method.logit_scale.grad is not None and float(method.logit_scale.grad) != 0.0


def test_loss_needs_category_paths():
    method = tiny_method(variant="I")
    batch = Batch(product_keys=torch.arange(2), texts=["a", "b"], images=torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="no categories"):
        method.loss(batch)


# --- configuration and the product encoder ----------------------------------------------------


@pytest.mark.parametrize("option, value", [("variant", "TI"), ("fusion", "concat")])
def test_bad_settings_are_named(option, value):
    with pytest.raises(ValueError, match=f"clipita {option} must be one of .*got '{value}'"):
        tiny_method(**{option: value})


def test_product_text_is_the_title_and_flags_ask_for_categories_and_attributes():
    method = tiny_method()
    product = Product("p", "Puma Men Shoes", "a long description", attributes={"brand": "Puma"})
    assert method.product_text(product) == "Puma Men Shoes"
    assert method.trains_on_categories and method.uses_attribute_text


def _batch(texts: list[str], attributes: list[str]) -> Batch:
    torch.manual_seed(0)
    return Batch(product_keys=torch.arange(len(texts)), texts=texts, image_features=torch.randn(len(texts), 64),
                 attribute_texts=attributes)


@pytest.mark.parametrize("fusion", ["weighted", "mlp"])
def test_fusion_starts_as_the_mean_of_the_parts_a_product_has(fusion):
    torch.manual_seed(0)
    method = tiny_method(variant="ITA", fusion=fusion).eval()
    batch = _batch(["red shirt", "blue jeans"], ["brand: Acme", ""])  # the second product has no attributes
    backbone = method.backbone
    with torch.no_grad():
        image = torch.nn.functional.normalize(backbone.project_image(batch.image_features), dim=-1)
        attrs = torch.nn.functional.normalize(backbone.encode_text(batch.attribute_texts), dim=-1)
        title = torch.nn.functional.normalize(backbone.encode_text(batch.texts), dim=-1)
        expected = torch.stack([(image[0] + attrs[0] + title[0]) / 3, (image[1] + title[1]) / 2])
        torch.testing.assert_close(method.embed_products(batch), torch.nn.functional.normalize(expected, dim=-1))


def test_variant_i_ignores_text_and_ia_needs_attribute_texts():
    torch.manual_seed(0)
    image_only = tiny_method(variant="I").eval()
    a, b = _batch(["red shirt"], ["brand: Acme"]), _batch(["blue jeans"], ["brand: Zeta"])
    torch.testing.assert_close(image_only.embed_products(a), image_only.embed_products(b))
    with pytest.raises(ValueError, match="variant IA needs the batch's attribute texts"):
        tiny_method(variant="IA").embed_products(Batch(torch.arange(1), ["x"], image_features=torch.randn(1, 64)))


def test_frozen_text_tower_encodes_each_distinct_string_once():
    method = build_method("clipita", BackboneConfig(spec="tiny", embed_dim=16, freeze_text=True), {})
    calls = []
    tower = method.backbone.text_features
    method.backbone.text_features = lambda texts: calls.append(list(texts)) or tower(texts)
    first = method.embed_categories(["A", "A > B", "A"])
    again = method.embed_categories(["A > B", "C"])
    assert calls == [["A", "A > B"], ["C"]]
    torch.testing.assert_close(first[1], again[0])


def test_the_frozen_text_memo_is_bounded(monkeypatch):
    """A service encodes every distinct shopper query through it: the least recently used go."""
    from cachetools import LRUCache

    from catalogclip.models import category

    monkeypatch.setattr(category, "_FROZEN_TEXT_FEATURES", LRUCache(maxsize=2))
    method = build_method("clipita", BackboneConfig(spec="tiny", embed_dim=16, freeze_text=True), {})
    calls = []
    tower = method.backbone.text_features
    method.backbone.text_features = lambda texts: calls.append(list(texts)) or tower(texts)
    wide = method.embed_categories(["A", "B", "C", "A"])  # more distinct strings than the memo holds
    assert len(category._FROZEN_TEXT_FEATURES) == 2
    torch.testing.assert_close(wide[0], wide[3])
    again = method.embed_categories(["A", "C"])  # "A" was pushed out, "C" is still there
    assert calls == [["A", "B", "C"], ["A"]]
    torch.testing.assert_close(again, wide[[0, 2]])


# --- embedding a catalog ------------------------------------------------------------------------


def _solid(path: Path, colour: tuple[int, int, int], rng: random.Random) -> None:
    noisy = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in colour)
    Image.new("RGB", (32, 32), noisy).save(path)


def test_embed_catalog_fills_one_fused_vector_per_product_from_its_merchant_image(tmp_path):
    rng = random.Random(0)
    for name, colour in [("c", (200, 0, 0)), ("m", (0, 0, 200)), ("x", (0, 200, 0))]:
        _solid(tmp_path / f"{name}.png", colour, rng)
    products = [
        Product("p1", "red shirt", images=[ImageRef("c.png", "customer"), ImageRef("m.png", "merchant")],
                attributes={"brand": "Acme"}, category_path=["Apparel", "Shirts"]),
        Product("p2", "green jeans", images=[ImageRef("x.png", "customer")], category_path=["Apparel", "Jeans"]),
    ]
    catalog = Catalog(products, tmp_path)
    method = tiny_method(variant="ITA").eval()
    emb = embed_catalog(method, catalog, progress=False)
    assert emb.product.shape == (2, 16) and list(emb.text_product) == ["p1", "p2"]
    transform = method.backbone.image_transform(train=False)
    with torch.no_grad():
        pixels = torch.stack([transform(Image.open(tmp_path / name).convert("RGB")) for name in ("m.png", "x.png")])
        features = method.backbone.image_features(pixels)
    expected = embed_fused_products(method, products, list(features))
    np.testing.assert_allclose(emb.product, expected, atol=1e-5)
    assert sorted(emb.category_path) == ["Apparel", "Apparel > Jeans", "Apparel > Shirts"]
    assert embed_catalog(build_method("clip", BackboneConfig(spec="tiny", embed_dim=16)), catalog, progress=False).product is None


# --- what it learns -------------------------------------------------------------------------------


def write_category_catalog(folder: Path, signal: str, copies: int = 12, seed: int = 0) -> Path:
    """4 leaves x `copies` products. `signal` says where the category shows: "image" (the leaf's
    colour; titles are brand + a number) or "title" (the leaf's name; image colours are random)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    products = []
    for leaf, colour in LEAVES.items():
        for k in range(copies):
            pid = f"{leaf[-1].lower()}-{k}"
            brand = rng.choice(BRANDS)
            _solid(folder / f"{pid}.png", colour if signal == "image" else rng.choice(list(LEAVES.values())), rng)
            title = f"{brand} {leaf[-1].lower()} {k}" if signal == "title" else f"{brand} item {rng.randint(100, 999)}"
            products.append(Product(pid, title, images=[ImageRef(f"{pid}.png")], attributes={"brand": brand},
                                    category_path=list(leaf)))
    return write_jsonl(Catalog(products, folder), folder / "catalog.jsonl")


def train_clipita(catalog: Path, out: Path, variant: str, epochs: int = 20) -> Path:
    config = RunConfig(
        method="clipita",
        method_options={"variant": variant, "hidden": 32},
        backbone=BackboneConfig(spec="tiny", embed_dim=32),
        data=DataConfig(catalog=str(catalog), test_fraction=0.4),
        optim=OptimConfig(epochs=epochs, batch_size=15, lr=3e-3, head_lr=3e-3, warmup_steps=5, log_every=10**6,
                          checkpoint_every=10**6),
    )
    train(config, out, progress=False)
    return out


def category_map(scorer_of, run_dir: Path, catalog_path: Path) -> float:
    """mAP@10 of the `category` protocol (every node of the tree) over the run's held-out products."""
    test = read_jsonl(catalog_path).subset(load_run(run_dir).split_ids()["test"])
    inventory, scorer = scorer_of(test)
    return evaluate("category", inventory, scorer)["tasks"]["category"]["metrics"]["all"]["mAP@10"]


def clipita_map(run_dir: Path, catalog_path: Path) -> float:
    def scorer_of(test: Catalog):
        emb = embed_catalog(load_run(run_dir).method, test, progress=False)
        inventory = Inventory.from_embeddings(emb, test)
        return inventory, EmbeddingScorer(emb, inventory)

    return category_map(scorer_of, run_dir, catalog_path)


def bm25_map(run_dir: Path, catalog_path: Path) -> float:
    """The text-only baseline: BM25 of the category path against title + attribute values."""
    def scorer_of(test: Catalog):
        inventory = Inventory.from_catalog(test)
        return inventory, text_baseline("bm25", inventory)

    return category_map(scorer_of, run_dir, catalog_path)


def test_image_variant_finds_categories_that_only_images_show(tmp_path):
    catalog = write_category_catalog(tmp_path / "data", signal="image")
    run = train_clipita(catalog, tmp_path / "run", "I")
    image_map, text_map = clipita_map(run, catalog), bm25_map(run, catalog)
    assert text_map < 0.5  # titles say nothing: near chance (roots, holding half the products, lift it)
    assert image_map > 0.9
    assert image_map > text_map + 0.3


def test_title_makes_ita_beat_image_only_when_the_title_carries_the_category(tmp_path):
    catalog = write_category_catalog(tmp_path / "data", signal="title")
    image_only = clipita_map(train_clipita(catalog, tmp_path / "i", "I"), catalog)
    ita = clipita_map(train_clipita(catalog, tmp_path / "ita", "ITA"), catalog)
    assert image_only < 0.5  # random colours: chance
    assert ita > 0.75
    assert ita > image_only + 0.3
