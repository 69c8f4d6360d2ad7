"""Evaluate a trained run, or a baseline, on the run-folder contract.

Inputs: the run's catalog restricted to the test side of ``R/split.json`` (or a catalog given as
is), the embeddings in ``R/embeddings`` (made by `catalogclip embed`). Results: one JSON per
protocol in ``<out>/eval/<protocol>.json``; sample100 also writes the candidate lists it used to
``<out>/eval/sample100-candidates.json`` so that another model can be scored on the same lists.
A baseline's folder looks like a run's to the report: ``<out>/eval/...`` plus ``<out>/baseline.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from catalogclip.catalog.schema import Catalog, read_jsonl
from catalogclip.embeddings import Embeddings
from catalogclip.evaluate.protocols import (
    CandidateLists,
    EmbeddingScorer,
    Inventory,
    ProtocolOptions,
    Scorer,
    candidate_lists_for,
    evaluate,
    protocol_names,
    seen_categories,
)
from catalogclip.io import atomic_write_json

#: what `--protocol all` runs (the `product` and `grounding` protocols need customer shots / boxes)
DEFAULT_PROTOCOLS = ("full", "sample100", "category", "zeroshot-cls")
CANDIDATES_FILE = "sample100-candidates.json"
_NEEDS_CATEGORIES = ("category", "zeroshot-cls")


@dataclass
class EvalInputs:
    """The catalog under test, and what training saw (for unseen-category results)."""

    test: Catalog
    train: Catalog | None = None
    split_by: str | None = None
    catalog_path: str = ""

    def seen_categories(self) -> set[str] | None:
        """Category nodes seen in training, when whole categories were held out (else None)."""
        return seen_categories(self.train) if self.split_by == "leaf" and self.train is not None else None


def run_inputs(run_dir: str | Path, catalog_path: str | Path | None = None) -> EvalInputs:
    """A given catalog as is, or the test side of the run's own catalog and split."""
    from catalogclip.train.config import RunConfig

    run_dir = Path(run_dir)
    if catalog_path is not None:
        return EvalInputs(read_jsonl(catalog_path), catalog_path=str(catalog_path))
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.yaml)")
    data = RunConfig.load(config_path).data
    return catalog_inputs(data.catalog, run_dir / "split.json", data.image_root)


def catalog_inputs(
    catalog_path: str | Path, split_path: str | Path | None = None, image_root: str | Path | None = None
) -> EvalInputs:
    """A catalog, restricted to the test side of a split file when one is given."""
    from catalogclip.catalog.splits import Split

    catalog = read_jsonl(catalog_path, image_root=image_root)
    if split_path is None:
        return EvalInputs(catalog, catalog_path=str(catalog_path))
    split = Split.load(split_path, catalog)
    return EvalInputs(split.test, split.train, split.name, str(catalog_path))


def protocol_list(protocols: Sequence[str]) -> list[str]:
    """Expand "all" and check the names (comma-separated values allowed)."""
    names = [p.strip() for value in protocols for p in value.split(",") if p.strip()]
    names = [p for name in names for p in (DEFAULT_PROTOCOLS if name == "all" else [name])]
    known = protocol_names() + ["grounding"]
    unknown = next((p for p in names if p not in known), None)
    if unknown is not None:
        raise ValueError(f"unknown protocol '{unknown}' (known: {', '.join(sorted(known))}, all)")
    if not names:
        raise ValueError("no protocol given")
    return list(dict.fromkeys(names))


def evaluate_all(
    protocols: Sequence[str],
    inventory: Inventory,
    scorer: Scorer,
    inputs: EvalInputs,
    out_dir: str | Path,
    candidates_path: str | Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    options: ProtocolOptions | None = None,
) -> dict[str, dict]:
    """Run the retrieval protocols and write ``<out>/eval/<protocol>.json`` (`options`: settings such
    as the product protocol's sources; seed and seen categories come from the other arguments)."""
    eval_dir = Path(out_dir) / "eval"
    base = options or ProtocolOptions()
    results = {}
    for protocol in protocols:
        progress(f"{protocol}: {len(inventory.products)} products, {len(inventory.image_product)} images")
        options = replace(base, seed=seed, seen_categories=inputs.seen_categories())
        if protocol == "sample100":
            if candidates_path is not None:
                options.candidate_lists = CandidateLists.load(candidates_path)
            options.candidate_lists = candidate_lists_for(inventory, options)
            options.candidate_lists.save(eval_dir / CANDIDATES_FILE)
        result = evaluate(protocol, inventory, scorer, options)
        if result["settings"].get("warning"):
            progress(f"WARNING: {result['settings']['warning']}")
        result["catalog"] = inputs.catalog_path
        atomic_write_json(eval_dir / f"{protocol}.json", result)
        results[protocol] = result
    return results


