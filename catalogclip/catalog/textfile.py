"""Text files decoded line by line, so that a byte that does not decode costs one reported line.

Lines end at LF, CRLF or a lone CR (Excel for Mac's "CSV (Macintosh)"), each line keeping its
end, as the csv module wants. A byte order mark says what the file is and wins over the
encoding asked for: Excel's "Unicode Text" is UTF-16 with a BOM and needs no `--encoding`.
"""
from __future__ import annotations

import codecs
import io
import re
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from catalogclip.catalog.problems import KEPT_KINDS, ProblemLog

UNDECODABLE = KEPT_KINDS[0]

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_AFTER_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
_LINE_END = re.compile(r"\r\n|\r|\n")


def check_encoding(encoding: str) -> str:
    """`encoding` if it names a text encoding; else ValueError."""
    try:
        "a".encode(encoding)  # LookupError for unknown names and for codecs such as base64
    except LookupError:
        raise ValueError(f"unknown encoding '{encoding}'") from None
    return encoding


def text_lines(path: Path, problems: ProblemLog, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of a text file, decoded; a line with bytes that do not decode is kept with the
    bad bytes as U+FFFD and logged ("undecodable bytes", file and line): one stray byte never
    stops an import, a training run or an index build. A byte order mark is dropped."""
    check_encoding(encoding)
    with path.open("rb") as fh:
        encoding, bom_size = _encoding_by_bom(fh.read(4), encoding)
        fh.seek(bom_size)
        if "\r\n,".encode(encoding) == b"\r\n,":  # line ends are ASCII bytes: decode line by line
            yield from _decoded_lines(path, problems, encoding, _byte_lines(fh))
        else:  # UTF-16 and the like: line ends are found after decoding
            yield from io.StringIO(_decoded_text(path, problems, encoding, fh.read()), newline="")


def _encoding_by_bom(head: bytes, encoding: str) -> tuple[str, int]:
    """The encoding a byte order mark at the start of the file names (and the mark's size), else `encoding`."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, len(bom)
    return encoding, 0


def _byte_lines(fh: BinaryIO) -> Iterator[bytes]:
    """The file's lines, split at LF, CRLF and lone CR (a file object splits at LF only)."""
    for raw in fh:
        if b"\r" in raw:
            yield from (piece for piece in _AFTER_LONE_CR.split(raw) if piece)
        else:
            yield raw


def _decoded_lines(path: Path, problems: ProblemLog, encoding: str, lines: Iterable[bytes]) -> Iterator[str]:
    for line_no, raw in enumerate(lines, start=1):
        try:
            yield raw.decode(encoding)
        except UnicodeDecodeError as exc:
            _report(problems, path, line_no, raw[exc.start], exc.start + 1, encoding)
            yield raw.decode(encoding, errors="replace")


def _decoded_text(path: Path, problems: ProblemLog, encoding: str, data: bytes) -> str:
    """`data` decoded as a whole; each undecodable sequence becomes U+FFFD, logged on its line."""
    parts: list[str] = []
    start, line_no, column = 0, 1, 0  # column: characters of the current line decoded so far
    while True:
        try:
            parts.append(data[start:].decode(encoding))
            return "".join(parts)
        except UnicodeDecodeError as exc:
            good = data[start:start + exc.start].decode(encoding)
            lines = _LINE_END.split(good)
            line_no += len(lines) - 1
            column = len(lines[-1]) + (column if len(lines) == 1 else 0)
            _report(problems, path, line_no, data[start + exc.start], column + 1, encoding)
            parts += [good, "\ufffd"]
            column += 1
            start += exc.end


def _report(problems: ProblemLog, path: Path, line_no: int, byte: int, position: int, encoding: str) -> None:
    problems.add(
        UNDECODABLE, path, line_no,
        f"byte 0x{byte:02x} at position {position} of the line is not {encoding} "
        "(row kept, bad bytes replaced by U+FFFD; see --encoding)",
    )
