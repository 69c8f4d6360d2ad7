"""Zero-shot visual grounding (protocol `grounding`): a box for the text's product in each image.

A method gives, for an image and its product's text, a map over the backbone's token grid: ECLIP
the attention of the instance query the text selects (`grounding_maps`); any other method the
cosine of each projected token with the text (a dense CLIP map, valid where the image features are
the mean of the tokens, as for the `tiny` and `twotower` backbones). The map is upsampled over the
part of the image the backbone sees, scaled to [0, 1], thresholded, and the box of one connected
region is the answer: the region holding the most attention ("mass", default) or the largest one
("area"). Acc@t is the share of images whose box has IoU >= t with the ground-truth `bbox`.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef
from catalogclip.models.batch import Batch
from catalogclip.models.methods import Method
from catalogclip.train.data import load_rgb

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
def dense_similarity_maps(method: Method, batch: Batch, texts: torch.Tensor) -> torch.Tensor:
    """(B, h, w) cosine of each projected image token with its text: grounding for methods without a decoder."""
    tokens = batch.image_tokens if batch.image_tokens is not None else method.backbone.image_tokens(batch.images)
    projected = F.normalize(method.backbone.project_image(tokens.float()), dim=-1)
    sims = torch.einsum("bte,be->bt", projected, texts)
    return sims.reshape(len(sims), *method.backbone.token_grid())


@torch.no_grad()
def grounding_maps(method: Method, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """(B, h, w) grounding maps of `images` for their `texts` (one text per image)."""
    transform = method.backbone.image_transform(train=False)
    device = method.backbone.device
    pixels = torch.stack([transform(im) for im in images]).to(device)
    batch = Batch(product_keys=torch.arange(len(images)), texts=list(texts), images=pixels)
    text_vectors = method.embed_texts(batch)
    maps_of = getattr(method, "grounding_maps", None)
    maps = maps_of(batch, text_vectors) if maps_of is not None else dense_similarity_maps(method, batch, text_vectors)
    return maps.float().cpu().numpy()


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


@torch.no_grad()
def evaluate_grounding(
    method: Method,
    catalog: Catalog,
    threshold: float = 0.5,
    region: str = "mass",
    sources: Sequence[str] | None = None,
    batch_size: int = 32,
    problems: ProblemLog | None = None,
    progress: bool = True,
) -> dict:
    """Acc@0.5, Acc@0.7 and mean IoU over every image with a `bbox`, overall and per image source."""
    problems = problems if problems is not None else ProblemLog()
    method.eval()
    queries = grounding_queries(catalog, sources)
    if not queries:
        raise ValueError("no image with a ground-truth box (bbox) to ground" + (f" among sources {list(sources)}" if sources else ""))
    by_source: dict[str, list[float]] = defaultdict(list)
    starts = range(0, len(queries), batch_size)
    for start in tqdm(starts, desc="grounding", unit="batch", disable=not progress):
        images, texts, kept = [], [], []
        for i, ref in queries[start : start + batch_size]:
            path = catalog.image_path(ref)
            try:
                images.append(load_rgb(path))
            except (OSError, ValueError) as exc:
                problems.add("broken image", path, None, f"cannot decode: {exc}")
                continue
            texts.append(method.product_text(catalog.products[i]))
            kept.append(ref)
        if not images:
            continue
        for ref, image, attention in zip(kept, images, grounding_maps(method, images, texts)):
            box = box_from_map(attention, visible_box(method, *image.size), threshold, region)
            by_source[ref.source].append(iou(box, ref.bbox))
    everything = [v for values in by_source.values() for v in values]
    return {
        **summarise(everything),
        "by_source": {source: summarise(values) for source, values in sorted(by_source.items())},
        "settings": {"threshold": threshold, "region": region, "sources": list(sources) if sources else None},
    }
