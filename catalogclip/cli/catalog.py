"""`catalogclip catalog ...`: import, synth, stats."""
from __future__ import annotations

import typer

app = typer.Typer(help="Import, generate and inspect catalogs.", no_args_is_help=True)
