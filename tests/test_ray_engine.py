"""The `ray` embedding engine on a local Ray (2 CPUs): the same vectors as this process, resumable shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from test_featcache import write_images

from catalogclip.catalog.schema import Catalog, ImageRef, Product
from catalogclip.embed import RunEncoder
from catalogclip.featurise.engines import LocalEngine, make_engine
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method
from catalogclip.search.build import embed_images
from catalogclip.train.data import load_rgb
from catalogclip.train.featcache import FeatureCache


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Catalog:
    """240 images of 120 products; one image does not decode."""
    root = tmp_path_factory.mktemp("shop")
    paths = write_images(root / "images", 240)
    paths[7].write_bytes(b"not an image")
    products = [Product(id=f"p{i}", title=f"product {i}", images=[ImageRef(f"images/im{2 * i}.png"), ImageRef(f"images/im{2 * i + 1}.png")])
                for i in range(120)]
    return Catalog(products, root)


def encoder() -> RunEncoder:
    torch.manual_seed(0)
    return RunEncoder(method=build_method("clip", BackboneConfig(spec="tiny", embed_dim=16, freeze_image=True)), model_id="tiny-clip")


def test_ray_vectors_and_feature_cache_equal_the_single_process_path(tmp_path, shop, local_ray):
    run = encoder()
    local, local_refs = embed_images(run, shop, tmp_path / "local", batch_size=16, shard_size=64, progress=False)
    on_ray, ray_refs = embed_images(run, shop, tmp_path / "ray", batch_size=16, shard_size=64, progress=False,
                                    engine=make_engine("ray", workers=2))
    assert ray_refs == local_refs and len(local_refs) == 239 and (3, 1) not in ray_refs
    assert np.abs(on_ray - local).max() <= 1e-5
    paths = [shop.image_path(image) for _, image in shop.iter_images() if not image.path.endswith("im7.png")]
    backbone = run.method.backbone
    cached = FeatureCache(tmp_path / "cache-ray", backbone, engine=make_engine("ray")).fill(paths, load_rgb, progress=False)
    reference = FeatureCache(tmp_path / "cache-local", backbone).fill(paths, load_rgb, progress=False)
    assert np.abs(cached.float() - reference.float()).max() <= 1e-5


class Killed(Exception):
    pass


class Recording:
    """An engine around another that records the shards it is asked for, and can die after n of them."""

    def __init__(self, inner, die_after: int | None = None) -> None:
        self.inner, self.die_after, self.asked, self.written = inner, die_after, [], 0

    def run(self, job, shards, sink, progress=True):
        self.asked = [shard.tag.name for shard in shards]

        def write(result):
            sink(result)
            self.written += 1
            if self.written == self.die_after:
                raise Killed

        self.inner.run(job, shards, write, progress)


def test_a_killed_ray_job_resumes_without_recomputing_finished_shards(tmp_path, shop, local_ray):
    run = encoder()
    work = tmp_path / "work"
    first = Recording(make_engine("ray", workers=1), die_after=2)
    with pytest.raises(Killed):
        embed_images(run, shop, work, batch_size=16, shard_size=48, progress=False, engine=first)
    finished = sorted(p.name for p in work.glob("shard-*.npz"))
    assert len(finished) == 2 and len(first.asked) == 5
    second = Recording(make_engine("ray", workers=1))
    vectors, refs = embed_images(run, shop, work, batch_size=16, shard_size=48, progress=False, engine=second)
    assert sorted(second.asked) == sorted(set(first.asked) - set(finished))
    reference, reference_refs = embed_images(run, shop, tmp_path / "fresh", batch_size=16, progress=False, engine=LocalEngine())
    assert refs == reference_refs and np.abs(vectors - reference).max() <= 1e-5


def test_engine_options_are_checked():
    with pytest.raises(ValueError, match="embedding engine 'local' does not take option\\(s\\) workers"):
        make_engine("local", workers=2)
    with pytest.raises(KeyError, match="unknown embedding engine 'spark' \\(known: local, ray\\)"):
        make_engine("spark")
