"""`catalogclip evaluate` (runs and baselines) and `catalogclip report`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from catalogclip.cli.common import UserError, app, user_errors


@app.command()
def evaluate(
    protocol: List[str] = typer.Option(["full"], "--protocol", "-p",
                                       help="full | sample100 | category | zeroshot-cls | product | grounding | all (repeat or comma-separate); "
                                            "with --index: attribute-queries."),
    run: Optional[Path] = typer.Option(None, "--run", help="Trained run folder (results to RUN/eval/<protocol>.json)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Search index to evaluate on judged queries (--qrels) or with --protocol attribute-queries."),
    qrels: Optional[Path] = typer.Option(None, "--qrels", help="With --index: TREC qrels, a BEIR folder, or a JSON object {query: {product id: grade}}."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="With --index and TREC qrels: query texts (TSV 'QID<TAB>text' or JSONL)."),
    mode: List[str] = typer.Option(["all"], "--mode", help="With --index: vector | lexical | hybrid | all (repeat or comma-separate)."),
    per_family: int = typer.Option(50, help="attribute-queries: queries per query family."),
    tune: bool = typer.Option(False, "--tune", help="With --index and --qrels: choose the hybrid fusion on these queries and save it in the index (then evaluate on other queries)."),
    catalog: Optional[Path] = typer.Option(None, help="Catalog to evaluate as is (default: the test side of the run's split)."),
    embeddings: Optional[Path] = typer.Option(None, help="Embeddings folder (default: RUN/embeddings, made by `catalogclip embed`)."),
    candidates: Optional[Path] = typer.Option(None, help="sample100 candidate lists to reuse (a RUN/eval/sample100-candidates.json)."),
    baseline: Optional[str] = typer.Option(None, help="Evaluate a baseline instead of a run: bm25 | minilm | zeroshot."),
    backbone: str = typer.Option("twotower", help="Backbone of the zeroshot baseline."),
    split: Optional[Path] = typer.Option(None, help="Baselines: split.json whose test side of --catalog is evaluated."),
    out: Optional[Path] = typer.Option(None, help="Baselines and --index: output folder (results to OUT/eval/<protocol>.json; --index default: IDX-eval)."),
    seed: int = typer.Option(0, help="Seed of the sample100 lists (and of a zero-shot backbone's random parts)."),
    device: str = typer.Option("cpu", help="Device for a model that must encode category names."),
    coarse_depth: Optional[int] = typer.Option(None, help="product: 'coarse' = the same first N category levels (default: the leaf)."),
    distractors: Optional[str] = typer.Option(None, help="product: add other products' images of this source (e.g. customer) to the gallery."),
) -> None:
    """Score a run's embeddings or a baseline on evaluation protocols, or a search index on judged
    queries (in every search mode), and print the tables."""
    with user_errors():
        from catalogclip.evaluate import runner
        from catalogclip.evaluate.protocols import ProtocolOptions

        options = ProtocolOptions(coarse_depth=coarse_depth, gallery_distractors=distractors)
        say = lambda message: typer.echo(message, err=True)  # noqa: E731
        if index is not None:
            if run is not None or baseline is not None:
                raise UserError("--index evaluates a search index; give it without --run or --baseline")
            _evaluate_index(index, protocol, queries, qrels, mode, out, seed, per_family, tune)
            return
        if baseline is not None:
            if out is None:
                raise UserError("--baseline needs --out DIR")
            if run is not None:
                inputs = runner.run_inputs(run, catalog)
            elif catalog is not None:
                inputs = runner.catalog_inputs(catalog, split)
            else:
                raise UserError("--baseline needs --catalog C (optionally --split FILE) or --run R")
            results = runner.evaluate_baseline(baseline, protocol, out, inputs, backbone, candidates, seed, say, options)
            target = out
        else:
            if run is None:
                raise UserError("give --run R (a trained run) or --baseline NAME")
            results = runner.evaluate_run(run, protocol, catalog, embeddings, candidates, device, seed, say, options)
            target = run
        for name, result in results.items():
            print_result(name, result)
        typer.echo(f"results -> {target / 'eval'}")


def _evaluate_index(index: Path, protocol: List[str], queries: Optional[Path], qrels: Optional[Path], mode: List[str],
                    out: Optional[Path], seed: int, per_family: int, tune: bool) -> None:
    import sys

    from catalogclip.catalog.problems import ProblemLog
    from catalogclip.evaluate.attribute_queries import AttributeQueryOptions
    from catalogclip.evaluate.judged import evaluate_index, judged_or_generated
    from catalogclip.search.engine import open_engine

    out = out or index.with_name(f"{index.name}-eval")
    problems = ProblemLog()
    engine = open_engine(index)
    try:
        judged, name = judged_or_generated(engine, ",".join(protocol), queries, qrels, out, problems,
                                           AttributeQueryOptions(seed=seed, per_family=per_family))
    finally:  # the bad lines are named even when nothing usable is left
        if problems.problems:
            problems.report(out=sys.stderr)
    if tune:
        from catalogclip.search.tune import save_fusion, tune_fusion

        fusion = tune_fusion(engine, judged).best
        save_fusion(engine, fusion)
        typer.echo(f"fusion tuned on {fusion.tuned['queries']} queries: {fusion.method}, vector weight {fusion.weight} "
                   f"({fusion.tuned['metric']} {100 * fusion.tuned['value']:.1f}); saved in {index}. Evaluate on other queries.")
        return
    result = evaluate_index(engine, judged, mode, out, name)
    print_result(name, result)
    typer.echo(f"results -> {out / 'eval' / name}.json (per query: {name}-per-query.jsonl)")


def print_result(protocol: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from catalogclip.evaluate.report.tables import result_rows

    rows = result_rows(result)
    if not rows:  # a protocol without tasks (grounding): its numbers as they are
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        rows = [("-", "all", int(numbers.pop("n", 0)), numbers)]
    metrics = list(dict.fromkeys(m for *_, values in rows for m in values))
    table = Table(title=f"{protocol}" + (f"  SumR {100 * result['summary']['SumR']:.1f}" if result.get("summary") else ""))
    for column in ["task", "group", "queries", *metrics]:
        table.add_column(column, justify="left" if column in ("task", "group") else "right")
    for task, group, n, values in rows:
        table.add_row(task, group, str(n), *[f"{100 * values[m]:.1f}" if m in values else "" for m in metrics])
    console = Console()
    names = max((len(f"{task}{group}") for task, group, *_ in rows), default=0)
    console.width = max(console.width, names + 16 + sum(max(len(m), 5) + 3 for m in metrics))  # never cut a metric name
    console.print(table)


@app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="Run folders and baseline output folders, in table order."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md, report.html, report.json and plots."),
    baseline: Optional[str] = typer.Option(None, help="Label of the row improvements are relative to (default: the first trained run; never a text-only baseline)."),
    title: str = typer.Option("catalogclip evaluation report", help="Report title."),
) -> None:
    """Write a Markdown + self-contained HTML report (tables, plots, examples) of evaluated runs."""
    with user_errors():
        from catalogclip.evaluate.report import write_report

        files = write_report(runs, out, baseline, title)
        typer.echo(f"report -> {files.html} (and {files.markdown.name}, {files.json.name})")
