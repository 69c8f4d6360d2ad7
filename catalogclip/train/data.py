"""From a catalog to batches: one row per (image, product) pair.

Frozen towers are run once: their image features (or tokens) come from the on-disk feature cache
and their text features are computed once per distinct text, so CPU training only runs what learns.
Images outside the catalog's roots, missing or undecodable (truncated, decompression bombs) are
skipped and counted with the catalog's file and line before training starts, never fatal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from catalogclip.catalog.images import image_problem
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageFile, category_nodes
from catalogclip.featurise.engines import spare_cores
from catalogclip.models.batch import CACHED_IMAGE_FIELDS, Batch
from catalogclip.models.methods import Method


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (raises OSError/ValueError/DecompressionBombError when it cannot be
    decoded or has more pixels than Pillow's budget, which Pillow alone enforces only from twice it)."""
    with Image.open(path) as image:
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels, over the budget of {Image.MAX_IMAGE_PIXELS:,}")
        return image.convert("RGB")


def usable_image_files(
    catalog: Catalog, problems: ProblemLog, sources: list[str] | None = None, cache=None
) -> list[ImageFile]:
    """The catalog's image files that lie inside its roots, exist and decode; each other one is
    logged with the catalog's file, line and field.

    Images are decoded in full here (a truncated JPEG passes a header check and fails mid-run),
    except those whose tower outputs `cache` (a FeatureCache) already holds: they decoded before.
    """
    present = []
    for image_file in catalog.image_files(problems, sources):
        problem = image_problem(image_file.path)
        if problem is None:
            present.append(image_file)
        else:
            catalog.report_image(problems, problem[0], image_file.product, image_file.number, problem[1])
    unchecked = set(cache.missing([f.path for f in present])) if cache is not None else set(range(len(present)))
    usable = []
    for position, image_file in enumerate(present):
        problem = image_problem(image_file.path, verify=True) if position in unchecked else None
        if problem is None:
            usable.append(image_file)
        else:
            catalog.report_image(problems, problem[0], image_file.product, image_file.number, problem[1])
    return usable


def readable_images(paths: list[Path], problems: ProblemLog) -> list[bool]:
    """Which images decode; the others are logged as missing or broken."""
    ok = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
            ok.append(True)
        except FileNotFoundError:
            problems.add("missing image", path, None, "file not found")
            ok.append(False)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            problems.add("broken image", path, None, f"cannot decode: {exc}")
            ok.append(False)
    return ok


@torch.no_grad()
def encode_texts_once(
    method: Method, texts: list[str], batch_size: int = 256, cache_dir: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text tower: features of each distinct text once (kept in the on-disk feature cache
    when `cache_dir` is given, so runs sharing a tower share them). Returns (features, row -> feature index)."""
    distinct = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(distinct)}
    index = torch.tensor([position[t] for t in texts], dtype=torch.long)
    if cache_dir is not None:
        from catalogclip.train.featcache import FeatureCache

        cache = FeatureCache(cache_dir, method.backbone, kind="text")
        return cache.fill(distinct, batch_size=batch_size, progress=False).float(), index
    chunks = [method.backbone.text_features(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)]
    return torch.cat(chunks).cpu(), index


def attribute_text(product) -> str:
    """A product's attributes as text: "brand: Puma, colour: Black"."""
    return ", ".join(f"{group}: {value}" for group, value in product.attributes.items())


@dataclass
class PairData:
    """Everything per pair that the batches slice from; built once per run."""

    product_index: torch.Tensor  # (P,) index of the pair's product in the catalog
    image_paths: list[Path]
    texts: list[str]  # per product
    entity_ids: torch.Tensor | None  # (n_products, G)
    text_features: torch.Tensor | None  # (n_distinct_texts, F) when the text tower is frozen
    text_feature_index: torch.Tensor | None  # (n_products,)
    #: (P, F) or (P, N, C) cached tower outputs when the image tower is frozen, (P, C, h, w) its
    #: frozen front's when its last blocks train
    image_inputs: torch.Tensor | None
    categories: list[list[str]] | None  # per product: its category nodes (methods that train on categories)
    attribute_texts: list[str] | None  # per product (methods that use attribute text)
    #: (P,) bool: the pair's image is its product's main shot (its first merchant image)
    main_shot: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.image_paths)


