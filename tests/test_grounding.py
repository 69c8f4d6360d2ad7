"""ECLIP's evaluation protocols: zero-shot grounding (boxes from maps) and product retrieval."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from catalogclip.catalog.schema import Catalog, ImageRef, Product
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.grounding import box_from_map, evaluate_grounding, grounding_maps, iou
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, ProtocolOptions, evaluate
from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.models.batch import Batch
from catalogclip.models.methods import CLIPMethod, MethodConfig, build_method

# --- boxes --------------------------------------------------------------------------------------


def test_iou_by_hand():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_box_of_a_block_covers_its_cells():
    attention = np.zeros((4, 4))
    attention[1:3, 2:4] = 1.0  # rows 1-2, columns 2-3 of a 4x4 grid over a 64 px image: 16 px cells
    assert box_from_map(attention, (0, 0, 64, 64)) == pytest.approx((32, 16, 64, 48))


def test_box_is_placed_in_the_visible_part_of_the_image():
    attention = np.zeros((4, 4))
    attention[1:3, 2:4] = 1.0
    # a 96 x 64 image centre-cropped to its middle 64 x 64: the grid starts 16 px in
    assert box_from_map(attention, (16, 0, 80, 64)) == pytest.approx((48, 16, 80, 48))


def test_region_rules_differ_on_a_long_faint_and_a_small_strong_region():
    attention = np.zeros((8, 8))
    attention[1:7, 0] = 0.7  # a long faint strip on the left edge
    attention[3:5, 5:7] = 1.0  # a strong 2x2 block (8 px cells)
    by_mass = box_from_map(attention, (0, 0, 64, 64), region="mass")
    by_area = box_from_map(attention, (0, 0, 64, 64), region="area")
    assert by_mass == pytest.approx((40, 24, 56, 40))
    assert by_area[0] == 0 and by_area[2] < 16 and by_area[3] - by_area[1] > 40


def test_bad_box_settings_are_refused():
    with pytest.raises(ValueError, match="unknown region rule 'biggest'"):
        box_from_map(np.ones((2, 2)), (0, 0, 8, 8), region="biggest")
    with pytest.raises(ValueError, match="threshold must be in"):
        box_from_map(np.ones((2, 2)), (0, 0, 8, 8), threshold=0.0)


# --- the grounding protocol ---------------------------------------------------------------------


class RednessGrounder(CLIPMethod):
    """Grounds every text on the red part of the image: a stand-in whose right answer is known."""

    def grounding_maps(self, batch: Batch, texts: torch.Tensor) -> torch.Tensor:
        h, _ = self.backbone.token_grid()
        redness = batch.images[:, 0] - batch.images[:, 1]
        return F.adaptive_avg_pool2d(redness, h)


def _red_box_catalog(folder: Path, boxes: list[tuple[int, int, int, int]], claimed: list[tuple]) -> Catalog:
    """Grey 64 px images with a red rectangle at `boxes`; the catalog claims `claimed` boxes."""
    products = []
    for k, (box, bbox) in enumerate(zip(boxes, claimed)):
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(230, 20, 20))
        image.save(folder / f"p{k}.png")
        products.append(Product(f"p{k}", f"red thing {k}", images=[ImageRef(f"p{k}.png", "customer", bbox)]))
    return Catalog(products, folder)


def test_grounding_protocol_scores_boxes_against_the_ground_truth(tmp_path):
    torch.manual_seed(0)
    method = RednessGrounder(build_backbone(BackboneConfig(spec="tiny", embed_dim=16)), MethodConfig())
    boxes = [(8, 8, 32, 40), (32, 24, 64, 56), (0, 40, 24, 64)]
    # the third product's catalog box is wrong (the other corner): its IoU is 0
    catalog = _red_box_catalog(tmp_path, boxes, [boxes[0], boxes[1], (40, 0, 64, 24)])
    result = evaluate_grounding(method, catalog, progress=False)
    assert result["n"] == 3
    assert result["Acc@0.5"] == pytest.approx(2 / 3) and result["Acc@0.7"] == pytest.approx(2 / 3)
    assert result["by_source"]["customer"]["n"] == 3
    assert result["mIoU"] == pytest.approx(2 / 3)  # boxes on 8 px cell edges are found exactly


@pytest.mark.parametrize("method_name", ["clip", "eclip"])
def test_grounding_from_cached_tokens_equals_grounding_from_pixels(tmp_path, method_name):
    torch.manual_seed(0)
    options = {"decoder_dim": 16, "n_queries": 3, "heads": 2} if method_name == "eclip" else {}
    method = build_method(method_name, BackboneConfig(spec="tiny", embed_dim=16, freeze_image=True), options)
    boxes = [(8, 8, 32, 40), (32, 24, 64, 56), (0, 40, 24, 64)]
    catalog = _red_box_catalog(tmp_path, boxes, boxes)
    from_pixels = evaluate_grounding(method, catalog, progress=False)
    from_cache = evaluate_grounding(method, catalog, cache_dir=tmp_path / "cache", progress=False)
    assert from_cache["mIoU"] == pytest.approx(from_pixels["mIoU"], abs=0.02)  # the cache keeps float16
    assert any((tmp_path / "cache").rglob("shard-*.npy"))


def test_grounding_needs_boxes(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    catalog = Catalog([Product("a", "a thing", images=[ImageRef("a.png")])], tmp_path)
    method = build_method("clip", BackboneConfig(spec="tiny", embed_dim=16))
    with pytest.raises(ValueError, match="no image with a ground-truth box"):
        evaluate_grounding(method, catalog, progress=False)


def test_methods_without_a_decoder_ground_with_dense_token_similarity():
    torch.manual_seed(0)
    method = build_method("clip", BackboneConfig(spec="tiny", embed_dim=16)).eval()
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    maps = grounding_maps(method, [image], ["green shirt"])
    assert maps.shape == (1, *method.backbone.token_grid())
    with torch.no_grad():
        pixels = method.backbone.image_transform()(image)[None]
        token = method.backbone.image_tokens(pixels)[0, 5]  # cell (0, 5) of the 8x8 grid
        expected = F.cosine_similarity(method.backbone.project_image(token), method.backbone.encode_text(["green shirt"])[0], dim=0)
    assert maps[0, 0, 5] == pytest.approx(float(expected), abs=1e-5)


# --- the product protocol -----------------------------------------------------------------------


def _catalog_with_sources() -> Catalog:
    def product(pid: str, leaf: str, sources: tuple[str, ...]) -> Product:
        images = [ImageRef(f"{pid}_{k}.jpg", s) for k, s in enumerate(sources)]
        return Product(pid, f"title {pid}", images=images, category_path=["Root", leaf])

    return Catalog([
        product("a", "Shirts", ("merchant", "customer")),
        product("b", "Shirts", ("merchant", "customer")),
        product("c", "Shoes", ("merchant", "merchant", "customer")),
    ])


def _embeddings(catalog: Catalog, image: list[list[float]]) -> Embeddings:
    rows = list(catalog.iter_images())
    vectors = np.asarray(image, dtype=np.float32)
    return Embeddings(
        image=vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        image_product=np.array([catalog.products[i].id for i, _ in rows]),
        image_source=np.array([im.source for _, im in rows]),
        image_path=np.array([im.path for _, im in rows]),
        text=np.eye(3, 3, dtype=np.float32),
        text_product=np.array([p.id for p in catalog]),
    )


def _product_eval(catalog: Catalog, emb: Embeddings, **options) -> dict:
    inventory = Inventory.from_embeddings(emb, catalog)
    return evaluate("product", inventory, EmbeddingScorer(emb, inventory), ProtocolOptions(**options))


def test_product_retrieval_customer_to_merchant_by_hand():
    catalog = _catalog_with_sources()
    # rows: a_m, a_c, b_m, b_c, c_m0, c_m1, c_c
    emb = _embeddings(catalog, [
        [1, 0, 0], [0.9, 0.1, 0],  # a's customer shot is closest to a's merchant shot: rank 1
        [0, 1, 0], [0.8, 0.6, 0],  # b's customer shot: a_m (0.8) > b_m (0.6): rank 2
        [0, 0, 1], [0.5, 0, 0.5], [0.7, 0, 0.3],  # c's customer shot: worked out below
    ])
    result = _product_eval(catalog, emb)
    fine, coarse = result["tasks"]["fine"], result["tasks"]["coarse"]
    assert fine["n_queries"] == 3 and fine["n_candidates"] == 4
    c_c = np.array([0.7, 0, 0.3]) / np.linalg.norm([0.7, 0, 0.3])
    gallery = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5 ** 0.5, 0, 0.5 ** 0.5]])
    order = np.argsort(-(gallery @ c_c), kind="stable").tolist()
    c_ranks = sorted(order.index(g) + 1 for g in (2, 3))  # c's merchant shots: gallery rows 2 and 3
    assert c_ranks == [1, 3]  # c_m1 (.928) first, then a_m (.919), then c_m0 (.394)
    expected_r1 = (1 + 0 + 1) / 3
    assert fine["metrics"]["all"]["R@1"] == pytest.approx(expected_r1)
    # mAP@5: a: 1; b: 1/2; c: (1/1 + 2/3) / 2
    assert fine["metrics"]["all"]["mAP@5"] == pytest.approx((1 + 0.5 + (1 + 2 / 3) / 2) / 3)
    # coarse: a and b (both Shirts) are relevant to each other's queries: b_c's best is a_m, a hit
    assert coarse["metrics"]["all"]["R@1"] == pytest.approx(1.0)


def test_product_retrieval_within_one_source_skips_the_query_itself():
    catalog = _catalog_with_sources()
    emb = _embeddings(catalog, [
        [1, 0, 0], [0, 1, 0], [0.1, 1, 0], [1, 0, 0], [0, 0, 1], [0.2, 0, 1], [0, 1, 0],
    ])
    result = _product_eval(catalog, emb, query_source="merchant", gallery_source="merchant")
    fine = result["tasks"]["fine"]
    # only c has two merchant shots: c_m0 and c_m1 find each other first (not themselves)
    assert fine["n_queries"] == 2 and fine["n_candidates"] == 3
    assert fine["metrics"]["all"]["R@1"] == 1.0


def test_product_retrieval_names_a_missing_source():
    catalog = _catalog_with_sources()
    emb = _embeddings(catalog, np.ones((7, 3)).tolist())
    with pytest.raises(ValueError, match="no image of source 'ad' under test"):
        _product_eval(catalog, emb, query_source="ad")


def test_product_retrieval_distractors_are_other_products_customer_shots():
    catalog = _catalog_with_sources()
    # rows: a_m, a_c, b_m, b_c, c_m0, c_m1, c_c
    emb = _embeddings(catalog, [
        [1, 0, 0], [1, 0.2, 0], [0, 1, 0], [0.1, 1, 0], [0, 0, 1], [0.5, 0, 0.5], [1, 0.25, 0],
    ])
    result = _product_eval(catalog, emb, gallery_distractors="customer")
    fine = result["tasks"]["fine"]
    assert fine["n_candidates"] == 4 + 3
    # a_c: a_m .980, but the distractor c_c .999 beats it (its own a_c, 1.0, is left out): rank 2.
    # b_c: b_m .995 above the distractors a_c .293 and c_c .338: rank 1.
    # c_c: a_m .970 and the distractor a_c .999 come first: c_m1 (.686) rank 3; c_m0 (0) after
    # a_m, a_c, c_m1, b_c (.338), b_m (.243): rank 6.
    assert fine["metrics"]["all"]["R@1"] == pytest.approx(1 / 3)
    assert fine["metrics"]["all"]["mAP@10"] == pytest.approx((1 / 2 + 1 + (1 / 3 + 2 / 6) / 2) / 3)
    with pytest.raises(ValueError, match="distractors need a gallery source other than"):
        _product_eval(catalog, emb, gallery_distractors="merchant")


def test_product_retrieval_coarse_level_can_be_cut_to_a_depth():
    catalog = _catalog_with_sources()
    emb = _embeddings(catalog, [
        [1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.8, 0.6, 0], [0, 0, 1], [0.5, 0, 0.5], [0.7, 0, 0.3],
    ])
    leaf = _product_eval(catalog, emb)["tasks"]["coarse"]["metrics"]["all"]
    root = _product_eval(catalog, emb, coarse_depth=1)["tasks"]["coarse"]["metrics"]["all"]
    # leaf level: a_c ranks a_m, c_m1, b_m (its Shirts at 1 and 3), b_c a_m, b_m (1 and 2), c_c its
    # Shoes shots at 1 and 3; at the root every merchant shot is relevant
    assert leaf["mAP@5"] == pytest.approx(((1 + 2 / 3) / 2 + 1 + (1 + 2 / 3) / 2) / 3)
    assert root["mAP@5"] == 1.0
