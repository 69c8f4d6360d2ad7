"""The main job on the built-in synthetic catalog: generate, train, evaluate, report, index, search.

Every step is a library call the CLI also offers on its own; the demo only chains them:

    catalog synth -> train (clip, clip + entities as text, eiclip, eclip, clipita; eclip with the
    image tower's last block trained, where the backbone splits its tower)
    -> embed + evaluate (full, sample100, category, zeroshot-cls; product + grounding for eclip)
    -> BM25 baseline -> index the EI-CLIP run -> example searches (one with typos) and suggestions
    -> index its test products, attribute-queries in every search mode -> report (Markdown + HTML)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from catalogclip.featurise.engines import EmbeddingEngine
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.search.backend import Connection
from catalogclip.train.config import DataConfig, OptimConfig, RunConfig

SYNTH_ENTITIES = ["brand", "colour", "pattern", "material", "season", "gender"]
SHOP_EXPORT = "woocommerce-export.csv"  # beside the catalog, whose folder holds the images it names
#: the last as a shopper might type it: searched as "golden goose sneakers" (catalogclip/search/spelling.py)
EXAMPLE_QUERIES = ["black puma sneakers", "golden goose print t-shirt", "red striped backpack", "goldengoose snekers"]
#: queries as typed so far, for search-as-you-type suggestions
EXAMPLE_PREFIXES = ["pu", "golden g", "red back"]


@dataclass
class DemoConfig:
    out: Path = Path("demo-out")
    products: int = 300
    backbone: str = "twotower"
    epochs: int = 8
    batch_size: int = 64
    seed: int = 0
    #: where the index keeps its vectors (None: faiss in the index folder; see `milvus_lite`)
    vectors: Connection | None = None
    #: what embeds the index's images (None: the `local` engine; see catalogclip/featurise)
    engine: EmbeddingEngine | None = None
    #: which methods to train; each becomes one row of the report
    runs: dict[str, tuple[str, dict]] = field(
        default_factory=lambda: {
            "clip": ("clip", {}),
            "clip-entities-as-text": ("clip", {"entities_as_text": ["brand", "colour", "pattern"]}),
            "eiclip": ("eiclip", {"entity_groups": SYNTH_ENTITIES}),
            "eclip": ("eclip", {}),
            "clipita": ("clipita", {}),
        }
    )
    #: runs whose image tower also trains its last block, from a cache of its frozen front; added
    #: where the backbone splits its tower there (`Backbone.splits_image_tower`)
    last_block_runs: dict[str, tuple[str, dict]] = field(default_factory=lambda: {"eclip-last-image-block": ("eclip", {})})

    def all_runs(self) -> dict[str, tuple[str, dict, int]]:
        """name -> (method, options, image blocks trained) of every run the demo trains."""
        from catalogclip.models.backbones.base import backbone_class

        split = backbone_class(self.backbone).splits_image_tower
        return {**{name: (*run, 0) for name, run in self.runs.items()},
                **({name: (*run, 1) for name, run in self.last_block_runs.items()} if split else {})}


@dataclass
class DemoResult:
    catalog: Path
    runs: dict[str, Path]
    report_html: Path
    index: Path
    searches: dict[str, dict]
    #: search-as-you-type: each example prefix's suggestions (`SearchEngine.suggest`)
    suggestions: dict[str, list[dict]]
    #: attribute-queries over the test products, per search mode (the `catalogclip evaluate --index` result)
    shopper: dict


def run_config(config: DemoConfig, catalog: Path, method: str, options: dict, trained_image_blocks: int = 0) -> RunConfig:
    last_blocks = {"freeze_image": True, "extra": {"image_trainable_blocks": trained_image_blocks}} if trained_image_blocks else {}
    return RunConfig(
        method=method,
        method_options=options,
        backbone=BackboneConfig(spec=config.backbone, **last_blocks),
        # each product's merchant shot beside its customer shots in every batch (what product search retrieves)
        data=DataConfig(catalog=str(catalog), feature_cache=str(config.out / "featcache"), main_shot_in_batch=True),
        optim=OptimConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, warmup_steps=10, log_every=10),
    )


def protocols_for(method: str) -> list[str]:
    base = ["full", "sample100", "category", "zeroshot-cls"]
    return base + ["product", "grounding"] if method == "eclip" else base


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> DemoResult:
    from catalogclip.catalog.schema import read_jsonl
    from catalogclip.catalog.stats import catalog_stats
    from catalogclip.catalog.synth import generate_catalog
    from catalogclip.embed import embed_catalog
    from catalogclip.evaluate.report import write_report
    from catalogclip.evaluate.runner import evaluate_baseline, evaluate_run, run_inputs
    from catalogclip.train.featcache import prune_root
    from catalogclip.train.runs import load_run
    from catalogclip.train.trainer import train

    out = config.out
    say(f"1/6 synthetic catalog: {config.products} products")
    catalog = generate_catalog(out / "catalog", n_products=config.products, seed=config.seed)
    # the images were drawn again: an earlier demo's cached tower outputs of them can never be read
    pruned = prune_root(out / "featcache")
    if pruned["rows dropped"]:
        say(f"    feature cache: {pruned['rows dropped']} rows of an earlier demo's images pruned ({pruned['bytes freed'] / 2**20:.1f} MiB)")
    stats = catalog_stats(read_jsonl(catalog), check_images=False)
    say(f"    {stats['products']} products, {stats['images']} images, category depth {stats['category']['depth']['max']}")
    shop, imported = shop_export(catalog)
    say(f"    written as a shop's export (catalog/{SHOP_EXPORT}, WooCommerce's product CSV), imported back to catalog/{shop.name}: {imported}")

    runs: dict[str, Path] = {}
    planned = config.all_runs()
    for i, (name, (method, options, blocks)) in enumerate(planned.items(), start=1):
        trains = f", its image tower's last {blocks} block(s) trained" if blocks else ""
        say(f"2/6 train {name} ({i}/{len(planned)}) on the {config.backbone} backbone{trains}")
        run_dir = out / "runs" / name
        train(run_config(config, catalog, method, options, blocks), run_dir, progress=False, on_plan=lambda plan: say(f"    {plan}"))
        loaded = load_run(run_dir)
        embed_catalog(loaded.method, run_inputs(run_dir).test, cache_dir=loaded.feature_cache_dir(), progress=False).save(run_dir / "embeddings")
        say(f"3/6 evaluate {name}")
        evaluate_run(run_dir, protocols_for(method), progress=_warnings_only(say))
        runs[name] = run_dir

    say("3/6 evaluate the BM25 baseline (a text proxy: it reads product text where the protocols show images)")
    baseline = out / "runs" / "bm25"
    evaluate_baseline("bm25", ["full", "sample100", "category"], baseline, run_inputs(runs["clip"]))

    say(f"4/6 index the shop's imported export with the EI-CLIP run (vectors in {(config.vectors and config.vectors.backend) or 'faiss'})")
    searches, suggestions = index_and_search(runs["eiclip"], out / "index", shop, config.vectors, config.engine)
    say("5/6 shopper queries: the EI-CLIP run's test products indexed, attribute-queries in every search mode")
    shopper = shopper_queries(runs["eiclip"], out)

    say("6/6 report")
    report = write_report([*runs.values(), baseline, out / "shopper"], out / "report", baseline="clip")
    return DemoResult(catalog, runs, report.html, out / "index", searches, suggestions, shopper)


def _warnings_only(say: Callable[[str], None]) -> Callable[[str], None]:
    return lambda message: say(f"    {message}") if message.startswith("WARNING") else None


def shopper_queries(run_dir: Path, out: Path) -> dict:
    """The run's test products in an index of their own, scored on attribute-queries in every
    search mode the index has; results and the query set go to ``out/shopper/eval/``."""
    from catalogclip.catalog.problems import ProblemLog
    from catalogclip.catalog.schema import write_jsonl
    from catalogclip.evaluate.attribute_queries import ATTRIBUTE_QUERIES
    from catalogclip.evaluate.judged import evaluate_index, judged_or_generated
    from catalogclip.evaluate.runner import run_inputs
    from catalogclip.search.build import BuildOptions, index_run
    from catalogclip.search.engine import open_engine

    test_catalog = write_jsonl(run_inputs(run_dir).test, out / "catalog" / "test.jsonl")
    index_run(run_dir, out / "index-test", test_catalog, options=BuildOptions(progress=False))
    engine = open_engine(out / "index-test", run_dir)
    judged, name = judged_or_generated(engine, ATTRIBUTE_QUERIES, None, None, out / "shopper", ProblemLog())
    return evaluate_index(engine, judged, ["all"], out / "shopper", name)


def milvus_lite(out: Path) -> Connection:
    """The demo's vectors in a Milvus Lite file beside the index."""
    return Connection("milvus", str(Path(out).resolve() / "milvus.db"), collection="demo")


