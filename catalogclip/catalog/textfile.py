"""Text files decoded line by line, so that a byte that does not decode costs one reported line."""
from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator

from catalogclip.catalog.problems import KEPT_KINDS, ProblemLog

UNDECODABLE = KEPT_KINDS[0]


def check_encoding(encoding: str) -> str:
    """`encoding` if it is known and keeps ASCII bytes (and so line ends) as they are; else ValueError."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding '{encoding}'") from None
    if "a,\n".encode(encoding) != b"a,\n":
        raise ValueError(f"encoding '{encoding}' is not supported: lines are split on ASCII newlines (convert to UTF-8)")
    return encoding


def text_lines(path: Path, problems: ProblemLog, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of a text file, decoded; a line with bytes that do not decode is kept with the
    bad bytes as U+FFFD and logged ("undecodable bytes", file and line): one stray byte never
    stops an import, a training run or an index build. A UTF-8 BOM is dropped."""
    check_encoding(encoding)
    bom = codecs.BOM_UTF8 if codecs.lookup(encoding).name == "utf-8" else b""
    with path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and bom and raw.startswith(bom):
                raw = raw[len(bom):]
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as exc:
                problems.add(
                    UNDECODABLE, path, line_no,
                    f"byte 0x{raw[exc.start]:02x} at position {exc.start + 1} of the line is not {encoding} "
                    "(row kept, bad bytes replaced by U+FFFD; see --encoding)",
                )
                yield raw.decode(encoding, errors="replace")
