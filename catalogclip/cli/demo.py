"""`catalogclip demo`: the main job on the built-in synthetic catalog."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from catalogclip.cli.common import app, user_errors
from catalogclip.cli.evaluate import print_result


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the catalog, runs, report and index."),
    products: int = typer.Option(300, help="Synthetic products to generate (3 images each)."),
    backbone: str = typer.Option("twotower", help="twotower (pretrained, offline) | tiny (random, fastest) | openclip:..."),
    epochs: int = typer.Option(8, help="Training epochs per method."),
    serve: bool = typer.Option(False, "--serve", help="Serve the search page at the end."),
    port: int = typer.Option(8000, help="Port for --serve."),
    milvus: bool = typer.Option(False, "--milvus", help="Keep the index's vectors in Milvus Lite (OUT/milvus.db) instead of FAISS."),
    engine: str = typer.Option("local", help="Embedding engine of the index step: local | ray (a local Ray, one model actor)."),
) -> None:
    """Generate a synthetic catalog, train every method, evaluate, report, index and search it."""
    with user_errors():
        from catalogclip.demo import DemoConfig, milvus_lite, run_demo

        vectors = milvus_lite(out) if milvus else None
        from catalogclip.featurise.engines import make_engine

        config = DemoConfig(out=out, products=products, backbone=backbone, epochs=epochs, vectors=vectors, engine=make_engine(engine))
        result = run_demo(config, say=typer.echo)
        for query, found in result.searches.items():
            entities = ", ".join(f"{m['group']}={m['value']}" for m in found["entities"]) or "none"
            top = "; ".join(f"{r['product']['title']} [{' + '.join(r['sides'])}]" for r in found["results"][:3])
            searched = f", searched as '{found['query']['searched']}'" if found["corrections"] else ""
            typer.echo(f"search '{query}' (entities: {entities}{searched}) -> {top}")
        for prefix, found in result.suggestions.items():
            typer.echo(f"suggest '{prefix}' -> " + "; ".join(f"{s['text']} ({s['kind']}, {s['products']})" for s in found))
        print_result("shopper queries (attribute-queries, test products)", result.shopper)
        typer.echo(f"report: {result.report_html}")
        typer.echo(f"serve the search page: catalogclip serve --index {result.index}")
        (out / "searches.json").write_text(json.dumps(result.searches, indent=2))
        if serve:
            from catalogclip.search.engine import open_engine
            from catalogclip.search.service import serve as serve_engine

            serve_engine(open_engine(result.index), port=port)
