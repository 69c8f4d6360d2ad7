"""The demo's plan: which runs it trains on which backbone."""
from __future__ import annotations

from pathlib import Path

from catalogclip.demo import DemoConfig, run_config
from catalogclip.models.backbones.base import build_backbone


def test_the_demo_trains_the_last_image_block_where_the_backbone_splits_its_tower():
    planned = DemoConfig(backbone="tiny").all_runs()
    assert planned["eclip"] == ("eclip", {}, 0) and planned["eclip-last-image-block"] == ("eclip", {}, 1)
    config = run_config(DemoConfig(backbone="tiny"), Path("catalog.jsonl"), "eclip", {}, trained_image_blocks=1)
    backbone = build_backbone(config.backbone)
    assert backbone.has_frozen_image_prefix and not backbone.image_tower_frozen
    # open_clip towers have no block split: the demo leaves the run out rather than fail on the option
    assert "eclip-last-image-block" not in DemoConfig(backbone="openclip:ViT-B-32").all_runs()
    assert set(DemoConfig(backbone="openclip:ViT-B-32").all_runs()) == set(DemoConfig().runs)
