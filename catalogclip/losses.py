"""Contrastive losses that know which pairs in a batch are the same product.

Two images of one product (or two identical texts) in a batch are positives of each other, not
negatives: each row's loss is -log of the softmax mass on all its positives together (MIL-NCE).
Unlike SupCon's average of -log softmax per positive, whose minimum is log |P|, a duplicate
positive then costs nothing. With one positive per row this is exactly CLIP's loss.
"""
from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the temperature at 1/100


def positive_mask(query_keys: torch.Tensor, candidate_keys: torch.Tensor | None = None) -> torch.Tensor:
    """(Bq, Bc) float mask: 1 where the two rows share a key (e.g. the same product id)."""
    candidate_keys = query_keys if candidate_keys is None else candidate_keys
    return (query_keys[:, None] == candidate_keys[None, :]).float()


def text_keys(texts: list[str], extra: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) int64 keys equal exactly for equal texts (and equal rows of `extra`, e.g. entity ids).

    crc32 is stable across processes, so keys from different DDP ranks can be compared.
    """
    keys = [zlib.crc32(t.encode("utf-8")) for t in texts]
    if extra is not None:
        keys = [zlib.crc32(row.cpu().numpy().tobytes(), k) for k, row in zip(keys, extra)]
    return torch.tensor(keys, dtype=torch.long)


def multi_positive_cross_entropy(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log sum_{p in P(i)} softmax(logits_i)_p; rows without positives are ignored."""
    has_pos = pos_mask.sum(dim=1) > 0
    logits, pos_mask = logits[has_pos], pos_mask[has_pos]
    positive_logits = logits.masked_fill(pos_mask == 0, float("-inf"))
    return (logits.logsumexp(dim=1) - positive_logits.logsumexp(dim=1)).mean()


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    pos_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric contrastive loss between L2-normalised `a` (Ba, d) and `b` (Bb, d).

    `pos_mask` (Ba, Bb) marks positives; None means row i of `a` matches row i of `b` only.
    """
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * a @ b.t()
    if pos_mask is None:
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"without a positive mask both sides need the same batch size, got {a.shape[0]} and {b.shape[0]}")
        targets = torch.arange(a.shape[0], device=a.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    pos_mask = pos_mask.to(logits.dtype)
    return (multi_positive_cross_entropy(logits, pos_mask) + multi_positive_cross_entropy(logits.t(), pos_mask.t())) / 2
