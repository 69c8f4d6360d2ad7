"""Image checks for catalog products: inside the roots, existence by stat, optionally a full decode."""
from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from catalogclip.catalog.paths import OUTSIDE_ROOT, ImageRoots, OutsideRootError, is_url
from catalogclip.catalog.problems import ProblemLog

if TYPE_CHECKING:
    from catalogclip.catalog.schema import ImageRef, Product

MISSING = "missing image"
BROKEN = "broken image"
DOWNLOAD_FAILED = "download failed"


def image_problem(path: Path, verify: bool = False) -> tuple[str, str] | None:
    """(problem kind, reason) when the image at `path` is unusable, None when it looks fine.

    Without `verify` only `stat` is called, so checking a large catalog stays cheap.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return MISSING, "no such file"
    except OSError as exc:
        return MISSING, exc.strerror or str(exc)
    if not stat.S_ISREG(info.st_mode):
        return BROKEN, "not a regular file"
    if info.st_size == 0:
        return BROKEN, "empty file"
    if verify:
        reason = _decode_error(path)
        if reason is not None:
            return BROKEN, reason
    return None


def _decode_error(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:  # raises DecompressionBombError past twice the pixel budget
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:
                return f"too large to decode: {im.width}x{im.height} pixels (at most {Image.MAX_IMAGE_PIXELS:,})"
            im.verify()  # structural checks (PNG CRCs) that a decode does not make
        with Image.open(path) as im:
            im.load()  # JPEG's verify reads headers only: truncated data shows up when decoding
    except Exception as exc:  # PIL plugins raise many exception types on corrupt data
        return f"cannot decode: {exc}"
    return None


def keep_usable_images(
    product: "Product",
    roots: ImageRoots,
    problems: ProblemLog,
    file: str | Path,
    line: int | None,
    verify: bool = False,
    check_files: bool = True,
) -> "Product | None":
    """The product with its unusable images dropped (each one logged), or None when none is left.

    An image outside `roots` is dropped without being touched; with `check_files` the others
    are stat-ed (and with `verify` decoded). An image URL (not downloaded) is kept unchecked.
    """
    usable = []
    dropped: list[tuple[str, ImageRef, str, str]] = []
    for number, image in enumerate(product.images):
        if is_url(image.path):
            usable.append(image)
            continue
        try:
            real = roots.real(image.path)
            problem = image_problem(Path(real), verify) if check_files else None
        except OutsideRootError:
            problem = (OUTSIDE_ROOT, "not opened")
        if problem is None:
            usable.append(image)
        else:
            dropped.append((problem[0], image, f"field 'images[{number}].path' = '{image.path}'", problem[1]))
    if not dropped:  # the common case, kept cheap: this runs for every product of a catalog
        return product
    return drop_images(product, usable, dropped, problems, file, line)


def drop_images(
    product: "Product",
    usable: "list[ImageRef]",
    dropped: "list[tuple[str, ImageRef, str, str]]",
    problems: ProblemLog,
    file: str | Path,
    line: int | None,
) -> "Product | None":
    """The product with only its `usable` images; each of `dropped` (kind, image, how to name it,
    reason) is logged, saying whether the product was kept. The line is the image's own with the
    column (or feed field) it came from when the reader recorded them (`ImageRef.origin`: a
    Shopify image row is not its product's first row), else `line`. None when no image is left."""
    if not dropped:
        return product if usable == product.images else replace(product, images=usable)
    outcome = (
        f"product '{product.id}' kept with {len(usable)} of {len(product.images)} images"
        if usable
        else f"product '{product.id}' skipped: no usable image"
    )
    for kind, image, name, reason in dropped:
        if image.origin is None:
            problems.add(kind, file, line, f"{name}: {reason} ({outcome})")
        else:
            problems.add(kind, file, image.origin[0], f"{name} (from '{image.origin[1]}'): {reason} ({outcome})")
    return replace(product, images=usable) if usable else None
