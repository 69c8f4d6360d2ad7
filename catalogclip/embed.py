"""Embed a catalog with a method (images, product texts, category nodes) and encode queries.

`embed_catalog` feeds evaluation and indexing; `RunEncoder` is the `Encoder` that search and
evaluation use to turn a query (text + entities, image, category path) into a vector.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef, Product, all_category_nodes
from catalogclip.embeddings import Embeddings
from catalogclip.featurise.engines import ImageJob, featurise
from catalogclip.featurise.runtime import Tower, TowerForward, open_text_tower
from catalogclip.models.batch import CACHED_IMAGE_FIELDS, Batch
from catalogclip.models.methods import Method
from catalogclip.train.data import attribute_text, image_cache, load_rgb, tower_kind, usable_image_files


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _pixels(method: Method, images: Sequence[Image.Image]) -> torch.Tensor:
    transform = method.backbone.image_transform(train=False)
    return torch.stack([transform(im.convert("RGB")) for im in images]).to(method.backbone.device)


@torch.no_grad()
def embed_pil_images(method: Method, images: list[Image.Image], batch_size: int = 64, tower: "HeadOnTower | None" = None) -> np.ndarray:
    """Image embeddings; with `tower` (the image tower on a runtime, then the head), through it."""
    out = []
    for chunk in _chunks(images, batch_size):
        pixels = _pixels(method, chunk)
        if tower is not None:
            out.append(tower(pixels))
            continue
        batch = Batch(product_keys=torch.arange(len(chunk)), texts=[""] * len(chunk), images=pixels)
        out.append(_numpy(method.embed_images(batch)))
    return np.concatenate(out) if out else np.zeros((0, method.backbone.embed_dim), np.float32)


def product_image(product: Product) -> ImageRef | None:
    """The image a fused product vector is made from: the first merchant image, else the first."""
    return next((im for im in product.images if im.source == "merchant"), next(iter(product.images), None))


@torch.no_grad()
def embed_fused_products(
    method: Method, products: list[Product], tower_outputs: list[torch.Tensor | None], batch_size: int = 256
) -> np.ndarray:
    """`method.embed_products` of each product from the image-tower outputs (of `tower_kind`) of
    its `product_image`.

    A product whose image could not be read gets a zero row: it scores 0 against every query.
    """
    field = CACHED_IMAGE_FIELDS[tower_kind(method)]
    out = np.zeros((len(products), method.backbone.embed_dim), np.float32)
    rows = [i for i, outputs in enumerate(tower_outputs) if outputs is not None]
    for chunk in _chunks(rows, batch_size):
        chosen = [products[i] for i in chunk]
        batch = Batch(
            product_keys=torch.arange(len(chunk)),
            texts=[method.product_text(p) for p in chosen],
            attribute_texts=[attribute_text(p) for p in chosen],
            **{field: torch.stack([tower_outputs[i] for i in chunk])},
        )
        out[list(chunk)] = _numpy(method.embed_products(batch.to(method.backbone.device)))
    return out


@torch.no_grad()
def embed_product_texts(
    method: Method, texts: list[str], entity_ids: list[list[int]] | None = None, batch_size: int = 256, tower: Tower | None = None
) -> np.ndarray:
    """Text embeddings; with `tower` (the text tower on a runtime), the tower's part runs there."""
    device = method.backbone.device
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = Batch(product_keys=torch.arange(len(chunk)), texts=list(chunk))
        if tower is not None:
            batch.text_features = torch.from_numpy(tower(*method.backbone.text_inputs(list(chunk)).values()))
        if entity_ids is not None:
            batch.entity_ids = torch.tensor(entity_ids[start : start + batch_size], dtype=torch.long)
        out.append(_numpy(method.embed_texts(batch.to(device))))
    return np.concatenate(out) if out else np.zeros((0, method.backbone.embed_dim), np.float32)


