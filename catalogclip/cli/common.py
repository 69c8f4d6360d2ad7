"""Shared CLI pieces: the root app and the user-error convention."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import typer

app = typer.Typer(
    name="catalogclip",
    help="Cross-modal product retrieval for e-commerce catalogs (EI-CLIP, ECLIP, CLIP-ITA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class UserError(Exception):
    """An error in what the user gave us; printed as one line, exit code 2."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn user errors (bad paths, bad files, bad names) into a one-line message and exit 2."""
    try:
        yield
    except (UserError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        raise typer.Exit(2) from None
