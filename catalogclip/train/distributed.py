"""torch.distributed glue: start from torchrun's environment, gather features across ranks.

The contrastive loss must see the global batch: every rank gathers all ranks' embeddings with an
autograd-aware all_gather and computes the same global loss. Its backward sends each rank the
gradient of every copy of its rows (summed: W x the single-process gradient), and DDP's average
over W ranks then gives exactly the single-process gradient, for tower parameters and for the
parameters used after the gather (the temperature) alike.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def local_rank() -> int:
    """This process's rank on its machine (torchrun's LOCAL_RANK): which of the machine's GPUs it takes."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order; gradients flow back to the owning rank."""
    _, world = rank_and_world()
    if world == 1:
        return x
    if x.requires_grad:
        return torch.cat(dist_nn.all_gather(x))
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
