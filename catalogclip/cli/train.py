"""`catalogclip train` and `catalogclip embed`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from catalogclip.cli.common import app, user_errors


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def parse_settings(pairs: list[str]) -> dict:
    """`--set section.key=value` pairs (values in YAML syntax) as a nested dict."""
    import yaml

    nested: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects section.key=value, got '{pair}'")
        *parents, leaf = key.strip().split(".")
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(value)
    return nested


def _merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`, nested dicts merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def build_run_config(
    config: Path | None,
    catalog: Path | None,
    method: str | None,
    backbone: str | None,
    overrides: dict,
    method_overrides: dict,
    settings: list[str] = (),
    base=None,
):
    """A RunConfig from an optional YAML file (else `base`, else the defaults), `--set` settings,
    then flags (flags win)."""
    from catalogclip.train.config import RunConfig

    run = RunConfig.load(config) if config else (base or RunConfig())
    if settings:
        run = RunConfig.from_dict(_merge(run.to_dict(), parse_settings(list(settings))))
    if catalog is not None:
        run.data.catalog = str(catalog)
    if method is not None:
        run.method = method
    if backbone is not None:
        run.backbone.spec = backbone
    for section, values in overrides.items():
        for key, value in values.items():
            if value is not None:
                setattr(getattr(run, section), key, value)
    run.method_options.update({k: v for k, v in method_overrides.items() if v is not None})
    if not run.data.catalog:
        raise ValueError("no catalog given (--catalog or data.catalog in --config)")
    return run


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Run folder to write (config, checkpoints, metrics)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog JSONL to train on (its test split is held out)."),
    image_root: Optional[Path] = typer.Option(
        None, help="A folder outside the catalog's own that its images may live in (image paths elsewhere are refused)."
    ),
    method: Optional[str] = typer.Option(None, help="clip | eiclip | eclip | clipita"),
    backbone: Optional[str] = typer.Option(None, help="tiny | twotower | openclip:<model>[:<tag or checkpoint path>]"),
    config: Optional[Path] = typer.Option(None, help="YAML run config; flags override it."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the data (default: as many as the step budget needs)."),
    step_budget: Optional[int] = typer.Option(None, help="Optimiser steps to aim for when --epochs is not given (default 2000)."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, help="Learning rate of pretrained tower parameters."),
    head_lr: Optional[float] = typer.Option(None, help="Learning rate of freshly initialised parts."),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    embed_dim: Optional[int] = typer.Option(None, help="Joint embedding dimension."),
    entities: Optional[str] = typer.Option(None, help="Attribute groups for the entity encoders (eiclip), comma-separated."),
    entities_as_text: Optional[str] = typer.Option(None, help="Attribute groups appended to the text (clip baseline 3)."),
    gates: Optional[str] = typer.Option(None, help="eiclip gates: learned | equal"),
    variant: Optional[str] = typer.Option(None, help="clipita product encoder: I | IA | ITA (image, + attributes, + title)"),
    fusion: Optional[str] = typer.Option(None, help="clipita fusion of the product parts: weighted | mlp"),
    resume: bool = typer.Option(
        False, help="Continue the run in --out from its last checkpoint to the end of its plan, with its saved settings "
        "(changing the model, data or schedule is refused; --max-steps, --device and logging may change)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    settings: list[str] = typer.Option([], "--set", help="Any setting as section.key=value, e.g. backbone.augment=true."),
) -> None:
    """Train a method on a catalog; prints the plan (epochs, steps, batch) before it starts."""
    with user_errors():
        from catalogclip.train.distributed import is_main
        from catalogclip.train.trainer import train as run_training

        saved = out / "config.yaml"
        run = build_run_config(
            config, catalog, method, backbone,
            {
                "optim": {"epochs": epochs, "step_budget": step_budget, "batch_size": batch_size, "lr": lr,
                          "head_lr": head_lr, "seed": seed, "device": device, "max_steps": max_steps},
                "backbone": {"embed_dim": embed_dim},
                "data": {"image_root": str(image_root.resolve()) if image_root else None},
            },
            {"entity_groups": _csv(entities), "entities_as_text": _csv(entities_as_text), "gates": gates,
             "variant": variant, "fusion": fusion},
            settings,
            base=_resume_base(saved) if resume and saved.exists() else None,
        )
        if resume and not (out / "checkpoints" / "last.pt").exists():
            typer.echo(f"{out}: no checkpoint to resume from; starting fresh", err=True)
        on_plan = (lambda plan: typer.echo(str(plan))) if is_main() else None
        result = run_training(run, out, resume=resume, progress=progress, on_plan=on_plan)
        if not is_main():  # under torchrun, rank 0 speaks for the run
            return
        if result.problems.problems:
            result.problems.report()
        typer.echo(f"trained {run.method} for {result.steps} steps on {result.pairs} pairs; last loss {result.last_loss:.4f} -> {out}")


@app.command()
def embed(
    run: Path = typer.Option(..., "--run", help="Trained run folder."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog to embed (default: the run's catalog)."),
    split: str = typer.Option("test", help="test | train | all: which products of the run's catalog to embed."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN/embeddings)."),
    device: str = typer.Option("cpu"),
    feature_cache: Optional[Path] = typer.Option(None, help="Feature cache of a frozen image tower (default: the run's)."),
) -> None:
    """Write image, text and category embeddings of a catalog with a trained run."""
    with user_errors():
        from catalogclip.embed import embed_catalog
        from catalogclip.train.runs import load_run

        loaded = load_run(run, device)
        products = run_catalog(loaded, catalog, split)
        cache = feature_cache or loaded.feature_cache_dir()
        embeddings = embed_catalog(loaded.method, products, cache_dir=cache)
        embeddings.meta.update(run=str(run), model_id=loaded.model_id, split=split)
        target = embeddings.save(out or run / "embeddings")
        typer.echo(f"{len(embeddings.image)} images, {len(embeddings.text)} products -> {target}")


def _resume_base(saved: Path):
    """The run's saved settings (the truth on resume), going on to the end of its plan unless
    --max-steps says otherwise."""
    from catalogclip.train.config import RunConfig

    config = RunConfig.load(saved)
    config.optim.max_steps = None
    return config


def run_catalog(loaded, catalog: Path | None, split: str):
    """The products to embed: a given catalog as is, or one side of the run's own split."""
    from catalogclip.catalog.schema import read_jsonl

    if catalog is not None:
        return read_jsonl(catalog, image_root=loaded.config.data.image_root)
    full = read_jsonl(loaded.config.data.catalog, image_root=loaded.config.data.image_root)
    if split == "all":
        return full
    if split not in ("train", "test"):
        raise ValueError(f"--split must be test, train or all, got '{split}'")
    from catalogclip.catalog.splits import Split

    # the split's own sides: an "image" split keeps every product but only that side's images
    return getattr(Split.from_json(loaded.split_ids(), full, where=f"{loaded.run_dir}/split.json"), split)
