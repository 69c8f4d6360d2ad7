"""Images by URL, served by a loopback HTTP server the tests start (127.0.0.1 only)."""
from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from catalogclip.catalog.download import DownloadOptions, download_images
from catalogclip.catalog.problems import ProblemLog
from catalogclip.catalog.readers import ReaderOptions, read_catalog
from test_cli_catalog import run


def jpeg_bytes(colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


GOOD = jpeg_bytes()
MAX_BYTES = 20_000


class Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        Handler.hits[self.path] += 1
        if self.path == "/slow.jpg":
            time.sleep(1.0)
        if self.path == "/flaky.jpg" and Handler.hits[self.path] == 1:
            return self.send_error(503)
        body, kind = {
            "/good.jpg": (GOOD, "image/jpeg"),
            "/same-picture.jpg": (GOOD, "image/jpeg"),
            "/slow.jpg": (GOOD, "image/jpeg"),
            "/flaky.jpg": (jpeg_bytes((1, 2, 3)), "image/jpeg"),
            "/page.jpg": (b"<html><body>Sorry, this product is gone</body></html>", "image/jpeg"),
            "/huge.jpg": (GOOD + bytes(MAX_BYTES * 2), "image/jpeg"),
        }.get(self.path, (None, None))
        if body is None:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.end_headers()  # no Content-Length: the size limit must hold while streaming
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (too slow, too large): that is the point

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.hits = Counter()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def options(tmp_path: Path) -> DownloadOptions:
    return DownloadOptions(tmp_path / "cache", workers=4, timeout=0.3, retries=1, max_bytes=MAX_BYTES, backoff=0.05)


def test_download_images_refuses_what_is_not_a_small_image(server, tmp_path):
    names = ["good", "same-picture", "missing", "slow", "page", "huge", "flaky"]
    results = download_images([f"{server}/{name}.jpg" for name in names], options(tmp_path))
    by_name = {url.rsplit("/", 1)[1].removesuffix(".jpg"): result for url, result in results.items()}
    good = by_name["good"]
    assert isinstance(good, Path) and good.read_bytes() == GOOD and good.suffix == ".jpg"
    assert by_name["same-picture"] == good  # content-addressed: one file for one picture
    assert by_name["missing"] == "HTTP 404"
    assert by_name["slow"] == "timed out after 2 tries"
    assert by_name["page"] == "not an image (unrecognised bytes)"
    assert by_name["huge"] == f"larger than {MAX_BYTES} bytes"
    assert isinstance(by_name["flaky"], Path)  # a 503 is retried
    assert Handler.hits["/flaky.jpg"] == 2 and Handler.hits["/missing.jpg"] == 1  # a 404 is not


def write_feed(tmp_path: Path, server: str) -> Path:
    rows = [
        ["id", "title", "image_link", "additional_image_link"],
        ["A", "Good and missing", f"{server}/good.jpg", f"{server}/missing.jpg"],
        ["B", "Slow", f"{server}/slow.jpg", ""],
        ["C", "Not an image", f"{server}/page.jpg", ""],
        ["D", "Too large", f"{server}/huge.jpg", ""],
        ["E", "Same URL as A", f"{server}/good.jpg", ""],
    ]
    feed = tmp_path / "feed.tsv"
    feed.write_text("\n".join("\t".join(row) for row in rows) + "\n")
    return feed


def test_import_downloads_each_url_once_reports_failures_and_resumes(server, tmp_path):
    feed = write_feed(tmp_path, server)
    problems = ProblemLog()
    catalog = read_catalog("google-merchant", feed, problems, ReaderOptions(download=options(tmp_path)))

    assert [p.id for p in catalog] == ["A", "E"]
    assert catalog["A"].images == catalog["E"].images and len(catalog["A"].images) == 1
    assert Path(catalog["A"].images[0].path).parent.parent == tmp_path / "cache"
    assert Handler.hits[f"/good.jpg"] == 1
    failures = {(p.line, p.kind): p.message for p in problems.problems}
    assert set(failures) == {(2, "download failed"), (3, "download failed"), (4, "download failed"), (5, "download failed")}
    assert failures[2, "download failed"] == (
        f"{server}/missing.jpg (from 'additional_image_link'): HTTP 404 (product 'A' kept with 1 of 2 images)"
    )
    assert failures[3, "download failed"].endswith("timed out after 2 tries (product 'B' skipped: no usable image)")
    assert "not an image" in failures[4, "download failed"] and "larger than" in failures[5, "download failed"]
    assert all(p.file == str(feed) for p in problems.problems)
    assert f"images by URL: 1 of 5 in {tmp_path / 'cache'}" in problems.notes

    # A second import finds the fetched URL in the cache: only the failures are asked again.
    before = Handler.hits.copy()
    read_catalog("google-merchant", feed, ProblemLog(), ReaderOptions(download=options(tmp_path)))
    assert Handler.hits["/good.jpg"] == before["/good.jpg"]
    assert Handler.hits["/missing.jpg"] == before["/missing.jpg"] + 1


def test_cli_import_caches_beside_out_or_keeps_urls_with_no_download(server, tmp_path):
    feed = write_feed(tmp_path, server)
    out = tmp_path / "shop" / "catalog.jsonl"
    result = run("import", "-f", "google-merchant", feed, out, "--download-timeout", "0.3", "--max-image-mb", "0.01")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["A", "E"]
    assert rows[0]["images"][0]["path"].startswith("image-cache/")  # beside OUT, relative to it
    assert (out.parent / rows[0]["images"][0]["path"]).read_bytes() == GOOD
    assert f"{feed}:2: download failed: {server}/missing.jpg (from 'additional_image_link'): HTTP 404" in result.stderr

    result = run("import", "-f", "google-merchant", feed, out, "--no-download")
    assert result.exit_code == 0, result.output
    assert "kept 5 image URLs unresolved (no download)" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and rows[1]["images"] == [{"path": f"{server}/slow.jpg", "source": "merchant"}]
    stats = json.loads(run("stats", out, "--json").stdout)
    assert stats["products"] == 5 and stats["image_files"]["by_kind"] == {"not downloaded": 6}
