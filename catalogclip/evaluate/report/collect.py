"""Gather what a report shows from run (or baseline) folders: eval results, gates, settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from catalogclip.evaluate.baselines import TEXT_BASELINES
from catalogclip.evaluate.runner import CANDIDATES_FILE
from catalogclip.io import read_json

#: protocols in the order a report shows them; others follow alphabetically
PROTOCOL_ORDER = ("full", "sample100", "category", "zeroshot-cls", "product", "grounding", "attribute-queries", "judged")


@dataclass
class Entry:
    """One row of the report's tables: a trained run or a baseline."""

    label: str
    path: Path
    kind: str  # "run" | "baseline" | "index"
    results: dict[str, dict]  # protocol -> the JSON `catalogclip evaluate` wrote
    info: dict = field(default_factory=dict)  # method / backbone / baseline settings
    gates: dict[str, float] | None = None

    @property
    def text_proxy(self) -> bool:
        """A text-only baseline: it reads product text where the protocol shows an image."""
        return self.kind == "baseline" and self.info.get("baseline") in TEXT_BASELINES

    def to_json(self) -> dict:
        return {"label": self.label, "path": str(self.path), "kind": self.kind, "text_proxy": self.text_proxy,
                "info": self.info, "gates": self.gates, "results": self.results}


def load_entry(folder: str | Path) -> Entry:
    folder = Path(folder)
    eval_dir = folder / "eval"
    files = sorted(p for p in eval_dir.glob("*.json") if p.name != CANDIDATES_FILE) if eval_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{folder}: no evaluation results in {eval_dir} (run `catalogclip evaluate` first)")
    results = {p.stem: read_json(p) for p in files}
    baseline = folder / "baseline.json"
    if baseline.exists():
        info = read_json(baseline)
        return Entry(str(info.get("label") or info.get("baseline") or folder.name), folder, "baseline", results, info)
    if any("index" in result for result in results.values()):  # `catalogclip evaluate --index`
        return Entry(folder.name, folder, "index", results, {"index": next(r["index"] for r in results.values() if "index" in r)})
    info = {}
    config = folder / "config.yaml"
    if config.exists():
        settings = yaml.safe_load(config.read_text()) or {}
        info = {"method": settings.get("method"), "backbone": backbone_label(settings.get("backbone") or {}),
                "catalog": (settings.get("data") or {}).get("catalog")}
    gates_path = folder / "gates.json"
    gates = {str(k): float(v) for k, v in read_json(gates_path).items()} if gates_path.exists() else None
    return Entry(folder.name, folder, "run", results, info, gates)


def backbone_label(backbone: dict) -> str | None:
    """"twotower", or with its options "twotower (image_trainable_blocks=1)": runs that differ there are told apart."""
    extra = backbone.get("extra") or {}
    options = ", ".join(f"{k}={v}" for k, v in extra.items())
    return f"{backbone.get('spec')} ({options})" if options else backbone.get("spec")


def load_entries(folders: Sequence[str | Path]) -> list[Entry]:
    """Entries in the given order; equal folder names are told apart by their parent folder."""
    entries = [load_entry(f) for f in folders]
    labels = [e.label for e in entries]
    for entry in entries:
        if labels.count(entry.label) > 1:
            entry.label = f"{entry.path.resolve().parent.name}/{entry.label}"
    return entries


def protocols_of(entries: Sequence[Entry]) -> list[str]:
    found = {p for e in entries for p in e.results}
    return [p for p in PROTOCOL_ORDER if p in found] + sorted(found - set(PROTOCOL_ORDER))
