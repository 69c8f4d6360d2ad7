"""The on-disk feature cache: hits and misses, invalidation, atomic shards, text features."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catalogclip.models.backbones.base import BackboneConfig, build_backbone
from catalogclip.train.featcache import FeatureCache, prune_root


def frozen_tiny(seed: int = 0, **config):
    torch.manual_seed(seed)
    config.setdefault("freeze_image", True)
    return build_backbone(BackboneConfig(spec="tiny", embed_dim=8, **config))


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def touch_later(path: Path) -> None:
    """Move an image's mtime on, as an edit or a re-extraction does (also on a coarse-mtime filesystem)."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


class CountingLoader:
    """load_fn that counts the images it opens (and can fail at the n-th, like a killed run; each
    open can take `delay` seconds)."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.opened: list[Path] = []
        self.fail_at = fail_at
        self.delay = delay
        self._lock = threading.Lock()  # images are decoded by concurrent threads

    def __call__(self, path: Path) -> Image.Image:
        time.sleep(self.delay)
        with self._lock:
            if self.fail_at is not None and len(self.opened) == self.fail_at:
                raise KeyboardInterrupt("killed")
            self.opened.append(path)
        with Image.open(path) as image:
            return image.convert("RGB")


def direct(backbone, paths: list[Path], kind: str = "features") -> torch.Tensor:
    transform = backbone.image_transform()
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return backbone.image_tokens(images) if kind == "tokens" else backbone.image_features(images)


@pytest.mark.parametrize("kind", ["features", "tokens"])
def test_fill_computes_each_image_once_and_matches_the_tower(tmp_path, kind):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 5)
    cache = FeatureCache(tmp_path / "cache", backbone, kind=kind, shard_rows=2)
    assert cache.get(paths) is None and cache.missing(paths) == [0, 1, 2, 3, 4]
    loader = CountingLoader()
    rows = cache.fill(paths + paths[:2], loader, batch_size=2, progress=False)  # duplicates computed once
    assert len(loader.opened) == 5
    assert rows.dtype == torch.float16 and rows.shape[0] == 7
    expected = direct(backbone, paths + paths[:2], kind)
    torch.testing.assert_close(rows.float(), expected, atol=2e-3, rtol=2e-3)
    # a new process (a new cache object) reads it all back without opening an image
    again = FeatureCache(tmp_path / "cache", backbone, kind=kind)
    assert len(again) == 5 and again.missing(paths) == []
    torch.testing.assert_close(again.get(paths[::-1]), rows[:5].flip(0))
    loader = CountingLoader()
    again.fill(paths, loader, progress=False)
    assert loader.opened == []


def test_features_are_computed_in_eval_mode(tmp_path):
    backbone = frozen_tiny(freeze_image=False, freeze_text=True)  # a trainable tower is refused ...
    with pytest.raises(ValueError, match="'features' cache needs a frozen image tower; backbone 'tiny' trains it"):
        FeatureCache(tmp_path, backbone)
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 3)
    backbone.train()
    FeatureCache(tmp_path / "cache", backbone).fill(paths, CountingLoader(), progress=False)
    assert backbone.training and backbone.image_proj.training  # ... and the caller's mode is restored


def test_an_edited_image_is_recomputed(tmp_path):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 3)
    cache = FeatureCache(tmp_path / "cache", backbone)
    before = cache.fill(paths, CountingLoader(), progress=False)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(paths[1])
    touch_later(paths[1])
    assert cache.missing(paths) == [1]
    loader = CountingLoader()
    after = cache.fill(paths, loader, progress=False)
    assert loader.opened == [paths[1]]
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]])
    torch.testing.assert_close(after[1].float(), direct(backbone, paths[1:2])[0], atol=2e-3, rtol=2e-3)
    assert not torch.allclose(after[1], before[1])


def test_another_backbone_or_preprocessing_does_not_hit(tmp_path):
    paths = write_images(tmp_path / "images", 2)
    root = tmp_path / "cache"
    FeatureCache(root, frozen_tiny()).fill(paths, CountingLoader(), progress=False)
    assert FeatureCache(root, frozen_tiny()).missing(paths) == []
    for other in (frozen_tiny(seed=1), frozen_tiny(image_size=32), frozen_tiny(extra={"resize_mode": "shortest"})):
        assert FeatureCache(root, other).missing(paths) == [0, 1]
    assert FeatureCache(root, frozen_tiny(), kind="tokens").missing(paths) == [0, 1]


def test_a_killed_fill_keeps_its_finished_shards(tmp_path):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 7)
    cache = FeatureCache(tmp_path / "cache", backbone, shard_rows=2)
    with pytest.raises(KeyboardInterrupt):
        cache.fill(paths, CountingLoader(fail_at=5), batch_size=1, progress=False)
    reopened = FeatureCache(tmp_path / "cache", backbone, shard_rows=2)
    assert reopened.missing(paths) == [4, 5, 6]  # two complete shards; the 5th row was never saved
    loader = CountingLoader()
    rows = reopened.fill(paths, loader, progress=False)
    assert sorted(loader.opened) == paths[4:]  # decoded by concurrent threads: any order
    torch.testing.assert_close(rows.float(), direct(backbone, paths), atol=2e-3, rtol=2e-3)


def test_half_written_or_orphan_shards_are_never_read(tmp_path):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 4)
    cache = FeatureCache(tmp_path / "cache", backbone, shard_rows=2)
    cache.fill(paths[:2], CountingLoader(), progress=False)
    folder = cache.folder
    good = next(folder.glob("shard-*.npy"))
    # rows cut short, an index cut short, an index that disagrees with its rows, rows without an index
    truncated = folder / "shard-truncated"
    truncated.with_suffix(".npy").write_bytes(good.read_bytes()[:-7])
    truncated.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    bad_index = folder / "shard-badindex"
    bad_index.with_suffix(".npy").write_bytes(good.read_bytes())
    bad_index.with_suffix(".json").write_text('{"keys": ["')
    mismatched = folder / "shard-mismatched"
    mismatched.with_suffix(".npy").write_bytes(good.read_bytes())
    mismatched.with_suffix(".json").write_text('{"keys": ["a", "b", "c"]}')
    (folder / "shard-orphan.npy").write_bytes(good.read_bytes())
    (folder / ".shard-x.npy.abc.tmp").write_bytes(b"partial")
    reopened = FeatureCache(tmp_path / "cache", backbone)
    assert len(reopened) == 2 and reopened.missing(paths) == [2, 3]
    torch.testing.assert_close(reopened.get(paths[:2]), cache.get(paths[:2]))


def test_refresh_sees_shards_written_by_another_process(tmp_path):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 2)
    reader = FeatureCache(tmp_path / "cache", backbone)
    FeatureCache(tmp_path / "cache", backbone).fill(paths, CountingLoader(), progress=False)
    assert reader.missing(paths) == [0, 1]
    reader.refresh()
    assert reader.missing(paths) == []


def test_fillers_that_start_together_compute_each_image_once(tmp_path):
    """Two fillers (threads here; each holds its own lock handle, as a process would) start on the
    same missing images: the second waits for the first and reads its rows instead of recomputing."""
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 6)
    loader = CountingLoader(delay=0.05)
    start = threading.Barrier(2)
    results: list[torch.Tensor] = []

    def fill() -> None:
        cache = FeatureCache(tmp_path / "cache", backbone)
        start.wait()
        results.append(cache.fill(paths, loader, batch_size=2, progress=False))

    threads = [threading.Thread(target=fill) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(loader.opened) == paths
    assert len(list((tmp_path / "cache").glob("*/shard-*.json"))) == 1
    torch.testing.assert_close(results[0], results[1])


def test_prune_drops_rows_of_deleted_or_changed_images_and_keeps_the_rest(tmp_path):
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 6)
    cache = FeatureCache(tmp_path / "cache", backbone, shard_rows=2)
    before = cache.fill(paths, CountingLoader(), batch_size=2, progress=False)  # shards [0 1] [2 3] [4 5]
    (cache.folder / "shard-orphan.npy").write_bytes(b"rows of a killed fill")
    paths[2].unlink()
    touch_later(paths[3])  # shard [2 3] has no current row left
    touch_later(paths[5])  # shard [4 5] keeps one
    report = cache.prune()
    assert report["rows kept"] == 3 and report["rows dropped"] == 3
    assert report["shards deleted"] == 1 and report["shards rewritten"] == 1 and report["bytes freed"] > 0
    reopened = FeatureCache(tmp_path / "cache", backbone)
    assert len(reopened) == 3 and len(cache) == 3
    assert sorted(p.name for p in reopened.folder.glob("shard-*")) == sorted(
        f"{stem}{suffix}" for stem in {p.stem for p in reopened.folder.glob("shard-*.json")} for suffix in (".json", ".npy"))
    live = [paths[0], paths[1], paths[4]]
    torch.testing.assert_close(reopened.get(live), before[[0, 1, 4]])
    assert reopened.missing(paths[3:]) == [0, 2]  # the changed ones are computed again on the next fill
    assert cache.prune() == {"rows kept": 3, "rows dropped": 0, "shards deleted": 0, "shards rewritten": 0, "bytes freed": 0}


def test_prune_root_prunes_every_image_namespace_and_leaves_text_alone(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(spec="tiny", embed_dim=8, freeze_image=True, freeze_text=True))
    paths = write_images(tmp_path / "images", 3)
    root = tmp_path / "cache"
    features, tokens = (FeatureCache(root, backbone, kind=kind) for kind in ("features", "tokens"))
    for cache in (features, tokens):
        cache.fill(paths, CountingLoader(), progress=False)
    FeatureCache(root, backbone, kind="text").fill(["red shoe", "blue jeans"], progress=False)
    touch_later(paths[0])
    report = prune_root(root)
    assert report["rows dropped"] == 2 and report["rows kept"] == 4 and report["shards rewritten"] == 2
    for kind in ("features", "tokens"):
        assert FeatureCache(root, backbone, kind=kind).missing(paths) == [0]
    assert len(FeatureCache(root, backbone, kind="text")) == 2
    assert prune_root(tmp_path / "no cache yet")["rows kept"] == 0


def test_text_features_cache(tmp_path):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(spec="tiny", embed_dim=8, freeze_text=True))
    texts = ["red shoe", "blue jeans", "red shoe", ""]
    cache = FeatureCache(tmp_path / "cache", backbone, kind="text")
    rows = cache.fill(texts, batch_size=2, progress=False)
    assert len(cache) == 3 and rows.shape == (4, 64)
    torch.testing.assert_close(rows.float(), backbone.text_features(texts).detach(), atol=2e-3, rtol=2e-3)
    assert FeatureCache(tmp_path / "cache", backbone, kind="text").missing(["blue jeans", "green hat"]) == [1]
    with pytest.raises(ValueError, match="'features' cache needs a frozen image tower"):
        FeatureCache(tmp_path / "cache", backbone)
    with pytest.raises(ValueError, match="a text cache has no stale rows"):
        cache.prune()


def test_user_errors(tmp_path):
    backbone = frozen_tiny()
    with pytest.raises(ValueError, match="unknown feature cache kind 'pixels'"):
        FeatureCache(tmp_path, backbone, kind="pixels")
    cache = FeatureCache(tmp_path / "cache", backbone)
    with pytest.raises(ValueError, match="needs load_fn"):
        cache.fill(write_images(tmp_path / "images", 1))
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        cache.fill([tmp_path / "nothere.png"], CountingLoader())
