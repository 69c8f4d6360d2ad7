"""Featurisation: the tuned allocator, tower runtimes (ONNX Runtime = PyTorch), the local engine."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _searchkit import write_catalog
from test_featcache import frozen_tiny, touch_later, write_images

from catalogclip.catalog.schema import read_jsonl
from catalogclip.embed import RunEncoder
from catalogclip.featurise.allocator import tune_allocator
from catalogclip.featurise.engines import ImageJob, LocalEngine, Shard, featurise
from catalogclip.featurise.runtime import OnnxTower, TorchTower, TowerForward, TowerOutputs, faster_if_equal, open_tower
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method
from catalogclip.search.build import _load, embed_images
from catalogclip.train.data import load_rgb
from catalogclip.train.featcache import FeatureCache


def anonymous_maps_of_at_least(size: int) -> int:
    """Anonymous memory maps of the process (no path: five fields in /proc/self/maps) of >= size bytes."""
    count = 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        count += len(fields) == 5 and end - start >= size
    return count


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_tuned_allocator_serves_large_blocks_from_the_heap():
    size = 96 << 20  # over glibc's largest dynamic mmap threshold (32 MB)
    assert tune_allocator() is True
    before = anonymous_maps_of_at_least(size)
    block = bytearray(size)
    assert anonymous_maps_of_at_least(size) == before  # not a fresh memory map per large tensor
    del block


@pytest.mark.parametrize("kind", ["features", "tokens"])
def test_onnx_runtime_computes_the_torch_outputs(kind):
    backbone = frozen_tiny().eval()
    pixels = torch.randn(5, 3, 64, 64)
    reference = TorchTower(TowerOutputs(backbone, kind))(pixels)
    for tower in (OnnxTower(TowerOutputs(backbone, kind)), open_tower(backbone, kind, "torch-channels-last", pixels)):
        out = tower(pixels)
        assert out.shape == reference.shape and out.dtype == np.float32
        assert np.abs(out - reference).max() <= 1e-5, tower.name
    assert "onnxruntime" in OnnxTower(TowerOutputs(backbone, kind)).name


class Shifted:
    """A stand-in runtime whose outputs differ from the reference (as a lossy precision would)."""

    name = "shifted"

    def __init__(self, reference, shift: float = 0.0, delay: float = 0.0) -> None:
        self.reference, self.shift, self.delay = reference, shift, delay

    def __call__(self, pixels):
        time.sleep(self.delay)
        out = self.reference(pixels)
        return out + self.shift * np.abs(out).max() * np.sign(np.arange(out.size).reshape(out.shape) % 2 - 0.5)


def test_auto_keeps_pytorch_unless_the_candidate_agrees_and_is_faster():
    backbone = frozen_tiny().eval()
    reference = TorchTower(TowerOutputs(backbone))
    pixels = torch.randn(4, 3, 64, 64)
    assert faster_if_equal(reference, Shifted(reference, shift=0.5), pixels) is reference  # differs
    assert faster_if_equal(reference, Shifted(reference, delay=0.5), pixels) is reference  # equal, far slower
    with pytest.raises(KeyError, match="unknown tower runtime 'tensorrt' .*known: onnx, torch, torch-channels-last"):
        open_tower(backbone, "features", "tensorrt", pixels)


@pytest.mark.parametrize("processes", [0, 2], ids=["decoder-threads", "decoder-processes"])
def test_local_engine_shards_batches_and_unreadable_images(tmp_path, processes):
    backbone = frozen_tiny().eval()
    paths = write_images(tmp_path / "images", 7)
    paths[3].write_bytes(b"not an image")
    shards = [Shard(paths[:5], tag="a"), Shard(paths[5:], tag="b")]
    done = []
    job = ImageJob(_load, backbone.image_transform(), TowerForward(backbone, runtime="onnx"), batch_size=2)
    LocalEngine(decode_processes=processes, prefetch=3).run(job, shards, done.append, progress=False)
    assert [r.shard.tag for r in done] == ["a", "b"]
    assert [bool(e) for r in done for e in r.errors] == [False] * 3 + [True] + [False] * 3
    assert "cannot decode" in done[0].errors[3] and done[0].runtime.startswith("onnxruntime")
    good = [p for i, p in enumerate(paths) if i != 3]
    expected = TorchTower(TowerOutputs(backbone))(torch.stack([backbone.image_transform()(load_rgb(p)) for p in good]))
    np.testing.assert_allclose(np.concatenate([r.rows for r in done]), expected, atol=1e-5)
    rows, errors = featurise(job, paths, progress=False)  # the in-memory form
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    assert [bool(e) for e in errors] == [i == 3 for i in range(7)]


def test_the_runtime_does_not_change_the_cache_key(tmp_path):
    """fp32 runtimes are one precision class: caches made before runtimes existed (eager PyTorch) stay valid."""
    backbone = frozen_tiny()
    paths = write_images(tmp_path / "images", 3)
    torch_cache = FeatureCache(tmp_path / "cache", backbone, runtime="torch")
    rows = torch_cache.fill(paths, load_rgb, progress=False)
    legacy_namespace = hashlib.sha256(f"{backbone.feature_id}|features".encode()).hexdigest()[:20]
    assert torch_cache.folder.name == legacy_namespace
    onnx_cache = FeatureCache(tmp_path / "cache", backbone, runtime="onnx")
    assert onnx_cache.missing(paths) == []
    meta = json.loads(next(torch_cache.folder.glob("shard-*.json")).read_text())
    assert meta["runtime"].startswith("torch ") and meta["runtime"].endswith("fp32")
    fresh = FeatureCache(tmp_path / "other", backbone, runtime="onnx").fill(paths, load_rgb, progress=False)
    torch.testing.assert_close(fresh, rows, atol=2e-3, rtol=0)  # float16 rows of equal fp32 features


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_index_vectors_of_a_run_equal_its_query_encoder(tmp_path, runtime):
    torch.manual_seed(0)
    method = build_method("clip", BackboneConfig(spec="tiny", embed_dim=8, freeze_image=True))
    encoder = RunEncoder(method=method, model_id="m")
    encoder.image_job = lambda: RunEncoder.image_job(encoder, runtime=runtime)
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    vectors, refs = embed_images(encoder, catalog, tmp_path / "work", batch_size=5, shard_size=8, progress=False)
    images = [load_rgb(catalog.image_path(catalog.products[p].images[i])) for p, i in refs]
    np.testing.assert_allclose(vectors, encoder.encode_images(images), atol=1e-5)


def test_featurise_command_fills_the_cache_train_reads(brand_catalog, tmp_path):
    from typer.testing import CliRunner

    from catalogclip.cli import app

    runner = CliRunner()
    run = tmp_path / "runs" / "x"
    flags = ["--catalog", str(brand_catalog), "--backbone", "tiny", "--set", "backbone.freeze_image=true", "--out", str(run)]
    result = runner.invoke(app, ["featurise", *flags, "--runtime", "onnx", "--no-progress"])
    assert result.exit_code == 0, result.output
    n_images = len(read_jsonl(brand_catalog).products)  # one image each
    assert f"{n_images} images featurised, {n_images} cached in all (features)" in result.output
    again = runner.invoke(app, ["featurise", *flags, "--no-progress"])
    assert f"0 images featurised, {n_images} cached in all" in again.output  # nothing recomputed
    assert (tmp_path / "runs" / ".featcache").is_dir()  # where `train --out runs/x` looks
    catalog = read_jsonl(brand_catalog)
    touch_later(catalog.image_path(catalog.products[0].images[0]))  # as an edit or a re-extraction does
    pruned = runner.invoke(app, ["featurise", *flags, "--prune", "--no-progress"])
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 1 stale rows (0 shards deleted, 1 rewritten" in pruned.output and f"{n_images - 1} kept" in pruned.output
    assert f"1 images featurised, {n_images} cached in all" in pruned.output
    refused = runner.invoke(app, ["featurise", *flags, "--workers", "2"])
    assert refused.exit_code == 2 and "embedding engine 'local' does not take option(s) workers" in refused.output
    trainable = runner.invoke(app, ["featurise", *flags[:4], "--out", str(run)])
    assert trainable.exit_code == 2 and "backbone 'tiny' trains its image tower" in trainable.output
