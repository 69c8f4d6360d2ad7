"""A running service follows its index: `index --update` and rebuilds are served from their commit on."""
from __future__ import annotations

import json

from _searchkit import SHOES, PaletteEncoder, product, write_catalog, written
import pytest
from fastapi.testclient import TestClient

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.backend import Connection
from catalogclip.search.build import BuildOptions, build_index, update_index
from catalogclip.search.engine import LiveEngine, SearchEngine
from catalogclip.search.fusion import FusionConfig
from catalogclip.search.index import ProductIndex
from catalogclip.search.service import create_app
from catalogclip.search.tune import save_fusion

QUIET = BuildOptions(progress=False)
NEW = product("a1", "yellow", "Zebraco", SHOES, 1.0)  # a brand no product had


def _shop(tmp_path, options: BuildOptions = QUIET):
    catalog = read_jsonl(write_catalog(tmp_path / "shop"))
    build_index(PaletteEncoder(), catalog, tmp_path / "idx", options)
    return catalog


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_the_service_serves_an_update_committed_while_it_runs(tmp_path, backend):
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    connection = Connection("milvus", str(tmp_path / "milvus.db"), collection="shop") if backend == "milvus" else None
    shop = _shop(tmp_path, BuildOptions(progress=False, connection=connection))
    client = TestClient(create_app(SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder())), raise_server_exceptions=False)
    assert client.get("/products/p00").status_code == 200
    assert client.get("/search", params={"q": "red"}).status_code == 200
    # three products deleted, one added: the old generation's vector rows name products that are gone
    changed = written(shop.root, list(shop)[3:] + [NEW], "changed.jsonl")
    assert str(update_index(PaletteEncoder(), changed, ProductIndex.open(tmp_path / "idx"), QUIET)).startswith("1 added, 0 changed, 3 deleted")
    assert client.get("/healthz").json()["products"] == 10
    body = client.get("/search", params={"q": "yellow zebraco", "k": 3}).json()
    assert body["results"][0]["id"] == "a1"
    assert ("brand", "Zebraco") in [(e["group"], e["value"]) for e in body["entities"]]  # the new value is understood
    for q, mode in (("red", "hybrid"), ("red", "vector"), ("shoes", "lexical")):
        response = client.get("/search", params={"q": q, "mode": mode, "k": 12, "filters": json.dumps({"brand": "Zebraco"})})
        assert response.status_code == 200 and [r["id"] for r in response.json()["results"]] == ["a1"]
    assert client.get("/products/p00").status_code == 404
    assert client.get("/products/a1/images/0").status_code == 200
    brands = {v["value"]: v["count"] for v in client.get("/facets").json()["facets"]["brand"]["values"]}
    assert brands["Zebraco"] == 1


def test_the_service_serves_a_rebuilt_index(tmp_path):
    shop = _shop(tmp_path)
    client = TestClient(create_app(SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder())), raise_server_exceptions=False)
    assert client.get("/healthz").json()["products"] == 12
    build_index(PaletteEncoder(), written(shop.root, [NEW, *list(shop)[:2]], "small.jsonl"), tmp_path / "idx", QUIET)
    assert client.get("/healthz").json()["products"] == 3
    assert [r["id"] for r in client.get("/search", params={"q": "zebraco", "k": 1}).json()["results"]] == ["a1"]


def test_a_commit_in_the_middle_of_a_request_reruns_it_on_the_new_index(tmp_path):
    shop = _shop(tmp_path)
    live = LiveEngine(SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder()))
    changed = written(shop.root, list(shop)[3:] + [NEW], "changed.jsonl")
    engines = []

    def search_after_a_commit(engine: SearchEngine):
        engines.append(engine)
        if len(engines) == 1:  # a writer commits after this request got its engine
            update_index(PaletteEncoder(), changed, ProductIndex.open(tmp_path / "idx"), QUIET)
        return engine.search_text("red", k=12)

    result = live.answer(search_after_a_commit)
    assert len(engines) == 2 and engines[0] is not engines[1]
    assert {h.product.id for h in result.hits} <= {p.id for p in changed}
    assert live.current() is engines[1]  # one reopen per commit


def test_the_service_serves_a_fusion_tuned_while_it_runs(tmp_path):
    _shop(tmp_path)
    client = TestClient(create_app(SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder())), raise_server_exceptions=False)
    assert client.get("/healthz").json()["fusion"]["weight"] == 0.1
    vector_only = FusionConfig(weight=1.0, adaptive=False, boost=0.0)
    save_fusion(SearchEngine(ProductIndex.open(tmp_path / "idx"), PaletteEncoder()), vector_only)  # `search tune-fusion`
    assert client.get("/healthz").json()["fusion"] == vector_only.to_json()
    ids = {mode: [r["id"] for r in client.get("/search", params={"q": "red shoes", "k": 12, "mode": mode}).json()["results"]] for mode in ("hybrid", "vector", "lexical")}
    assert ids["hybrid"] == ids["vector"] != ids["lexical"]  # the lexical side now weighs nothing
