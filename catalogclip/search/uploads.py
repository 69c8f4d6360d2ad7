"""Untrusted images: which formats the service accepts, and decoding them within budgets.

The format is sniffed from the first bytes before Pillow sees anything, and Pillow is then told
to use that one plugin: a PostScript/EPS upload is refused without Ghostscript ever starting, and
a file claiming to be a PNG is never handed to another decoder. The catalog's own image files are
sniffed the same way before the service sends them (`open_image_file`).
"""
from __future__ import annotations

import os
import stat
import struct
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

#: Pillow format -> (content type, magic-byte test)
FORMATS = {
    "JPEG": ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    "PNG": ("image/png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    "GIF": ("image/gif", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
    "WEBP": ("image/webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
    "BMP": ("image/bmp", lambda head: head[:2] == b"BM"),
}
ALLOWED = "JPEG, PNG, WebP, GIF or BMP"
MAX_IMAGE_PIXELS = 40_000_000
#: decoded uploads are shrunk to this side: models look at 224 px, so more is only cost
MAX_SIDE = 1024
#: what Pillow raises on malformed data (plugins differ: struct errors, EOF, syntax errors ...)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


class ImageRejected(ValueError):
    """An image the service will not decode; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff_format(head: bytes) -> str | None:
    """The allowed format these leading bytes start, or None."""
    return next((name for name, (_, matches) in FORMATS.items() if matches(head)), None)


def content_type(name: str) -> str:
    return FORMATS[name][0]


def _open_without_waiting(path: str, flags: int) -> int:
    """`os.open` that never blocks (a FIFO's open waits for a writer; O_NONBLOCK does not change
    reads of a regular file) and follows no symlink (`path` is resolved: a symlink there now was
    swapped in after the check that it stays inside the catalog root)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))


def open_image_file(path: Path) -> tuple[BinaryIO, int, str] | None:
    """An accepted image file, open at its start, with its size and content type; None for
    anything else (missing, not a regular file, another format). Serve this handle, not the
    path: then what was checked is what is sent, whatever replaces the path meanwhile."""
    try:
        file = open(path, "rb", opener=_open_without_waiting)
    except OSError:
        return None
    try:
        info = os.fstat(file.fileno())
        found = sniff_format(file.read(16)) if stat.S_ISREG(info.st_mode) else None
        if found is not None:
            file.seek(0)
            return file, info.st_size, content_type(found)
    except OSError:
        pass
    file.close()
    return None


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int = MAX_SIDE) -> Image.Image:
    """An uploaded image as RGB, at most `max_side` pixels a side; raises ImageRejected.

    CPU-bound (up to a second for a large PNG): call it off the event loop.
    """
    found = sniff_format(data[:16])
    if found is None:
        raise ImageRejected(415, f"the upload is not an image in an accepted format ({ALLOWED})")
    too_many = ImageRejected(413, f"the image has more than {max_pixels} pixels")
    try:
        image = Image.open(BytesIO(data), formats=[found])  # reads the header only
        pixels = image.width * image.height
        if pixels <= max_pixels:
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale when that suffices
            image = image.convert("RGB")  # decodes
    except Image.DecompressionBombError:
        raise too_many from None
    except UnidentifiedImageError:  # its message names the in-memory buffer
        raise ImageRejected(415, f"the {found} image cannot be decoded: its header is damaged or cut short") from None
    except DECODE_ERRORS as exc:
        raise ImageRejected(415, f"the {found} image cannot be decoded: {exc}") from None
    if pixels > max_pixels:
        raise too_many
    image.thumbnail((max_side, max_side))
    return image


__all__ = ["ALLOWED", "FORMATS", "ImageRejected", "MAX_IMAGE_PIXELS", "content_type", "decode_image", "open_image_file", "sniff_format"]
