"""`catalogclip featurise`: fill a run's frozen-tower feature cache before training, on any engine."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from catalogclip.cli.common import app, user_errors

#: the embedding-engine flags of `featurise` and `index`
ENGINE = typer.Option("local", help="Embedding engine: local (this process) | ray (Ray Data: decode tasks + an actor pool of models).")
RAY_ADDRESS = typer.Option(None, help="ray: cluster address (default: a local Ray on this machine).")
WORKERS = typer.Option(None, help="ray: model actors (default 1).")
GPUS_PER_WORKER = typer.Option(None, help="ray: GPUs per model actor (default 0).")


def engine_options(engine: str, ray_address: str | None, workers: int | None, gpus_per_worker: float | None):
    """The engine the flags name, given only the options the user set (an engine refuses ones it does not take)."""
    from catalogclip.featurise.engines import make_engine

    given = {"address": ray_address, "workers": workers, "gpus_per_worker": gpus_per_worker}
    return make_engine(engine, **{k: v for k, v in given.items() if v is not None})


@app.command()
def featurise(
    out: Path = typer.Option(..., "--out", help="The run folder `catalogclip train --out` will use (its feature cache is filled)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog JSONL whose images to featurise."),
    method: Optional[str] = typer.Option(None, help="clip | eiclip | eclip | clipita (eclip caches spatial tokens)."),
    backbone: Optional[str] = typer.Option(None, help="A backbone with a frozen image tower, e.g. twotower."),
    config: Optional[Path] = typer.Option(None, help="YAML run config, as for `train`."),
    settings: list[str] = typer.Option([], "--set", help="Any setting as section.key=value, as for `train`."),
    runtime: str = typer.Option("auto", help="Image tower runtime: auto | torch | torch-channels-last | onnx."),
    batch_size: int = typer.Option(32, help="Images per model call."),
    engine: str = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    workers: Optional[int] = WORKERS,
    gpus_per_worker: Optional[float] = GPUS_PER_WORKER,
    progress: bool = typer.Option(True, help="Show a progress bar."),
    prune: bool = typer.Option(False, help="First drop the cached rows of images deleted or changed since (never read again)."),
) -> None:
    """Cache a frozen image tower's outputs for every readable image of a catalog; a killed run resumes."""
    with user_errors():
        from catalogclip.catalog.problems import ProblemLog
        from catalogclip.catalog.schema import read_jsonl
        from catalogclip.cli.train import build_run_config
        from catalogclip.models import methods
        from catalogclip.train.data import image_cache, load_rgb, usable_image_files
        from catalogclip.train.runs import feature_cache_dir
        from catalogclip.train.trainer import seed_everything

        run = build_run_config(config, catalog, method, backbone, {}, {}, settings)
        seed_everything(run.optim.seed)  # as the trainer does: randomly initialised towers come out the same
        built = methods.build_method(run.method, run.backbone, methods.method_config(run.method, run.method_options))
        problems = ProblemLog()
        products = read_jsonl(run.data.catalog, problems)
        cache = image_cache(built, feature_cache_dir(run, out), runtime=runtime, engine=engine_options(engine, ray_address, workers, gpus_per_worker))
        if cache is None:
            raise ValueError(f"backbone '{run.backbone.spec}' trains its image tower: there is nothing to cache")
        if prune:
            dropped = cache.prune()
            typer.echo(f"pruned {dropped['rows dropped']} stale rows ({dropped['shards deleted']} shards deleted, "
                       f"{dropped['shards rewritten']} rewritten, {dropped['bytes freed'] / 2**20:.1f} MiB freed), "
                       f"{dropped['rows kept']} kept")
        paths = [image.path for image in usable_image_files(products, problems, cache=cache)]
        before = len(cache)
        cache.fill(paths, load_rgb, batch_size=batch_size, progress=progress)
        if problems.problems:
            problems.report()
        typer.echo(f"{len(cache) - before} images featurised, {len(paths)} cached in all ({cache.kind}) -> {cache.folder}")
