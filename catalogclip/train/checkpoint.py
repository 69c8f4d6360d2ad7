"""What a checkpoint holds of a model: everything but its frozen pretrained towers.

Frozen towers never change and are rebuilt from their pretrained source when a run is loaded,
so leaving them out keeps a twotower checkpoint at the size of what was trained (about 1 MB
instead of 100 MB) and makes checkpointing cheap enough to do often.
"""
from __future__ import annotations

import torch
from torch import nn


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys (parameters and buffers) of the backbone's frozen, rebuildable sub-modules."""
    frozen = {id(m) for m in model.backbone.rebuildable_frozen_modules()}
    keys: set[str] = set()
    for name, module in model.named_modules():
        if id(module) in frozen:
            keys.update(f"{name}.{key}" for key in module.state_dict())
    return keys


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    skip = frozen_keys(model)
    return {k: v for k, v in model.state_dict().items() if k not in skip}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load a checkpoint made by `trainable_state`; anything else missing or extra is an error."""
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - frozen_keys(model)
    if missing or result.unexpected_keys:
        extra = sorted(missing)[:3] or sorted(result.unexpected_keys)[:3]
        raise ValueError(f"{where}: does not match the model its config builds (e.g. {', '.join(extra)})")
