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
    #: folder of the on-disk feature cache for frozen towers (None: <run>/../.featcache)
    feature_cache: str | None = None
    #: run frozen towers once and reuse their outputs (False: every step runs them, e.g. to measure)
    cache_features: bool = True


@dataclass
class OptimConfig:
    epochs: int = 5
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
