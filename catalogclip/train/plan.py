"""How long a run trains: epochs from a step budget unless given, so defaults fit any catalog size.

A fixed epoch count trains a 500-product catalog for a few dozen steps (far from converged) and a
100,000-product one for thousands. With `epochs` unset, a run takes as many whole epochs as the
`step_budget` of optimiser steps needs (at least one, at most `max_epochs`);
`benchmarks/bench_defaults.py` measures where small and large catalogs converge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from catalogclip.train.config import OptimConfig


@dataclass(frozen=True)
class Plan:
    epochs: int
    steps: int  # optimiser steps the schedule spans
    stop: int  # the step training stops at (`max_steps`, else `steps`)
    batch_size: int
    batches_per_epoch: int
    pairs: int  # (image, product) training pairs
    from_budget: bool  # epochs chosen from the step budget (not given)

    def __str__(self) -> str:
        text = (
            f"plan: {self.epochs} epochs x {self.batches_per_epoch} batches of {self.batch_size} "
            f"= {self.steps} steps over {self.pairs:,} pairs"
        )
        if self.from_budget:
            text += " (epochs from the step budget)"
        if self.stop < self.steps:
            text += f"; stopping at step {self.stop}"
        return text


def make_plan(optim: OptimConfig, batches_per_epoch: int, pairs: int) -> Plan:
    """The run's epochs and steps for `batches_per_epoch` batches (of one rank) per epoch."""
    epochs = optim.epochs
    if epochs is None:
        needed = math.ceil(optim.step_budget * optim.grad_accum / max(1, batches_per_epoch))
        epochs = min(max(1, needed), optim.max_epochs)
    steps = max(1, batches_per_epoch * epochs // optim.grad_accum)
    stop = min(steps, optim.max_steps or steps)
    return Plan(epochs, steps, stop, optim.batch_size, batches_per_epoch, pairs, optim.epochs is None)
