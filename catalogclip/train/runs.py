"""Open a trained run folder: its config, split, vocabularies and the method with its weights."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from catalogclip.io import read_json
from catalogclip.models.methods import Method, build_method, method_config
from catalogclip.train.checkpoint import load_trainable_state
from catalogclip.train.config import RunConfig


@dataclass
class Run:
    run_dir: Path
    config: RunConfig
    method: Method
    step: int
    #: identifies config + weights; an index built with one model refuses another's queries
    model_id: str

    def feature_cache_dir(self) -> Path:
        """Where the run's frozen-tower outputs are cached (as the trainer chose it)."""
        return feature_cache_dir(self.config, self.run_dir)

    def split_ids(self) -> dict[str, list[str]]:
        path = self.run_dir / "split.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: the run has no split (was it trained with catalogclip?)")
        return read_json(path)


def feature_cache_dir(config: RunConfig, run_dir: Path) -> Path:
    return Path(config.data.feature_cache) if config.data.feature_cache else Path(run_dir).parent / ".featcache"


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    config = RunConfig.load(config_path)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: the run has no checkpoint yet")
    vocabs = None
    if (run_dir / "vocabs.json").exists():
        from catalogclip.catalog.vocab import EntityVocabs

        vocabs = EntityVocabs.load(run_dir / "vocabs.json")
    method = build_method(config.method, config.backbone, method_config(config.method, config.method_options), vocabs)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    load_trainable_state(method, state["model"], str(checkpoint))
    method.to(device).eval()
    model_id = _model_id(config_path, config.method, state["step"], checkpoint)
    return Run(run_dir, config, method, state["step"], model_id)



def _model_id(config_path: Path, method: str, step: int, checkpoint: Path) -> str:
    """From the run's saved config file (not its parsed form, so new settings with defaults
    added to the code later do not change it) and the checkpoint it loaded."""
    digest = hashlib.sha256(config_path.read_bytes())
    digest.update(f"{step}:{checkpoint.stat().st_size}".encode())
    return f"{method}-{digest.hexdigest()[:16]}"
