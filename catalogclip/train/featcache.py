"""On-disk cache of frozen-tower outputs: each image (or text) goes through a frozen tower once.

Layout: ``root/<namespace>/`` per (tower weights + preprocessing, kind), the namespace being a hash
of the backbone's `feature_id` (or `text_feature_id`) and the kind. Inside, shards of float16 rows:

- ``shard-<id>.npy``: the rows, written atomically;
- ``shard-<id>.json``: their keys, written atomically *after* the rows.

A shard counts once its ``.json`` exists and agrees with its ``.npy``, so a killed run leaves at
worst an ignored orphan ``.npy``, never a half-read shard; concurrent writers use distinct shard ids.
A fill holds an exclusive `flock` on ``fill.lock`` in the namespace and looks again for what is
missing once it has it, so processes that start filling the same items together compute each once.
An image's key is its resolved path + size + mtime, so an edited image is recomputed; a text's key
is the string. Image rows are computed by an embedding engine (catalogclip/featurise) on the tower
runtime `runtime` picks; every runtime offered computes in fp32 and agrees with eager PyTorch to a
cosine of at least 0.9999, so the namespace does not depend on it (caches made before the runtimes
existed stay valid) and each shard's ``.json`` records the runtime that made it. The index is an in-memory dict and shards are memory-mapped: lookups stay cheap
for 100k images. Stale rows (of images edited or deleted since) stay on disk until `prune` drops
them: their keys can never match again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from catalogclip.featurise.engines import EmbeddingEngine, ImageJob, LocalEngine, Shard, ShardResult
from catalogclip.featurise.runtime import TowerForward
from catalogclip.io import atomic_path, atomic_write_json
from catalogclip.models.backbones.base import Backbone

#: kind -> (the Backbone property saying its rows stay the same while the backbone trains, the one
#: naming what they depend on: weights, preprocessing)
_SOURCES = {
    "features": ("image_tower_frozen", "feature_id"),
    "tokens": ("image_tower_frozen", "feature_id"),
    "prefix": ("has_frozen_image_prefix", "prefix_feature_id"),
    "text": ("text_tower_frozen", "text_feature_id"),
}
KINDS = tuple(_SOURCES)
Item = Path | str
#: a namespace's record of what its rows are (its source id and kind)
SOURCE = "source.json"
#: what pruning reports
PRUNE_COUNTS = ("rows kept", "rows dropped", "shards deleted", "shards rewritten", "bytes freed")


def cacheable(backbone: Backbone, kind: str) -> bool:
    """Whether `kind` rows of `backbone` stay the same while it trains."""
    return getattr(backbone, _SOURCES[kind][0])


def source_id(backbone: Backbone, kind: str) -> str:
    """What `kind` rows of `backbone` depend on: their namespace's key."""
    return getattr(backbone, _SOURCES[kind][1])


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class FeatureCache:
    """Cached outputs of a backbone's frozen tower: "features" (B, F) or "tokens" (B, N, C) of images,
    the (B, C, h, w) "prefix" of an image tower whose last blocks train (its frozen front's output),
    or "text" features (B, F_txt) of strings; rows are stored and returned as float16. Image rows are
    computed by `engine` (default: in this process) with the tower on `runtime` ("auto", "torch", "onnx")."""

    def __init__(
        self,
        root: str | Path,
        backbone: Backbone,
        kind: str = "features",
        shard_rows: int = 1024,
        runtime: str = "auto",
        engine: EmbeddingEngine | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown feature cache kind '{kind}' (known: {', '.join(KINDS)})")
        if not cacheable(backbone, kind):
            need = {"text": "a frozen text tower; backbone '{}' trains it",
                    "prefix": "an image tower with a frozen front and trained last blocks; backbone '{}' has none"}
            reason = need.get(kind, "a frozen image tower; backbone '{}' trains it").format(backbone.config.spec)
            raise ValueError(f"a '{kind}' cache needs {reason}")
        self.backbone = backbone
        self.kind = kind
        self.shard_rows = shard_rows
        self.engine = engine or LocalEngine()
        self.forward = TowerForward(backbone, kind, runtime) if kind != "text" else None
        self.source_id = source_id(backbone, kind)
        namespace = hashlib.sha256(f"{self.source_id}|{kind}".encode()).hexdigest()[:20]
        self.folder = Path(root) / namespace
        self._index: dict[str, tuple[str, int]] = {}
        self._shards: dict[str, np.ndarray] = {}
        self.refresh()

    # --- reading ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """(Re)load the index from every complete shard, including other processes' new ones."""
        for meta_path in sorted(self.folder.glob("shard-*.json")):
            if meta_path.stem not in self._shards:
                self._load_shard(meta_path)

    def _load_shard(self, meta_path: Path) -> None:
        shard = read_shard(meta_path)
        if shard is None:
            return  # damaged or incomplete: its items are simply recomputed
        meta, rows = shard
        self._shards[meta_path.stem] = rows
        for row, key in enumerate(meta["keys"]):
            self._index[key] = (meta_path.stem, row)

    def key(self, item: Item) -> str:
        return str(item) if self.kind == "text" else image_key(item)

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, items: Sequence[Item]) -> list[int]:
        """Positions of the items that are not cached (yet)."""
        return [i for i, item in enumerate(items) if self.key(item) not in self._index]

    def get(self, items: Sequence[Item]) -> torch.Tensor | None:
        """The cached rows of `items` in order, or None when any of them is missing."""
        locations = [self._index.get(self.key(item)) for item in items]
        if any(loc is None for loc in locations):
            return None
        return self._gather(locations)

    def _gather(self, locations: list[tuple[str, int]]) -> torch.Tensor:
        if not locations:
            return torch.empty(0, dtype=torch.float16)
        first = self._shards[locations[0][0]]
        out = np.empty((len(locations), *first.shape[1:]), dtype=np.float16)
        by_shard: dict[str, list[int]] = {}
        for position, (shard, _) in enumerate(locations):
            by_shard.setdefault(shard, []).append(position)
        for shard, positions in by_shard.items():
            out[positions] = self._shards[shard][[locations[p][1] for p in positions]]
        return torch.from_numpy(out)

    # --- writing ----------------------------------------------------------------------------
    def fill(
        self,
        items: Sequence[Item],
        load_fn: Callable[[Path], Image.Image] | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> torch.Tensor:
        """Compute the missing rows in batches (saved shard by shard) and return the rows of all `items`.

        Images are opened with `load_fn` (path -> PIL image) and preprocessed with the backbone's
        eval transform: cached features never carry train-time augmentation.
        """
        if self.kind != "text" and load_fn is None:
            raise ValueError(f"filling a '{self.kind}' cache needs load_fn (path -> PIL image)")
        keys = [self.key(item) for item in items]
        if any(key not in self._index for key in keys):
            with fill_lock(self.folder):
                self.refresh()  # what another filler added while this one waited
                todo = list({key: item for key, item in zip(keys, items) if key not in self._index}.items())
                if self.kind == "text":
                    self._fill_texts(todo, batch_size, progress)
                elif todo:
                    self._fill_images(todo, load_fn, batch_size, progress)
        return self._gather([self._index[key] for key in keys])

    def _fill_images(self, todo: list[tuple[str, Item]], load_fn: Callable[[Path], Image.Image], batch_size: int, progress: bool) -> None:
        chunks = [todo[start : start + self.shard_rows] for start in range(0, len(todo), self.shard_rows)]
        shards = [Shard([Path(item) for _, item in chunk], tag=[key for key, _ in chunk]) for chunk in chunks]
        transform = self.backbone.image_transform(train=False)
        job = ImageJob(load_fn, transform, self.forward, batch_size)
        with eval_mode(self.backbone):
            self.engine.run(job, shards, self._write_result, progress)

    def _write_result(self, result: ShardResult) -> None:
        self._write_shard(result.shard.tag, result.rows.astype(np.float16), result.runtime)

    @torch.no_grad()
    def _fill_texts(self, todo: list[tuple[str, Item]], batch_size: int, progress: bool) -> None:
        pending_keys: list[str] = []
        pending_rows: list[np.ndarray] = []
        with tqdm(total=len(todo), desc="caching text", disable=not progress or not todo) as bar, eval_mode(self.backbone):
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                rows = self.backbone.text_features([str(item) for _, item in chunk])
                pending_keys += [key for key, _ in chunk]
                pending_rows.append(rows.float().cpu().numpy().astype(np.float16))
                if len(pending_keys) >= self.shard_rows:
                    self._write_shard(pending_keys, np.concatenate(pending_rows), "torch")
                    pending_keys, pending_rows = [], []
                bar.update(len(chunk))
        if pending_keys:
            self._write_shard(pending_keys, np.concatenate(pending_rows), "torch")

    # --- pruning ----------------------------------------------------------------------------
    def prune(self) -> dict[str, int]:
        """`prune_folder` on this cache's namespace, then its index read again."""
        if self.kind == "text":
            raise ValueError("a text cache has no stale rows to find: its keys are the strings themselves")
        report = prune_folder(self.folder)
        self._index, self._shards = {}, {}
        self.refresh()
        return report

    def _write_shard(self, keys: list[str], rows: np.ndarray, runtime: str) -> None:
        if not (self.folder / SOURCE).exists():
            atomic_write_json(self.folder / SOURCE, {"source": self.source_id, "kind": self.kind})
        self._load_shard(write_shard(self.folder, keys, rows, runtime))


def image_key(item: Item) -> str:
    """An image's cache key: its resolved path, size and mtime (an edited image gets a new one)."""
    path = Path(item).resolve()
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def read_shard(meta_path: Path) -> tuple[dict, np.ndarray] | None:
    """A complete shard's index (its keys, runtime) and memory-mapped rows; None when it is damaged
    or its rows and keys disagree."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        rows = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
        if rows.shape[0] != len(meta["keys"]):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return meta, rows


def write_shard(folder: Path, keys: list[str], rows: np.ndarray, runtime: str) -> Path:
    """The rows, then their index (both atomically): the shard counts once the index is there."""
    name = f"shard-{uuid.uuid4().hex[:16]}"
    with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, rows)
    atomic_write_json(folder / f"{name}.json", {"keys": keys, "shape": list(rows.shape), "runtime": runtime})
    return folder / f"{name}.json"


@contextmanager
def fill_lock(folder: Path) -> Iterator[None]:
    """One writer per namespace at a time; the kernel drops the lock if its holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "fill.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _is_current(key: str) -> bool:
    """Whether an image key still names its file as it is now."""
    try:
        return image_key(key.rsplit("|", 2)[0]) == key
    except OSError:
        return False


def prune_folder(folder: Path) -> dict[str, int]:
    """Drop the rows of an image namespace that can never be read again, because their file was
    deleted or changed (size or mtime) since: a shard with no current row is deleted, one with
    some is rewritten with those, and the orphan rows of killed fills go too. Holds the fill lock,
    so no filler writes meanwhile; a reader that has mapped a removed shard keeps its rows (POSIX)."""
    report = dict.fromkeys(PRUNE_COUNTS, 0)
    with fill_lock(folder):
        before = _bytes(folder)
        for index in sorted(folder.glob("shard-*.json")):
            if (shard := read_shard(index)) is None:
                continue  # damaged: never read, and not this function's to judge
            meta, rows = shard
            keys = meta["keys"]
            current = [row for row, key in enumerate(keys) if _is_current(key)]
            report["rows kept"] += len(current)
            report["rows dropped"] += len(keys) - len(current)
            if len(current) == len(keys):
                continue
            if current:  # the new shard is complete before the old one goes: a kill loses nothing
                write_shard(folder, [keys[row] for row in current], np.asarray(rows[current]), meta.get("runtime", "unknown"))
            report["shards rewritten" if current else "shards deleted"] += 1
            index.unlink()  # the index first: rows without one are never read
            index.with_suffix(".npy").unlink()
        orphans = [rows for rows in folder.glob("shard-*.npy") if not rows.with_suffix(".json").exists()]
        for leftover in [*orphans, *folder.glob(".shard-*.tmp")]:  # killed fills' rows, half-written files
            leftover.unlink()
        report["bytes freed"] = before - _bytes(folder)
    return report


def prune_root(root: str | Path) -> dict[str, int]:
    """`prune_folder` on every image namespace under a cache root (each names its kind in
    source.json; text namespaces are keyed by the strings themselves and have nothing stale)."""
    total = dict.fromkeys(PRUNE_COUNTS, 0)
    for source in sorted(Path(root).glob(f"*/{SOURCE}")):
        try:
            kind = json.loads(source.read_text(encoding="utf-8"))["kind"]
        except (OSError, ValueError, KeyError):
            continue
        if kind != "text":
            for name, value in prune_folder(source.parent).items():
                total[name] += value
    return total


def _bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())