def shop_export(catalog: Path) -> tuple[Path, str]:
    """The catalog written as a shop's WooCommerce export beside it and imported back with the
    `woocommerce` reader, as a shop's own catalog would be: (the imported catalog, what the import said)."""
    from catalogclip.catalog.exports import write_woocommerce_csv
    from catalogclip.catalog.problems import ProblemLog
    from catalogclip.catalog.readers import read_catalog
    from catalogclip.catalog.schema import read_jsonl, write_jsonl

    export = write_woocommerce_csv(read_jsonl(catalog), catalog.parent / SHOP_EXPORT)
    problems = ProblemLog()
    imported = read_catalog("woocommerce", export, problems)
    images = sum(len(product.images) for product in imported)
    return write_jsonl(imported, catalog.parent / "shop.jsonl"), f"{images} merchant images; {problems.summary()}"


def index_and_search(run_dir: Path, index_dir: Path, catalog: Path, vectors: Connection | None = None,
                     engine: EmbeddingEngine | None = None) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Build the search index of the run's catalog and answer the example queries (hybrid:
    the model's vectors and BM25, fused; each hit says which side found it), the query towers
    on the service's runtime; and the example prefixes' suggestions."""
    from catalogclip.search.build import BuildOptions, index_run
    from catalogclip.search.engine import open_engine
    from catalogclip.search.service import ServiceOptions

    index_run(run_dir, index_dir, catalog, options=BuildOptions(progress=False, connection=vectors, engine=engine))
    opened = open_engine(index_dir, run_dir)
    engine = opened.with_encoder(opened.encoder.on_runtime(ServiceOptions.query_runtime))
    searches = {query: engine.search_text(query, k=5, mode="hybrid").to_json() for query in EXAMPLE_QUERIES}
    return searches, {prefix: engine.suggest(prefix, k=5)["suggestions"] for prefix in EXAMPLE_PREFIXES}
