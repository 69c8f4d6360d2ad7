"""EI-CLIP's entity modules.

EA-Learner: one encoder per attribute group (brand, colour, ...), an embedding table plus an MLP,
trained from scratch. It never goes through the pretrained text encoder, so a brand called "Puma"
or "Diesel" gets no meaning from everyday language (the confounder EI-CLIP removes).

CE-Selector: one gate per group, an MLP + sigmoid over (description embedding, entity embedding),
that weighs how much each group's entity should shape the product's text embedding.
"""
from __future__ import annotations

import torch
from torch import nn

NONE_ID = 0  # vocab id of "this product has no value for the group" (catalog/vocab.py)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class EALearner(nn.Module):
    """Entity encoders: ids (B, G) -> per-group embeddings (B, G, d); a missing value embeds to 0."""

    def __init__(self, vocab_sizes: list[int], embed_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, hidden_dim, padding_idx=NONE_ID) for n in vocab_sizes)
        self.mlps = nn.ModuleList(_mlp(hidden_dim, hidden_dim, embed_dim) for _ in vocab_sizes)

    def forward(self, entity_ids: torch.Tensor) -> torch.Tensor:
        per_group = [mlp(table(entity_ids[:, g])) for g, (table, mlp) in enumerate(zip(self.tables, self.mlps))]
        present = (entity_ids != NONE_ID).unsqueeze(-1)
        return torch.stack(per_group, dim=1) * present


class CESelector(nn.Module):
    """Gates in [0, 1], one per group, from the description and that group's entity embedding.

    The last layer starts at zero so every gate starts at exactly 0.5 and moves only as training
    finds a group useful (towards 1) or useless (towards 0).
    """

    def __init__(self, n_groups: int, embed_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(_mlp(2 * embed_dim, hidden_dim, 1) for _ in range(n_groups))
        for mlp in self.mlps:
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def forward(self, description: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """description (B, d), entities (B, G, d) -> gates (B, G)."""
        logits = [mlp(torch.cat([description, entities[:, g]], dim=-1)) for g, mlp in enumerate(self.mlps)]
        return torch.sigmoid(torch.cat(logits, dim=-1))
