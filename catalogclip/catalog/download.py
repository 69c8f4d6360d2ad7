"""Images named by http(s) URL, downloaded once into a content-addressed cache.

A file is stored as `<cache>/<sha256[:2]>/<sha256>.<ext>` (the same picture under two URLs is
one file); `<cache>/urls.jsonl` records each URL fetched, appended as it completes, so an
interrupted import resumes where it stopped and a repeated one downloads nothing. A response
is refused when it is not 200, larger than `max_bytes`, or not an image by its bytes (sniffed
by Pillow, whatever its Content-Type says); timeouts, connection errors and 5xx/429 are retried.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

from catalogclip.catalog.images import DOWNLOAD_FAILED, drop_images
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.schema import Row, is_url
from catalogclip.io import atomic_path

IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
RETRY_STATUS = {429, 500, 502, 503, 504}
INDEX = "urls.jsonl"


@dataclass(frozen=True)
class DownloadOptions:
    cache_dir: Path
    workers: int = 8  # concurrent requests
    timeout: float = 15.0  # seconds to connect, and between bytes read
    retries: int = 2  # further tries after a timeout, a connection error or a 5xx/429
    max_bytes: int = 20 * 2**20
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one


class DownloadError(Exception):
    """Why a URL gave no image; `retry` when trying again may help."""

    def __init__(self, reason: str, retry: bool = False) -> None:
        super().__init__(reason)
        self.retry = retry


class ImageCache:
    """The content-addressed cache and its record of URLs already fetched."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.done = self._read_index()

    def _read_index(self) -> dict[str, Path]:
        done: dict[str, Path] = {}
        index = self.root / INDEX
        if index.is_file():
            for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    path = self.root / entry["file"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run
                if path.is_file():
                    done[entry["url"]] = path
        return done

    def store(self, url: str, data: bytes, ext: str) -> Path:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest[:2] / f"{digest}.{ext}"
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        with self._lock:
            with (self.root / INDEX).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"url": url, "file": path.relative_to(self.root).as_posix()}) + "\n")
            self.done[url] = path
        return path


def sniff_image(data: bytes) -> str:
    """The file extension of an image's bytes; DownloadError when they are no image we read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except (UnidentifiedImageError, OSError):
        fmt = None
    if fmt not in IMAGE_FORMATS:
        raise DownloadError(f"not an image ({'format ' + fmt if fmt else 'unrecognised bytes'})")
    return IMAGE_FORMATS[fmt]


def _fetch_once(client, url: str, max_bytes: int) -> bytes:
    import httpx

    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise DownloadError(f"HTTP {response.status_code}", retry=response.status_code in RETRY_STATUS)
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise DownloadError(f"larger than {max_bytes} bytes ({declared})")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadError(f"larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise DownloadError("timed out", retry=True) from None
    except httpx.HTTPError as exc:  # connection refused, DNS, protocol errors
        raise DownloadError(f"{type(exc).__name__}: {exc}", retry=True) from None


def fetch(client, url: str, options: DownloadOptions) -> bytes:
    """The bytes at `url`, retried as `options` say; DownloadError with the last reason."""
    for attempt in range(options.retries + 1):
        try:
            return _fetch_once(client, url, options.max_bytes)
        except DownloadError as exc:
            if not exc.retry or attempt == options.retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise DownloadError(f"{exc}{tries}") from None
            time.sleep(options.backoff * 2**attempt)
    raise AssertionError("unreachable")


def download_images(urls: Iterable[str], options: DownloadOptions) -> dict[str, Path | str]:
    """Each distinct URL -> its cached file, or the reason it has none. Cached URLs cost nothing."""
    import httpx

    cache = ImageCache(options.cache_dir)
    results: dict[str, Path | str] = {}
    todo = []
    for url in dict.fromkeys(urls):
        if url in cache.done:
            results[url] = cache.done[url]
        else:
            todo.append(url)

    def one(url: str) -> Path | str:
        try:
            data = fetch(client, url, options)
            return cache.store(url, data, sniff_image(data))
        except DownloadError as exc:
            return str(exc)

    limits = httpx.Limits(max_connections=options.workers, max_keepalive_connections=options.workers)
    with httpx.Client(timeout=options.timeout, follow_redirects=True, limits=limits) as client:
        with ThreadPoolExecutor(max_workers=options.workers) as pool:
            results.update(zip(todo, pool.map(one, todo)))
    return results


def localise_images(
    rows: list[Row], options: DownloadOptions | None, problems: ProblemLog, file: Path
) -> Iterator[Row]:
    """Rows with their URL images replaced by downloaded files; a URL that fails is dropped with
    a problem line (the product is skipped when no image is left). `options` None: URLs are kept
    as they are, and a note says so."""
    urls = [image.path for _, product in rows for image in product.images if is_url(image.path)]
    if options is None:
        if urls:
            problems.notes.append(f"kept {len(set(urls))} image URLs unresolved (no download): "
                                  "training and indexing need local files; import without --no-download")
        yield from rows
        return
    if not urls:
        yield from rows
        return
    results = download_images(urls, options)
    fetched = sum(isinstance(r, Path) for r in results.values())
    problems.notes.append(f"images by URL: {fetched} of {len(results)} in {options.cache_dir}")
    for line, product in rows:
        usable, failed = [], []
        for image in product.images:
            result = results.get(image.path) if is_url(image.path) else None
            if isinstance(result, str):
                failed.append((DOWNLOAD_FAILED, image, image.path, result))
            else:
                usable.append(image if result is None else replace(image, path=str(result)))
        product = drop_images(product, usable, failed, problems, file, line)
        if product is not None:
            yield line, product
