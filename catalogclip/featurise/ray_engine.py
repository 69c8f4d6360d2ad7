"""The `ray` embedding engine: Ray Data on a local Ray (started here) or a cluster (`address`).

The work is a dataset with one row per model batch (a shard's paths, cut to the job's batch size),
read in blocks; decoding and preprocessing run as Ray tasks, the model in an actor pool of
`workers` actors (one model each, `gpus_per_worker` GPUs each where there are GPUs). Results
stream back to the driver, which hands each shard to the sink once all its batches are in: a
killed job loses only the shards not yet written.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from catalogclip.featurise.engines import NO_ROWS, ImageJob, Shard, ShardAssembler, Sink, decode_collated, shard_batches


def _decode(row: dict[str, Any], decoder: ImageJob) -> dict[str, Any]:
    """A Ray task: decode and preprocess one batch's images."""
    collated, errors = decode_collated(decoder, row["paths"])
    if isinstance(collated, torch.Tensor):
        collated = collated.numpy()
    return {"shard": row["shard"], "batch": row["batch"], "inputs": collated, "errors": errors}


class _Embedder:
    """A Ray actor: one model, opened on its first batch."""

    def __init__(self, job: ImageJob, threads: int) -> None:
        from catalogclip.featurise.allocator import tune_allocator

        torch.set_num_threads(threads)
        tune_allocator()
        self.forward = job.forward
        self.model = None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        inputs = row["inputs"]
        rows, runtime = NO_ROWS, ""
        if inputs is not None:
            batch = torch.from_numpy(np.ascontiguousarray(inputs)) if isinstance(inputs, np.ndarray) else inputs
            if self.model is None:
                self.model = self.forward.open(batch)
            rows, runtime = np.asarray(self.model(batch), dtype=np.float32), getattr(self.model, "name", "")
        return {"shard": row["shard"], "batch": row["batch"], "rows": rows, "errors": list(row["errors"]), "runtime": runtime}


@dataclass
class RayEngine:
    #: None: a local Ray started in this process (`num_cpus` CPUs, default all); else a cluster
    #: address ("auto", "ray://head:10001") as `ray.init` takes it
    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: int = 1
    num_cpus: int | None = None
    #: decoding tasks at a time (None: one per worker)
    decoders: int | None = None
    name: str = field(default="ray", init=False)

    def run(self, job: ImageJob, shards: Sequence[Shard], sink: Sink, progress: bool = True) -> None:
        if not shards:
            return
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus if self.address is None else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        items = [{"shard": s, "batch": b, "paths": [str(p) for p in paths]} for s, b, paths in shard_batches(shards, job.batch_size)]
        dataset = (
            ray.data.from_items(items, override_num_blocks=min(len(items), 4 * self.workers + 4))
            # decoding is light next to the model: its tasks reserve no CPU, so that a pool holding
            # every CPU of a small machine still gets fed, and run at most `decoders` at a time
            .map(_decode, fn_kwargs={"decoder": replace(job, forward=None)}, num_cpus=0,
                 compute=ray.data.TaskPoolStrategy(size=self.decoders or self.workers))
            .map(
                _Embedder, fn_constructor_kwargs={"job": job, "threads": self.cpus_per_worker},
                compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
            )
        )
        assembler = ShardAssembler(shards, job.batch_size, sink)
        for row in dataset.iter_rows():
            assembler.add(int(row["shard"]), int(row["batch"]), np.asarray(row["rows"], np.float32), list(row["errors"]), str(row["runtime"]))
