"""Training methods, registered by name: `clip`, `eiclip` here; `eclip` and `clipita` in their modules.

A method wraps a backbone with whatever it adds (entity encoders, an instance decoder, a category
tower), defines its training loss on a `Batch`, and embeds images, product texts and category
paths into one L2-normalised space for evaluation and search.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from catalogclip.catalog.schema import Product
from catalogclip.losses import contrastive_loss, positive_mask, text_keys
from catalogclip.models.backbones.base import Backbone, BackboneConfig, build_backbone
from catalogclip.models.batch import Batch
from catalogclip.models.entities import CESelector, EALearner
from catalogclip.registry import Registry

Gather = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class MethodConfig:
    """Settings every method shares."""

    #: product fields that form its text, joined by ". " (title, description)
    text_fields: list[str] = field(default_factory=lambda: ["title"])
    #: attribute groups appended to the text as "group: value" (EI-CLIP's baseline 3)
    entities_as_text: list[str] = field(default_factory=list)
    #: attribute groups given to entity encoders (methods that have them)
    entity_groups: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict) -> "MethodConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) for {cls.__name__}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)


class Method(nn.Module):
    """Base class. Subclasses implement `loss`; most reuse the embedding helpers here."""

    name = "method"
    config_class: type[MethodConfig] = MethodConfig
    #: what the image side consumes: pooled "features" or spatial "tokens" (ECLIP)
    image_input = "features"
    #: >1: batches are built from products with up to this many images each (ECLIP's intra-product loss)
    views_per_product = 1
    #: the data pipeline samples a category node per row (Batch.categories, CLIP-ITA)
    trains_on_categories = False
    #: the data pipeline adds each product's attribute text (Batch.attribute_texts, CLIP-ITA)
    uses_attribute_text = False

    def __init__(self, backbone: Backbone, config: MethodConfig, vocabs=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.vocabs = vocabs
        self.logit_scale = nn.Parameter(torch.tensor(backbone.init_logit_scale))
        #: set by the trainer under torch.distributed: gathers a (B, ...) tensor from every rank
        self.gather: Gather = _identity

    # --- text of a product -----------------------------------------------------------------
    def product_text(self, product: Product) -> str:
        parts = [getattr(product, f) for f in self.config.text_fields]
        text = ". ".join(p for p in parts if p)
        extras = [f"{g}: {product.attributes[g]}" for g in self.config.entities_as_text if g in product.attributes]
        return f"{text}. {', '.join(extras)}" if extras else text

    # --- towers (use cached tower outputs when the batch has them) ---------------------------
    def image_features(self, batch: Batch) -> torch.Tensor:
        if batch.image_features is not None:
            return batch.image_features.float()
        if batch.image_prefix is not None:
            return self.backbone.image_features_from_prefix(batch.image_prefix.float())
        return self.backbone.image_features(batch.images)

    def text_features(self, batch: Batch) -> torch.Tensor:
        if batch.text_features is not None:
            return batch.text_features.float()
        return self.backbone.text_features(batch.texts)

    # --- embeddings (L2-normalised) -------------------------------------------------------
    def embed_images(self, batch: Batch) -> torch.Tensor:
        return F.normalize(self.backbone.project_image(self.image_features(batch)), dim=-1)

    def embed_texts(self, batch: Batch) -> torch.Tensor:
        return F.normalize(self.backbone.project_text(self.text_features(batch)), dim=-1)

    def embed_categories(self, paths: list[str]) -> torch.Tensor:
        return F.normalize(self.backbone.encode_text(paths), dim=-1)

    #: methods with one fused vector per product (CLIP-ITA) implement
    #: `embed_products(batch) -> (B, d)` over a batch of one image + text + attributes per product
    embed_products = None

    # --- training ---------------------------------------------------------------------------
    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The training loss, so that DistributedDataParallel can wrap a method."""
        return self.loss(batch)

    def contrast(self, a: torch.Tensor, b: torch.Tensor, product_keys: torch.Tensor, same_text: torch.Tensor) -> torch.Tensor:
        """Contrastive loss over the global batch: rows of one product, or with identical text
        (`same_text` keys, see losses.text_keys), are positives of each other, never negatives."""
        device = a.device
        a, b = self.gather(a), self.gather(b)
        product_keys, same_text = self.gather(product_keys.to(device)), self.gather(same_text.to(device))
        mask = torch.maximum(positive_mask(product_keys), positive_mask(same_text))
        return contrastive_loss(a, b, self.logit_scale, mask)

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging beside the loss (temperature, gates, ...)."""
        return {"temperature": float(1 / self.logit_scale.detach().exp())}


METHODS: Registry[type[Method]] = Registry("method")


def method_config(name: str, options: dict | None = None) -> MethodConfig:
    """The config of a registered method from plain settings (unknown keys are an error)."""
    _register_builtin_methods()
    return METHODS.get(name).config_class.from_dict(options or {})


def build_method(
    name: str,
    backbone: BackboneConfig | Backbone | str,
    config: MethodConfig | dict | None = None,
    vocabs=None,
) -> Method:
    """Build a registered method around a backbone (config, spec string or a built backbone)."""
    if not isinstance(config, MethodConfig):
        config = method_config(name, config)
    cls = METHODS.get(name)
    if not isinstance(backbone, Backbone):
        backbone = build_backbone(backbone)
    return cls(backbone, config, vocabs)


def _register_builtin_methods() -> None:
    """Import the method modules that register themselves (they import this one, hence late)."""
    from catalogclip.models import category, instance  # noqa: F401


@METHODS.register("clip")
class CLIPMethod(Method):
    """Plain contrastive fine-tuning: image vs. product text (title, optionally + entities as text)."""

    name = "clip"

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        keys = text_keys(batch.texts)
        return {"loss": self.contrast(self.embed_images(batch), self.embed_texts(batch), batch.product_keys, keys)}


@dataclass
class EIClipConfig(MethodConfig):
    entity_groups: list[str] = field(default_factory=lambda: ["brand"])
    #: "learned" (CE-Selector) or "equal" (every gate fixed at 0.5: the paper's baseline 4)
    gates: str = "learned"
    entity_hidden: int = 256
    #: weights of the three losses: image vs. (description + entities), vs. description, vs. entities
    weight_full: float = 1.0
    weight_description: float = 1.0
    weight_entities: float = 1.0

    def __post_init__(self) -> None:
        if self.gates not in ("learned", "equal"):
            raise ValueError(f"gates must be 'learned' or 'equal', got '{self.gates}'")
        if not self.entity_groups:
            raise ValueError("eiclip needs at least one entity group (entity_groups)")


@METHODS.register("eiclip")
class EIClipMethod(Method):
    """EI-CLIP: text embedding = description embedding + gated sum of per-group entity embeddings."""

    name = "eiclip"
    config_class = EIClipConfig

    def __init__(self, backbone: Backbone, config: EIClipConfig, vocabs=None) -> None:
        super().__init__(backbone, config, vocabs)
        if vocabs is None:
            raise ValueError("eiclip needs entity vocabularies built on the training split")
        missing = [g for g in config.entity_groups if g not in vocabs.groups]
        if missing:
            raise ValueError(f"entity group(s) {missing} have no vocabulary (vocabularies: {vocabs.groups})")
        sizes = dict(zip(vocabs.groups, vocabs.sizes()))
        self.group_index = [vocabs.groups.index(g) for g in config.entity_groups]
        self.ea_learner = EALearner([sizes[g] for g in config.entity_groups], backbone.embed_dim, config.entity_hidden)
        self.ce_selector = CESelector(len(config.entity_groups), backbone.embed_dim)
        self._gate_sum = torch.zeros(len(config.entity_groups))
        self._gate_count = torch.zeros(len(config.entity_groups))
        self._last_gates: dict[str, float] = {}

    def _parts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit description (B, d), gated sum of unit entity embeddings (B, d), gates (B, G).

        Both parts are normalised before they are added so a gate alone decides how much a group
        weighs. Gates of groups a product has no value for are NaN (nothing was weighed).
        """
        description = F.normalize(self.backbone.project_text(self.text_features(batch)), dim=-1)
        ids = batch.entity_ids[:, self.group_index]
        entities = F.normalize(self.ea_learner(ids), dim=-1)  # a missing value stays 0
        if self.config.gates == "equal":
            gates = torch.full(entities.shape[:2], 0.5, device=entities.device)
        else:
            gates = self.ce_selector(description, entities)
        return description, (gates.unsqueeze(-1) * entities).sum(dim=1), gates.masked_fill(ids == 0, float("nan"))

    def embed_texts(self, batch: Batch) -> torch.Tensor:
        description, entities, _ = self._parts(batch)
        return F.normalize(description + entities, dim=-1)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        image = self.embed_images(batch)
        description, entities, gates = self._parts(batch)
        ids = batch.entity_ids[:, self.group_index]
        same_description, same_entities = text_keys(batch.texts), text_keys([""] * len(batch), ids)
        same_full = text_keys(batch.texts, ids)
        products, cfg = batch.product_keys, self.config
        parts = {
            "loss_full": self.contrast(image, F.normalize(description + entities, dim=-1), products, same_full),
            "loss_description": self.contrast(image, description, products, same_description),
            "loss_entities": self.contrast(image, F.normalize(entities, dim=-1), products, same_entities),
        }
        self._track_gates(gates.detach())
        total = cfg.weight_full * parts["loss_full"] + cfg.weight_description * parts["loss_description"]
        return {"loss": total + cfg.weight_entities * parts["loss_entities"], **parts}

    def _track_gates(self, gates: torch.Tensor) -> None:
        gates = gates.cpu()
        self._gate_sum += gates.nan_to_num(0.0).sum(dim=0)
        self._gate_count += (~gates.isnan()).sum(dim=0)

    def gate_values(self) -> dict[str, float]:
        """Mean gate per group over the training rows (having that group) since the last call.

        With no rows seen since (e.g. at the end of training) the last window's means are returned.
        """
        if self._gate_count.sum() > 0:
            means = self._gate_sum / self._gate_count.clamp(min=1)
            self._last_gates = {g: round(float(v), 4) for g, v in zip(self.config.entity_groups, means)}
            self._gate_sum.zero_()
            self._gate_count.zero_()
        return dict(self._last_gates)

    def log_values(self) -> dict[str, float]:
        gates = {f"gate/{g}": v for g, v in self.gate_values().items()}
        return {**super().log_values(), **gates}
