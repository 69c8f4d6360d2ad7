"""Schemathesis against the live service: generated and mutated requests, stateful link chains,
every check; the service must answer each with a documented status and body, never a 5xx."""
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from _searchkit import serving, write_catalog

from catalogclip.catalog.schema import read_jsonl
from catalogclip.embed import RunEncoder
from catalogclip.models.backbones.base import BackboneConfig
from catalogclip.models.methods import build_method
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.service import create_app

SEED = 20261127
MAX_EXAMPLES = 70  # per operation and phase: about 1,200 requests, two minutes on 2 busy cores
# A schema cannot say which filter fields an index has, that a query must hold a visible
# character, or that an uploaded file must be an image: schema-valid requests the service refuses
# for those reasons get these documented statuses (positive_data_acceptance still fails on others).
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "404", "409", "415"]
"""


class StatusCounter:
    """ASGI wrapper counting the statuses the app answered with."""

    def __init__(self, app) -> None:
        self.app, self.statuses = app, Counter()

    async def __call__(self, scope, receive, send) -> None:
        async def counting(message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting if scope["type"] == "http" else send)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    torch.manual_seed(0)
    encoder = RunEncoder(method=build_method("clip", BackboneConfig(spec="tiny")), model_id="tiny-fuzz")
    root = tmp_path_factory.mktemp("fuzz")
    index = build_index(encoder, read_jsonl(write_catalog(root / "shop")), root / "idx", BuildOptions(progress=False))
    return SearchEngine(index, encoder)


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tiny_engine, tmp_path):
    app = StatusCounter(create_app(tiny_engine))
    config, report = tmp_path / "schemathesis.toml", tmp_path / "report.json"
    config.write_text(CONFIG)
    with serving(app) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--no-color", "--config-file", str(config), "run", f"{url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--seed", str(SEED),
             "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--report", "json", "--report-json-path", str(report)],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its cache folder goes there
        )
    result = json.loads(report.read_text())
    assert (result["failures"], result["errors"]) == ([], []), run.stdout[-6000:]
    assert run.returncode == 0 and result["complete"], run.stdout[-3000:]
    assert result["phases"]["stateful"]["status"] == "success"  # the link chains ran
    assert not [status for status in app.statuses if status >= 500], app.statuses
    assert sum(app.statuses.values()) >= 1000, app.statuses
    assert app.statuses[200] > 100 and {400, 404, 422} <= set(app.statuses)
    print(f"schemathesis: {result['test_cases']['generated']} test cases, {sum(app.statuses.values())} requests, statuses {dict(sorted(app.statuses.items()))}")
