"""The `catalogclip` command: thin wrappers that parse arguments and call the library.

Each room's commands live in their own module here; heavy imports (torch, faiss) happen inside
the commands so `catalogclip --help` stays instant.
"""
from __future__ import annotations

import typer

from catalogclip.cli import catalog as _catalog
from catalogclip.cli.common import app

app.add_typer(_catalog.app, name="catalog")

# Modules that add top-level commands to `app` when imported.
from catalogclip.cli import demo as _demo  # noqa: E402,F401
from catalogclip.cli import train as _train  # noqa: E402,F401
from catalogclip.cli import evaluate as _evaluate  # noqa: E402,F401
from catalogclip.cli import search as _search  # noqa: E402,F401
from catalogclip.cli import featurise as _featurise  # noqa: E402,F401


def main() -> None:
    app()


__all__ = ["app", "main", "typer"]