def build_pairs(
    method: Method,
    catalog: Catalog,
    problems: ProblemLog,
    sources: list[str] | None = None,
    cache_dir: Path | None = None,
    cache_features: bool = True,
) -> PairData:
    """Collect the usable (image, product) pairs of a catalog and precompute frozen-tower inputs
    (unless `cache_features` is off: then every batch runs the towers)."""
    cache = image_cache(method, cache_dir) if cache_features else None
    files = usable_image_files(catalog, problems, sources, cache)
    if not files:
        raise ValueError("no usable image left to train on (see the problems above)")
    product_index = torch.tensor([f.product for f in files], dtype=torch.long)
    paths = [f.path for f in files]
    texts = [method.product_text(p) for p in catalog.products]
    entity_ids = None
    if method.vocabs is not None:
        entity_ids = torch.tensor([method.vocabs.encode(p) for p in catalog.products], dtype=torch.long)
    text_features = text_index = None
    if cache_features and method.backbone.text_tower_frozen:
        text_features, text_index = encode_texts_once(method, texts, cache_dir=cache_dir)
    image_inputs = cache.fill(paths, load_rgb) if cache is not None else None
    categories = [category_nodes(p.category_path) for p in catalog.products] if method.trains_on_categories else None
    attributes = [attribute_text(p) for p in catalog.products] if method.uses_attribute_text else None
    return PairData(product_index, paths, texts, entity_ids, text_features, text_index, image_inputs, categories, attributes,
                    main_shots(files))


def main_shots(files: list[ImageFile]) -> torch.Tensor:
    """(P,) bool: which pairs hold their product's first merchant image."""
    first: dict[int, int] = {}
    for row, image_file in enumerate(files):
        if image_file.image.source == "merchant":
            first.setdefault(image_file.product, row)
    flags = torch.zeros(len(files), dtype=torch.bool)
    flags[list(first.values())] = True
    return flags


def tower_kind(method: Method) -> str:
    """What a method's cacheable image-tower output is: "tokens" (spatial) or pooled "features" as
    the method reads them, or the "prefix" of a tower whose last blocks train (the method runs those)."""
    if method.backbone.has_frozen_image_prefix:
        return "prefix"
    return "tokens" if method.image_input == "tokens" else "features"


def image_cache(method: Method, cache_dir: Path | None, **options):
    """The feature cache of a frozen image tower (tokens or pooled features, as the method takes
    them) or of a partly trained one's frozen front, or None when the whole tower trains; `options`
    go to `FeatureCache` (runtime, engine)."""
    from catalogclip.train.featcache import FeatureCache, cacheable

    kind = tower_kind(method)
    if not cacheable(method.backbone, kind):
        return None
    return FeatureCache(cache_dir if cache_dir is not None else Path(".featcache"), method.backbone, kind=kind, **options)


def epoch_batches(data: PairData, batch_size: int, seed: int, epoch: int, views_per_product: int = 1,
                  main_shot_in_batch: bool = False) -> list[torch.Tensor]:
    """The pair rows of every batch of one epoch; depends only on (seed, epoch), so resumes replay it.

    With `views_per_product` > 1, batches are packed with whole products, up to that many images
    each, so several views of one product meet in a batch (they are positives of each other).
    With `main_shot_in_batch` every product in a batch also brings its main shot (its first
    merchant image; packed groups start with it), so that the losses between a product's images
    see the merchant shots that a customer photo's search retrieves.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(data), generator=generator)
    main = product_main_shots(data) if main_shot_in_batch else {}
    if views_per_product <= 1:
        return with_main_shots(order.tolist(), data, main, batch_size) if main else list(order.split(batch_size))
    groups: dict[int, list[int]] = {}
    for row in order.tolist():
        groups.setdefault(int(data.product_index[row]), []).append(row)
    batches, current = [], []
    for product, rows in groups.items():
        if product in main:
            rows = [main[product], *(row for row in rows if row != main[product])]
        rows = rows[:views_per_product]
        if len(current) + len(rows) > batch_size and current:
            batches.append(torch.tensor(current))
            current = []
        current.extend(rows)
    if current:
        batches.append(torch.tensor(current))
    return batches


def product_main_shots(data: PairData) -> dict[int, int]:
    """product -> the row of its main shot."""
    if data.main_shot is None:
        raise ValueError("main_shot_in_batch needs to know each product's main shot (PairData.main_shot)")
    return {int(data.product_index[row]): row for row in torch.nonzero(data.main_shot).flatten().tolist()}


def with_main_shots(order: list[int], data: PairData, main: dict[int, int], batch_size: int) -> list[torch.Tensor]:
    """Random batches of `order` in which each row's product also brings its main shot (once per
    batch); a main shot drawn into a batch that already holds it is not drawn again this epoch."""
    batches, current, present = [], [], set()
    for row in order:
        if row in present:
            continue
        shot = main.get(int(data.product_index[row]), row)
        rows = [row] if shot == row or shot in present else [row, shot]
        if len(current) + len(rows) > batch_size and current:
            batches.append(torch.tensor(current))
            current, present = [], set()
            rows = [row] if shot == row else [row, shot]
        current.extend(rows)
        present.update(rows)
    if current:
        batches.append(torch.tensor(current))
    return batches


def make_batch(cached_kind: str, data: PairData, rows: torch.Tensor, transform, seed: int) -> Batch:
    """The batch of pair `rows`; `seed` fixes its category draws and image augmentations, so a batch
    is the same wherever it is built (this process or a loader worker) and on resume."""
    generator = torch.Generator().manual_seed(seed)
    products = data.product_index[rows]
    batch = Batch(product_keys=products, texts=[data.texts[i] for i in products.tolist()])
    if data.entity_ids is not None:
        batch.entity_ids = data.entity_ids[products]
    if data.text_features is not None:
        batch.text_features = data.text_features[data.text_feature_index[products]]
    if data.image_inputs is not None:
        setattr(batch, CACHED_IMAGE_FIELDS[cached_kind], data.image_inputs[rows].float())
    else:
        batch.images = augmented_images(data, rows, transform, seed)
    if data.categories is not None:
        batch.categories, batch.category_keys = sample_categories(data, products, generator)
        batch.category_path_nodes = [data.categories[i] for i in products.tolist()]
    if data.attribute_texts is not None:
        batch.attribute_texts = [data.attribute_texts[i] for i in products.tolist()]
    return batch


def augmented_images(data: PairData, rows: torch.Tensor, transform, seed: int) -> torch.Tensor:
    """Decoded, augmented images of `rows`; torchvision draws from the global RNG, so it is
    seeded here and restored after, leaving the training RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(load_rgb(data.image_paths[r])) for r in rows.tolist()])


