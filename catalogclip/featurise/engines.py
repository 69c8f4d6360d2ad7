"""The embedding-engine seam: who runs decode -> preprocess -> forward over a list of images.

Callers (the feature cache, `embed`, `index`) cut their work into `Shard`s, describe it as an
`ImageJob` and pass a sink that writes one finished shard atomically; they skip the shards they
already have, which is what makes a killed job resume without recomputing finished shards.
Engines are registered by name (`EMBEDDING_ENGINES`): `local` (this process) and `ray` (Ray Data).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from catalogclip.featurise.allocator import tune_allocator
from catalogclip.registry import Registry

#: the rows of a batch or shard without a usable image
NO_ROWS = np.zeros((0,), np.float32)
#: what a job's `load` returns: the image, or the reason it cannot be used (the row is left out)
Loaded = Image.Image | str


class Forward(Protocol):
    """A model seen by an engine: opened once per process (or Ray actor) on a first batch."""

    def open(self, sample: Any) -> Callable[[Any], np.ndarray]:
        """A function from a collated batch to float32 rows; its `name` says what runs it."""
        ...


def stack(pixels: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(pixels)


@dataclass
class ImageJob:
    """Image files -> rows. Picklable (module-level functions and modules), so Ray can ship it."""

    load: Callable[[Path], Loaded]
    transform: Callable[[Image.Image], Any]
    forward: Forward
    batch_size: int = 32
    collate: Callable[[list], Any] = stack


@dataclass
class Shard:
    """Images whose rows are written together; `tag` is the caller's (a file name, a position)."""

    paths: list[Path]
    tag: Any = None


@dataclass
class ShardResult:
    shard: Shard
    rows: np.ndarray  # the rows of the usable images, in order
    errors: list[str]  # per image: "" or why it was left out
    runtime: str  # what ran the model


Sink = Callable[[ShardResult], None]


class EmbeddingEngine(Protocol):
    def run(self, job: ImageJob, shards: Sequence[Shard], sink: Sink, progress: bool = True) -> None:
        """Compute every shard and hand each to `sink` once complete (in any order)."""
        ...


EMBEDDING_ENGINES: Registry[Callable[..., EmbeddingEngine]] = Registry("embedding engine")


def make_engine(name: str = "local", **options) -> EmbeddingEngine:
    """The engine registered as `name` with `options`; an option it does not take is an error, not ignored."""
    factory = EMBEDDING_ENGINES.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"embedding engine '{name}' does not take option(s) {', '.join(sorted(options))}: {exc}") from None


def decode_batch(job: ImageJob, paths: Sequence[Path]) -> tuple[list[Any], list[str]]:
    """Preprocessed inputs of the usable images, and one error string per path ("" when usable)."""
    inputs, errors = [], []
    for path in paths:
        loaded = job.load(Path(path))
        if isinstance(loaded, str):
            errors.append(loaded)
        else:
            inputs.append(job.transform(loaded))
            errors.append("")
    return inputs, errors


