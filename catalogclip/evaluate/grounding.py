"""Zero-shot visual grounding (protocol `grounding`): a box for the text's product in each image.

A method gives, for an image and its product's text, a map over the backbone's token grid: ECLIP
the attention of the instance query the text selects (`grounding_maps`); any other method the
cosine of each projected token with the text (a dense CLIP map, valid where the image features are
the mean of the tokens, as for the `tiny` and `twotower` backbones; checked on the first image).
The map is upsampled over the part of the image the backbone sees, scaled to [0, 1], thresholded,
and the box of one connected region is the answer: the region holding the most attention ("mass",
default) or the largest one ("area"). Acc@t is the share of images whose box has IoU >= t with
the ground-truth `bbox`.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef
from catalogclip.embed import product_entity_ids
from catalogclip.models.batch import Batch
from catalogclip.models.methods import Method
from catalogclip.train.data import load_rgb, readable_images

Box = tuple[float, float, float, float]
IOU_THRESHOLDS = (0.5, 0.7)
REGIONS = ("mass", "area")
#: longest side of the upsampled map: finer than any token grid, cheap to label
MAP_RESOLUTION = 224


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes (x1, y1 exclusive)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_from_map(attention: np.ndarray, visible: Box, threshold: float = 0.5, region: str = "mass") -> Box:
    """The box, in image pixels, of one thresholded region of a (h, w) map covering `visible`.

    `visible` is the part of the image the backbone saw ([x0, y0, x1, y1]); cell (i, j) of the
    map covers cell (i, j) of that box split h x w.
    """
    if region not in REGIONS:
        raise ValueError(f"unknown region rule '{region}' (known: {', '.join(REGIONS)})")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    x0, y0, x1, y1 = visible
    scale = MAP_RESOLUTION / max(x1 - x0, y1 - y0)
    size = (max(1, round((y1 - y0) * scale)), max(1, round((x1 - x0) * scale)))
    fine = _upsample(attention, size)
    labels, count = ndimage.label(fine >= threshold, structure=np.ones((3, 3)))
    if region == "mass":
        score = ndimage.sum_labels(fine, labels, np.arange(1, count + 1))
    else:
        score = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(score)))
    sx, sy = (x1 - x0) / size[1], (y1 - y0) / size[0]
    left, top, right, bottom = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
    return (float(x0 + left * sx), float(y0 + top * sy), float(x0 + right * sx), float(y0 + bottom * sy))


def _upsample(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling to `size` (rows, cols), scaled to [0, 1] (a flat map becomes all ones)."""
    grid = torch.as_tensor(np.asarray(attention), dtype=torch.float32)[None, None]
    fine = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    span = fine.max() - fine.min()
    return (fine - fine.min()) / span if span > 0 else np.ones_like(fine)


def visible_box(method: Method, width: int, height: int) -> Box:
    """The part of an image the backbone's eval transform shows (the whole image if it does not say)."""
    preprocess = getattr(method.backbone, "preprocess", None)
    return preprocess.visible_box(width, height) if preprocess is not None else (0.0, 0.0, float(width), float(height))


@torch.no_grad()
def check_dense_grounding(method: Method, image: Image.Image) -> None:
    """Dense maps need image features that are the mean of the tokens (then the projection applies
    to each token); raises ValueError naming the backbone when they are not (e.g. ViT patch tokens)."""
    pixels = method.backbone.image_transform(train=False)(image.convert("RGB"))[None].to(method.backbone.device)
    pooled = method.backbone.image_tokens(pixels).mean(dim=1)
    features = method.backbone.image_features(pixels)
    if pooled.shape != features.shape or not torch.allclose(pooled, features, rtol=1e-3, atol=1e-4):
        raise ValueError(
            f"method '{method.name}' cannot ground with backbone '{method.backbone.config.spec}': its image features "
            "are not the mean of its tokens, so the tokens have no place in the joint space (eclip grounds with its decoder)"
        )


@torch.no_grad()
def dense_similarity_maps(method: Method, batch: Batch, texts: torch.Tensor) -> torch.Tensor:
    """(B, h, w) cosine of each projected image token with its text: grounding for methods without a decoder."""
    tokens = batch.image_tokens if batch.image_tokens is not None else method.backbone.image_tokens(batch.images)
    projected = F.normalize(method.backbone.project_image(tokens.float()), dim=-1)
    sims = torch.einsum("bte,be->bt", projected, texts)
    return sims.reshape(len(sims), *method.backbone.token_grid())


