"""`catalogclip serve --workers N`: N server processes on one port, each with its own engine."""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import httpx
from typer.testing import CliRunner

from catalogclip.cli import app
from catalogclip.search.service import wait_until_serving

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_worker_processes_serve_one_port(brand_catalog, tmp_path):
    run, index = tmp_path / "run", tmp_path / "idx"
    trained = runner.invoke(app, ["train", "--catalog", str(brand_catalog), "--method", "clip", "--backbone", "tiny",
                                  "--epochs", "1", "--batch-size", "8", "--out", str(run), "--no-progress"])
    assert trained.exit_code == 0, trained.output
    indexed = runner.invoke(app, ["index", "--run", str(run), "--out", str(index), "--no-progress"])
    assert indexed.exit_code == 0, indexed.output
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "catalogclip", "serve", "--index", str(index), "--port", str(port), "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_serving(url, server, timeout=120)
        answers = [httpx.get(f"{url}/search", params={"q": "red shirt", "k": 3}, timeout=30) for _ in range(6)]
        assert all(a.status_code == 200 for a in answers)
        assert {tuple(h["id"] for h in a.json()["results"]) for a in answers} == {tuple(h["id"] for h in answers[0].json()["results"])}
        assert len(answers[0].json()["results"]) == 3
        assert httpx.get(f"{url}/search", params={"q": "red", "k": 0}, timeout=30).status_code == 422
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    # each worker process loads its own engine and says so as uvicorn starts it
    assert len(set(re.findall(r"Started server process \[(\d+)\]", output))) == 2, output