class ShardAssembler:
    """Collects a shard's batches (which may arrive out of order) and emits it once complete."""

    def __init__(self, shards: Sequence[Shard], batch_size: int, sink: Sink) -> None:
        self.shards = shards
        self.sink = sink
        self.expected = [-(-len(s.paths) // batch_size) for s in shards]
        self.parts: dict[int, dict[int, tuple[np.ndarray, list[str]]]] = {}

    def add(self, shard_no: int, batch_no: int, rows: np.ndarray, errors: list[str], runtime: str) -> None:
        parts = self.parts.setdefault(shard_no, {})
        parts[batch_no] = (rows, errors)
        if len(parts) == self.expected[shard_no]:
            ordered = [parts[b] for b in sorted(parts)]
            del self.parts[shard_no]
            usable = [r for r, _ in ordered if len(r)]
            rows = np.concatenate(usable) if usable else NO_ROWS
            self.sink(ShardResult(self.shards[shard_no], rows, [e for _, es in ordered for e in es], runtime))


def shard_batches(shards: Sequence[Shard], batch_size: int) -> list[tuple[int, int, list[Path]]]:
    """(shard number, batch number, paths) of every batch; shards never share a batch."""
    return [
        (s, b, shard.paths[start : start + batch_size])
        for s, shard in enumerate(shards)
        for b, start in enumerate(range(0, len(shard.paths), batch_size))
    ]


def decode_collated(job: ImageJob, paths: Sequence[Path]) -> tuple[Any, list[str]]:
    """A batch ready for the model (None when none of its images is usable) and its error strings."""
    inputs, errors = decode_batch(job, paths)
    return (job.collate(inputs) if inputs else None), errors


class DecodedBatches(torch.utils.data.Dataset):
    """Batch k of a job, decoded and collated in a loader worker process."""

    def __init__(self, job: ImageJob, batches: list[list[Path]]) -> None:
        self.job, self.batches = job, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[Any, list[str]]:
        return decode_collated(self.job, self.batches[k])


def _unchanged(item):
    return item


def spare_cores() -> int:
    """Decoding processes a machine can run beside the process driving the model (one per other core, up to 16)."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def default_decode_processes() -> int:
    """Decoder processes where there are cores to spare (a GPU machine: measured on an H100 with 16
    cores, decoder threads fed ViT-B-32 540 images/s and 15 processes 1,750), else none: on a few
    cores the model needs them, and threads (which PIL and ONNX Runtime let run) suffice."""
    return 0 if (os.cpu_count() or 2) <= 4 else spare_cores()


@EMBEDDING_ENGINES.register("local")
@dataclass
class LocalEngine:
    """On this machine: decoders prepare the next batches while the model runs the current one,
    threads in this process or (`decode_processes`) loader worker processes; glibc's allocator is
    tuned first."""

    #: decoder threads when no processes decode: one per core up to 8
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 2))
    #: decoder processes (0: threads; None: processes on machines with more than 4 cores)
    decode_processes: int | None = None
    #: batches decoded ahead of the forward pass (per process, with processes)
    prefetch: int = 2
    name: str = field(default="local", init=False)

    def run(self, job: ImageJob, shards: Sequence[Shard], sink: Sink, progress: bool = True) -> None:
        tune_allocator()
        batches = shard_batches(shards, job.batch_size)
        assembler = ShardAssembler(shards, job.batch_size, sink)
        model = None
        total = sum(len(s.paths) for s in shards)
        with tqdm(total=total, desc="featurise", unit="img", disable=not progress or not total) as bar:
            for (shard_no, batch_no, paths), (batch, errors) in zip(batches, self._decoded(job, [b[2] for b in batches])):
                rows = NO_ROWS
                if batch is not None:
                    if model is None:
                        model = job.forward.open(batch)
                    rows = np.asarray(model(batch), dtype=np.float32)
                assembler.add(shard_no, batch_no, rows, errors, getattr(model, "name", "none"))
                bar.update(len(paths))

    def _decoded(self, job: ImageJob, batches: list[list[Path]]) -> Iterator[tuple[Any, list[str]]]:
        processes = default_decode_processes() if self.decode_processes is None else self.decode_processes
        if processes and batches:
            loader = torch.utils.data.DataLoader(
                DecodedBatches(job, batches), batch_size=None, num_workers=processes, prefetch_factor=self.prefetch, collate_fn=_unchanged
            )
            yield from loader
            return
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(self.decode_threads) as pool:
            try:
                for k in range(len(batches)):
                    while len(pending) < self.prefetch + 1 and k + len(pending) < len(batches):
                        pending.append(pool.submit(decode_collated, job, batches[k + len(pending)]))
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


@EMBEDDING_ENGINES.register("ray")
def ray_engine(**options) -> EmbeddingEngine:
    from catalogclip.featurise.ray_engine import RayEngine

    return RayEngine(**options)


def featurise(job: ImageJob, paths: Sequence[Path], engine: EmbeddingEngine | None = None, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Rows of the usable images among `paths` (in order) and one error string per path, in memory."""
    shards = [Shard(list(paths[start : start + 4096]), tag=n) for n, start in enumerate(range(0, len(paths), 4096))]
    results: dict[int, ShardResult] = {}
    (engine or LocalEngine()).run(job, shards, lambda result: results.__setitem__(result.shard.tag, result), progress)
    done = [results[n] for n in range(len(shards))]
    rows = [r.rows for r in done if len(r.rows)]
    return (np.concatenate(rows) if rows else NO_ROWS), [e for r in done for e in r.errors]
