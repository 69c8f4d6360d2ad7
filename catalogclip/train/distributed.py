"""torch.distributed glue: start from torchrun's environment, gather features across ranks.

The contrastive loss must see the global batch: every rank gathers all ranks' embeddings, with
its own slice kept in the autograd graph (gradients flow through the local part only), computes
the same global loss, and scales it by the world size so that DDP's gradient averaging yields
exactly the single-process gradient.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order; only the local slice carries gradients."""
    rank, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts)


def loss_scale() -> float:
    """Factor that turns DDP's averaged gradients of the (identical) global loss into its gradient."""
    return float(rank_and_world()[1])
