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
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

OUTSIDE_ROOT = "image outside the catalog root"


def is_url(path: str) -> bool:
    """An image named by http(s) URL: not a file path (see `catalogclip.catalog.download`)."""
    return path.startswith(("http://", "https://"))


class OutsideRootError(ValueError):
    """An image path that resolves outside every allowed root."""


@dataclass(frozen=True)
class ImageRoots:
    """Where a catalog's images may live: `root` (relative paths start there) and `extra`
    folders configured explicitly (an image root, the import's download cache)."""

    root: Path
    extra: tuple[Path, ...] = ()
    #: per folder met so far in one pass over a catalog: its real path and the names of the
    #: symlinks in it (see `for_bulk`)
    folders: dict[str, tuple[str, frozenset[str]]] | None = field(default=None, compare=False, repr=False)

    def for_bulk(self) -> "ImageRoots":
        """A copy that resolves each folder once and lists its symlinks once (one `scandir`),
        instead of a system call per path component per image. For one pass only (a file
        swapped for a symlink later would go unseen): long-lived users resolve every time."""
        return replace(self, folders={})

    def resolve(self, path: str | Path) -> Path:
        """The real file `path` names (relative to `root`, symlinks resolved).

        Raises OutsideRootError unless it lies inside `root` or one of `extra`.
        """
        return Path(self.real(path))

    def real(self, path: str | Path) -> str:
        """`resolve` as a string (cheaper, for checks over a whole catalog)."""
        try:
            real = self._real_file(os.path.join(self._root, path))  # an absolute `path` replaces root
        except ValueError:  # a NUL byte
            raise OutsideRootError(f"{path!r} is not a valid path") from None
        if (real + os.sep).startswith(self._allowed):
            return real
        raise OutsideRootError(f"'{path}' leads outside the catalog root")

    @cached_property
    def _root(self) -> str:
        return os.fspath(self.root)

    @cached_property
    def _allowed(self) -> tuple[str, ...]:
        """The real roots, each ending in a separator (so /data/shop does not admit /data/shop2)."""
        return tuple(os.path.join(os.path.realpath(folder), "") for folder in (self.root, *self.extra))

    def _real_file(self, joined: str) -> str:
        if self.folders is None:
            return os.path.realpath(joined)
        folder, name = os.path.split(os.path.normpath(joined))
        if folder not in self.folders:
            self.folders[folder] = _folder_links(folder)
        real_folder, links = self.folders[folder]
        real = os.path.join(real_folder, name)
        return os.path.realpath(real) if name in links else real

    def inside(self, path: str | Path) -> bool:
        try:
            self.real(path)
        except OutsideRootError:
            return False
        return True


def _folder_links(folder: str) -> tuple[str, frozenset[str]]:
    """A folder's real path and the names of the symlinks in it (none when it cannot be listed)."""
    real = os.path.realpath(folder)
    try:
        with os.scandir(real) as entries:
            return real, frozenset(entry.name for entry in entries if entry.is_symlink())
    except OSError:
        return real, frozenset()
