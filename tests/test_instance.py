"""ECLIP: the instance decoder, its losses, both token sources, and learning to find the product."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from catalogclip.catalog.schema import Catalog, ImageRef, Product, read_jsonl
from catalogclip.catalog.splits import Split
from catalogclip.catalog.synth import generate_catalog
from catalogclip.embed import embed_catalog
from catalogclip.evaluate.grounding import evaluate_grounding
from catalogclip.evaluate.protocols import EmbeddingScorer, Inventory, evaluate
from catalogclip.losses import contrastive_loss, positive_mask
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.batch import Batch
from catalogclip.models.instance import SlotAttention, intra_product_mask, text_selection
from catalogclip.models.methods import build_method
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train

SMALL = {"decoder_dim": 32, "n_queries": 4, "heads": 2, "n_layers": 1}


def _tiny_eclip(**options):
    torch.manual_seed(0)
    return build_method("eclip", BackboneConfig(spec="tiny", embed_dim=16), {**SMALL, **options})


# --- slot attention ------------------------------------------------------------------------------


def test_slot_attention_weights_sum_to_one_over_queries_for_every_token():
    torch.manual_seed(0)
    slot = SlotAttention(16)
    _, assignment = slot(torch.randn(2, 5, 16), torch.randn(2, 12, 16))
    assert assignment.shape == (2, 5, 12)
    assert torch.allclose(assignment.sum(dim=1), torch.ones(2, 12))


def test_identical_queries_share_every_token_and_take_the_plain_mean():
    torch.manual_seed(0)
    slot = SlotAttention(8)
    tokens = torch.randn(1, 6, 8)
    updates, assignment = slot(torch.randn(1, 1, 8).expand(1, 3, 8), tokens)
    assert torch.allclose(assignment, torch.full((1, 3, 6), 1 / 3))
    expected = slot.out(slot.to_v(tokens).mean(dim=1))
    assert torch.allclose(updates, expected.expand(1, 3, 8), atol=1e-6)


def test_queries_compete_for_the_tokens_they_match():
    slot = SlotAttention(4)
    for layer in (slot.to_q, slot.to_k):
        torch.nn.init.eye_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    e0, e1 = torch.eye(4)[0], torch.eye(4)[1]
    tokens = torch.stack([e0, e0, e0, e1, e1])[None]
    _, assignment = slot(torch.stack([8 * e0, 8 * e1])[None], tokens)
    # logits 8 * 1 / sqrt(4) = 4 for the matching query, 0 for the other: softmax gives 0.982
    expected = torch.sigmoid(torch.tensor(4.0))
    assert torch.allclose(assignment[0, 0], torch.tensor([1, 1, 1, 0, 0]) * (2 * expected - 1) + 1 - expected)


# --- selection and losses ------------------------------------------------------------------------


def test_text_selection_is_the_cosine_of_the_weighted_instance_sum():
    torch.manual_seed(0)
    instances = F.normalize(torch.randn(3, 4, 8), dim=-1)
    texts = F.normalize(torch.randn(2, 8), dim=-1)
    weights, cosine = text_selection(instances, texts, temperature=0.1)
    for b in range(3):
        for m in range(2):
            w = (instances[b] @ texts[m] / 0.1).softmax(dim=0)
            assert torch.allclose(weights[b, m], w, atol=1e-6)
            assert cosine[b, m] == pytest.approx(float(F.cosine_similarity(w @ instances[b], texts[m], dim=0)), abs=1e-5)


def test_intra_product_mask_pairs_views_with_each_other_and_their_text():
    # images of products 5, 5, 7, 7, 7, 9 then the texts of 5, 7, 9
    mask = intra_product_mask(torch.tensor([5, 5, 7, 7, 7, 9]))
    expected = torch.tensor([
        # 5  5  7  7  7  9 t5 t7 t9
        [0, 1, 0, 0, 0, 0, 1, 0, 0],
        [1, 0, 0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0, 0, 1, 0],
        [0, 0, 1, 0, 1, 0, 0, 1, 0],
        [0, 0, 1, 1, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1],  # a single view: its text is its only positive
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0, 0],
    ], dtype=torch.float32)
    assert torch.equal(mask, expected)


def test_with_one_query_the_image_text_loss_is_clips():
    method = _tiny_eclip(n_queries=1)
    batch = Batch(product_keys=torch.tensor([0, 0, 1, 2]), texts=["red tee", "red tee", "blue jeans", "black boots"],
                  images=torch.randn(4, 3, 64, 64))
    parts = method.loss(batch)
    reference = contrastive_loss(method.embed_images(batch), method.embed_texts(batch), method.logit_scale,
                                 positive_mask(batch.product_keys))
    assert parts["loss_itc"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert parts["loss_saliency"].item() == pytest.approx(0.0, abs=1e-6)  # one query: nothing to choose


def test_an_image_without_text_is_its_saliency_weighted_or_most_salient_instance():
    method = _tiny_eclip().eval()
    batch = Batch(product_keys=torch.tensor([0, 1]), texts=["", ""], images=torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        inst = method.instances(batch)
        soft = method.embed_images(batch)
        method.config.salient_query = "argmax"
        hard = method.embed_images(batch)
    weighted = inst.saliency.softmax(dim=-1)[:, :, None] * inst.embeddings
    assert torch.allclose(soft, F.normalize(weighted.sum(dim=1), dim=-1), atol=1e-6)
    assert torch.allclose(hard, inst.embeddings[torch.arange(2), inst.saliency.argmax(dim=-1)])


def test_token_skip_adds_a_projection_of_the_tokens_each_query_won():
    method = _tiny_eclip(token_skip=True, n_queries=1).eval()
    batch = Batch(product_keys=torch.tensor([0, 1]), texts=["", ""], images=torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        tokens = method.backbone.image_tokens(batch.images)
        outputs, _ = method.decoder(tokens)
        # one query wins every token: its skip is the linear head on the mean token (the pooled feature)
        expected = method.instance_proj(outputs[:, 0]) + method.token_proj(tokens.mean(dim=1))
        inst = method.instances(batch)
    assert torch.allclose(inst.embeddings[:, 0], F.normalize(expected, dim=-1), atol=1e-5)
    assert _tiny_eclip().token_proj is None  # off by default: ECLIP as the paper has it


def test_a_decoder_starting_at_zero_leaves_each_instance_its_tokens_projection():
    method = _tiny_eclip(token_skip=True, zero_init_decoder=True).eval()
    batch = Batch(product_keys=torch.tensor([0, 1]), texts=["", ""], images=torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        tokens = method.backbone.image_tokens(batch.images)
        _, assignment = method.decoder(tokens)
        weights = assignment / assignment.sum(dim=-1, keepdim=True)
        inst = method.instances(batch)
    assert torch.allclose(inst.embeddings, F.normalize(method.token_proj(weights @ tokens), dim=-1), atol=1e-5)
    method.train()
    method.loss(Batch(product_keys=torch.tensor([0, 0, 1]), texts=["a b", "a b", "c d"], images=torch.randn(3, 3, 64, 64)))["loss"].backward()
    assert method.instance_proj.weight.grad.abs().sum() > 0  # the decoder's term does not stay at zero


def test_inter_product_loss_is_zero_without_a_second_view():
    method = _tiny_eclip()
    batch = Batch(product_keys=torch.tensor([0, 1, 2]), texts=["a", "b", "c"], images=torch.randn(3, 3, 64, 64))
    parts = method.loss(batch)
    assert parts["loss_inter"].item() == 0.0
    parts["loss"].backward()  # still differentiable end to end
    assert method.decoder.queries.grad is not None


# --- shapes for both token sources --------------------------------------------------------------


def _check_shapes(method, image_size: int) -> None:
    batch = Batch(product_keys=torch.tensor([0, 0, 1]), texts=["a b", "a b", "c d"], images=torch.randn(3, 3, image_size, image_size))
    h, w = method.backbone.token_grid()
    tokens = method.backbone.image_tokens(batch.images)
    assert tokens.shape == (3, h * w, method.backbone.token_dim)
    inst = method.instances(batch)
    assert inst.embeddings.shape == (3, 4, method.backbone.embed_dim)
    assert torch.allclose(inst.assignment.sum(dim=1), torch.ones(3, h * w), atol=1e-5)
    images = method.embed_images(batch)
    assert images.shape == (3, method.backbone.embed_dim)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert method.grounding_maps(batch, method.embed_texts(batch)).shape == (3, h, w)
    assert torch.isfinite(method.loss(batch)["loss"])


def test_shapes_with_cnn_feature_map_tokens():
    method = _tiny_eclip()
    assert method.backbone.token_grid() == (8, 8)
    _check_shapes(method, 64)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """Spec of a tiny random-weight open_clip ViT (32 px, 8 px patches: a 4x4 token grid)."""
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path_factory.mktemp("openclip") / "eclip-test-vit.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return "openclip:eclip-test-vit"


def test_shapes_with_vit_patch_tokens(tiny_vit):
    torch.manual_seed(0)
    method = build_method("eclip", BackboneConfig(spec=tiny_vit), SMALL)
    assert method.backbone.token_grid() == (4, 4) and method.backbone.token_dim == 64
    _check_shapes(method, 32)


def test_vit_patch_tokens_give_clip_no_dense_grounding(tiny_vit, tmp_path):
    """open_clip's pooled feature is not the mean of its patch tokens: the dense map is refused."""
    torch.manual_seed(0)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    catalog = Catalog([Product("a", "a red thing", images=[ImageRef("a.png", "customer", (4, 4, 20, 20))])], tmp_path)
    with pytest.raises(ValueError, match="cannot ground with backbone 'openclip:eclip-test-vit'"):
        evaluate_grounding(build_method("clip", BackboneConfig(spec=tiny_vit)), catalog, progress=False)
    eclip = evaluate_grounding(build_method("eclip", BackboneConfig(spec=tiny_vit), SMALL), catalog, progress=False)
    assert eclip["n"] == 1


