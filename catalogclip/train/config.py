"""Every setting of a run in plain dataclasses, saved as YAML next to its checkpoints."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from catalogclip.io import atomic_write_text
from catalogclip.models.backbones.base import BackboneConfig


@dataclass
class DataConfig:
    #: canonical JSONL catalog to train on; the run's test split comes from it too
    catalog: str = ""
    #: a folder outside the catalog's own that its images may live in (e.g. an imported
    #: dataset's images/); any other image path outside the catalog's folder is refused
    image_root: str | None = None
    #: "product" (random products) or "leaf" (whole leaf categories held out)
    split_by: str = "product"
    test_fraction: float = 0.2
    split_seed: int = 0
    #: image sources used for training (None: all); e.g. ["merchant"]
    sources: list[str] | None = None
    #: every product in a batch also brings its main shot (its first merchant image): in random
    #: batches a product's merchant shot rarely meets its customer photos, so the losses between a
    #: product's images would hardly see the shots that a customer photo's search retrieves
    main_shot_in_batch: bool = False
    #: folder of the on-disk feature cache for frozen towers (None: <run>/../.featcache)
    feature_cache: str | None = None
    #: run frozen towers once and reuse their outputs (False: every step runs them, e.g. to measure)
    cache_features: bool = True
    #: processes that decode and augment images ahead of the model when a tower trains on pixels
    #: (None: several on a GPU, none on CPU; batches are the same for any number)
    loader_workers: int | None = None


@dataclass
class OptimConfig:
    #: passes over the training pairs; None: as many whole epochs as `step_budget` needs
    epochs: int | None = None
    #: optimiser steps to train for when `epochs` is None (rounded up to whole epochs, at least
    #: one, at most `max_epochs`): a small catalog gets many epochs, a large one few. Measured
    #: in benchmarks/bench_defaults.py: 500 products peak near 40 epochs and then slowly overfit,
    #: 8,000 Myntra products still gain up to 4,000 steps
    step_budget: int = 4000
    max_epochs: int = 40
    batch_size: int = 64
    #: learning rate of pretrained tower parameters (EI-CLIP paper: 5e-5)
    lr: float = 5e-5
    #: learning rate of freshly initialised parts (projection heads, entity encoders, decoders)
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_accum: int = 1
    #: max gradient norm (None: no clipping)
    grad_clip: float | None = 1.0
    #: bfloat16 autocast on CUDA; ignored on CPU
    amp: bool = True
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    #: "auto" picks CUDA when available
    device: str = "auto"
    #: stop after this many optimiser steps (None: run all epochs); the schedule still spans all epochs
    max_steps: int | None = None


RESUMABLE = frozenset({
    "optim.max_steps", "optim.checkpoint_every", "optim.log_every", "optim.device",
    "data.feature_cache", "data.image_root", "data.loader_workers",
})
"""Settings a resumed run may change: where it stops, how often it logs and checkpoints, where it
runs, where cached features and images are found. Everything else (model, data, batches,
schedule, epochs included) must match the run, so a resumed run ends where an unbroken one would."""


@dataclass
class RunConfig:
    method: str = "clip"
    #: settings of the method's config class (see catalogclip/models/methods.py)
    method_options: dict = field(default_factory=dict)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        return _build(cls, values, "config")

    def resume_conflicts(self, saved: "RunConfig | dict") -> list[str]:
        """The settings, outside `RESUMABLE`, in which this config differs from a run's `saved`
        one, as "section.key: saved -> given" lines."""
        saved = saved if isinstance(saved, RunConfig) else RunConfig.from_dict(saved)  # new settings get defaults
        ours, theirs = _flat(self.to_dict()), _flat(saved.to_dict())
        return [
            f"{key}: {theirs.get(key)!r} -> {ours.get(key)!r}"
            for key in sorted(set(ours) | set(theirs))
            if key not in RESUMABLE and ours.get(key) != theirs.get(key)
        ]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        try:
            return cls.from_dict(values)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _flat(values: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} as {"optim.lr": 1}; method_options and backbone extras are flattened too."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _build(cls, values: dict, where: str):
    """Build a (nested) dataclass from a dict, naming the first unknown key."""
    if not isinstance(values, dict):
        raise ValueError(f"'{where}' must be a mapping")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting '{where}.{unknown[0]}' (known: {', '.join(known)})")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        if is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)
