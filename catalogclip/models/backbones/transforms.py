"""Image preprocessing per backbone: resolution, normalisation and train-time augmentation.

A `Preprocess` describes what a backbone's eval transform does; its `id` goes into the
backbone's `feature_id`, so cached features are recomputed whenever preprocessing changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from catalogclip.models.backbones.base import BackboneConfig

#: pixels scaled to [-1, 1]: what TensorFlow-trained nets such as EfficientNet-Lite (127/128) expect
SIGNED_UNIT_MEAN = (0.5, 0.5, 0.5)
SIGNED_UNIT_STD = (0.5, 0.5, 0.5)

#: "shortest": resize the shorter side then centre-crop (CLIP's way); "squash": stretch to a square,
#: which keeps the whole product in view
RESIZE_MODES = ("shortest", "squash")
_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"image size must be positive, got {self.size}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode '{self.resize_mode}' (known: {', '.join(RESIZE_MODES)})")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"unknown interpolation '{self.interpolation}' (known: {', '.join(_INTERPOLATIONS)})")

    @classmethod
    def for_config(
        cls, config: BackboneConfig, native_size: int, mean: tuple[float, ...], std: tuple[float, ...], resize_mode: str
    ) -> "Preprocess":
        """The backbone's native preprocessing, with the resolution `config.image_size` overrides."""
        return cls(config.image_size or native_size, tuple(mean), tuple(std), resize_mode)

    @property
    def id(self) -> str:
        def fmt(values: tuple[float, ...]) -> str:
            return ",".join(f"{v:.4g}" for v in values)

        return f"{self.size}px|{self.resize_mode}|{self.interpolation}|mean={fmt(self.mean)}|std={fmt(self.std)}"

    def visible_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a `width` x `height` image the eval transform shows, in that image's pixels.

        Cell (i, j) of a backbone's (h, w) token grid covers cell (i, j) of this box split h x w.
        """
        if self.resize_mode == "squash":
            return (0.0, 0.0, float(width), float(height))
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        return (x0, y0, x0 + side, y0 + side)


def to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, palette and RGBA images become RGB (a module-level function, so transforms pickle)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def eval_transform(pre: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    interpolation = _INTERPOLATIONS[pre.interpolation]
    if pre.resize_mode == "squash":
        geometry = [T.Resize((pre.size, pre.size), interpolation=interpolation)]
    else:
        geometry = [T.Resize(pre.size, interpolation=interpolation), T.CenterCrop(pre.size)]
    return T.Compose([to_rgb, *geometry, T.ToTensor(), T.Normalize(pre.mean, pre.std)])


def train_transform(pre: Preprocess) -> Callable[[Image.Image], torch.Tensor]:
    """Augmentation mild enough to keep the product recognisable: crop, flip, a little colour jitter."""
    return T.Compose(
        [
            to_rgb,
            T.RandomResizedCrop(pre.size, scale=(0.7, 1.0), interpolation=_INTERPOLATIONS[pre.interpolation]),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def image_transform(pre: Preprocess, augment: bool) -> Callable[[Image.Image], torch.Tensor]:
    return train_transform(pre) if augment else eval_transform(pre)


def halved(size: int, times: int) -> int:
    """Side of a feature map after `times` stride-2 layers with 'same' padding: ceil(size / 2) each time."""
    for _ in range(times):
        size = -(-size // 2)
    return size
