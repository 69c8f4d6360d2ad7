"""`catalogclip index`, `catalogclip search` and `catalogclip serve`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from catalogclip.cli.common import UserError, app, user_errors
from catalogclip.cli.featurise import ENGINE, GPUS_PER_WORKER, RAY_ADDRESS, WORKERS, engine_options

BACKEND_HELP = "Vector store: faiss (in the index folder) or milvus (--uri). Default: faiss for a build, the recorded one otherwise."
URI_HELP = "milvus: a local .db file (Milvus Lite) or http(s)://host:19530 (a server); overrides the recorded URI when opening."
TOKEN_HELP = "milvus: access token (or set CATALOGCLIP_MILVUS_TOKEN); never written to the index."


def _connection(backend: Optional[str], uri: Optional[str], token: Optional[str], collection: Optional[str] = None):
    from catalogclip.search.backend import Connection

    return Connection(backend, uri, token, collection)


@app.command()
def index(
    run: Path = typer.Option(..., "--run", help="Trained run folder whose model embeds the images."),
    out: Path = typer.Option(..., "--out", help="Index folder to write (replaced atomically; see --update)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog JSONL to index (default: the run's catalog)."),
    kind: str = typer.Option(
        "auto",
        help="auto | flat (exact) | flat_fp16 (exact scan of half-precision vectors) | ivf | ivf_sq8 | ivf_pq (compressed) | hnsw; "
        "auto is flat up to 100k images, ivf up to 2M, then ivf_sq8.",
    ),
    update: bool = typer.Option(False, "--update", help="Update an existing index: embed new and changed products, drop removed ones."),
    batch_size: int = typer.Option(32, help="Images per model call."),
    nlist: int = typer.Option(0, help="ivf: number of lists (0: about 4 sqrt(n))."),
    nprobe: int = typer.Option(0, help="ivf: lists searched per query (0: nlist / 32, at least 8)."),
    ef_search: int = typer.Option(128, help="hnsw: search breadth."),
    field_weights: Optional[str] = typer.Option(
        None, help="BM25 text fields and weights, e.g. title=2,attributes=1,category=1,description=1 (a field counts that often; unnamed: 0)."
    ),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    uri: Optional[str] = typer.Option(None, help=URI_HELP),
    token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
    collection: Optional[str] = typer.Option(None, help="milvus: the alias readers use (default: catalogclip); each build writes a new collection behind it."),
    device: str = typer.Option("cpu"),
    problems_file: Optional[Path] = typer.Option(None, "--problems", help="Write every problem met to this file."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    wait: float = typer.Option(0.0, help="Seconds to wait while another process writes the same index (0: fail at once)."),
    engine: str = ENGINE,
    ray_address: Optional[str] = RAY_ADDRESS,
    workers: Optional[int] = WORKERS,
    gpus_per_worker: Optional[float] = GPUS_PER_WORKER,
) -> None:
    """Embed every product image with a run's model and build a searchable index.

    An interrupted build resumes from the images already embedded when run again. One process
    writes an index at a time; leftovers of a killed one are cleaned up by the next.
    """
    with user_errors():
        from catalogclip.catalog.problems import ProblemLog
        from catalogclip.search.build import BuildOptions, index_run
        from catalogclip.search.backend import VectorParams
        from catalogclip.search.lexical import LexicalParams, parse_weights
        from catalogclip.search.lock import IndexLockedError

        problems = ProblemLog()
        lexical = LexicalParams(parse_weights(field_weights)) if field_weights else None
        options = BuildOptions(
            kind=kind, params=VectorParams(nlist=nlist, nprobe=nprobe, ef_search=ef_search), lexical=lexical, batch_size=batch_size,
            progress=progress, wait=wait, connection=_connection(backend, uri, token, collection),
            engine=engine_options(engine, ray_address, workers, gpus_per_worker),
        )
        try:
            built, summary = index_run(run, out, catalog, update=update, options=options, device=device, problems=problems)
        except IndexLockedError as exc:
            raise UserError(str(exc)) from None
        if problems.problems:
            problems.report(out=sys.stderr)
        if problems_file is not None:
            problems.write(problems_file)
        if summary is not None:
            typer.echo(f"updated {out}: {summary}")
        else:
            typer.echo(f"indexed {len(built)} products ({built.info['vectors']} images) into {out} ({built.kind}, model {built.model_id}; vectors in {built.backend})")
            if "recall_at_10" in built.info:
                sampled = built.info["recall_at_10"]
                typer.echo(f"recall@10 against exact search: {sampled['recall']:.3f} ({sampled['queries']} sampled image vectors as queries)")


@app.command()
def search(
    index_path: Path = typer.Option(..., "--index", help="Index folder (from `catalogclip index`)."),
    text: Optional[str] = typer.Argument(None, help="Free-text query."),
    image: Optional[Path] = typer.Option(None, help="Search with this image instead of text."),
    category: Optional[str] = typer.Option(None, help='Search with a category path, e.g. "Footwear > Shoes".'),
    similar: Optional[str] = typer.Option(None, help="Products similar to this product id."),
    filters: List[str] = typer.Option([], "--filter", "-f", help="FIELD=VALUE, FIELD=A,B, FIELD=MIN..MAX or category=PATH; repeatable."),
    k: int = typer.Option(10, "-k", "--k", help="Number of products (the service's `k`)."),
    mode: str = typer.Option("hybrid", help="Text queries: vector (the model) | lexical (BM25) | hybrid (both, fused)."),
    strict: bool = typer.Option(False, "--strict", help="Text queries: recognised entities (brand, colour, category ...) become filters."),
    spell: bool = typer.Option(True, help="Text queries: correct words the catalog does not know (--no-spell: search the text as typed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    run: Optional[Path] = typer.Option(None, help="Run to encode queries with (default: the one the index was built with)."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    uri: Optional[str] = typer.Option(None, help=URI_HELP),
    token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
    device: str = typer.Option("cpu"),
) -> None:
    """Search an index from the command line."""
    with user_errors():
        from catalogclip.search.engine import open_engine
        from catalogclip.search.query import parse_filter_args

        given = [q for q in (text, image, category, similar) if q is not None]
        if len(given) != 1:
            raise UserError("give exactly one query: TEXT, --image, --category or --similar")
        parsed = parse_filter_args(filters)
        engine = open_engine(index_path, run, device, need_model=similar is None and mode != "lexical", connection=_connection(backend, uri, token))
        if text is not None:
            result = engine.search_text(text, k, parsed, mode, strict, spell)
        elif image is not None:
            result = engine.search_image(_open_image(image), k, parsed)
        elif category is not None:
            result = engine.search_category(category, k, parsed)
        else:
            result = engine.similar(similar, k, parsed)
        if as_json:
            typer.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
        else:
            _print_table(result)


def _open_image(path: Path):
    """A query image through the service's upload decoder: the same format allow-list and budgets."""
    from catalogclip.search.uploads import ImageRejected, decode_image

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        return decode_image(path.read_bytes())
    except ImageRejected as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def _print_table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.corrections:
        console.print(f"showing results for: {result.query['searched']} (typed: {result.query['text']}; --no-spell searches it as typed)")
    if result.entities:
        console.print("recognised: " + ", ".join(f"{m.group}={m.value}" for m in result.entities))
    table = Table(show_edge=False, header_style="bold")
    for column in ("#", "id", "score", "found by", "title", "category", "attributes"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left", overflow="fold")
    for rank, hit in enumerate(result.hits, start=1):
        attributes = " · ".join(list(hit.product.attributes.values())[:4])
        found_by = " ".join(f"{side}#{info['rank']}" for side, info in hit.sides.items())
        table.add_row(str(rank), hit.product.id, f"{hit.score:.4f}", found_by, hit.product.title, hit.product.category(), attributes)
    console.print(table)
    console.print(f"{len(result.hits)} results in {result.took_ms:.1f} ms")


@app.command("tune-fusion")
def tune_fusion(
    index_path: Path = typer.Option(..., "--index", help="Index folder (from `catalogclip index`)."),
    qrels: Path = typer.Option(..., "--qrels", help="Judged queries: TREC qrels, a BEIR folder, or a JSON object {query: {product id: grade}}."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="With TREC qrels: query texts (TSV 'QID<TAB>text' or JSONL)."),
    metric: str = typer.Option("nDCG@10", help="What to maximise (P@K, Recall@K, MRR@K, nDCG@K, mAP@K)."),
    save: bool = typer.Option(True, help="Save the best setting in the index (hybrid searches use it from then on)."),
    run: Optional[Path] = typer.Option(None, help="Run to encode queries with (default: the one the index was built with)."),
    device: str = typer.Option("cpu"),
) -> None:
    """Choose hybrid search's fusion (rrf / weighted, vector weight, entity boost) on judged queries."""
    with user_errors():
        from catalogclip.catalog.problems import ProblemLog
        from catalogclip.evaluate.qrels import read_judged
        from catalogclip.search.engine import open_engine
        from catalogclip.search.tune import save_fusion, tune_fusion as tune

        problems = ProblemLog()
        judged = read_judged(queries, qrels, problems)
        if problems.problems:
            problems.report(out=sys.stderr)
        engine = open_engine(index_path, run, device)
        tuning = tune(engine, judged, metric)
        best = tuning.best
        typer.echo(f"best of {len(tuning.grid)} settings on {best.tuned['queries']} queries: {best.method}, vector weight {best.weight:g}, "
                   f"boost {best.boost:g}: {metric} {tuning.value:.4f} (vector alone {tuning.sides['vector']:.4f}, lexical alone {tuning.sides['lexical']:.4f})")
        if save:
            save_fusion(engine, best)
            typer.echo(f"saved in {index_path}")


@app.command()
def serve(
    index_path: Path = typer.Option(..., "--index", help="Index folder (from `catalogclip index`)."),
    run: Optional[Path] = typer.Option(None, help="Run to encode queries with (default: the one the index was built with)."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    catalog_root: Optional[Path] = typer.Option(None, help="Folder the catalog's image paths start from, if it moved."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    uri: Optional[str] = typer.Option(None, help=URI_HELP),
    token: Optional[str] = typer.Option(None, help=TOKEN_HELP),
    device: str = typer.Option("cpu"),
    workers: int = typer.Option(1, min=1, help="Server processes, each with its own copy of the model and index."),
) -> None:
    """Serve the search API and web page (http://HOST:PORT/)."""
    with user_errors():
        from catalogclip.search.engine import open_engine
        from catalogclip.search.service import serve as serve_engine
        from catalogclip.search.service import serve_workers

        connection = _connection(backend, uri, token)
        engine = open_engine(index_path, run, device, catalog_root=catalog_root, connection=connection)  # fails here, not in each worker
        typer.echo(f"serving {len(engine.index)} products on http://{host}:{port}/ (API docs: /docs)")
        if workers == 1:
            serve_engine(engine, host, port)
            return
        engine.index.close()
        del engine
        args = {"index_path": str(index_path), "run": str(run) if run else None, "device": device, "catalog_root": str(catalog_root) if catalog_root else None,
                "connection": connection.shareable()}
        serve_workers(args, workers, host, port)