@torch.no_grad()
def batch_grounding_maps(method: Method, batch: Batch) -> np.ndarray:
    """(B, h, w) grounding maps of a batch's images (pixels or cached tokens) for its texts, one per image."""
    texts = method.embed_texts(batch)
    maps_of = getattr(method, "grounding_maps", None)
    maps = maps_of(batch, texts) if maps_of is not None else dense_similarity_maps(method, batch, texts)
    return maps.float().cpu().numpy()


def grounding_maps(method: Method, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """(B, h, w) grounding maps of `images` for their `texts` (one text per image)."""
    transform = method.backbone.image_transform(train=False)
    pixels = torch.stack([transform(im.convert("RGB")) for im in images]).to(method.backbone.device)
    return batch_grounding_maps(method, Batch(product_keys=torch.arange(len(images)), texts=list(texts), images=pixels))


def grounding_queries(catalog: Catalog, sources: Sequence[str] | None = None) -> list[tuple[int, ImageRef]]:
    """(product index, image) of every image with a ground-truth box, optionally of some sources only."""
    return [
        (i, image)
        for i, image in catalog.iter_images()
        if image.bbox is not None and (sources is None or image.source in sources)
    ]


def summarise(ious: Sequence[float]) -> dict[str, float]:
    values = np.asarray(ious, dtype=np.float64)
    if not len(values):
        return {"n": 0}
    return {"n": len(values), **{f"Acc@{t}": float((values >= t).mean()) for t in IOU_THRESHOLDS}, "mIoU": float(values.mean())}


def _token_cache(method: Method, cache_dir: str | Path | None):
    """The feature cache of a frozen image tower's tokens (None: run the tower on pixels)."""
    if cache_dir is None or not method.backbone.image_tower_frozen:
        return None
    from catalogclip.train.featcache import FeatureCache

    return FeatureCache(cache_dir, method.backbone, kind="tokens")


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def _query_batch(method: Method, catalog: Catalog, queries: list[tuple[int, ImageRef]], cache) -> tuple[Batch, list[tuple[int, int]]]:
    """A batch of the query images (pixels, or tokens from `cache`) with their products' texts, and the image sizes."""
    products = [catalog.products[i] for i, _ in queries]
    paths = [catalog.image_path(ref) for _, ref in queries]
    batch = Batch(product_keys=torch.arange(len(queries)), texts=[method.product_text(p) for p in products])
    entity_ids = product_entity_ids(method, products)
    if entity_ids is not None:
        batch.entity_ids = torch.tensor(entity_ids, dtype=torch.long)
    if cache is not None:
        batch.image_tokens = cache.fill(paths, load_rgb, progress=False)
        sizes = [image_size(path) for path in paths]
    else:
        images = [load_rgb(path) for path in paths]
        transform = method.backbone.image_transform(train=False)
        batch.images = torch.stack([transform(im) for im in images])
        sizes = [im.size for im in images]
    return batch.to(method.backbone.device), sizes


@torch.no_grad()
def evaluate_grounding(
    method: Method,
    catalog: Catalog,
    threshold: float = 0.5,
    region: str = "mass",
    sources: Sequence[str] | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    problems: ProblemLog | None = None,
    progress: bool = True,
) -> dict:
    """Acc@0.5, Acc@0.7 and mean IoU over every image with a `bbox`, overall and per image source.

    With `cache_dir` and a frozen image tower, tokens come from (and go into) the feature cache.
    """
    problems = problems if problems is not None else ProblemLog()
    method.eval()
    queries = grounding_queries(catalog, sources)
    if not queries:
        raise ValueError("no image with a ground-truth box (bbox) to ground" + (f" among sources {list(sources)}" if sources else ""))
    if getattr(method, "grounding_maps", None) is None:
        check_dense_grounding(method, load_rgb(catalog.image_path(queries[0][1])))
    cache = _token_cache(method, cache_dir)
    by_source: dict[str, list[float]] = defaultdict(list)
    for start in tqdm(range(0, len(queries), batch_size), desc="grounding", unit="batch", disable=not progress):
        chunk = queries[start : start + batch_size]
        readable = readable_images([catalog.image_path(ref) for _, ref in chunk], problems)
        chunk = [query for query, ok in zip(chunk, readable) if ok]
        if not chunk:
            continue
        batch, sizes = _query_batch(method, catalog, chunk, cache)
        for (_, ref), size, attention in zip(chunk, sizes, batch_grounding_maps(method, batch)):
            box = box_from_map(attention, visible_box(method, *size), threshold, region)
            by_source[ref.source].append(iou(box, ref.bbox))
    everything = [v for values in by_source.values() for v in values]
    return {
        **summarise(everything),
        "by_source": {source: summarise(values) for source, values in sorted(by_source.items())},
        "settings": {"threshold": threshold, "region": region, "sources": list(sources) if sources else None},
    }
