"""Write a synthetic catalog: JSONL in the canonical format plus JPEG images."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from catalogclip.catalog.schema import Catalog, ImageRef, write_jsonl
from catalogclip.catalog.synth.render import render_view
from catalogclip.catalog.synth.spec import ProductSpec, sample_spec

JPEG_QUALITY = 85
MIN_IMAGE_SIZE = 32


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def image_path(spec: ProductSpec, view: int) -> str:
    return f"images/{spec.id}_{view}.jpg"


def _render_product_images(job: tuple[ProductSpec, Path, int, int, int]) -> list[ImageRef]:
    """Draw and save every view of one product (runs in a worker process)."""
    spec, out_dir, views, image_size, seed = job
    refs = []
    for view in range(views):
        rendered = render_view(spec, view, image_size, seed)
        rel = image_path(spec, view)
        rendered.image.save(out_dir / rel, "JPEG", quality=JPEG_QUALITY)
        refs.append(ImageRef(rel, "merchant" if view == 0 else "customer", rendered.bbox))
    return refs


def _check_settings(n_products: int, views: int, image_size: int, workers: int | None) -> None:
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, got {n_products}")
    if views < 1:
        raise ValueError(f"views must be at least 1, got {views}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")


def generate_catalog(out_dir: str | Path, n_products: int = 1000, seed: int = 0, views: int = 3,
                     image_size: int = 224, workers: int | None = None) -> Path:
    """Write `out_dir/catalog.jsonl` and `out_dir/images/`; returns the JSONL path.

    The same arguments give the same bytes whatever `workers` is (None: one per available CPU);
    view 0 of each product is a merchant shot, the others customer shots with a `bbox`.
    """
    _check_settings(n_products, views, image_size, workers)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    specs = [sample_spec(i, seed) for i in range(n_products)]
    jobs = [(spec, out_dir, views, image_size, seed) for spec in specs]
    workers = min(workers or _available_cpus(), n_products)
    if workers == 1:
        image_refs = [_render_product_images(job) for job in jobs]
    else:
        with multiprocessing.Pool(workers) as pool:
            image_refs = pool.map(_render_product_images, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    products = [spec.to_product(refs) for spec, refs in zip(specs, image_refs)]
    # Written last, atomically: a catalog.jsonl on disk means every image is there.
    return write_jsonl(Catalog(products, out_dir), out_dir / "catalog.jsonl")
