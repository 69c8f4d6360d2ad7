"""Confinement: an image path in a catalog never leads outside the catalog's root.

A catalog names its images by path, and a catalog may come from anyone: a path that is absolute,
climbs out with ``..`` or goes through a symlink could make training, indexing or the search
service open (and serve) any file on the machine. Every image path is therefore resolved here,
symlinks followed, and must land inside the catalog's folder or inside one image root that
whoever runs the command configured explicitly (``--image-root``, ``data.image_root``, an
importer's ``--image-dir``); a catalog file can never widen its own roots. A path outside is the
problem kind `OUTSIDE_ROOT` and is never opened.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

OUTSIDE_ROOT = "image outside the catalog root"


def is_url(path: str) -> bool:
    """An image named by http(s) URL: not a file path (see `catalogclip.catalog.download`)."""
    return path.startswith(("http://", "https://"))


class OutsideRootError(ValueError):
    """An image path that resolves outside every allowed root."""


@lru_cache(maxsize=256)
def _real(folder: str) -> str:
    return os.path.realpath(folder)


@dataclass(frozen=True)
class ImageRoots:
    """Where a catalog's images may live: `root` (relative paths start there) and `extra`
    folders configured explicitly (an image root, the import's download cache)."""

    root: Path
    extra: tuple[Path, ...] = ()

    def resolve(self, path: str | Path) -> Path:
        """The real file `path` names (relative to `root`, symlinks resolved).

        Raises OutsideRootError unless it lies inside `root` or one of `extra`.
        """
        try:
            real = os.path.realpath(os.path.join(self.root, path))  # an absolute `path` replaces root
        except ValueError:  # a NUL byte
            raise OutsideRootError(f"{path!r} is not a valid path") from None
        for allowed in (self.root, *self.extra):
            if _inside(real, _real(str(allowed))):
                return Path(real)
        raise OutsideRootError(f"'{path}' leads outside the catalog root")

    def inside(self, path: str | Path) -> bool:
        try:
            self.resolve(path)
        except OutsideRootError:
            return False
        return True


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
