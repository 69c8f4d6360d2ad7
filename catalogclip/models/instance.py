"""ECLIP (Jin et al., CVPR 2023): an instance decoder on top of the image encoder's spatial tokens.

N learnable instance queries read the token grid (ViT patch tokens or a CNN feature map) through
L decoder layers; each layer is slot attention (queries compete for tokens), self-attention among
the queries and a feed-forward block, each followed by add & norm. Every query output is projected
to an instance embedding. With a text, the text picks the instance (softmax over the queries of
their similarity to the text); without one (at index time) the query with the highest learned
saliency score stands for the image. See the README ("ECLIP") for which choices are the paper's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from catalogclip.losses import MAX_LOGIT_SCALE, multi_positive_cross_entropy, positive_mask
from catalogclip.models.backbones.base import Backbone
from catalogclip.models.batch import Batch
from catalogclip.models.methods import METHODS, Method, MethodConfig


SALIENT_RULES = ("soft", "argmax")


@dataclass
class EClipConfig(MethodConfig):
    n_queries: int = 8
    n_layers: int = 2
    decoder_dim: int = 256
    #: heads of the self-attention among queries (slot attention itself is single-head)
    heads: int = 4
    #: hidden width of the feed-forward block, as a multiple of decoder_dim
    ffn_mult: int = 2
    #: temperature of the softmax with which a text weighs the instance embeddings
    select_temperature: float = 0.05
    #: loss weights: image-text, inter-product (instance level), intra-product (views + text), saliency
    weight_itc: float = 1.0
    weight_inter: float = 1.0
    weight_intra: float = 1.0
    weight_saliency: float = 1.0
    #: images per product packed into a batch (the intra-/inter-product losses need several)
    views_per_product: int = 3
    #: an image without text: "soft" = the saliency-softmax-weighted instance embeddings (what the
    #: intra-product loss trains), "argmax" = the instance of the single most salient query
    salient_query: str = "soft"
    #: add to each instance embedding a linear projection of the backbone tokens that its query
    #: won in the last slot-attention layer: a path from the frozen tower's features to the
    #: instance that is not squeezed through the decoder's `decoder_dim` and trained from scratch
    token_skip: bool = False
    #: with `token_skip`: the decoder's term of the instance embedding starts at zero, so that an
    #: instance starts as the projection of its query's tokens and the decoder learns what to add
    zero_init_decoder: bool = False

    def __post_init__(self) -> None:
        for name in ("n_queries", "n_layers", "decoder_dim", "heads", "ffn_mult", "views_per_product"):
            if getattr(self, name) < 1:
                raise ValueError(f"eclip: {name} must be at least 1, got {getattr(self, name)}")
        if self.decoder_dim % self.heads:
            raise ValueError(f"eclip: decoder_dim ({self.decoder_dim}) must be divisible by heads ({self.heads})")
        if self.select_temperature <= 0:
            raise ValueError(f"eclip: select_temperature must be positive, got {self.select_temperature}")
        if self.zero_init_decoder and not self.token_skip:
            raise ValueError("eclip: zero_init_decoder needs token_skip (the instance embeddings would all start at zero)")
        if self.salient_query not in SALIENT_RULES:
            raise ValueError(f"eclip: salient_query must be one of {', '.join(SALIENT_RULES)}, got '{self.salient_query}'")
        for name in ("weight_itc", "weight_inter", "weight_intra", "weight_saliency"):
            if getattr(self, name) < 0:
                raise ValueError(f"eclip: {name} must not be negative, got {getattr(self, name)}")


# --- the decoder ---------------------------------------------------------------------------------


def token_weights(assignment: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, N, T) share of each token that each query won -> weights over the tokens summing to 1 per
    query; a query that wins no token still takes a (uniform) mean."""
    weights = assignment + eps
    return weights / weights.sum(dim=-1, keepdim=True)


