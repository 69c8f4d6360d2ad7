"""One writer per index: a second updater waits or fails with a clear message and never loses
its changes; what killed writers leave behind is cleaned by the next one."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from _searchkit import SHOES, PaletteEncoder, product, write_catalog, written

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.build import BuildOptions, build_index, update_index, work_folder
from catalogclip.search.engine import SearchEngine
from catalogclip.search.index import ProductIndex
from catalogclip.search.lexical import LexicalIndex
from catalogclip.search.lock import IndexLockedError, lock_file

QUIET = BuildOptions(progress=False)


class Blocking(PaletteEncoder):
    """Holds its writer inside `encode_images` until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def encode_images(self, images):
        self.entered.set()
        assert self.release.wait(30)
        return super().encode_images(images)


@pytest.fixture()
def shop(tmp_path):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    build_index(PaletteEncoder(), catalog, tmp_path / "idx", QUIET)
    return catalog


def test_two_concurrent_updaters_one_fails_at_once_one_waits_and_nothing_is_lost(tmp_path, shop):
    products = list(shop)
    first = written(shop.root, products + [product("a1", "yellow", "Nike", SHOES, 1.0)], "one.jsonl")
    second = written(shop.root, products + [product("a1", "yellow", "Nike", SHOES, 1.0), product("b2", "blue", "Nike", SHOES, 2.0)],
                    "two.jsonl")

    blocking = Blocking()
    outcome = {}
    writer = threading.Thread(target=lambda: outcome.setdefault(
        "first", update_index(blocking, first, ProductIndex.open(tmp_path / "idx"), QUIET)))
    writer.start()
    assert blocking.entered.wait(30)
    # a second writer that will not wait is told who holds the index
    with pytest.raises(IndexLockedError, match=r"index idx is being written by pid \d+ since .*--wait SECONDS"):
        update_index(PaletteEncoder(), second, ProductIndex.open(tmp_path / "idx"), QUIET)
    # one that waits runs after the first, on the index the first committed
    waiting = threading.Thread(target=lambda: outcome.setdefault(
        "second", update_index(PaletteEncoder(), second, ProductIndex.open(tmp_path / "idx"), BuildOptions(progress=False, wait=30))))
    waiting.start()
    blocking.release.set()
    writer.join(30)
    waiting.join(30)
    assert str(outcome["first"]) == "1 added, 0 changed, 0 deleted, 12 unchanged"
    assert str(outcome["second"]) == "1 added, 0 changed, 0 deleted, 13 unchanged"  # after the first's a1
    index = ProductIndex.open(tmp_path / "idx")
    assert sorted(index.store.product_ids()) == sorted(p.id for p in second)
    assert index.info["vectors"] == sum(len(p.images) for p in second)
    hits = SearchEngine(index, PaletteEncoder()).search_text("blue", k=3).hits
    assert "b2" in [h.product.id for h in hits]


def test_a_reader_opening_as_a_writer_commits_sees_the_vectors_it_loaded(tmp_path, shop):
    """`open` loads the vector file, then reads the vector ids from the metadata: a commit in
    between lists ids past the loaded file (it raised IndexError under load)."""
    reader = ProductIndex.open(tmp_path / "idx")
    loaded = reader.vectors.ntotal
    before = reader.store.vector_rows(loaded)
    grown = written(shop.root, list(shop) + [product("a1", "yellow", "Nike", SHOES, 1.0)], "grown.jsonl")
    update_index(PaletteEncoder(), grown, ProductIndex.open(tmp_path / "idx"), QUIET)
    assert ProductIndex.open(tmp_path / "idx").vectors.ntotal > loaded
    np.testing.assert_array_equal(reader.store.vector_rows(loaded), before)  # the committed metadata, cut to the loaded vectors


def test_opening_while_a_writer_commits_opens_the_new_generation_whole(tmp_path, shop, monkeypatch):
    """A commit between loading a generation's files and reading its metadata (which removes the
    loaded generation) must not leave a reader with one generation's vectors and another's products."""
    idx = tmp_path / "idx"
    generation = ProductIndex.open(idx).info["generation"]
    grown = written(shop.root, list(shop) + [product("a1", "yellow", "Nike", SHOES, 1.0)], "grown.jsonl")
    load = LexicalIndex.load.__func__
    commits = []

    def load_then_commit(cls, path):
        loaded = load(cls, path)
        if not commits:  # the first load only: the writer's own opens load normally
            commits.append("writing")
            commits[0] = update_index(PaletteEncoder(), grown, ProductIndex.open(idx), QUIET)
        return loaded

    monkeypatch.setattr(LexicalIndex, "load", classmethod(load_then_commit))
    index = ProductIndex.open(idx)
    assert str(commits[0]).startswith("1 added") and index.info["generation"] == generation + 1
    assert index.vectors.ntotal == index.info["vectors"] == sum(len(p.images) for p in grown)
    assert "a1" in [h.product.id for h in index.search_lexical("nike", 20)]


def test_leftovers_of_killed_writers_are_removed_by_the_next_one(tmp_path, shop):
    idx = tmp_path / "idx"
    generation = ProductIndex.open(idx).info["generation"]
    files = [
        idx / f".vectors-{generation + 1}.faiss.k2j3h4.tmp",  # killed while saving vectors
        idx / f"vectors-{generation + 7}.faiss",  # killed between the vector file and the metadata commit
    ]
    folders = [
        tmp_path / ".idx.abcd1234.tmp", tmp_path / ".idx.old-4242",  # killed mid-build, mid-swap
        idx / f".lexical-{generation + 1}.x8k2_q1.tmp",  # killed while saving the lexical side
        idx / f"lexical-{generation + 7}",  # killed between the lexical folder and the metadata commit
    ]
    for path in files:
        path.write_bytes(b"x")
    for path in folders:
        path.mkdir()
    leftovers = files + folders
    # a dead writer's shard without a plan: reused, it would not match the image list
    work = work_folder(idx)
    work.mkdir()
    np.savez(work / "shard-000000.npz", vectors=np.ones((330, 10), np.float32), ok=np.ones(330, bool), errors=np.array([""] * 330))
    other = tmp_path / "unrelated.tmp"
    other.write_bytes(b"keep")

    summary = update_index(PaletteEncoder(), written(shop.root, list(shop)[:5], "catalog.jsonl"), ProductIndex.open(idx), QUIET)
    assert str(summary) == "0 added, 0 changed, 7 deleted, 5 unchanged"
    assert [p for p in leftovers if p.exists()] == [] and not work.exists()
    assert other.exists() and lock_file(idx).exists()
    assert len(ProductIndex.open(idx)) == 5


def test_a_killed_writer_never_leaves_the_index_locked(tmp_path, shop):
    holder = subprocess.Popen([
        sys.executable, "-c",
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1 since then'); print('locked', flush=True); time.sleep(60)",
        str(lock_file(tmp_path / "idx")),
    ], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexLockedError, match="being written by pid 1 since then"):
            build_index(PaletteEncoder(), shop, tmp_path / "idx", QUIET)
    finally:
        holder.kill()
        holder.wait()
    assert len(build_index(PaletteEncoder(), shop, tmp_path / "idx", QUIET)) == 12
