"""Backbones: shapes, preprocessing, token grids, freezing, and the weight routes of each backbone."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from catalogclip.losses import contrastive_loss
from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.models.backbones.openclip import parse_spec
from catalogclip.models.backbones.transforms import Preprocess, eval_transform, halved


def tiny(**config) -> "torch.nn.Module":
    torch.manual_seed(config.pop("seed", 0))
    return build_backbone(BackboneConfig(spec="tiny", embed_dim=16, **config))


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def grads_of(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


# --- preprocessing -------------------------------------------------------------------------
def test_visible_box_follows_the_resize_mode():
    assert Preprocess(64, (0.5,) * 3, (0.5,) * 3, "shortest").visible_box(300, 400) == (0, 50, 300, 350)
    assert Preprocess(64, (0.5,) * 3, (0.5,) * 3, "shortest").visible_box(400, 300) == (50, 0, 350, 300)
    assert Preprocess(64, (0.5,) * 3, (0.5,) * 3, "squash").visible_box(300, 400) == (0, 0, 300, 400)


def test_preprocess_rejects_unknown_settings():
    with pytest.raises(ValueError, match="resize_mode 'crop'"):
        Preprocess(64, (0.5,) * 3, (0.5,) * 3, "crop")
    with pytest.raises(ValueError, match="positive"):
        Preprocess(0, (0.5,) * 3, (0.5,) * 3)


def test_halved_matches_same_padding_convolutions():
    assert [halved(s, 5) for s in (224, 256, 160, 225)] == [7, 8, 5, 8]
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    x = torch.zeros(1, 1, 37, 37)
    for _ in range(3):
        x = conv(x)
    assert x.shape[-1] == halved(37, 3)


# --- tiny -----------------------------------------------------------------------------------
def test_tiny_shapes_and_token_grid():
    backbone = tiny()
    images = torch.randn(3, 3, 64, 64)
    assert backbone.image_features(images).shape == (3, 64)
    tokens = backbone.image_tokens(images)
    h, w = backbone.token_grid()
    assert (h, w) == (8, 8) and tokens.shape == (3, h * w, backbone.token_dim)
    # tokens are the feature map row-major: their mean is the pooled feature
    torch.testing.assert_close(tokens.mean(dim=1), backbone.image_features(images))
    assert backbone.encode_image(images).shape == (3, 16)
    assert backbone.encode_text(["red shoe", "blue jeans", ""]).shape == (3, 16)


def test_tiny_image_size_override_changes_resolution_grid_and_feature_id():
    native, small = tiny(), tiny(image_size=32)
    assert small.image_transform()(solid((10, 20, 30))).shape == (3, 32, 32)
    assert small.token_grid() == (4, 4)
    assert small.image_tokens(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)
    assert small.feature_id != native.feature_id


def test_tiny_normalisation_maps_pixels_to_signed_unit_range():
    transform = tiny().image_transform()
    assert torch.allclose(transform(solid((255, 255, 255))), torch.ones(3, 64, 64))
    assert torch.allclose(transform(solid((0, 0, 0))), -torch.ones(3, 64, 64))
    grey = transform(Image.new("L", (20, 20), 255))  # greyscale input becomes RGB
    assert grey.shape == (3, 64, 64)


def test_augmentation_only_when_training_with_augment():
    image = Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy())
    plain = tiny()
    assert torch.equal(plain.image_transform(train=True)(image), plain.image_transform(train=True)(image))
    augmented = tiny(augment=True).image_transform(train=True)
    torch.manual_seed(1)
    outputs = [augmented(image) for _ in range(4)]
    assert outputs[0].shape == (3, 64, 64)
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])
    assert torch.equal(tiny(augment=True).image_transform(train=False)(image), plain.image_transform()(image))


def test_tiny_is_deterministic_given_the_seed():
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(a.encode_image(images), b.encode_image(images))
    torch.testing.assert_close(a.encode_text(["x y"]), b.encode_text(["x y"]))
    assert a.feature_id == b.feature_id and a.feature_id != c.feature_id
    assert a.text_feature_id == b.text_feature_id != c.text_feature_id


def test_tiny_text_tower_is_a_bag_of_hashed_words():
    backbone = tiny()
    features = backbone.text_features(["red shoe", "shoe red", "", "red shoes"])
    torch.testing.assert_close(features[0], features[1])  # word order does not matter
    assert torch.count_nonzero(features[2]) == 0  # no words: zeros
    # "shoes" shares trigrams with "shoe": closer than an unrelated text
    other = backbone.text_features(["blue wallet"])[0]
    assert F.cosine_similarity(features[0], features[3], dim=0) > F.cosine_similarity(features[0], other, dim=0)


def test_tiny_learns_to_match_colours_to_their_names():
    colours = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
               "black": (5, 5, 5), "white": (250, 250, 250), "purple": (130, 30, 160), "orange": (250, 140, 10)}
    backbone = tiny()
    transform = backbone.image_transform()
    images = torch.stack([transform(solid(rgb)) for rgb in colours.values()])
    names = [f"a {name} thing" for name in colours]
    optimiser = torch.optim.Adam(backbone.parameters(), lr=1e-2)
    scale = torch.tensor(math.log(10.0))
    for _ in range(60):
        loss = contrastive_loss(F.normalize(backbone.encode_image(images), dim=-1),
                                F.normalize(backbone.encode_text(names), dim=-1), scale)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    backbone.eval()
    with torch.no_grad():
        sims = F.normalize(backbone.encode_text(names), dim=-1) @ F.normalize(backbone.encode_image(images), dim=-1).T
    assert torch.equal(sims.argmax(dim=1), torch.arange(len(colours)))


def test_tiny_frozen_image_tower_gets_no_gradient_and_stays_in_eval():
    backbone = tiny(freeze_image=True)
    assert backbone.image_tower_frozen and not backbone.text_tower_frozen
    backbone.train()
    assert not any(m.training for m in backbone.image_tower.modules())
    assert backbone.text_tower.training and backbone.image_proj.training
    stats = backbone.image_tower[0][1].running_mean.clone()
    backbone.encode_image(torch.randn(4, 3, 64, 64)).sum().backward()
    assert all(g is None for g in grads_of(backbone.image_tower))
    assert all(g is not None for g in grads_of(backbone.image_proj))
    torch.testing.assert_close(backbone.image_tower[0][1].running_mean, stats)  # BatchNorm statistics untouched


def test_tiny_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown option.*widht.*known: .*width"):
        tiny(extra={"widht": 32})


def test_mlp_head_option():
    backbone = tiny(extra={"head": "mlp", "head_hidden": 24})
    assert backbone.image_proj[0].out_features == 24
    assert backbone.encode_text(["x"]).shape == (1, 16)
    with pytest.raises(ValueError, match="unknown projection head 'deep'"):
        tiny(extra={"head": "deep"})


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown backbone 'resnet'.*openclip, tiny, twotower"):
        build_backbone("resnet")


# --- openclip -------------------------------------------------------------------------------
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def openclip_configs(tmp_path_factory) -> None:
    """Register tiny random-weight open_clip architectures (nothing is downloaded)."""
    import open_clip

    folder = tmp_path_factory.mktemp("openclip-configs")
    (folder / "catalogclip-test-vit.json").write_text(json.dumps(TINY_VIT))
    (folder / "catalogclip-test-rn.json").write_text(json.dumps(TINY_RESNET))
    open_clip.add_model_config(folder)


def openclip(spec: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    return build_backbone(BackboneConfig(spec=spec, **config))


def test_parse_openclip_spec():
    assert parse_spec("openclip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_spec("openclip:ViT-B-32:/ckpt/a.pt") == ("ViT-B-32", "/ckpt/a.pt")
    assert parse_spec("openclip:ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_spec("openclip:hf-hub:org/model") == ("hf-hub:org/model", None)
    with pytest.raises(ValueError, match="names no model"):
        parse_spec("openclip")


def test_openclip_vit_shapes_tokens_and_native_space(openclip_configs):
    backbone = openclip("openclip:catalogclip-test-vit")
    assert backbone.embed_dim == 32  # the model's own space, no extra head
    images = torch.randn(2, 3, 32, 32)
    assert backbone.image_features(images).shape == (2, 32)
    assert backbone.token_grid() == (4, 4) and backbone.token_dim == 64
    tokens = backbone.image_tokens(images)
    assert tokens.shape == (2, 16, 64)
    # they are the ViT's own patch tokens: what the tower outputs with output_tokens switched on
    backbone.model.visual.output_tokens = True
    torch.testing.assert_close(tokens, backbone.model.visual(images)[1])
    backbone.model.visual.output_tokens = False
    texts = backbone.encode_text(["a red shoe", "blue jeans"])
    assert texts.shape == (2, 32)
    torch.testing.assert_close(texts, backbone.model.encode_text(backbone.tokenizer(["a red shoe", "blue jeans"])))
    assert backbone.init_logit_scale == pytest.approx(math.log(1 / 0.07))


def test_openclip_resnet_tokens_are_its_last_feature_map(openclip_configs):
    backbone = openclip("openclip:catalogclip-test-rn")
    images = torch.randn(2, 3, 64, 64)
    assert backbone.token_grid() == (2, 2) and backbone.token_dim == 256
    visual = backbone.model.visual
    feature_map = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))
    torch.testing.assert_close(backbone.image_tokens(images), feature_map.flatten(2).transpose(1, 2))


def test_openclip_uses_its_own_preprocessing_and_feature_id_describes_it(openclip_configs):
    backbone = openclip("openclip:catalogclip-test-vit")
    image = Image.fromarray((torch.rand(48, 36, 3) * 255).byte().numpy())
    ours = eval_transform(backbone.preprocess)(image)
    torch.testing.assert_close(backbone.image_transform()(image), ours)
    white = backbone.image_transform()(solid((255, 255, 255)))
    mean, std = torch.tensor(backbone.preprocess.mean), torch.tensor(backbone.preprocess.std)
    torch.testing.assert_close(white[:, 0, 0], (1 - mean) / std)
    bigger = openclip("openclip:catalogclip-test-vit", image_size=48)
    assert bigger.token_grid() == (6, 6) and bigger.image_transform()(image).shape == (3, 48, 48)
    assert bigger.feature_id != backbone.feature_id


def test_openclip_local_checkpoint_route(openclip_configs, tmp_path):
    original = openclip("openclip:catalogclip-test-vit", seed=1)
    checkpoint = tmp_path / "tiny-vit.pt"
    torch.save(original.model.state_dict(), checkpoint)
    loaded = openclip(f"openclip:catalogclip-test-vit:{checkpoint}", seed=2)
    fresh = openclip("openclip:catalogclip-test-vit", seed=2)
    images, texts = torch.randn(2, 3, 32, 32), ["red shoe", "blue jeans"]
    torch.testing.assert_close(loaded.image_features(images), original.image_features(images))
    torch.testing.assert_close(loaded.text_features(texts), original.text_features(texts))
    assert loaded.feature_id == original.feature_id != fresh.feature_id
    assert not torch.allclose(fresh.image_features(images), original.image_features(images))
    # pretrained weights train at the base rate, only the heads are new
    assert loaded.new_parameter_prefixes == ("image_proj", "text_proj")
    assert "model" in fresh.new_parameter_prefixes


def test_openclip_reports_bad_specs(openclip_configs, tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        openclip("openclip:ViT-Z-99")
    with pytest.raises(FileNotFoundError, match="nothere.pt: open_clip checkpoint not found"):
        openclip(f"openclip:catalogclip-test-vit:{tmp_path / 'nothere.pt'}")
    wrong = tmp_path / "resnet.pt"
    torch.save(openclip("openclip:catalogclip-test-rn").model.state_dict(), wrong)
    with pytest.raises(ValueError, match="resnet.pt: not a checkpoint of open_clip catalogclip-test-vit"):
        openclip(f"openclip:catalogclip-test-vit:{wrong}")
    with pytest.raises(ValueError, match="'nosuchtag' is neither a checkpoint file nor a pretrained tag of ViT-B-32.*openai"):
        openclip("openclip:ViT-B-32:nosuchtag")


def test_openclip_heads_and_freezing(openclip_configs):
    backbone = openclip("openclip:catalogclip-test-vit", embed_dim=16, freeze_text=True, extra={"head": "linear"})
    assert backbone.embed_dim == 16 and backbone.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 16)
    model = backbone.model
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual."))
    assert all(p.requires_grad for p in model.visual.parameters())
    backbone.train()
    assert not model.transformer.training and model.visual.training
    backbone.encode_text(["red shoe"]).sum().backward()
    assert model.positional_embedding.grad is None and model.token_embedding.weight.grad is None
    assert backbone.text_proj.weight.grad is not None
    frozen_image = openclip("openclip:catalogclip-test-vit", freeze_image=True)
    assert frozen_image.image_tower_frozen and not any(p.requires_grad for p in frozen_image.model.visual.parameters())


def test_openclip_vit_b_32_builds_with_random_weights():
    backbone = openclip("openclip:ViT-B-32")
    assert backbone.embed_dim == 512 and backbone.token_grid() == (7, 7) and backbone.token_dim == 768
    assert backbone.preprocess.size == 224


# --- twotower (real pretrained weights from the pip packages; about 3 s to load) ----------------
@pytest.fixture(scope="module")
def twotower():
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(spec="twotower", embed_dim=32))


def test_twotower_shapes_tokens_and_normalisation(twotower):
    images = torch.randn(2, 3, 224, 224)
    assert twotower.image_features(images).shape == (2, 1280)
    tokens = twotower.image_tokens(images)
    h, w = twotower.token_grid()
    assert (h, w) == (7, 7) and tokens.shape == (2, h * w, twotower.token_dim) == (2, 49, 1280)
    torch.testing.assert_close(tokens.mean(dim=1), twotower.image_features(images))
    # EfficientNet-Lite was trained (in TensorFlow) on pixels scaled to [-1, 1]
    transform = twotower.image_transform()
    assert torch.allclose(transform(solid((255, 255, 255), (300, 400))), torch.ones(3, 224, 224))
    assert torch.allclose(transform(solid((0, 0, 0))), -torch.ones(3, 224, 224))
    assert twotower.encode_image(images).shape == (2, 32) and twotower.encode_text(["x"]).shape == (1, 32)


def test_twotower_minilm_weights_are_loaded(twotower):
    texts = ["red running shoes for men", "crimson sneakers for men", "stainless steel kitchen knife"]
    emb = F.normalize(twotower.text_features(texts), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3
    # padding is not pooled: a text gets the same features alone or beside a longer one
    alone = twotower.text_features(["blue jeans"])
    beside = twotower.text_features(["blue jeans", "a much longer product title with many more words in it"])[:1]
    torch.testing.assert_close(alone, beside, atol=1e-5, rtol=1e-4)


def test_twotower_frozen_towers_get_no_gradient_and_stay_in_eval(twotower):
    assert twotower.image_tower_frozen and twotower.text_tower_frozen
    twotower.train()
    assert twotower.training and twotower.image_proj.training
    assert not any(m.training for m in twotower.image_tower.modules())
    assert not any(m.training for m in twotower.text_tower.modules())
    stats = twotower.image_tower._bn0.running_mean.clone()
    loss = twotower.encode_image(torch.randn(2, 3, 224, 224)).sum() + twotower.encode_text(["red shoe"]).sum()
    loss.backward()
    assert all(g is None for g in grads_of(twotower.image_tower) + grads_of(twotower.text_tower))
    assert twotower.image_proj.weight.grad is not None and twotower.text_proj.weight.grad is not None
    torch.testing.assert_close(twotower.image_tower._bn0.running_mean, stats)


def test_twotower_partial_unfreezing_and_local_weight_paths(twotower, tmp_path):
    from catalogclip.models.backbones.twotower import default_image_weights, default_text_model

    weights = tmp_path / "lite0.pth"
    shutil.copy(default_image_weights(), weights)
    extra = {"image_weights": str(weights), "text_model": str(default_text_model()),
             "image_trainable_blocks": 2, "text_trainable_layers": 1}
    backbone = build_backbone(BackboneConfig(spec="twotower", embed_dim=32, extra=extra))
    assert not backbone.image_tower_frozen and not backbone.text_tower_frozen
    blocks, layers = backbone.image_tower._blocks, backbone.text_tower.encoder.layer
    assert all(p.requires_grad for p in blocks[-1].parameters()) and backbone.image_tower._conv_head.weight.requires_grad
    assert not any(p.requires_grad for p in blocks[-3].parameters())
    assert all(p.requires_grad for p in layers[-1].parameters()) and not any(p.requires_grad for p in layers[-2].parameters())
    backbone.train()
    assert blocks[-1].training and not blocks[0].training and layers[-1].training and not layers[0].training
    # the same weights from another path: the same features, hence the same cache key
    backbone.eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(backbone.image_features(images), twotower.eval().image_features(images))
    assert backbone.feature_id == twotower.feature_id


def test_twotower_split_at_the_trained_blocks_reproduces_efficientnet(twotower):
    backbone = build_backbone(BackboneConfig(spec="twotower", embed_dim=32, extra={"image_trainable_blocks": 1})).eval()
    assert backbone.has_frozen_image_prefix and not twotower.has_frozen_image_prefix
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        whole = backbone.image_tower.extract_features(images)
        prefix = backbone.image_prefix(images)
        assert prefix.shape == (2, 192, 7, 7)  # the input of the last MBConv block
        torch.testing.assert_close(backbone.image_tokens_from_prefix(prefix), whole.flatten(2).transpose(1, 2))
        torch.testing.assert_close(backbone.image_features_from_prefix(prefix), whole.mean(dim=(2, 3)))
        torch.testing.assert_close(backbone.image_tokens(images), twotower.eval().image_tokens(images))
        key = backbone.prefix_feature_id
        backbone.image_tower._blocks[-1]._project_conv.weight.mul_(2)  # training the last block ...
        assert backbone.prefix_feature_id == key  # ... keeps the cached front valid
        backbone.image_tower._blocks[0]._project_conv.weight.mul_(2)
        assert backbone.prefix_feature_id != key


def test_twotower_reports_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth: EfficientNet-Lite0 weights not found"):
        build_backbone(BackboneConfig(spec="twotower", extra={"image_weights": str(tmp_path / "nothere.pth")}))
    with pytest.raises(ValueError, match="image_trainable_blocks must be between 0 and 16"):
        build_backbone(BackboneConfig(spec="twotower", extra={"image_trainable_blocks": 99}))