def sample_categories(data: PairData, products: torch.Tensor, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """One node at a random depth of each product's path; keys identify equal nodes in the batch."""
    chosen = []
    for i in products.tolist():
        nodes = data.categories[i]
        chosen.append(nodes[int(torch.randint(len(nodes), (1,), generator=generator))] if nodes else "")
    ids = {node: k for k, node in enumerate(dict.fromkeys(chosen))}
    return chosen, torch.tensor([ids[c] for c in chosen], dtype=torch.long)


class EpochBatches(torch.utils.data.Dataset):
    """Batch `k` of an epoch, built where the loader runs it: in this process, or in a worker
    process that decodes images while the model trains on the previous batch."""

    def __init__(self, cached_kind: str, data: PairData, plan: list[tuple[torch.Tensor, int]], transform) -> None:
        self.cached_kind, self.data, self.plan, self.transform = cached_kind, data, plan, transform

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> Batch:
        rows, seed = self.plan[k]
        return make_batch(self.cached_kind, self.data, rows, self.transform, seed)


def loader_workers(requested: int | None, data: PairData, device: torch.device) -> int:
    """Worker processes that build batches: as requested, else (None) enough to keep a GPU fed
    where images are decoded every step, and none on CPU or from cached features (the model
    itself needs the cores, and slicing cached rows costs nothing)."""
    if requested is not None:
        return requested
    if device.type == "cpu" or data.image_inputs is not None:
        return 0
    return spare_cores()


def iterate_batches(
    method: Method,
    data: PairData,
    batch_size: int,
    seed: int,
    epoch: int,
    skip: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    main_shot_in_batch: bool = False,
) -> Iterator[Batch]:
    """Batches of one epoch in the (seed, epoch) order, starting after `skip` batches, built by
    `workers` loader processes (0: in this one); the same batches either way.

    Under torch.distributed each rank gets its contiguous, equal-sized slice of every global
    batch (all_gather needs equal shapes: a remainder of fewer rows than ranks is left out). A
    batch smaller than two rows per rank is dropped: it has no negatives to contrast with.
    """
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    plan = []
    for batch_no, rows in enumerate(usable_batches(data, batch_size, seed, epoch, method.views_per_product, world_size,
                                                   main_shot_in_batch)):
        # every batch draws its seed, skipped ones included, to stay resumable
        batch_seed = int(torch.randint(2**62, (1,), generator=generator))
        if batch_no >= skip:
            plan.append((rows[: len(rows) - len(rows) % world_size].tensor_split(world_size)[rank], batch_seed))
    batches = EpochBatches(tower_kind(method), data, plan, method.backbone.image_transform(train=True))
    if workers == 0:
        yield from (batches[k] for k in range(len(batches)))
    else:
        yield from torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=4)


def usable_batches(data: PairData, batch_size: int, seed: int, epoch: int, views: int, world_size: int,
                   main_shot_in_batch: bool = False) -> list[torch.Tensor]:
    """Batches with something to contrast: two rows per rank and at least two products."""
    return [
        rows for rows in epoch_batches(data, batch_size, seed, epoch, views, main_shot_in_batch)
        if len(rows) >= 2 * world_size and len(data.product_index[rows].unique()) >= 2
    ]
