"""Build or update an index from a catalog with any `Encoder`.

Images are embedded in batches by an embedding engine (catalogclip/featurise: in this process, or Ray). Finished shards of vectors are kept in a
work folder beside the index (``.IDX.embedding/``), so an interrupted build resumes where it
stopped; the work folder is removed once the index is written.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Catalog, ImageRef, Product, relative_path
from catalogclip.embeddings import Encoder
from catalogclip.featurise.engines import EmbeddingEngine, ImageJob, LocalEngine, Shard, ShardResult
from catalogclip.io import atomic_path, atomic_write_json
from catalogclip.search.backend import Connection, VectorParams
from catalogclip.search.index import ProductIndex, check_replaceable
from catalogclip.search.lexical import LexicalParams
from catalogclip.search.lock import index_writer
from catalogclip.train.data import load_rgb

SHARD_SIZE = 1024


def work_folder(index_path: str | Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(f".{index_path.name}.embedding")


def _image_refs(products: Sequence[Product]) -> list[tuple[int, int]]:
    return [(p, i) for p, product in enumerate(products) for i in range(len(product.images))]


def _plan(encoder: Encoder, catalog: Catalog, refs: list[tuple[int, int]], shard_size: int) -> dict:
    """What a work folder's shards were made from; a mismatch means they cannot be reused."""
    digest = hashlib.sha256()
    for p, i in refs:
        digest.update(f"{catalog.image_path(catalog.products[p].images[i])}\n".encode())
    return {"model_id": encoder.model_id, "images": len(refs), "digest": digest.hexdigest(), "shard_size": shard_size}


def _load(path: Path) -> Image.Image | str:
    """The RGB image, or the reason it cannot be read."""
    try:
        return load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"cannot decode: {exc}"


class EncoderImages:
    """The `Forward` of any `Encoder`: decoded PIL images in, its vectors out (no separate preprocessing)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def open(self, sample: list[Image.Image]):
        return self

    name = "encoder"

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        return np.asarray(self.encoder.encode_images(images), dtype=np.float32)


def _as_is(image: Image.Image) -> Image.Image:
    return image


def _as_list(images: list) -> list:
    return images


def image_job(encoder: Encoder, batch_size: int) -> ImageJob:
    """How `encoder` turns image files into vectors: its own `image_job` where it has one (a run's
    preprocessing and fast tower runtime), else decoded images handed to `encode_images`."""
    if hasattr(encoder, "image_job"):
        return replace(encoder.image_job(), load=_load, batch_size=batch_size)
    return ImageJob(_load, _as_is, EncoderImages(encoder), batch_size, collate=_as_list)


def embed_images(
    encoder: Encoder,
    catalog: Catalog,
    work_dir: str | Path,
    *,
    batch_size: int = 32,
    shard_size: int = SHARD_SIZE,
    problems: ProblemLog | None = None,
    progress: bool = True,
    engine: EmbeddingEngine | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Vectors of every readable image and their (product number, image number) refs.

    Unreadable images are logged as "broken image" (with the catalog's file and line) and left
    out; the catalog must already be `confined` to its roots. Shards already in `work_dir`
    from the same encoder and image list are reused, so a second call after an interruption
    only embeds what is missing. `engine` runs the model (default: in this process).
    """
    problems = problems if problems is not None else ProblemLog()
    work_dir = Path(work_dir)
    refs = _image_refs(catalog.products)
    plan = _plan(encoder, catalog, refs, shard_size)
    plan_path = work_dir / "plan.json"
    if work_dir.exists() and not (plan_path.exists() and json.loads(plan_path.read_text()) == plan):
        shutil.rmtree(work_dir)  # another catalog's shards, or a dead writer's without a plan
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, plan)

    paths = [catalog.image_path(catalog.products[p].images[i]) for p, i in refs]
    shards = [
        Shard(paths[start : start + shard_size], tag=work_dir / f"shard-{shard_no:06d}.npz")
        for shard_no, start in enumerate(range(0, len(refs), shard_size))
    ]
    todo = [shard for shard in shards if not shard.tag.exists()]
    (engine or LocalEngine()).run(image_job(encoder, batch_size), todo, partial(_write_shard, dim=encoder.dim), progress)

    vectors, kept = [], []
    for shard, start in zip(shards, range(0, len(refs), shard_size)):
        with np.load(shard.tag) as saved:
            vectors.append(saved["vectors"])
            for ref, error in zip(refs[start : start + shard_size], saved["errors"]):
                if error:
                    catalog.report_image(problems, "broken image", ref[0], ref[1], str(error))
                else:
                    kept.append(ref)
    return (np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32)), kept


def _write_shard(result: ShardResult, dim: int) -> None:
    vectors = result.rows.reshape(-1, dim)
    with atomic_path(result.shard.tag) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, vectors=vectors, errors=np.array(result.errors, dtype=str))


def _searchable(catalog: Catalog, refs: list[tuple[int, int]], problems: ProblemLog) -> tuple[list[Product], list[tuple[int, int]]]:
    """Drop products none of whose images could be embedded; renumber refs to the kept ones."""
    has_vector = {p for p, _ in refs}
    kept = [p for p in range(len(catalog)) if p in has_vector]
    for p in sorted(set(range(len(catalog))) - has_vector):
        product_id = catalog.products[p].id
        problems.add("unsearchable product", catalog.file or catalog.root, catalog.lines.get(product_id),
                     f"product '{product_id}' has no readable image; left out")
    new_number = {old: new for new, old in enumerate(kept)}
    return [catalog.products[p] for p in kept], [(new_number[p], i) for p, i in refs]


