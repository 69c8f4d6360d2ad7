"""One writer per index: a lock beside the index folder, and the leftovers of killed writers.

Builds and updates of ``IDX`` hold an exclusive `flock` on ``.IDX.lock`` (beside the folder,
since a build replaces the folder whole) for their whole run, embedding included, because they
share the work folder ``.IDX.embedding/``. A second writer waits up to `wait` seconds, then fails
with `IndexLockedError` naming the holder; it never runs beside the first. The kernel drops the
lock when its holder dies, so a killed writer never leaves the index locked. Once it holds the
lock a writer knows any temporary file is a dead writer's and removes it (`remove_leftovers`).
Readers (search, the service) take no lock: they only ever see committed states.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from catalogclip.search.lexical import lexical_folder
from catalogclip.search.vectors import vector_file

POLL_SECONDS = 0.2


class IndexLockedError(RuntimeError):
    """Another process is writing the index."""


def lock_file(index_path: str | Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(f".{index_path.name}.lock")


@contextmanager
def index_writer(index_path: str | Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the index's writer lock (waiting up to `wait` seconds for it), leftovers removed."""
    index_path = Path(index_path)
    path = lock_file(index_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated here: it names the holder
    try:
        _acquire(fd, index_path, wait)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        remove_leftovers(index_path)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, index_path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                waited = f" after waiting {wait:g} s" if wait else ""
                raise IndexLockedError(
                    f"index {index_path.name} is being written by {holder}{waited}; try again when it is done "
                    f"(or wait for it with --wait SECONDS)"
                ) from None
            time.sleep(POLL_SECONDS)


def remove_leftovers(index_path: Path) -> list[Path]:
    """Delete what killed writers left: temporary vector files and vector generations the
    metadata does not name inside the index, half-built and replaced folders beside it.
    Call only while holding the lock. Returns what was removed."""
    beside = re.compile(rf"\.{re.escape(index_path.name)}\.([a-z0-9_]{{8}}\.tmp|old-\d+)")  # as build and swap name them
    found = [p for p in index_path.parent.glob(f".{index_path.name}.*") if beside.fullmatch(p.name)]
    if index_path.is_dir():
        found += [*index_path.glob(".vectors-*.tmp"), *index_path.glob(".lexical-*.tmp")]
        info = _committed_info(index_path)
        if info is not None and info.get("generation") is not None:
            found += [p for p in index_path.glob("lexical-*") if p.name != lexical_folder(info["generation"])]
            if info.get("backend", "faiss") == "faiss":  # other backends keep their vectors elsewhere
                found += [p for p in index_path.glob("vectors-*.faiss") if p.name != vector_file(info["generation"])]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _committed_info(index_path: Path) -> dict | None:
    """The committed metadata's info (None: no index here)."""
    from catalogclip.search.index import META_FILE
    from catalogclip.search.store import MetadataStore

    if not (index_path / META_FILE).is_file():
        return None
    store = MetadataStore(index_path / META_FILE)
    try:
        return store.info()
    finally:
        store.close()
