"""`catalogclip catalog ...`: import, synth, stats."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from catalogclip.cli.common import UserError, user_errors

IMAGE_ROOT_HELP = "A folder outside the catalog's own that its images may live in (others are refused)."

app = typer.Typer(help="Import, generate and inspect catalogs.", no_args_is_help=True)


@app.command("import")
def import_catalog(
    src: Path = typer.Argument(..., help="The source: the format's folder or file."),
    out: Path = typer.Argument(..., help="The canonical catalog JSONL to write."),
    fmt: str = typer.Option(
        ..., "--format", "-f", help="Source format: google-merchant, shopify, woocommerce, csv, flipkart, myntra, fashiongen, grocery-store, jsonl."
    ),
    image_dir: Path | None = typer.Option(
        None,
        "--image-dir",
        help="myntra/flipkart: folder of the image files (default: SRC's images/); csv: the folder image "
        "paths start from, rooted ones (/m/b/x.jpg) too (default: SRC's folder); "
        "fashiongen: folder to extract images into (default: images/ beside OUT).",
    ),
    check_images: bool = typer.Option(True, "--check-images/--no-check-images", help="Drop images that do not exist."),
    verify_images: bool = typer.Option(False, "--verify-images", help="Also decode every image (slow)."),
    brand_stop_words: str | None = typer.Option(
        None, "--brand-stop-words", help="myntra: comma-separated words that end the brand in a product name."
    ),
    problems_file: Path | None = typer.Option(None, "--problems", help="Write every problem met to this file."),
    download: bool = typer.Option(
        True, "--download/--no-download",
        help="Fetch images named by http(s) URL into image-cache/ beside OUT (resumable); --no-download keeps the URLs.",
    ),
    download_workers: int = typer.Option(8, "--download-workers", min=1, help="Concurrent image downloads."),
    download_timeout: float = typer.Option(15.0, "--download-timeout", min=0.01, help="Seconds to connect and between bytes."),
    max_image_mb: float = typer.Option(20.0, "--max-image-mb", min=0.001, help="Larger downloads are refused."),
    normalise: bool = typer.Option(
        True, "--normalise/--no-normalise", help="Unify attribute names and value spellings (reported in the summary)."
    ),
    aliases: Path | None = typer.Option(
        None, "--aliases", help="YAML of the shop's own synonyms: {keys: {Shade: colour}, values: {colour: {Blk: Black}}}."
    ),
    encoding: str | None = typer.Option(
        None, "--encoding", help="Text encoding of SRC, e.g. cp1252, latin-1, utf-16 (default UTF-8, or an XML feed's own; a byte order mark wins)."
    ),
    columns_file: Path | None = typer.Option(None, "--columns", help="csv: a YAML column mapping (id, title, images, ...)."),
    column: list[str] = typer.Option(
        [], "--column", help="csv: FIELD=COLUMN, e.g. --column id=sku --column images=pics --column attributes=colour,size; "
        "beats --columns. Fields: id, title, description, images, image_sep, category, category_sep, brand, attributes, delimiter.",
    ),
) -> None:
    """Convert a catalog into canonical JSONL; bad rows and images are reported and skipped."""
    with user_errors():
        from catalogclip.catalog.download import DownloadOptions
        from catalogclip.catalog.normalise import load_aliases
        from catalogclip.catalog.problems import ProblemLog
        from catalogclip.catalog.readers import ReaderOptions, read_catalog
        from catalogclip.catalog.schema import external_image_root, write_jsonl

        if fmt == "fashiongen" and image_dir is None:
            image_dir = out.parent / "images"
        settings = {
            "image_dir": image_dir,
            "check_images": check_images or verify_images,
            "verify_images": verify_images,
            "normalise": normalise,
        }
        if brand_stop_words is not None:
            settings["brand_stop_words"] = _split_words(brand_stop_words)
        if encoding is not None:
            settings["encoding"] = encoding
        if aliases is not None:
            settings["aliases"] = load_aliases(aliases)
        if download:
            settings["download"] = DownloadOptions(
                out.parent / "image-cache", download_workers, download_timeout, max_bytes=int(max_image_mb * 2**20)
            )
        if columns_file is not None or column:
            settings["columns"] = _column_mapping(columns_file, column)
        options = ReaderOptions(**settings)
        problems = ProblemLog()
        catalog = read_catalog(fmt, src, problems, options)
        problems.report(out=sys.stderr)
        if problems_file is not None:
            problems_file.parent.mkdir(parents=True, exist_ok=True)
            problems.write(problems_file)
        if not len(catalog):
            print(f"error: nothing usable in {src}", file=sys.stderr)
            raise typer.Exit(1)
        write_jsonl(catalog, out)
        _note_image_root(external_image_root(catalog, out.parent), out)
    print(f"wrote {len(catalog)} products ({sum(len(p.images) for p in catalog)} images) to {out}")


def _column_mapping(path: Path | None, pairs: list[str]):
    from catalogclip.catalog.readers.mapped_csv import ColumnMapping, load_mapping

    raw = load_mapping(path) if path is not None else {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--column {pair}: expected FIELD=COLUMN")
        raw[name.strip()] = value if name.strip().endswith("_sep") or name.strip() == "delimiter" else value.strip()
    return ColumnMapping.from_dict(raw)


def _note_image_root(root: Path | None, out: Path) -> None:
    """Say which image root commands reading `out` need when its images are outside its folder."""
    if root is not None:
        print(f"note: images stay in {root}, outside {out.parent}; commands that read {out} need "
              f"--image-root {root} (a trained run remembers it)", file=sys.stderr)


def _split_words(text: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in text.split(",") if word.strip())


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write catalog.jsonl and images/ into."),
    products: int = typer.Option(1000, "--products", "-n", min=1, help="How many products."),
    seed: int = typer.Option(0, "--seed", help="Same seed and settings, same bytes."),
    views: int = typer.Option(3, "--views", min=1, help="Images per product: a merchant shot, then customer shots."),
    image_size: int = typer.Option(224, "--image-size", help="Side of the square images, in pixels."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Processes (default: one per CPU)."),
) -> None:
    """Generate the built-in synthetic catalog: drawn products with brand marks, patterns and confounders."""
    with user_errors():
        from catalogclip.catalog.synth import generate_catalog

        path = generate_catalog(out, products, seed, views, image_size, workers)
    print(f"wrote {products} products ({products * views} images) to {path}")


@app.command("split")
def split(
    file: Path = typer.Argument(..., help="A canonical catalog JSONL."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, test.jsonl and split.json."),
    by: str = typer.Option("product", "--by", help="product: hold out random products; leaf: whole leaf categories; image: the images' own split tags."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of the products held out for test."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same split."),
    image_root: Path | None = typer.Option(None, "--image-root", help=IMAGE_ROOT_HELP),
) -> None:
    """Split a catalog into DIR/train.jsonl and DIR/test.jsonl: by product, by leaf, or by the images' own tags.

    Images stay where they are: paths under DIR are written relative to it, others absolute,
    and the image root needed to read them back is printed and recorded in DIR/split.json.
    """
    with user_errors():
        from catalogclip.catalog.schema import external_image_root, write_jsonl
        from catalogclip.catalog.splits import make_split

        catalog = _load_catalog(file, image_root)
        try:
            result = make_split(catalog, by, test_fraction, seed)
        except ValueError as exc:
            raise UserError(f"{file}: {exc}") from None
        write_jsonl(result.train, out / "train.jsonl")
        write_jsonl(result.test, out / "test.jsonl")
        needed = external_image_root(catalog, out)
        result.save(out / "split.json", image_root=needed)
        _note_image_root(needed, out / "train.jsonl")
    print(f"train {len(result.train)} / test {len(result.test)} products (by {by}, seed {seed}) -> {out}")


def _load_catalog(file: Path, image_root: Path | None = None, problems=None):
    """Read a canonical catalog, reporting skipped rows on stderr."""
    from catalogclip.catalog.problems import ProblemLog
    from catalogclip.catalog.schema import read_jsonl

    if not file.is_file():
        raise UserError(f"{file}: no such file")
    problems = problems if problems is not None else ProblemLog()
    catalog = read_jsonl(file, problems, image_root)
    if problems:
        problems.report(out=sys.stderr)
    return catalog


@app.command("stats")
def stats(
    file: Path = typer.Argument(..., help="A canonical catalog JSONL."),
    as_json: bool = typer.Option(False, "--json", help="Print every figure as JSON (for tools)."),
    show_all: bool = typer.Option(False, "--all", help="List every attribute group, not only the best covered."),
    groups: int = typer.Option(15, "--groups", min=1, help="Attribute groups listed (highest coverage first)."),
    top: int = typer.Option(5, "--top", min=1, help="Most common values listed per attribute group."),
    check_images: bool = typer.Option(True, "--check-images/--no-check-images", help="Stat every image file."),
    image_root: Path | None = typer.Option(None, "--image-root", help=IMAGE_ROOT_HELP),
) -> None:
    """What a catalog holds: products, images per product, the category tree, the attribute groups
    with the highest coverage, unusable images and the problems met loading it."""
    with user_errors():
        from catalogclip.catalog.problems import ProblemLog
        from catalogclip.catalog.stats import catalog_stats

        problems = ProblemLog()
        figures = catalog_stats(
            _load_catalog(file, image_root, problems), top=top, check_images=check_images, problems=problems
        )
    if as_json:
        print(json.dumps(figures, indent=2, ensure_ascii=False))
    else:
        _print_stats(figures, None if show_all else groups)


def _print_stats(figures: dict, groups: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    spread = figures["images_per_product"]
    console.print(
        f"[bold]{figures['products']}[/] products, [bold]{figures['images']}[/] images "
        f"(per product min {spread['min']}, mean {spread['mean']:.2f}, max {spread['max']}); "
        f"sources: {', '.join(f'{k} {v}' for k, v in figures['image_sources'].items()) or 'none'}"
    )
    category = figures["category"]
    depth = category["depth"]
    console.print(
        f"category tree: depth min {depth['min']}, mean {depth['mean']:.2f}, max {depth['max']}; "
        f"nodes per level {category['nodes_per_level']} (distinct names {category['names_per_level']}); "
        f"{category['leaves']} leaves; "
        f"{category['without_category']} products without a category"
    )
    attributes = list(figures["attributes"].items())
    shown = attributes if groups is None else attributes[:groups]
    table = Table("attribute group", "coverage", "distinct", "top values",
                  title=f"{len(attributes)} attribute groups, highest coverage first", title_justify="left")
    for group, info in shown:
        top_values = ", ".join(f"{value} ({count})" for value, count in info["top"])
        table.add_row(group, f"{info['coverage']:.1%}", str(info["distinct"]), top_values)
    console.print(table)
    if len(shown) < len(attributes):
        rest = [info["coverage"] for _, info in attributes[len(shown):]]
        console.print(f"... and {len(rest)} more groups, coverage {min(rest):.1%} to {max(rest):.1%} (--all lists them)")
    if "image_files" in figures:
        files = figures["image_files"]
        console.print(f"unusable image files: {files['unusable']} {files['by_kind'] or ''}".rstrip())
        for example in files["examples"]:
            console.print(f"  {example}", markup=False)
    if "problems" in figures:
        found = figures["problems"]
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(found["by_kind"].items()))
        console.print(f"problems loading the catalog: {found['total']}" + (f" ({kinds})" if kinds else ""), markup=False)
