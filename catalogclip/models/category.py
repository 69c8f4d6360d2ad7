"""CLIP-ITA (Hendriksen et al., ECIR 2022): category-to-image retrieval over a category tree.

Two encoders meet in one space:

- the category encoder: the backbone's text tower on a category path ("Apparel > Topwear"), its
  text projection, then a residual MLP head (zero-initialised, so it starts as the backbone's own
  text embedding: zero-shot CLIP for a pretrained backbone);
- the product encoder: the product's image, attribute text ("brand: Puma, colour: Black") and title
  embedded by the backbone, then fused. The variant picks the parts: ``I`` (image), ``IA``
  (+ attributes), ``ITA`` (+ title). Fusion ``weighted`` is a learned softmax-weighted sum of the
  L2-normalised parts; ``mlp`` adds a small MLP over their concatenation to their mean (zero-
  initialised: both fusions start from the equal-weight mean). Missing parts (an empty title or
  attribute text) are left out of the sum.

Loss: symmetric multi-positive contrastive loss between the category nodes sampled for the batch
rows (one node at a random depth of each product's path) and the fused products, with a learned
temperature. A product is a positive of a node when the node lies on the product's path - built
from the full paths, so a row's node is also a positive of every other row in its subtree, not
only of rows that sampled the same node.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from cachetools import LRUCache
from torch import nn

from catalogclip.catalog.schema import Product
from catalogclip.losses import contrastive_loss
from catalogclip.models.backbones.base import Backbone
from catalogclip.models.batch import Batch
from catalogclip.models.methods import METHODS, Method, MethodConfig

VARIANTS = {"I": ("image",), "IA": ("image", "attributes"), "ITA": ("image", "attributes", "title")}
FUSIONS = ("weighted", "mlp")
#: paths are padded to this many nodes so that every rank gathers equal shapes under DDP
MAX_CATEGORY_DEPTH = 16
_NO_NODE, _PAD = -1, -2  # node hashes are >= 0, so these never match one


@dataclass
class CLIPITAConfig(MethodConfig):
    #: product parts fused: "I" (image), "IA" (image + attributes), "ITA" (image + attributes + title)
    variant: str = "ITA"
    #: "weighted" (learned softmax weights over the parts) or "mlp" (mean + MLP over the concatenation)
    fusion: str = "weighted"
    #: hidden units of the fusion MLP and of the category head
    hidden: int = 512

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"clipita variant must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        if self.fusion not in FUSIONS:
            raise ValueError(f"clipita fusion must be one of {', '.join(FUSIONS)}, got '{self.fusion}'")


class ResidualHead(nn.Module):
    """x + MLP(x) with the MLP's output layer zero-initialised: starts as the identity."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class Fusion(nn.Module):
    """Fuses (B, M, d) normalised parts, `present` (B, M) marking the parts a product has."""

    def __init__(self, parts: tuple[str, ...], dim: int, kind: str, hidden: int) -> None:
        super().__init__()
        self.parts = parts
        self.logits = nn.Parameter(torch.zeros(len(parts))) if kind == "weighted" else None
        self.mlp = None
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(len(parts) * dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def weights(self, present: torch.Tensor) -> torch.Tensor:
        """(B, M) weights of the present parts, summing to 1 per row."""
        logits = self.logits if self.logits is not None else torch.zeros(len(self.parts), device=present.device)
        return logits.expand_as(present).masked_fill(~present, float("-inf")).softmax(dim=-1)

    def forward(self, parts: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        fused = (self.weights(present).unsqueeze(-1) * parts).sum(dim=1)
        if self.mlp is not None:
            fused = fused + self.mlp((parts * present.unsqueeze(-1)).flatten(1))
        return fused


def node_hash(node: str) -> int:
    """A stable non-negative 63-bit id of a category node (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.blake2b(node.encode(), digest_size=8).digest(), "little") >> 1


def category_positive_mask(nodes: torch.Tensor, path_nodes: torch.Tensor) -> torch.Tensor:
    """(B_nodes, B_products) float mask: 1 where node i lies on product j's path.

    `nodes` (B,) are node ids (`node_hash`), `path_nodes` (B, L) the ids of every node on each
    product's path, padded with values that match no node.
    """
    return (path_nodes.unsqueeze(0) == nodes[:, None, None]).any(dim=-1).float()


def category_keys(categories: list[str], path_nodes: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) ids of the sampled nodes and (B, MAX_CATEGORY_DEPTH) ids of the nodes on each row's path."""
    deepest = max((len(nodes) for nodes in path_nodes), default=0)
    if deepest > MAX_CATEGORY_DEPTH:
        raise ValueError(f"clipita supports category paths of at most {MAX_CATEGORY_DEPTH} levels, got {deepest}")
    nodes = torch.tensor([node_hash(c) if c else _NO_NODE for c in categories], dtype=torch.long)
    on_path = torch.full((len(path_nodes), MAX_CATEGORY_DEPTH), _PAD, dtype=torch.long)
    for row, row_nodes in enumerate(path_nodes):
        on_path[row, : len(row_nodes)] = torch.tensor([node_hash(n) for n in row_nodes], dtype=torch.long)
    return nodes, on_path


#: frozen text-tower features per (text_feature_id, string), shared by every clipita model in the
#: process: category nodes repeat in every batch, and runs that share a frozen tower share features.
#: Bounded (least recently used out): a service also encodes every distinct shopper query with it.
_FROZEN_TEXT_FEATURES: LRUCache = LRUCache(maxsize=65_536)
_MEMO_LOCK = threading.Lock()


def _memoised(key: str, texts: list[str]) -> dict[str, torch.Tensor | None]:
    """The memo's features of each distinct text (None where it has none)."""
    with _MEMO_LOCK:
        return {t: _FROZEN_TEXT_FEATURES.get((key, t)) for t in dict.fromkeys(texts)}


def _remember(key: str, features: dict[str, torch.Tensor]) -> None:
    with _MEMO_LOCK:
        _FROZEN_TEXT_FEATURES.update({(key, t): f for t, f in features.items()})


@METHODS.register("clipita")
class CLIPITAMethod(Method):
    name = "clipita"
    config_class = CLIPITAConfig
    trains_on_categories = True
    uses_attribute_text = True

    def __init__(self, backbone: Backbone, config: CLIPITAConfig, vocabs=None) -> None:
        super().__init__(backbone, config, vocabs)
        self.parts = VARIANTS[config.variant]
        self.category_head = ResidualHead(backbone.embed_dim, config.hidden)
        self.fusion = Fusion(self.parts, backbone.embed_dim, config.fusion, config.hidden)
        self._text_feature_id: str | None = None

    def product_text(self, product: Product) -> str:
        return product.title

    # --- text features (memoised when the text tower is frozen) -------------------------------
    @property
    def _text_key(self) -> str:
        """The memo's key prefix; hashing the tower's weights is slow, so once per model."""
        if self._text_feature_id is None:
            self._text_feature_id = self.backbone.text_feature_id
        return self._text_feature_id

    def encode_strings(self, texts: list[str]) -> torch.Tensor:
        """(B, F_txt) text-tower features; computed once per distinct string when the tower is frozen."""
        if not self.backbone.text_tower_frozen:
            return self.backbone.text_features(texts)
        known = _memoised(self._text_key, texts)
        missing = [t for t, f in known.items() if f is None]
        if missing:
            with torch.no_grad():
                computed = dict(zip(missing, self.backbone.text_features(missing).float().cpu()))
            _remember(self._text_key, computed)
            known.update(computed)
        return torch.stack([known[t] for t in texts]).to(self.backbone.device)

    def prime_text_features(self, texts: list[str], cache_dir: str | Path) -> None:
        """Memoise the frozen text features of `texts` from the on-disk feature cache (computing and
        adding the missing ones), so that runs in other processes do not encode them again."""
        from catalogclip.train.featcache import FeatureCache

        if not self.backbone.text_tower_frozen:
            raise ValueError("only a frozen text tower's features can be cached")
        distinct = [t for t, f in _memoised(self._text_key, texts).items() if f is None]
        features = FeatureCache(cache_dir, self.backbone, kind="text").fill(distinct, progress=False).float()
        _remember(self._text_key, dict(zip(distinct, features)))

    def text_features(self, batch: Batch) -> torch.Tensor:
        if batch.text_features is not None:
            return batch.text_features.float()
        return self.encode_strings(batch.texts)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._text_feature_id = None  # new tower weights: new memo key
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- the two encoders ---------------------------------------------------------------------
    def embed_categories(self, paths: list[str]) -> torch.Tensor:
        text = self.backbone.project_text(self.encode_strings(list(paths)))
        return F.normalize(self.category_head(text), dim=-1)

    def _product_parts(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, d) normalised parts of the variant and (B, M) which of them each product has."""
        image = self.backbone.project_image(self.image_features(batch))
        parts, present = [image], [torch.ones(len(batch), dtype=torch.bool)]
        if "attributes" in self.parts:
            if batch.attribute_texts is None:
                raise ValueError(f"clipita variant {self.config.variant} needs the batch's attribute texts")
            parts.append(self.backbone.project_text(self.encode_strings(batch.attribute_texts)))
            present.append(torch.tensor([bool(t.strip()) for t in batch.attribute_texts]))
        if "title" in self.parts:
            parts.append(self.backbone.project_text(self.text_features(batch)))
            present.append(torch.tensor([bool(t.strip()) for t in batch.texts]))
        stacked = F.normalize(torch.stack(parts, dim=1), dim=-1)
        return stacked, torch.stack(present, dim=1).to(stacked.device)

    def embed_products(self, batch: Batch) -> torch.Tensor:
        """(B, d) fused product vectors from one image + attribute text + title per row."""
        return F.normalize(self.fusion(*self._product_parts(batch)), dim=-1)

    # --- training -----------------------------------------------------------------------------
    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if batch.categories is None or batch.category_path_nodes is None:
            raise ValueError("clipita trains on category paths: the batch has no categories")
        nodes, on_path = category_keys(batch.categories, batch.category_path_nodes)
        device = self.logit_scale.device
        categories = self.gather(self.embed_categories(batch.categories))
        products = self.gather(self.embed_products(batch))
        mask = category_positive_mask(self.gather(nodes.to(device)), self.gather(on_path.to(device)))
        return {"loss": contrastive_loss(categories, products, self.logit_scale, mask)}

    def log_values(self) -> dict[str, float]:
        values = super().log_values()
        if self.fusion.logits is not None:
            weights = self.fusion.logits.detach().softmax(dim=0)
            values.update({f"fusion/{part}": round(float(w), 4) for part, w in zip(self.parts, weights)})
        return values
