"""Training an image tower's last blocks from a cache of its frozen front (`image_trainable_blocks`)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from catalogclip.catalog.schema import read_jsonl
from catalogclip.embed import embed_catalog
from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig
from catalogclip.train.featcache import FeatureCache
from catalogclip.train.runs import load_run
from catalogclip.train.trainer import train


def tiny_partial(blocks: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(BackboneConfig(spec="tiny", embed_dim=8, freeze_image=True, extra={"image_trainable_blocks": blocks}))


def grads_of(module: torch.nn.Module) -> list:
    return [p.grad for p in module.parameters()]


def test_tiny_prefix_path_equals_the_pixel_path_and_only_the_last_block_learns():
    backbone = tiny_partial()
    assert backbone.has_frozen_image_prefix and not backbone.image_tower_frozen
    images = torch.randn(4, 3, 64, 64)
    backbone.eval()
    prefix = backbone.image_prefix(images)
    assert prefix.shape == (4, 32, 16, 16) and not prefix.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(backbone.image_tokens_from_prefix(prefix), backbone.image_tokens(images))
        torch.testing.assert_close(backbone.image_features_from_prefix(prefix), backbone.image_features(images))
    backbone.train()
    assert [block.training for block in backbone.image_tower] == [False, False, True]
    backbone.encode_image(images).sum().backward()
    assert all(g is None for g in grads_of(backbone.image_tower[:2]))
    assert all(g is not None for g in grads_of(backbone.image_tower[2]))


def test_the_prefix_cache_key_follows_the_frozen_front_only():
    one = tiny_partial()
    trained = copy.deepcopy(one)
    with torch.no_grad():
        trained.image_tower[2][0].weight.add_(1.0)
    assert trained.prefix_feature_id == one.prefix_feature_id  # training the last block keeps the cache valid
    with torch.no_grad():
        trained.image_tower[0][0].weight.add_(1.0)
    assert trained.prefix_feature_id != one.prefix_feature_id
    two = copy.deepcopy(one)
    two.image_trainable_blocks = 2
    assert two.prefix_feature_id != one.prefix_feature_id  # the front ends elsewhere


def test_a_prefix_cache_needs_a_frozen_front_and_holds_its_output(tmp_path):
    frozen = build_backbone(BackboneConfig(spec="tiny", embed_dim=8, freeze_image=True))
    with pytest.raises(ValueError, match="a 'prefix' cache needs an image tower with a frozen front and trained last blocks; "
                                         "backbone 'tiny' has none"):
        FeatureCache(tmp_path, frozen, kind="prefix")
    backbone = tiny_partial()
    with pytest.raises(ValueError, match="a 'tokens' cache needs a frozen image tower; backbone 'tiny' trains it"):
        FeatureCache(tmp_path, backbone, kind="tokens")
    with pytest.raises(ValueError, match="image_trainable_blocks must be between 0 and 3, got 4"):
        tiny_partial(blocks=4)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(paths[-1])
    rows = FeatureCache(tmp_path / "cache", backbone, kind="prefix").fill(paths, lambda p: Image.open(p).convert("RGB"), progress=False)
    transform = backbone.image_transform()
    with torch.no_grad():
        expected = backbone.eval().image_prefix(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))
    assert rows.shape == (3, 32, 16, 16)
    torch.testing.assert_close(rows.float(), expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("method", ["clip", "eclip", "clipita"])
def test_training_the_last_block_from_the_cached_front(brand_catalog, tmp_path, method):
    """The trainer reads the front's output from the cache and trains the last block; the run's
    embeddings (and CLIP-ITA's fused product vectors) from the cache equal those from pixels, so
    the index and the service agree."""
    cache = tmp_path / "cache"
    config = RunConfig(
        method=method,
        backbone=BackboneConfig(spec="tiny", embed_dim=16, freeze_image=True, extra={"image_trainable_blocks": 1}),
        data=DataConfig(catalog=str(brand_catalog), test_fraction=0.05, feature_cache=str(cache)),
        optim=OptimConfig(epochs=2, batch_size=16, head_lr=3e-3, lr=3e-3, warmup_steps=1, log_every=5, checkpoint_every=10**6, seed=0),
    )
    torch.manual_seed(0)
    initial = build_backbone(config.backbone)
    train(config, tmp_path / "run", progress=False)
    assert len(list(cache.glob("*/shard-*.json"))) >= 1
    assert FeatureCache(cache, initial, kind="prefix").folder.is_dir()  # the front's outputs, keyed by its weights
    trained = load_run(tmp_path / "run").method
    tower, before = trained.backbone.image_tower, initial.image_tower
    torch.testing.assert_close(tower[:2].state_dict(), before[:2].state_dict())
    assert not torch.equal(tower[2][0].weight, before[2][0].weight)
    catalog = read_jsonl(brand_catalog)
    from_cache = embed_catalog(trained, catalog, cache_dir=cache, progress=False)
    from_pixels = embed_catalog(trained, catalog, progress=False)
    np.testing.assert_allclose(from_cache.image, from_pixels.image, atol=5e-3)
    if method == "clipita":
        assert from_cache.product.shape == (len(catalog.products), 16)
        np.testing.assert_allclose(from_cache.product, from_pixels.product, atol=5e-3)
