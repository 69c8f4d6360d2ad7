"""What every backbone offers: image and text towers mapped into one `embed_dim` space.

A tower's pooled output ("features") is split from its projection so that a frozen tower's
features can be computed once and cached on disk (train/featcache.py); `image_tokens` gives
the spatial tokens (ViT patch tokens or a CNN feature map) that the ECLIP instance decoder reads.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image
from torch import nn

from catalogclip.registry import Registry


@dataclass
class BackboneConfig:
    """How to build a backbone. `spec` is the registered name plus options after ':'
    (e.g. ``twotower``, ``tiny``, ``openclip:ViT-B-32:/path/to/ckpt.pt``)."""

    spec: str = "twotower"
    embed_dim: int = 256
    freeze_image: bool | None = None  # None: the backbone's default (pretrained towers frozen)
    freeze_text: bool | None = None
    augment: bool = False  # train-time image augmentation
    image_size: int | None = None  # None: the backbone's native resolution
    extra: dict = field(default_factory=dict)


class Backbone(nn.Module):
    """Base class; subclasses set the towers and implement the four feature hooks."""

    #: registered name, set by the registry decorator's user
    name: str = "backbone"

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.embed_dim

    # --- hooks for subclasses -------------------------------------------------------------
    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        raise NotImplementedError

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, F_img) pooled tower output."""
        raise NotImplementedError

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, C_tok) spatial tokens, row-major over the (h, w) grid."""
        raise NotImplementedError

    def token_grid(self) -> tuple[int, int]:
        """(h, w) of the token grid `image_tokens` returns, for mapping tokens back to pixels."""
        raise NotImplementedError

    #: the backbone takes ``image_trainable_blocks`` (`extra`): with a frozen image tower, only its
    #: last blocks train and the rest (the front) is cached
    splits_image_tower: bool = False

    #: with a frozen image tower, how many of its last blocks train anyway (`splits_image_tower`)
    image_trainable_blocks: int = 0

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the frozen front of a partly trained image tower: its (B, C, h, w) activations."""
        raise NotImplementedError

    def image_features_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """`image_prefix` output -> the (B, F_img) pooled output, through the trained rest of the tower."""
        raise NotImplementedError

    def image_tokens_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        """`image_prefix` output -> the (B, N, C_tok) tokens, through the trained rest of the tower."""
        raise NotImplementedError

    @property
    def prefix_feature_id(self) -> str:
        """Identifies the frozen front's weights, preprocessing and where it ends: the cache key of prefixes."""
        raise NotImplementedError

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Raw strings -> (B, F_txt) pooled text tower output."""
        raise NotImplementedError

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Raw strings -> the text tower's input tensors (token ids ...), on CPU: the half of
        `text_features` a tower runtime does not run (catalogclip/featurise/runtime.py).
        NotImplementedError: the tower takes the strings themselves."""
        raise NotImplementedError

    def text_tower_outputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """`text_inputs` tensors -> (B, F_txt): the other half."""
        raise NotImplementedError

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Into the shared space; subclasses set `image_proj` (a head, or nn.Identity)."""
        return self.image_proj(features)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        return self.text_proj(features)

    #: dimension of `image_tokens`' last axis
    token_dim: int = 0

    #: parameter-name prefixes (relative to the backbone) of freshly initialised parts such as the
    #: projection heads: the trainer gives them the head learning rate, the pretrained rest the base rate
    new_parameter_prefixes: tuple[str, ...] = ("image_proj", "text_proj")

    # --- derived --------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.project_image(self.image_features(images))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.project_text(self.text_features(texts))

    @property
    def init_logit_scale(self) -> float:
        """log(1/temperature) to start a contrastive loss from (CLIP's 1/0.07)."""
        return math.log(1 / 0.07)

    @property
    def feature_id(self) -> str:
        """Identifies tower weights + preprocessing: the key prefix of cached features."""
        size = self.config.image_size or "native"
        return f"{self.config.spec}|size={size}"

    @property
    def text_feature_id(self) -> str:
        """Identifies text tower weights + tokenisation: the key prefix of cached text features."""
        return f"{self.config.spec}|text"

    def frozen_modules(self) -> list[nn.Module]:
        """Frozen sub-modules: they stay in eval mode (BatchNorm statistics, dropout) in `train()`."""
        return []

    def rebuildable_frozen_modules(self) -> list[nn.Module]:
        """Frozen sub-modules whose weights building the backbone again restores exactly (loaded
        from a pretrained source, not randomly initialised): checkpoints leave them out."""
        return self.frozen_modules()

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    #: defaults used when the config leaves freezing to the backbone
    default_freeze_image: bool = False
    default_freeze_text: bool = False

    @property
    def image_front_frozen(self) -> bool:
        """The config (or the backbone's default) freezes the image tower, perhaps but for its last blocks."""
        frozen = self.config.freeze_image
        return self.default_freeze_image if frozen is None else frozen

    @property
    def image_tower_frozen(self) -> bool:
        return self.image_front_frozen and self.image_trainable_blocks == 0

    @property
    def has_frozen_image_prefix(self) -> bool:
        """The image tower trains only its last blocks: its frozen front's output (`image_prefix`)
        can be cached like a frozen tower's, and training runs the rest of the tower."""
        return self.image_front_frozen and self.image_trainable_blocks > 0

    @property
    def text_tower_frozen(self) -> bool:
        frozen = self.config.freeze_text
        return self.default_freeze_text if frozen is None else frozen

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


BACKBONES: Registry[Callable[[BackboneConfig], Backbone]] = Registry("backbone")


def backbone_class(spec: str) -> Callable[[BackboneConfig], Backbone]:
    """The registered backbone of a spec ("twotower", "openclip:ViT-B-32:...")."""
    from catalogclip.models import backbones  # noqa: F401  registers the built-in backbones

    return BACKBONES.get(spec.split(":", 1)[0])


def build_backbone(config: BackboneConfig | str) -> Backbone:
    """Build a backbone from its config (or a bare spec string)."""
    if isinstance(config, str):
        config = BackboneConfig(spec=config)
    return backbone_class(config.spec)(config)


def check_count(backbone: str, option: str, n: int, available: int) -> None:
    """A count of trainable blocks or layers must lie between 0 and how many the tower has."""
    if not 0 <= n <= available:
        raise ValueError(f"backbone '{backbone}': {option} must be between 0 and {available}, got {n}")


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def extra_options(config: BackboneConfig, defaults: dict) -> dict:
    """`config.extra` over a backbone's defaults; an unknown key (a typo) is an error, not ignored."""
    unknown = sorted(set(config.extra) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"backbone '{config.spec}': unknown option(s) {', '.join(unknown)} (known: {known})")
    return {**defaults, **config.extra}


def weights_fingerprint(*sources: nn.Module | dict[str, torch.Tensor]) -> str:
    """A short hash of parameters and buffers (modules or state dicts): changes whenever their values do."""
    digest = hashlib.blake2b(digest_size=8)
    for source in sources:
        state = source.state_dict() if isinstance(source, nn.Module) else source
        for name, tensor in state.items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def projection_head(in_dim: int, out_dim: int, kind: str = "linear", hidden: int | None = None) -> nn.Module:
    """A freshly initialised head into the shared space: "linear", or "mlp" (Linear-GELU-Linear)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        hidden = hidden or max(in_dim, out_dim)
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
    raise ValueError(f"unknown projection head '{kind}' (known: linear, mlp)")