@dataclass
class BuildOptions:
    kind: str = "auto"
    params: VectorParams | None = None
    lexical: LexicalParams | None = None  # BM25 field weights (an update keeps the index's own)
    batch_size: int = 32
    progress: bool = True
    #: what runs the model over the images (None: this process; see catalogclip/featurise)
    engine: EmbeddingEngine | None = None
    run: str | None = None
    config: Mapping | None = None
    connection: Connection | None = None  # backend and where it keeps the vectors (default: faiss in the folder)
    #: seconds to wait for another writer of the same index to finish (0: fail at once)
    wait: float = 0.0


def build_index(
    encoder: Encoder, catalog: Catalog, out: str | Path, options: BuildOptions | None = None, problems: ProblemLog | None = None
) -> ProductIndex:
    """Embed every product image of `catalog` and write a new index at `out` (atomically)."""
    options = options or BuildOptions()
    check_replaceable(out)  # before the long part, not after it
    with index_writer(out, options.wait):
        return _build_index(encoder, catalog, out, options, problems if problems is not None else ProblemLog())


def _build_index(encoder: Encoder, catalog: Catalog, out: str | Path, options: BuildOptions, problems: ProblemLog) -> ProductIndex:
    catalog = catalog.confined(problems)
    work = work_folder(out)
    vectors, refs = embed_images(encoder, catalog, work, batch_size=options.batch_size, problems=problems, progress=options.progress, engine=options.engine)
    products, refs = _searchable(catalog, refs, problems)
    products = [_rebased(p, catalog, catalog.root) for p in products]  # as `update_index` compares them
    index = ProductIndex.build(
        out, products, vectors, refs,
        model_id=encoder.model_id, catalog_root=catalog.root, image_roots=catalog.image_roots, run=options.run,
        config=options.config, kind=options.kind, params=options.params, connection=options.connection, lexical=options.lexical,
    )
    shutil.rmtree(work, ignore_errors=True)
    return index


@dataclass
class UpdateSummary:
    added: int
    changed: int
    deleted: int
    unchanged: int

    def __str__(self) -> str:
        return f"{self.added} added, {self.changed} changed, {self.deleted} deleted, {self.unchanged} unchanged"


def update_index(
    encoder: Encoder, catalog: Catalog, index: ProductIndex, options: BuildOptions | None = None, problems: ProblemLog | None = None
) -> UpdateSummary:
    """Make `index` hold exactly `catalog`'s products, embedding only new and changed ones."""
    options = options or BuildOptions()
    with index_writer(index.path, options.wait):
        index.reload(options.connection)  # another writer may have committed while this one waited
        return _update_index(encoder, catalog, index, options, problems if problems is not None else ProblemLog())


def _update_index(
    encoder: Encoder, catalog: Catalog, index: ProductIndex, options: BuildOptions, problems: ProblemLog
) -> UpdateSummary:
    index.check_model(encoder.model_id, encoder.dim)
    stored = {p.id: p.to_json() for p in index.store.iter_products()}
    catalog = catalog.confined(problems)
    current = [_rebased(p, catalog, index.catalog_root) for p in catalog]
    fresh = [p for p in current if stored.get(p.id) != p.to_json()]
    gone = [pid for pid in stored if pid not in {p.id for p in current}]
    # the index's roots are the truth: images of the new catalog outside them are left out
    to_embed = Catalog(fresh, index.catalog_root, index.roots.extra, catalog.file, catalog.lines).confined(problems)
    work = work_folder(index.path)
    vectors, refs = embed_images(encoder, to_embed, work, batch_size=options.batch_size, problems=problems, progress=options.progress, engine=options.engine)
    products, refs = _searchable(to_embed, refs, problems)
    index.delete(gone + [p.id for p in fresh])
    index.add(products, vectors, refs)
    index.commit()
    shutil.rmtree(work, ignore_errors=True)
    changed = sum(p.id in stored for p in fresh)
    return UpdateSummary(len(fresh) - changed, changed, len(gone), len(current) - len(fresh))


def _rebased(product: Product, catalog: Catalog, root: Path) -> Product:
    """The product with image paths relative to `root` (the index's catalog folder) where possible."""
    root = Path(root).resolve()
    images = [ImageRef(relative_path(catalog.image_path(im), root), im.source, im.bbox) for im in product.images]
    return replace(product, images=images)


def index_run(
    run_dir: str | Path,
    out: str | Path,
    catalog: str | Path | None = None,
    *,
    update: bool = False,
    options: BuildOptions | None = None,
    device: str = "cpu",
    problems: ProblemLog | None = None,
) -> tuple[ProductIndex, UpdateSummary | None]:
    """Index a catalog (default: the run's own) with a trained run's model: a new index at
    `out`, or with `update`, the existing one brought in line with the catalog."""
    from catalogclip.catalog.schema import read_jsonl
    from catalogclip.embed import RunEncoder
    from catalogclip.train.runs import load_run

    problems = problems if problems is not None else ProblemLog()
    loaded = load_run(run_dir, device)
    products = read_jsonl(catalog or loaded.config.data.catalog, problems, loaded.config.data.image_root)
    encoder = RunEncoder(method=loaded.method, model_id=loaded.model_id)
    options = replace(options or BuildOptions(), run=str(Path(run_dir).resolve()), config=loaded.config.to_dict())
    if update:
        index = ProductIndex.open(out, connection=options.connection)
        return index, update_index(encoder, products, index, options, problems)
    return build_index(encoder, products, out, options, problems), None
