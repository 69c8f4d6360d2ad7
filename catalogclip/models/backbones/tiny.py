"""`tiny`: a small backbone with random weights, for tests and the fast demo.

Image tower: three stride-2 conv blocks on 64x64 images; its last feature map is the token grid.
With ``freeze_image`` and ``image_trainable_blocks`` N, only its last N blocks train (their
input, the frozen front's output, is cacheable as a frozen tower's outputs are).
Text tower: words and character trigrams hashed into a mean-pooled EmbeddingBag, which learns
in a few hundred CPU steps. Deterministic given `torch.manual_seed`.
"""
from __future__ import annotations

import re
import zlib
from itertools import accumulate

import torch
from torch import nn

from catalogclip.models.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneConfig,
    check_count,
    extra_options,
    freeze,
    projection_head,
    weights_fingerprint,
)
from catalogclip.models.backbones.transforms import SIGNED_UNIT_MEAN, SIGNED_UNIT_STD, Preprocess, halved, image_transform

_WORD = re.compile(r"\w+")
_CONV_BLOCKS = 3


def hashed_tokens(text: str, buckets: int) -> list[int]:
    """Bucket ids of a text's words and character trigrams (crc32: stable across processes, unlike hash())."""
    ids = []
    for word in _WORD.findall(text.lower()):
        ids.append(zlib.crc32(f"w:{word}".encode()) % buckets)
        padded = f"<{word}>"
        ids.extend(zlib.crc32(f"t:{padded[i:i + 3]}".encode()) % buckets for i in range(len(padded) - 2))
    return ids


class HashedTextTower(nn.Module):
    """Mean of learned embeddings of hashed words and trigrams; a text without words maps to zeros."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.bag.weight.device
        return self.pool({name: x.to(device) for name, x in self.inputs(texts).items()})

    def inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The texts' bucket ids, flat, and where each text's ids start (EmbeddingBag's input)."""
        ids = [hashed_tokens(text, self.buckets) for text in texts]
        offsets = torch.tensor([0, *accumulate(len(i) for i in ids)][:-1], dtype=torch.long)
        return {"tokens": torch.tensor([b for row in ids for b in row], dtype=torch.long), "offsets": offsets}

    def pool(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bag(inputs["tokens"], inputs["offsets"])


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


@BACKBONES.register("tiny")
class TinyBackbone(Backbone):
    name = "tiny"
    splits_image_tower = True
    #: everything is freshly initialised: all of it trains at the head learning rate
    new_parameter_prefixes = ("image_tower", "text_tower", "image_proj", "text_proj")

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        opts = extra_options(
            config, {"width": 64, "text_buckets": 2**14, "head": "linear", "head_hidden": None, "resize_mode": "squash",
                     "image_trainable_blocks": 0}
        )
        width = int(opts["width"])
        self.image_trainable_blocks = int(opts["image_trainable_blocks"])
        check_count(self.name, "image_trainable_blocks", self.image_trainable_blocks, _CONV_BLOCKS)
        self.preprocess = Preprocess.for_config(config, 64, SIGNED_UNIT_MEAN, SIGNED_UNIT_STD, opts["resize_mode"])
        self.image_tower = nn.Sequential(conv_block(3, 16), conv_block(16, 32), conv_block(32, width))
        self.text_tower = HashedTextTower(int(opts["text_buckets"]), width)
        self.image_proj = projection_head(width, config.embed_dim, opts["head"], opts["head_hidden"])
        self.text_proj = projection_head(width, config.embed_dim, opts["head"], opts["head_hidden"])
        self.token_dim = width
        for tower in self.frozen_modules():
            freeze(tower)
        self.train()  # frozen towers start in eval mode

    @property
    def _front(self) -> nn.Sequential:
        """The blocks that do not train (the tower itself when none does)."""
        n = self.image_trainable_blocks
        return self.image_tower[: _CONV_BLOCKS - n] if n else self.image_tower

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [(self._front, self.image_front_frozen), (self.text_tower, self.text_tower_frozen)]
        return [tower for tower, is_frozen in frozen if is_frozen]

    def rebuildable_frozen_modules(self) -> list[nn.Module]:
        return []  # random weights: a frozen tower must be saved to be restored

    def image_transform(self, train: bool = False):
        return image_transform(self.preprocess, augment=train and self.config.augment)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_tower_frozen):
            return self.image_tokens_from_prefix(self.image_prefix(images))

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_front_frozen):
            return self._front(images)

    def image_tokens_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.image_tower[_CONV_BLOCKS - self.image_trainable_blocks :](prefix).flatten(2).transpose(1, 2)

    def image_features_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.image_tokens_from_prefix(prefix).mean(dim=1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tokens(images).mean(dim=1)

    def token_grid(self) -> tuple[int, int]:
        side = halved(self.preprocess.size, _CONV_BLOCKS)
        return side, side

    def text_features(self, texts: list[str]) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_tower_frozen):
            return self.text_tower(texts)

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.text_tower.inputs(texts)

    def text_tower_outputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_tower.pool(inputs)

    @property
    def feature_id(self) -> str:
        return f"tiny|image={weights_fingerprint(self.image_tower)}|{self.preprocess.id}"

    @property
    def prefix_feature_id(self) -> str:
        return f"tiny|front={weights_fingerprint(self._front)}|blocks={len(self._front)}|{self.preprocess.id}"

    @property
    def text_feature_id(self) -> str:
        return f"tiny|text={weights_fingerprint(self.text_tower)}"