class SlotAttention(nn.Module):
    """One read of the tokens by the queries, competing for them.

    Step 1: similarity of every query with every token. Step 2: softmax over the *queries* axis, so
    each token hands out one unit of attention among the queries; each query then takes the mean
    of the tokens weighted by what it received (weights renormalised over the tokens).
    """

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.eps = eps

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, N, D), tokens (B, T, D) -> (updates (B, N, D), assignment (B, N, T))."""
        logits = self.to_q(queries) @ self.to_k(tokens).transpose(1, 2) / math.sqrt(queries.shape[-1])
        assignment = logits.softmax(dim=1)
        return self.out(token_weights(assignment, self.eps) @ self.to_v(tokens)), assignment


class DecoderLayer(nn.Module):
    """Slot attention, self-attention among queries, feed-forward; each with add & norm (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int) -> None:
        super().__init__()
        self.slot = SlotAttention(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        updates, assignment = self.slot(queries, tokens)
        queries = self.norms[0](queries + updates)
        queries = self.norms[1](queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        queries = self.norms[2](queries + self.ffn(queries))
        return queries, assignment


class InstanceDecoder(nn.Module):
    """Learnable instance queries decoding a (B, T, C) token grid into (B, N, D) query outputs."""

    def __init__(self, token_dim: int, n_tokens: int, dim: int, n_queries: int, n_layers: int, heads: int, ffn_mult: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.token_in = nn.Linear(token_dim, dim)
        # CNN feature maps carry no position; ViT tokens do already, where it is harmless
        self.position = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.token_norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(n_queries, dim))  # random: identical queries would never split
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_mult) for _ in range(n_layers))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, C) -> (query outputs (B, N, D), last layer's assignment (B, N, T))."""
        if tokens.shape[1] != self.n_tokens:
            raise ValueError(
                f"eclip: the instance decoder was built for {self.n_tokens} image tokens, got {tokens.shape[1]} "
                "(was the image size changed after training?)"
            )
        memory = self.token_norm(self.token_in(tokens) + self.position)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        assignment = None
        for layer in self.layers:
            queries, assignment = layer(queries, memory)
        return queries, assignment


# --- the method ----------------------------------------------------------------------------------


@dataclass
class Instances:
    embeddings: torch.Tensor  # (B, N, E) L2-normalised instance embeddings
    saliency: torch.Tensor  # (B, N) learned score of each query (logits)
    assignment: torch.Tensor  # (B, N, T) share of each token each query won (sums to 1 over N)


def text_selection(instances: torch.Tensor, texts: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """How every text weighs every image's instances.

    instances (B, N, E), texts (M, E), both L2-normalised -> (weights (B, M, N) summing to 1 over N,
    cosine similarity (B, M) of each text with the image's text-selected, renormalised instance embedding).
    """
    sims = torch.einsum("bne,me->bmn", instances, texts)
    weights = (sims / temperature).softmax(dim=-1)
    # |sum_n w_n x_n|^2 = w^T G w with G the instances' Gram matrix: no (B, M, E) tensor needed
    gram = instances @ instances.transpose(1, 2)
    norm_sq = torch.einsum("bmn,bnk,bmk->bm", weights, gram, weights)
    return weights, (weights * sims).sum(dim=-1) / norm_sq.clamp_min(1e-12).sqrt()


def saliency_weighted(instances: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    """(B, E) unit sum of the instance embeddings (B, N, E) weighted by the softmax of their saliency (B, N)."""
    return F.normalize(torch.einsum("bn,bne->be", saliency.softmax(dim=-1), instances), dim=-1)


def _symmetric_loss(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    return (multi_positive_cross_entropy(logits, pos_mask) + multi_positive_cross_entropy(logits.t(), pos_mask.t())) / 2


def positives_without_self(keys: torch.Tensor) -> torch.Tensor:
    """(B, B) mask: 1 where two *different* rows share a key."""
    eye = torch.eye(len(keys), dtype=torch.bool, device=keys.device)
    return positive_mask(keys).masked_fill(eye, 0.0)


def first_of_each(keys: torch.Tensor) -> torch.Tensor:
    """Index of the first row of every distinct key, in order of first appearance."""
    seen: dict[int, int] = {}
    for row, key in enumerate(keys.tolist()):
        seen.setdefault(key, row)
    return torch.tensor(list(seen.values()), dtype=torch.long, device=keys.device)


def intra_product_mask(keys: torch.Tensor) -> torch.Tensor:
    """Positives of the intra-product loss over B images followed by the batch's P product texts.

    Rows/columns 0..B-1 are the images (product `keys`), B..B+P-1 the texts of the distinct
    products in order of first appearance: an image's positives are the other images of its
    product and its product's text; a text's positives are its product's images.
    """
    return positives_without_self(torch.cat([keys, keys[first_of_each(keys)]]))


def _loss_without_self(vectors: torch.Tensor, pos_mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Contrast each row with every *other* row (`pos_mask` has a zero diagonal).

    Rows without a positive are left out; with none left the loss is 0.
    """
    if pos_mask.sum() == 0:
        return vectors.sum() * 0.0  # keeps the graph connected for DDP
    eye = torch.eye(len(vectors), dtype=torch.bool, device=vectors.device)
    logits = (scale * vectors @ vectors.t()).masked_fill(eye, float("-inf"))
    return multi_positive_cross_entropy(logits, pos_mask)


@METHODS.register("eclip")
class EClipMethod(Method):
    """ECLIP: instance-level image embeddings from an instance decoder over spatial tokens."""

    name = "eclip"
    config_class = EClipConfig
    image_input = "tokens"

    def __init__(self, backbone: Backbone, config: EClipConfig, vocabs=None) -> None:
        super().__init__(backbone, config, vocabs)
        self.views_per_product = config.views_per_product
        h, w = backbone.token_grid()
        dim = config.decoder_dim
        self.decoder = InstanceDecoder(backbone.token_dim, h * w, dim, config.n_queries, config.n_layers, config.heads, config.ffn_mult)
        self.instance_proj = nn.Linear(dim, backbone.embed_dim)
        self.token_proj = nn.Linear(backbone.token_dim, backbone.embed_dim) if config.token_skip else None
        if config.zero_init_decoder:
            nn.init.zeros_(self.instance_proj.weight)
            nn.init.zeros_(self.instance_proj.bias)
        self.saliency = nn.Linear(dim, 1)

    # --- image side -----------------------------------------------------------------------------
    def image_tokens(self, batch: Batch) -> torch.Tensor:
        if batch.image_tokens is not None:
            return batch.image_tokens.float()
        if batch.image_prefix is not None:
            return self.backbone.image_tokens_from_prefix(batch.image_prefix.float())
        if batch.images is None:
            raise ValueError("eclip needs images or cached image tokens in the batch")
        return self.backbone.image_tokens(batch.images)

    def instances(self, batch: Batch) -> Instances:
        tokens = self.image_tokens(batch)
        outputs, assignment = self.decoder(tokens)
        embeddings = self.instance_proj(outputs)
        if self.token_proj is not None:
            embeddings = embeddings + self.token_proj(token_weights(assignment) @ tokens)
        return Instances(F.normalize(embeddings, dim=-1), self.saliency(outputs).squeeze(-1), assignment)

    def embed_images(self, batch: Batch) -> torch.Tensor:
        """Without text: the saliency-weighted instance embedding, or the most salient query's (`salient_query`)."""
        inst = self.instances(batch)
        if self.config.salient_query == "soft":
            return saliency_weighted(inst.embeddings, inst.saliency)
        winner = inst.saliency.argmax(dim=-1)
        return inst.embeddings[torch.arange(len(winner), device=winner.device), winner]

    def grounding_maps(self, batch: Batch, texts: torch.Tensor) -> torch.Tensor:
        """(B, h, w) map over the token grid of the query that text i selects in image i.

        `texts` (B, E) are L2-normalised text embeddings (`embed_texts`); the map is that query's
        share of each token in the last slot-attention layer (values in [0, 1]).
        """
        inst = self.instances(batch)
        sims = torch.einsum("bne,be->bn", inst.embeddings, texts)
        winner = sims.argmax(dim=-1)
        maps = inst.assignment[torch.arange(len(winner), device=winner.device), winner]
        return maps.reshape(len(winner), *self.backbone.token_grid())

    # --- training -------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        inst = self.instances(batch)
        embeddings, saliency = self.gather(inst.embeddings), self.gather(inst.saliency)
        texts, keys = self.gather(self.embed_texts(batch)), self.gather(batch.product_keys)
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        weights, cosine = text_selection(embeddings, texts, cfg.select_temperature)
        rows = torch.arange(len(keys), device=keys.device)
        own_weights = weights[rows, rows]  # (B, N): how each image's own product text weighs its queries

        # inter-product: each image's instance picked by its own text, against every other image's
        picked = F.normalize(torch.einsum("bn,bne->be", own_weights, embeddings), dim=-1)
        # intra-product: the text-free (saliency-weighted) image embeddings and the product texts together
        salient = saliency_weighted(embeddings, saliency)
        members = torch.cat([salient, texts[first_of_each(keys)]])
        parts = {
            "loss_itc": _symmetric_loss(scale * cosine, positive_mask(keys)),
            "loss_inter": _loss_without_self(picked, positives_without_self(keys), scale),
            "loss_intra": _loss_without_self(members, intra_product_mask(keys), scale),
            # the saliency head learns which query the product text would pick
            "loss_saliency": -(own_weights.detach() * saliency.log_softmax(dim=-1)).sum(dim=-1).mean(),
        }
        total = (
            cfg.weight_itc * parts["loss_itc"]
            + cfg.weight_inter * parts["loss_inter"]
            + cfg.weight_intra * parts["loss_intra"]
            + cfg.weight_saliency * parts["loss_saliency"]
        )
        return {"loss": total, **parts}