def test_a_different_token_grid_is_refused_with_a_reason():
    method = _tiny_eclip()
    batch = Batch(product_keys=torch.tensor([0]), texts=["a"], image_tokens=torch.randn(1, 16, method.backbone.token_dim))
    with pytest.raises(ValueError, match="built for 64 image tokens, got 16"):
        method.embed_images(batch)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="decoder_dim \\(30\\) must be divisible by heads \\(4\\)"):
        build_method("eclip", BackboneConfig(spec="tiny"), {"decoder_dim": 30, "heads": 4})
    with pytest.raises(ValueError, match="salient_query must be one of soft, argmax"):
        build_method("eclip", BackboneConfig(spec="tiny"), {"salient_query": "max"})
    with pytest.raises(ValueError, match="unknown setting"):
        build_method("eclip", BackboneConfig(spec="tiny"), {"n_querys": 4})
    with pytest.raises(ValueError, match="zero_init_decoder needs token_skip"):
        build_method("eclip", BackboneConfig(spec="tiny"), {"zero_init_decoder": True})


# --- learning ------------------------------------------------------------------------------------

N_PRODUCTS, GRID, CHANNELS = 12, 16, 16


def _scenes(products: torch.Tensor, prototypes: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token grids of busy shots: noise, the product on 2 random cells and another product on a third."""
    tokens = torch.randn(len(products), GRID, CHANNELS, generator=gen) * 0.5
    where = torch.zeros(len(products), GRID, dtype=torch.bool)
    for i, p in enumerate(products.tolist()):
        cells = torch.randperm(GRID, generator=gen)[:3]
        tokens[i, cells[:2]] += prototypes[p]
        where[i, cells[:2]] = True
        other = (p + 1 + int(torch.randint(N_PRODUCTS - 1, (1,), generator=gen))) % N_PRODUCTS
        tokens[i, cells[2]] += prototypes[other]
    return tokens, where


def _grounding_hits(method, prototypes: torch.Tensor) -> float:
    """Share of fresh scenes where the top cell of the text's grounding map is on the product."""
    products = torch.arange(N_PRODUCTS).repeat(5)
    tokens, where = _scenes(products, prototypes, torch.Generator().manual_seed(99))
    batch = Batch(product_keys=products, texts=[f"item{p}" for p in products.tolist()], image_tokens=tokens)
    with torch.no_grad():
        maps = method.eval().grounding_maps(batch, method.embed_texts(batch)).flatten(1)
    return float(where[torch.arange(len(products)), maps.argmax(dim=1)].float().mean())


def test_eclip_learns_to_ground_the_product_named_by_the_text():
    """Cached-token training (as with a frozen tower): 3 views per product in every batch."""
    torch.manual_seed(0)
    method = build_method("eclip", BackboneConfig(spec="tiny", embed_dim=16, image_size=32, extra={"width": CHANNELS}), SMALL)
    prototypes = torch.randn(N_PRODUCTS, CHANNELS) * 2
    before = _grounding_hits(method, prototypes)
    optimiser = torch.optim.Adam(method.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    method.train()
    for _ in range(150):
        products = torch.randperm(N_PRODUCTS, generator=gen)[:8].repeat_interleave(3)
        tokens, _ = _scenes(products, prototypes, gen)
        batch = Batch(product_keys=products, texts=[f"item{p}" for p in products.tolist()], image_tokens=tokens)
        optimiser.zero_grad()
        method.loss(batch)["loss"].backward()
        optimiser.step()
    after = _grounding_hits(method, prototypes)
    # chance is 2 cells of 16 (0.125); the distractor product is another cell
    assert before < 0.35
    assert after > 0.5


def test_trains_on_a_synthetic_catalog_and_runs_both_protocols(tmp_path):
    """Trainer (views packed per product) -> run folder -> embeddings -> `product` and `grounding`."""
    catalog_path = generate_catalog(tmp_path / "synth", n_products=12, views=3, image_size=48, workers=1)
    config = RunConfig(
        method="eclip",
        method_options=SMALL,
        backbone=BackboneConfig(spec="tiny", embed_dim=16),
        data=DataConfig(catalog=str(catalog_path), test_fraction=0.25),
        optim=OptimConfig(epochs=2, batch_size=9, warmup_steps=1, log_every=1, device="cpu"),
    )
    train(config, tmp_path / "run", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 9 training products, 3 x 3 views per batch: every image has other views and other products
    assert all(record["loss_inter"] > 0 for record in logged)
    method = load_run(tmp_path / "run").method
    test = Split.load(tmp_path / "run" / "split.json", read_jsonl(catalog_path)).test
    emb = embed_catalog(method, test, progress=False)
    inventory = Inventory.from_embeddings(emb, test)
    product = evaluate("product", inventory, EmbeddingScorer(emb, inventory))
    assert product["tasks"]["fine"]["n_queries"] == 2 * len(test)  # two customer shots per product
    assert np.isfinite(product["tasks"]["fine"]["metrics"]["all"]["mAP@10"])
    grounding = evaluate_grounding(method, test, progress=False)
    assert grounding["by_source"]["customer"]["n"] == 2 * len(test)
    assert 0.0 <= grounding["Acc@0.5"] <= 1.0


def test_main_shot_in_batch_puts_each_products_merchant_shot_beside_its_customer_shots(tmp_path):
    """`data.main_shot_in_batch` through the trainer: the pairs know each product's merchant shot,
    every random batch holds the merchant shot of each product in it, and a run trains with it."""
    from catalogclip.train.data import usable_batches
    from catalogclip.train.trainer import Trainer

    catalog_path = generate_catalog(tmp_path / "synth", n_products=12, views=3, image_size=48, workers=1)
    config = RunConfig(
        method="eclip",
        method_options={**SMALL, "views_per_product": 1},
        backbone=BackboneConfig(spec="tiny", embed_dim=16),
        data=DataConfig(catalog=str(catalog_path), test_fraction=0.25, main_shot_in_batch=True),
        optim=OptimConfig(epochs=1, batch_size=8, warmup_steps=1, log_every=1, device="cpu"),
    )
    _, data = Trainer(config, tmp_path / "run", progress=False).setup()
    merchant = {path for path in data.image_paths if path.name.endswith("_0.jpg")}  # each product's first image
    assert {data.image_paths[row] for row in torch.nonzero(data.main_shot).flatten().tolist()} == merchant
    main_of = {int(data.product_index[row]): row for row in torch.nonzero(data.main_shot).flatten().tolist()}
    for rows in usable_batches(data, 8, seed=0, epoch=0, views=1, world_size=1, main_shot_in_batch=True):
        assert all(main_of[int(data.product_index[row])] in rows.tolist() for row in rows.tolist())
    assert train(config, tmp_path / "run", progress=False).steps > 0
