"""`openclip:<model>[:<pretrained tag or local checkpoint path>]`: any open_clip model.

The model's own preprocessing and tokenizer are used and its image and text embeddings stay in
its native (aligned) space, so an untrained wrapper is a zero-shot CLIP and `embed_dim` is the
model's own. ``config.extra["head"] = "linear" | "mlp"`` adds trained heads into
`config.embed_dim` instead. A local file always works as `pretrained`; a tag needs the network.
Spec examples: ``openclip:ViT-B-32`` (random weights), ``openclip:ViT-B-32:/ckpt/clip.pt``,
``openclip:hf-hub:org/model``, ``openclip:local-dir:/models/clip``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from catalogclip.models.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneConfig,
    extra_options,
    freeze,
    projection_head,
    weights_fingerprint,
)
from catalogclip.models.backbones.transforms import Preprocess, train_transform

_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'openclip:ViT-B-32:/ckpt.pt' -> ('ViT-B-32', '/ckpt.pt'); a schema'd name carries its own weights."""
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    if not rest:
        raise ValueError(f"backbone spec '{spec}' names no model: use openclip:<model>[:<pretrained tag or path>]")
    if rest.startswith(_SCHEMAS):
        return rest, None
    model, _, pretrained = rest.partition(":")
    return model, pretrained or None


def check_pretrained(model: str, pretrained: str | None) -> None:
    """Fail early, in one line, on an unknown model, a missing checkpoint file or an unknown tag."""
    import open_clip

    if model.startswith(_SCHEMAS):
        return
    if open_clip.get_model_config(model.replace("/", "-")) is None:  # open_clip reads ViT-B/32 as ViT-B-32
        raise ValueError(f"unknown open_clip model '{model}' (see open_clip.list_models())")
    if pretrained is None or Path(pretrained).is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    looks_like_path = "/" in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES)
    if looks_like_path:
        raise FileNotFoundError(f"{pretrained}: open_clip checkpoint not found")
    if pretrained not in tags:
        known = ", ".join(tags) or "none"
        raise ValueError(f"'{pretrained}' is neither a checkpoint file nor a pretrained tag of {model} (tags: {known})")


def token_shape(visual: nn.Module) -> tuple[tuple[int, int], int]:
    """((h, w), channels) of the token grid of an open_clip ViT or ModifiedResNet image tower."""
    if hasattr(visual, "grid_size"):  # VisionTransformer: patch tokens after ln_post
        return tuple(visual.grid_size), visual.ln_post.normalized_shape[0]
    if hasattr(visual, "attnpool"):  # ModifiedResNet: the layer4 feature map (stride 32)
        side = visual.image_size // 32
        return (side, side), visual.attnpool.k_proj.in_features
    raise NotImplementedError(f"image tokens of a {type(visual).__name__} tower are not supported")


@BACKBONES.register("openclip")
class OpenClipBackbone(Backbone):
    name = "openclip"
    #: CLIP-style methods (EI-CLIP, ECLIP, CLIP-ITA) fine-tune the whole model
    default_freeze_image = False
    default_freeze_text = False

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__(config)
        import open_clip

        opts = extra_options(config, {"head": "none", "head_hidden": None})
        self.model_name, self.pretrained = parse_spec(config.spec)
        check_pretrained(self.model_name, self.pretrained)
        try:
            self.model, _, self._eval_transform = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, force_image_size=config.image_size
            )
        except RuntimeError as exc:
            if self.pretrained and Path(self.pretrained).is_file():
                reason = str(exc).splitlines()[0]
                raise ValueError(f"{self.pretrained}: not a checkpoint of open_clip {self.model_name} ({reason})") from exc
            raise RuntimeError(
                f"open_clip could not load {self.model_name} weights '{self.pretrained}' ({exc}); "
                f"without network, pass a local checkpoint: openclip:{self.model_name}:/path/to/checkpoint.pt"
            ) from exc
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        cfg = self.model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        self.preprocess = Preprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), cfg["resize_mode"], cfg["interpolation"])
        # the method owns the temperature: the model's own logit scale (and bias) would get no gradient
        for name in ("logit_scale", "logit_bias"):
            if isinstance(getattr(self.model, name, None), nn.Parameter):
                getattr(self.model, name).requires_grad_(False)
        native_dim = self.model.visual.output_dim
        if opts["head"] == "none":
            self.embed_dim = native_dim
            self.image_proj, self.text_proj = nn.Identity(), nn.Identity()
        else:
            self.image_proj = projection_head(native_dim, config.embed_dim, opts["head"], opts["head_hidden"])
            self.text_proj = projection_head(native_dim, config.embed_dim, opts["head"], opts["head_hidden"])
        if self.pretrained is None and not self.model_name.startswith(_SCHEMAS):
            self.new_parameter_prefixes = ("model", "image_proj", "text_proj")  # random weights: all new
        for module in self.frozen_modules():
            freeze(module)
        if self.text_tower_frozen:
            self._freeze_direct_text_parameters()
        self.train()  # frozen towers start in eval mode

    # --- freezing ---------------------------------------------------------------------------
    def _text_modules(self) -> list[nn.Module]:
        return [module for name, module in self.model.named_children() if name != "visual"]

    def _text_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(("visual.", "logit_"))}

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [self.model.visual] if self.image_tower_frozen else []
        return frozen + (self._text_modules() if self.text_tower_frozen else [])

    def rebuildable_frozen_modules(self) -> list[nn.Module]:
        pretrained = self.pretrained is not None or self.model_name.startswith(_SCHEMAS)
        return self.frozen_modules() if pretrained else []  # random weights must be saved

    def _freeze_direct_text_parameters(self) -> None:
        """CLIP keeps some text weights (positional embedding, projection) directly on the model."""
        for param in self.model.parameters(recurse=False):
            param.requires_grad_(False)

    # --- towers -----------------------------------------------------------------------------
    def image_transform(self, train: bool = False):
        return train_transform(self.preprocess) if train and self.config.augment else self._eval_transform

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_tower_frozen):
            return self.model.encode_image(images)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        token_shape(self.model.visual)  # raises for towers without a token grid
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.image_tower_frozen):
            out = self.model.visual.forward_intermediates(
                images, indices=1, normalize_intermediates=True, intermediates_only=True
            )
        return out["image_intermediates"][-1].flatten(2).transpose(1, 2)

    def token_grid(self) -> tuple[int, int]:
        return token_shape(self.model.visual)[0]

    @property
    def token_dim(self) -> int:
        return token_shape(self.model.visual)[1]

    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.text_tower_frozen):
            return self.model.encode_text(tokens)

    @property
    def init_logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().reshape(-1)[0])

    @property
    def feature_id(self) -> str:
        return f"openclip|{self.model_name}={weights_fingerprint(self.model.visual)}|{self.preprocess.id}"

    @property
    def text_feature_id(self) -> str:
        context = getattr(self.tokenizer, "context_length", "?")
        return f"openclip|{self.model_name}|text={weights_fingerprint(self._text_state())}|context={context}"
