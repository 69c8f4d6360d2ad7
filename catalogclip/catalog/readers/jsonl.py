"""The canonical JSON Lines catalog itself, validated row by row."""
from __future__ import annotations

from pathlib import Path

from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers.base import READERS, ReaderOptions, Source
from catalogclip.catalog.schema import iter_jsonl


@READERS.register("jsonl")
def read_canonical(src: Path, problems: ProblemLog, options: ReaderOptions) -> Source:
    if src.is_dir():
        raise ValueError(f"{src}: is a folder, expected a .jsonl file")
    return Source(src, src.parent, iter_jsonl(src, problems, options.encoding or "utf-8"))