def evaluate_run(
    run_dir: str | Path,
    protocols: Sequence[str],
    catalog_path: str | Path | None = None,
    embeddings_dir: str | Path | None = None,
    candidates_path: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    options: ProtocolOptions | None = None,
) -> dict[str, dict]:
    """Evaluate a trained run's embeddings; results go to ``R/eval/``."""
    run_dir = Path(run_dir)
    protocols = protocol_list(protocols)
    inputs = run_inputs(run_dir, catalog_path)
    results = {}
    retrieval = [p for p in protocols if p != "grounding"]
    if retrieval:
        embeddings = Embeddings.load(embeddings_dir or run_dir / "embeddings")
        inventory = Inventory.from_embeddings(embeddings, inputs.test)
        vectors = None
        if any(p in _NEEDS_CATEGORIES for p in retrieval):
            vectors = _missing_category_vectors(embeddings, inventory, lambda: _run_encoder(run_dir, device))
        scorer = EmbeddingScorer(embeddings, inventory, vectors)
        results = evaluate_all(retrieval, inventory, scorer, inputs, run_dir, candidates_path, seed, progress, options)
    if "grounding" in protocols:
        from catalogclip.evaluate.grounding import evaluate_grounding
        from catalogclip.train.runs import load_run

        progress("grounding")
        run = load_run(run_dir, device)
        results["grounding"] = evaluate_grounding(run.method, inputs.test, cache_dir=run.feature_cache_dir(), progress=False)
        atomic_write_json(run_dir / "eval" / "grounding.json", {"protocol": "grounding", **results["grounding"]})
    return results


def _run_encoder(run_dir: Path, device: str):
    from catalogclip.embed import RunEncoder

    return RunEncoder(run_dir, device)


def _missing_category_vectors(embeddings: Embeddings, inventory: Inventory, encoder) -> dict[str, np.ndarray] | None:
    """Vectors of the category nodes the embeddings lack, from the model (`encoder()` builds it)."""
    have = set(embeddings.category_path.tolist()) if embeddings.category_path is not None else set()
    missing = [c for c in inventory.categories if c not in have]
    if not missing:
        return None
    return dict(zip(missing, encoder().encode_categories(missing)))


def evaluate_baseline(
    name: str,
    protocols: Sequence[str],
    out_dir: str | Path,
    inputs: EvalInputs,
    backbone: str = "twotower",
    candidates_path: str | Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda message: None,
    options: ProtocolOptions | None = None,
) -> dict[str, dict]:
    """Evaluate `bm25`, `minilm` or `zeroshot` (with `backbone`); results go to ``<out>/eval/``."""
    from catalogclip.evaluate.baselines import BASELINES, text_baseline, zeroshot_embeddings

    protocols = protocol_list(protocols)
    if name not in BASELINES:
        raise ValueError(f"unknown baseline '{name}' (known: {', '.join(BASELINES)})")
    if "grounding" in protocols:
        raise ValueError("the grounding protocol needs a trained method, not a baseline")
    out_dir = Path(out_dir)
    if name == "zeroshot":
        progress(f"embedding {len(inputs.test)} products with {backbone} (no training)")
        embeddings = zeroshot_embeddings(backbone, inputs.test, seed=seed, progress=True)
        embeddings.save(out_dir / "embeddings")
        inventory = Inventory.from_embeddings(embeddings, inputs.test)
        scorer: Scorer = EmbeddingScorer(embeddings, inventory)
    else:
        inventory = Inventory.from_catalog(inputs.test)
        scorer = text_baseline(name, inventory)
    label = f"{name} ({backbone})" if name == "zeroshot" else name
    atomic_write_json(out_dir / "baseline.json", {"baseline": name, "label": label, "backbone": backbone if name == "zeroshot" else None,
                                                 "catalog": inputs.catalog_path, "split_by": inputs.split_by, "seed": seed})
    return evaluate_all(protocols, inventory, scorer, inputs, out_dir, candidates_path, seed, progress, options)