@torch.no_grad()
def embed_category_paths(method: Method, paths: list[str], batch_size: int = 256) -> np.ndarray:
    out = [_numpy(method.embed_categories(list(chunk))) for chunk in _chunks(paths, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, method.backbone.embed_dim), np.float32)


def product_entity_ids(method: Method, products: list[Product]) -> list[list[int]] | None:
    return [method.vocabs.encode(p) for p in products] if method.vocabs is not None else None


@torch.no_grad()
def embed_tower_outputs(method: Method, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Image embeddings from image-tower outputs (pooled features, tokens for ECLIP, or the frozen
    front's output when the tower's last blocks train: `tower_kind`)."""
    field = CACHED_IMAGE_FIELDS[tower_kind(method)]
    device = method.backbone.device
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size].float().to(device)
        batch = Batch(product_keys=torch.arange(len(chunk)), texts=[""] * len(chunk), **{field: chunk})
        out.append(_numpy(method.embed_images(batch)))
    return np.concatenate(out) if out else np.zeros((0, method.backbone.embed_dim), np.float32)


def image_tower_outputs(method: Method, paths: list[Path], batch_size: int, cache, progress: bool, runtime: str = "auto") -> torch.Tensor:
    """The image tower's outputs for every path, each image encoded once: from (and into) the
    feature cache when one is given (a frozen tower's `image_cache`), else computed in batches."""
    if cache is not None:
        return cache.fill(paths, load_rgb)
    job = ImageJob(load_rgb, method.backbone.image_transform(train=False), TowerForward(method.backbone, tower_kind(method), runtime), batch_size)
    rows, _ = featurise(job, paths, progress=progress)
    return torch.from_numpy(rows) if len(paths) else torch.zeros(0)


class MethodImages:
    """The `Forward` of a method's image embeddings: its image tower on a tower runtime, then its head."""

    def __init__(self, method: Method, runtime: str = "auto") -> None:
        self.method = method
        self.tower = TowerForward(method.backbone, tower_kind(method), runtime)

    def open(self, sample: torch.Tensor) -> "HeadOnTower":
        return HeadOnTower(self.method, self.tower.open(sample))


class HeadOnTower:
    """An opened `MethodImages`: pixels -> tower outputs (on the runtime) -> the method's image embeddings."""

    def __init__(self, method: Method, tower) -> None:
        self.method, self.tower, self.name = method, tower, tower.name

    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        return embed_tower_outputs(self.method, torch.from_numpy(self.tower(pixels)))


def embed_catalog(
    method: Method,
    catalog: Catalog,
    batch_size: int = 64,
    categories: list[str] | None = None,
    problems: ProblemLog | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> Embeddings:
    """Embeddings of every readable image, every product's text, and every category node.

    Methods with `embed_products` (CLIP-ITA) also get one fused vector per product from the tower
    outputs of its `product_image` (no image is encoded twice). With `cache_dir`, a frozen image
    tower's outputs are read from (and added to) the feature cache.
    """
    problems = problems if problems is not None else ProblemLog()
    method.eval()
    cache = image_cache(method, cache_dir) if cache_dir is not None else None
    rows = [(f.product, f.image, f.path) for f in usable_image_files(catalog, problems, cache=cache)]
    outputs = image_tower_outputs(method, [r[2] for r in rows], batch_size, cache, progress)
    products = catalog.products
    text = embed_product_texts(method, [method.product_text(p) for p in products], product_entity_ids(method, products))
    categories = all_category_nodes(catalog) if categories is None else categories
    fused = None
    if method.embed_products is not None:
        per_product: list[torch.Tensor | None] = [None] * len(products)
        for (i, image, _), row_outputs in zip(rows, outputs):
            if image is product_image(products[i]):
                per_product[i] = row_outputs.float()
        fused = embed_fused_products(method, products, per_product)
    return Embeddings(
        image=embed_tower_outputs(method, outputs) if len(rows) else np.zeros((0, method.backbone.embed_dim), np.float32),
        image_product=np.array([products[r[0]].id for r in rows], dtype=str),
        image_source=np.array([r[1].source for r in rows], dtype=str),
        image_path=np.array([str(r[2]) for r in rows], dtype=str),
        text=text,
        text_product=np.array([p.id for p in products], dtype=str),
        category=embed_category_paths(method, categories),
        category_path=np.array(categories, dtype=str),
        product=fused,
        meta={"method": method.name, "backbone": method.backbone.config.spec},
    )


class RunEncoder:
    """`catalogclip.embeddings.Encoder` for a trained run folder (or an already built method).

    `runtime` runs the text and image towers of queries: "torch" (the method as it is), "onnx" or
    "auto" (ONNX Runtime where it agrees with PyTorch and is faster; exported once, here, and
    calibrated on `SAMPLE_TEXTS` and seeded random pixels).
    """

    def __init__(
        self, run_dir: str | Path | None = None, device: str = "cpu", method: Method | None = None, model_id: str | None = None,
        runtime: str = "torch",
    ):
        if method is None:
            from catalogclip.train.runs import load_run

            run = load_run(run_dir, device)
            method, model_id = run.method, run.model_id
        self.method = method.eval()
        self.model_id = model_id or f"{method.name}-untrained"
        self.dim = method.backbone.embed_dim
        self.vocabs = method.vocabs
        self._image_forwards: dict[str, MethodImages] = {}
        self.runtime = runtime
        self.text_tower = _text_tower(method, runtime)
        self.image_tower = None if runtime == "torch" else MethodImages(method, runtime).open(_sample_pixels(method))

    def on_runtime(self, runtime: str) -> "RunEncoder":
        """This run's encoder with its query towers on `runtime` (itself if they are already)."""
        return self if runtime == self.runtime else RunEncoder(method=self.method, model_id=self.model_id, runtime=runtime)

    @property
    def runtimes(self) -> dict[str, str]:
        """What runs the text and the image tower of queries."""
        return {"text": self.text_tower.name if self.text_tower is not None else f"torch {torch.__version__}",
                "image": self.image_tower.name if self.image_tower is not None else f"torch {torch.__version__}"}

    def encode_texts(self, texts: list[str], entities: list[dict[str, str]] | None = None) -> np.ndarray:
        ids = None
        if self.vocabs is not None:
            entities = entities or [{} for _ in texts]
            ids = [self.vocabs.encode_values(e) for e in entities]
        return embed_product_texts(self.method, list(texts), ids, tower=self.text_tower)

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return embed_pil_images(self.method, images, tower=self.image_tower)

    def encode_categories(self, paths: list[str]) -> np.ndarray:
        return embed_category_paths(self.method, list(paths))

    def image_job(self, batch_size: int = 32, runtime: str = "auto") -> ImageJob:
        """Image files -> this run's image vectors, for the embedding engines (`index`)."""
        forward = self._image_forwards.setdefault(runtime, MethodImages(self.method, runtime))
        return ImageJob(load_rgb, self.method.backbone.image_transform(train=False), forward, batch_size)


def _sample_pixels(method: Method) -> torch.Tensor:
    """Seeded noise images: what "auto" compares the image tower's runtimes on."""
    size = method.backbone.preprocess.size
    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)).to(method.backbone.device)


def _text_tower(method: Method, runtime: str) -> Tower | None:
    """The method's text tower on `runtime`, or None where the method's own PyTorch path runs it
    ("torch", or "auto" for a backbone whose tower takes strings rather than tensors)."""
    if runtime == "torch":
        return None
    try:
        return open_text_tower(method.backbone, runtime)
    except NotImplementedError:
        if runtime == "auto":
            return None
        raise ValueError(f"the {method.backbone.name} text tower runs on PyTorch only, not on '{runtime}'") from None
