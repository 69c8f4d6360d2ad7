import json
import struct
import zlib

import pytest
from _searchkit import PaletteEncoder, png_bytes, write_catalog
from fastapi.testclient import TestClient

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.service import MAX_UPLOAD_BYTES, create_app

VOCABS = {"brand": ["Puma", "Diesel"], "colour": ["Black", "Red", "Blue"]}


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    return build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), root / "idx", BuildOptions(progress=False))


@pytest.fixture(scope="module")
def client(index):
    return TestClient(create_app(SearchEngine(index, PaletteEncoder(vocabs=VOCABS))), raise_server_exceptions=False)


def colours(body):
    return [r["attributes"]["colour"] for r in body["results"]]


def test_healthz_and_openapi(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["products"] == 12 and body["model_id"] == "palette-v1"
    texts = body["batches"]["text"]["items"]
    client.get("/search", params={"q": "red", "mode": "vector"})
    assert client.get("/healthz").json()["batches"]["text"]["items"] == texts + 1  # the query went through the batcher
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/search", "/search/image", "/category", "/facets", "/products/{product_id}", "/products/{product_id}/similar", "/healthz"):
        assert path in paths
    assert "multipart/form-data" in paths["/search/image"]["post"]["requestBody"]["content"]


def test_text_search_returns_products_and_recognised_entities(client):
    response = client.get("/search", params={"q": "black puma shoes", "k": 2})
    assert response.status_code == 200
    body = response.json()
    assert colours(body) == ["Black", "Black"]
    assert [(e["group"], e["value"]) for e in body["entities"]] == [("colour", "Black"), ("brand", "Puma"), ("category", "Shoes")]
    first = body["results"][0]
    assert first["image_url"] == f"/products/{first['id']}/images/0" and first["score"] > 0


def test_post_search_with_filters(client):
    body = client.post("/search", json={"q": "red", "k": 12, "filters": {"brand": "Diesel", "price": {"max": 60}}}).json()
    assert {r["id"] for r in body["results"]} == {"p01", "p03", "p05"}
    body = client.get("/search", params={"q": "red", "filters": json.dumps({"colour": ["Blue", "Green"]}), "k": 12}).json()
    assert sorted(colours(body)) == ["Blue", "Blue", "Green", "Green"]


def _json_text(text: str) -> dict:
    """Request arguments sending `text` as a JSON body as is (JSON escapes such as lone surrogates included)."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize(
    "request_args, status, message",
    [
        (("get", "/search", {"params": {"q": ""}}), 400, "the query is empty"),
        (("get", "/search", {"params": {"q": "  "}}), 400, "the query is empty"),
        (("post", "/search", {"json": {"q": ""}}), 400, "the query is empty"),
        (("get", "/search", {"params": {"q": "x" * 10240}}), 400, "10240 characters long; at most 1000"),
        (("post", "/search", {"json": {"q": "y" * 10240}}), 400, "10240 characters long"),
        (("get", "/search", {"params": {"q": "red", "k": 0}}), 422, "k: Input should be greater than or equal to 1"),
        (("get", "/search", {"params": {"q": "red", "k": "many"}}), 422, "k: Input should be a valid integer"),
        (("post", "/search", {"json": {"k": 3}}), 422, "q: Field required"),
        (("post", "/search", {"json": {"q": "red", "k": 500}}), 422, "k: Input should be less than or equal to 200"),
        (("get", "/search", {"params": {"q": "red", "filters": "{brand"}}), 400, "filters is not valid JSON"),
        (("get", "/search", {"params": {"q": "red", "filters": '{"size": "M"}'}}), 400, "unknown filter field 'size'"),
        (("post", "/search", {"json": {"q": "red", "filters": {"fabric": "silk"}}}), 400, "unknown filter field 'fabric' (known: brand, category, colour, price)"),
        (("post", "/search", {"json": {"q": "red", "filters": {"brand": {"min": 1}}}}), 400, "non-numeric values"),
        (("post", "/search", {"json": {"q": "red", "filters": {"price": {"min": "a"}}}}), 400, "'price.min' must be a number"),
        (("get", "/search", {"params": {"q": "red", "mode": "semantic"}}), 422, "mode: Input should be 'vector', 'lexical' or 'hybrid'"),
        (("post", "/search", {"json": {"q": "red", "mode": "bm25"}}), 422, "mode: Input should be 'vector', 'lexical' or 'hybrid'"),
        (("get", "/products/nope", {}), 404, "no product 'nope'"),
        (("get", "/products/nope/similar", {}), 404, "no product 'nope'"),
        (("get", "/products/p00/images/7", {}), 404, "has no image 7"),
        (("get", "/category", {"params": {"path": ""}}), 400, "the category path is empty"),
        (("get", "/category", {"params": {"path": " > >>"}}), 400, "the category path is empty (it holds only '>' separators)"),
        # lone surrogates: in the query, in a filter value, in a filter field name (JSON escapes)
        (("post", "/search", _json_text('{"q": "puma \\ud800"}')), 400, "the query contains a lone surrogate"),
        (("post", "/search", _json_text('{"q": "red", "filters": {"brand": "\\ud800"}}')), 400, "filter 'brand' value contains a lone surrogate"),
        (("post", "/search", _json_text('{"q": "red", "filters": {"\\udfff": "x"}}')), 400, "filter field name contains a lone surrogate"),
        (("get", "/search", {"params": {"q": "red", "filters": '{"brand": ["Puma", "\\ud800"]}'}}), 400, "contains a lone surrogate"),
        (("get", "/search", {"params": {"q": "red", "filters": '{"\\ud800": "x"}'}}), 400, "filter field name contains a lone surrogate"),
        (("get", "/category", {"params": {"path": "Apparel", "filters": '{"\\ud800": "x"}'}}), 400, "filter field name contains a lone surrogate"),
        # filters that are not objects, nested too deep, or too many
        (("get", "/category", {"params": {"path": "Apparel", "filters": "4"}}), 400, "filters must be an object of field -> value(s), got 4"),
        (("get", "/category", {"params": {"path": "Apparel", "filters": "[1]"}}), 400, "filters must be an object of field -> value(s), got a list"),
        (("get", "/search", {"params": {"q": "red", "filters": '{"brand": ' + "[" * 5000 + "]" * 5000 + "}"}}), 400, "too deep"),
        (("post", "/search", _json_text('{"q": "red", "filters": {"brand": ' + "[" * 5000 + "]" * 5000 + "}}")), 400, "error parsing the body"),
        (("post", "/search", _json_text('{"q": "red", "filters": {"brand": ' + "[" * 900 + "]" * 900 + "}}")), 400, "values must be strings, got a list"),
        (("post", "/search", {"json": {"q": "red", "filters": {"brand": [str(i) for i in range(300_000)]}}}), 413, "larger than 256 KiB"),
        (("post", "/search", {"json": {"q": "red", "filters": {"brand": [str(i) for i in range(5_000)]}}}), 400, "5000 values; at most 1000"),
        (("post", "/search", _json_text('{"q": "red", "filters": {"brand": [NaN]}}')), 400, "values must be strings, got nan"),
        (("get", "/search", {"params": {"q": "red", "filters": '{"brand": ' + "1" * 5000 + "}"}}), 400, "too large numbers"),
        # NULs and control-only queries
        (("get", "/search", {"params": {"q": "\x00"}}), 400, "the query contains a NUL character at character 0"),
        (("get", "/search", {"params": {"q": "red\x00"}}), 400, "NUL character at character 3"),
        (("get", "/search", {"params": {"q": "\x01\x1f\x7f"}}), 400, "the query is empty"),
        (("get", "/category", {"params": {"path": "\x00"}}), 400, "the category path contains a NUL"),
        # malformed JSON bodies: the one error body, with the validation errors listed
        (("post", "/search", _json_text('{"q": ')), 422, "JSON decode error"),
        (("post", "/search", _json_text("[1]")), 422, "body: Input should be a valid dictionary"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message(client, request_args, status, message):
    method, url, kwargs = request_args
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["detail"]
    assert status != 422 or body["errors"][0]["msg"] in body["detail"]
    assert client.get("/search", params={"q": "red"}).status_code == 200  # and it keeps serving


WIDE_INT_FILTERS = [
    ('{"price": {"min": ' + "1" * 400 + "}}", "filter 'price.min' has an integer beyond 64 bits"),  # beyond any float
    ('{"brand": 18446744073709551616}', "filter 'brand' has an integer beyond 64 bits"),  # beyond what orjson echoes
]


@pytest.mark.parametrize("filters, message", WIDE_INT_FILTERS, ids=["range bound beyond a float", "value beyond orjson"])
@pytest.mark.parametrize("route", ["GET /search", "POST /search", "/category", "/search/image", "/similar"])
def test_integers_wider_than_64_bits_in_filters_get_400_on_every_route(client, route, filters, message):
    requests = {
        "GET /search": lambda: client.get("/search", params={"q": "red", "filters": filters}),
        "POST /search": lambda: client.post("/search", **_json_text(f'{{"q": "red", "filters": {filters}}}')),
        "/category": lambda: client.get("/category", params={"path": "Apparel", "filters": filters}),
        "/search/image": lambda: client.post("/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")}, data={"filters": filters}),
        "/similar": lambda: client.get("/products/p00/similar", params={"filters": filters}),
    }
    response = requests[route]()
    assert response.status_code == 400, response.text
    assert response.json() == {"detail": f"{message}; write it as a string"}


def test_a_filter_value_given_as_a_64_bit_integer_is_echoed_as_given(client):
    body = client.post("/search", json={"q": "red", "filters": {"brand": 2**63 - 1, "price": {"max": -(2**63)}}}).json()
    assert body["query"]["filters"] == {"brand": 2**63 - 1, "price": {"max": -(2**63)}} and body["results"] == []


def test_search_modes_say_which_side_found_each_hit(client):
    found = {}
    for mode in ("vector", "lexical", "hybrid"):
        body = client.get("/search", params={"q": "diesel shirts", "k": 12, "mode": mode}).json()
        assert body["query"]["mode"] == mode
        found[mode] = {r["id"]: r["sides"] for r in body["results"]}
    assert all(set(sides) == {"vector"} for sides in found["vector"].values())
    # lexical: only products sharing a word with the query, with their BM25 score and rank
    assert set(found["lexical"]) == {f"p{i:02d}" for i in range(12) if i % 2 or i % 3 == 1}
    assert all(set(sides) == {"lexical"} and sides["lexical"]["score"] > 0 for sides in found["lexical"].values())
    for pid, sides in found["hybrid"].items():
        assert set(sides) == {"vector"} | ({"lexical"} if pid in found["lexical"] else set())
        assert sides["vector"] == found["vector"][pid]["vector"]
    strict = client.post("/search", json={"q": "diesel shirts", "k": 12, "mode": "lexical", "strict": True}).json()
    assert sorted(r["id"] for r in strict["results"]) == ["p01", "p07"] and strict["query"]["strict"] is True


def test_image_search_by_upload(client):
    response = client.post("/search/image", files={"file": ("q.png", png_bytes("green"), "image/png")}, data={"k": "2"})
    assert response.status_code == 200, response.text
    assert colours(response.json()) == ["Green", "Green"]
    filtered = client.post(
        "/search/image",
        files={"file": ("q.png", png_bytes("green"), "image/png")},
        data={"k": "5", "filters": json.dumps({"category": "Footwear"})},
    ).json()
    assert [r["category_path"][0] for r in filtered["results"]] == ["Footwear"] * 4


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb needs no real pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "files, data, status, message",
    [
        ({"file": ("notes.txt", b"hello, not an image", "text/plain")}, {}, 415, "not an image"),
        ({"file": ("empty.png", b"", "image/png")}, {}, 415, "not an image"),
        ({"file": ("cut.png", png_bytes("red", 64)[:60], "image/png")}, {}, 415, "cannot be decoded"),
        ({"file": ("bomb.png", _png_header_claiming(50_000, 50_000), "image/png")}, {}, 413, "more than 40000000 pixels"),
        ({"file": ("big.png", _png_header_claiming(7_000, 7_000), "image/png")}, {}, 413, "more than 40000000 pixels"),
        ({"other": ("q.png", png_bytes("red"), "image/png")}, {}, 400, "no file field named 'file'"),
        ({"file": ("q.png", png_bytes("red"), "image/png")}, {"k": "ten"}, 422, "k: Input should be a valid integer"),
        ({"file": ("q.png", png_bytes("red"), "image/png")}, {"filters": '{"nope": 1}'}, 400, "unknown filter field 'nope'"),
    ],
)
def test_bad_uploads_get_a_4xx(client, files, data, status, message):
    response = client.post("/search/image", files=files, data=data)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_not_multipart_and_huge_uploads_are_refused(client):
    response = client.post("/search/image", content=b"raw bytes", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 400 and "no file field named 'file'" in response.json()["detail"]
    big = b"\xff" * (50 * 1024 * 1024)
    response = client.post("/search/image", files={"file": ("big.jpg", big, "image/jpeg")})
    assert response.status_code == 413 and response.json()["detail"] == f"the request body is larger than {MAX_UPLOAD_BYTES // 2**20} MB"

    def chunks():  # no content-length: the limit is enforced while reading
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(12):
            yield b"\x00" * (1024 * 1024)

    response = client.post("/search/image", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413
    assert client.get("/healthz").status_code == 200


def test_category_tree_and_category_query(client):
    body = client.get("/category").json()
    assert [(n["name"], n["count"]) for n in body["tree"]] == [("Apparel", 8), ("Footwear", 4)]
    assert "results" not in body
    body = client.get("/category", params={"path": "Apparel > Bottomwear", "k": 10}).json()
    assert body["query"]["category"] == "Apparel > Bottomwear"
    assert {tuple(r["category_path"]) for r in body["results"]} == {("Apparel", "Bottomwear", "Jeans")}
    assert len(body["results"]) == 4
    assert len(client.get("/category", params={"path": "Apparel", "within": "false", "k": 12}).json()["results"]) == 12


@pytest.mark.parametrize(
    "category, spelled",
    [("apparel", "Apparel"), ("APPAREL > topwear", "Apparel > Topwear"), (["footwear>shoes", "Apparel > BOTTOMWEAR"], ["Footwear > Shoes", "Apparel > Bottomwear"])],
)
def test_category_filters_ignore_case_as_attribute_filters_do(client, category, spelled):
    def found(filters):
        return [r["id"] for r in client.post("/search", json={"q": "red", "k": 12, "filters": filters}).json()["results"]]

    assert found({"category": category, "brand": "puma"}) == found({"category": spelled, "brand": "Puma"}) != []
    path = category if isinstance(category, str) else category[0]
    in_category = [{r["id"] for r in client.get("/category", params={"path": p, "k": 12}).json()["results"]} for p in (path, path.title())]
    assert in_category[0] == in_category[1] != set()  # the whole subtree either way


def test_facets(client):
    facets = client.get("/facets").json()["facets"]
    assert set(facets) == {"brand", "colour", "price"}
    assert facets["price"] == {"type": "range", "min": 10.0, "max": 120.0}
    assert {v["value"]: v["count"] for v in facets["colour"]["values"]} == {c: 2 for c in ("Red", "Green", "Blue", "Yellow", "Black", "White")}


def test_products_images_and_similar(client):
    body = client.get("/products/p01").json()
    assert body["id"] == "p01" and body["image_urls"] == ["/products/p01/images/0", "/products/p01/images/1"]
    image = client.get("/products/p01/images/1")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content[:4] == b"\x89PNG"
    similar = client.get("/products/p00/similar", params={"k": 3}).json()
    ids = [r["id"] for r in similar["results"]]
    assert "p00" not in ids and ids[0] == "p06"  # the other red product


def test_web_page_and_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_an_index_from_another_model_gets_409_and_the_rest_keeps_working(index):
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder("another-model"))), raise_server_exceptions=False)
    for response in (
        client.get("/search", params={"q": "red"}),
        client.post("/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")}),
        client.get("/category", params={"path": "Apparel"}),
    ):
        assert response.status_code == 409
        assert "built with model 'palette-v1'" in response.json()["detail"] and "another-model" in response.json()["detail"]
    health = client.get("/healthz").json()
    assert health["status"] == "incompatible model" and "another-model" in health["detail"]
    assert client.get("/products/p00").status_code == 200
    assert client.get("/products/p00/similar").status_code == 200


def _image_bytes(fmt: str, colour: str = "green", size: int = 16) -> bytes:
    from io import BytesIO

    from PIL import Image

    from _searchkit import PALETTE

    buf = BytesIO()
    Image.new("RGB", (size, size), PALETTE[colour]).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_each_accepted_format_is_searched_by_its_content(client, fmt):
    # the name and declared type say PNG whatever the bytes are: only the bytes count
    response = client.post("/search/image", files={"file": ("q.png", _image_bytes(fmt), "image/png")}, data={"k": "2"})
    assert response.status_code == 200, response.text
    assert colours(response.json()) == ["Green", "Green"]


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n"


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("q.eps", EPS, "not an image in an accepted format (JPEG, PNG, WebP, GIF or BMP)"),
        ("q.png", EPS, "not an image in an accepted format"),  # a PNG by name only
        ("q.eps", b"\xc5\xd0\xd3\xc6" + EPS, "not an image in an accepted format"),  # binary EPS header
        ("q.tif", b"II*\x00" + b"\x00" * 64, "not an image in an accepted format"),
    ],
)
def test_other_formats_are_refused_before_any_decoder_runs(client, monkeypatch, name, data, message):
    import subprocess

    from PIL import Image

    started, opened = [], []
    real_open = Image.open

    def no_child_process(self, *args, **kwargs):
        started.append(args)
        raise OSError("this test starts no child process")

    def open_spy(*args, **kwargs):
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_child_process)
    monkeypatch.setattr(Image, "open", open_spy)
    response = client.post("/search/image", files={"file": (name, data, "image/png")})
    assert response.status_code == 415 and message in response.json()["detail"]
    assert started == [] and opened == []  # no Ghostscript, and Pillow never saw the bytes


def test_a_jpeg_cut_inside_its_header_gets_415(client):
    jpeg = _image_bytes("JPEG", size=64)
    for cut in (4, 20, 300):
        response = client.post("/search/image", files={"file": ("cut.jpg", jpeg[:cut], "image/jpeg")})
        assert response.status_code == 415, (cut, response.text)
        assert "the JPEG image cannot be decoded" in response.json()["detail"] and "BytesIO" not in response.text
    assert client.get("/healthz").status_code == 200


def test_an_empty_k_in_a_form_is_refused(client):
    response = client.post("/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")}, data={"k": ""})
    assert response.status_code == 422 and response.json()["detail"] == "k: Input should be a valid integer, unable to parse string as an integer"
    assert response.json()["errors"][0]["loc"] == ["body", "k"]


def _with_k(client, route: str, k):
    """A request to `route` asking for `k` results, k sent as the route takes it (JSON in a POST /search)."""
    if route == "POST /search":
        return client.post("/search", json={"q": "red", "k": k})
    if route == "/search/image":
        return client.post("/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")}, data={"k": str(k)})
    url, params = {"GET /search": ("/search", {"q": "red"}), "/category": ("/category", {"path": "Apparel"}), "/similar": ("/products/p00/similar", {})}[route]
    return client.get(url, params={**params, "k": k})


@pytest.mark.parametrize("route", ["GET /search", "POST /search", "/search/image", "/category", "/similar"])
@pytest.mark.parametrize("k, message", [(0, "greater than or equal to 1"), (201, "less than or equal to 200")])
def test_k_out_of_range_is_the_same_422_on_every_route(client, route, k, message):
    response = _with_k(client, route, k)
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == f"k: Input should be {message}"
    assert _with_k(client, route, 200).status_code == 200


@pytest.mark.parametrize("k", ["true", "2.5", "1e400", '"5"'])
def test_k_in_a_json_body_must_be_a_json_integer(client, k):
    response = client.post("/search", **_json_text(f'{{"q": "red", "k": {k}}}'))
    assert response.status_code == 422 and response.json()["detail"].startswith("k: ")
    assert "integer" in response.json()["detail"]


@pytest.mark.parametrize("k", ["3.0", "3e0"])
def test_k_in_a_json_body_may_be_a_whole_number_as_the_schema_says(client, k):
    response = client.post("/search", **_json_text(f'{{"q": "red", "k": {k}}}'))
    assert response.status_code == 200 and len(response.json()["results"]) == 3


class _BlockingImages(PaletteEncoder):
    """Image encoding waits until the test releases it (text encoding does not)."""

    def __init__(self):
        import threading

        super().__init__()
        self.release, self.entered = threading.Event(), threading.Event()

    def encode_images(self, images):
        self.entered.set()
        self.release.wait(30)
        return super().encode_images(images)


def test_a_slow_upload_gets_503_and_text_searches_do_not_wait_for_it(index):
    import threading

    from catalogclip.search.service import ServiceOptions

    encoder = _BlockingImages()
    app_client = TestClient(create_app(SearchEngine(index, encoder), ServiceOptions(image_timeout_s=0.5)), raise_server_exceptions=False)
    upload: dict = {}
    thread = threading.Thread(target=lambda: upload.update(r=app_client.post("/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")})))
    thread.start()
    assert encoder.entered.wait(30)  # the image thread is now busy with the upload
    assert colours(app_client.get("/search", params={"q": "blue", "k": 2}).json()) == ["Blue", "Blue"]
    thread.join(30)
    encoder.release.set()
    assert upload["r"].status_code == 503 and "not processed within 0.5 s" in upload["r"].json()["detail"]
    assert upload["r"].headers["retry-after"] == "5"


def test_no_server_path_in_any_response(index, tmp_path):
    root, index_dir = str(index.catalog_root.resolve()), str(index.path.resolve())
    responses = [
        *(TestClient(create_app(SearchEngine(index, PaletteEncoder(model))), raise_server_exceptions=False).get(url)
          for model in ("palette-v1", "another-model") for url in ("/healthz", "/search?q=red", "/products/nope", "/products/p01", "/category?path=Apparel")),
    ]
    for response in responses:
        assert root not in response.text and index_dir not in response.text and "/tmp" not in response.text, response.text
    assert {r.status_code for r in responses} == {200, 404, 409}
    product = responses[3].json()
    assert product["images"] == [{"source": "merchant", "url": "/products/p01/images/0"}, {"source": "merchant", "url": "/products/p01/images/1"}]


def test_the_image_route_serves_only_images_with_their_sniffed_type(tmp_path):
    root = tmp_path / "shop"
    catalog = read_jsonl(write_catalog(root))
    (root / "images" / "p01_1.png").write_bytes(_image_bytes("JPEG"))  # a JPEG named .png
    index = build_index(PaletteEncoder(), catalog, tmp_path / "idx", BuildOptions(progress=False))
    (root / "images" / "p00_0.png").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # not an image (any more)
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder())), raise_server_exceptions=False)
    served = client.get("/products/p01/images/1")
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg" and served.content[:3] == b"\xff\xd8\xff"
    assert served.headers["x-content-type-options"] == "nosniff"
    refused = client.get("/products/p00/images/0")
    assert refused.status_code == 404 and "root:x" not in refused.text
    assert refused.json()["detail"] == "image 0 of product 'p00' is missing or not an image"
    assert client.get("/products/p02/images/-1").status_code == 404


def test_the_image_route_never_serves_a_file_outside_the_catalog_root(tmp_path):
    """Outside images that are real PNGs (so sniffing alone would pass them), reached by an
    absolute path, by ../ and by a symlink swapped in after indexing: all 404, bytes never sent."""
    import os

    import numpy as np

    from catalogclip.catalog.schema import ImageRef, Product

    root = tmp_path / "shop"
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), tmp_path / "idx", BuildOptions(progress=False))
    outside = tmp_path / "private.png"
    outside.write_bytes(png_bytes("blue"))
    evil = Product("evil", "Blue thing", images=[ImageRef("images/p00_0.png"), ImageRef(str(outside)), ImageRef("images/../../private.png")])
    index.add([evil], np.eye(3, PaletteEncoder().dim, dtype=np.float32), [(0, 0), (0, 1), (0, 2)])  # as a tampered index would hold it
    index.commit()
    (root / "images" / "p02_0.png").unlink()
    os.symlink(outside, root / "images" / "p02_0.png")
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder())), raise_server_exceptions=False)
    assert client.get("/products/evil/images/0").status_code == 200  # the inside image still serves
    for url in ("/products/evil/images/1", "/products/evil/images/2", "/products/p02/images/0"):
        response = client.get(url)
        assert response.status_code == 404 and "outside the catalog root" in response.json()["detail"], (url, response.text)
    assert str(tmp_path) not in client.get("/products/evil").text


def _get_unless_it_hangs(client, url: str, fifo):
    """GET `url`; a request stuck opening `fifo` is released (a writer opens it) and fails the test."""
    import os
    import threading

    got: dict = {}
    thread = threading.Thread(target=lambda: got.update(response=client.get(url)), daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"GET {url} blocked opening a FIFO")
    return got["response"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs on this platform")
def test_the_image_route_serves_only_regular_files(tmp_path):
    """A FIFO, a folder or a socket where an indexed image was: 404 at once (a FIFO's open used
    to block a worker thread until some writer came)."""
    import os
    import socket

    root = tmp_path / "shop"
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), tmp_path / "idx", BuildOptions(progress=False))
    images = root / "images"
    for name in ("p00_0.png", "p01_0.png", "p02_0.png"):
        (images / name).unlink()
    os.mkfifo(images / "p00_0.png")
    (images / "p01_0.png").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(images / "p02_0.png"))
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder())), raise_server_exceptions=False)
    for product in ("p00", "p01", "p02"):
        response = _get_unless_it_hangs(client, f"/products/{product}/images/0", images / "p00_0.png")
        assert response.status_code == 404 and response.json() == {"detail": f"image 0 of product '{product}' is missing or not an image"}
    server.close()
    served = client.get("/products/p03/images/0")
    assert served.status_code == 200 and served.content == (images / "p03_0.png").read_bytes()
    assert served.headers["content-length"] == str(len(served.content)) and served.headers["content-type"] == "image/png"


def test_the_image_route_sends_the_file_it_checked_even_if_the_path_changes_after(tmp_path, monkeypatch):
    """The image is sniffed and sent from one open handle: a file swapped in between (here a text
    file, or a symlink out of the catalog root) is never what gets sent."""
    import os

    from catalogclip.search import uploads
    from catalogclip.search.index import ProductIndex

    root = tmp_path / "shop"
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), tmp_path / "idx", BuildOptions(progress=False))
    image = root / "images" / "p00_0.png"
    checked = image.read_bytes()
    real_sniff, real_image_file = uploads.sniff_format, ProductIndex.image_file

    def sniff_then_swap(head):
        (tmp_path / "swap.txt").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
        os.replace(tmp_path / "swap.txt", image)
        return real_sniff(head)

    monkeypatch.setattr(uploads, "sniff_format", sniff_then_swap)
    client = TestClient(create_app(SearchEngine(index, PaletteEncoder())), raise_server_exceptions=False)
    served = client.get("/products/p00/images/0")
    assert served.status_code == 200 and served.content == checked and served.headers["content-type"] == "image/png"
    assert image.read_bytes().startswith(b"root:x")  # the path now holds the text file

    outside = tmp_path / "private.png"
    outside.write_bytes(png_bytes("blue"))  # an image: only the check of its path keeps it out

    def resolve_then_swap_for_a_symlink(self, product, number):
        path = real_image_file(self, product, number)  # resolved and checked inside the root
        path.unlink()
        os.symlink(outside, path)
        return path

    monkeypatch.setattr(uploads, "sniff_format", real_sniff)
    monkeypatch.setattr(ProductIndex, "image_file", resolve_then_swap_for_a_symlink)
    refused = client.get("/products/p01/images/0")
    assert refused.status_code == 404 and refused.json() == {"detail": "image 0 of product 'p01' is missing or not an image"}


ODD_IDS = ["SKU/123", "q?x=1#frag", "a b", "50%off", "dé/商品", "p00/similar", "p01/images/0"]


@pytest.fixture(scope="module")
def odd_ids_client(tmp_path_factory):
    """A shop whose product ids need percent-encoding, among them ids that look like other routes."""
    from _searchkit import SHOES, product, standard_products

    root = tmp_path_factory.mktemp("odd")
    products = standard_products()[:2] + [product(pid, "red", "Puma", SHOES, 10.0, views=2) for pid in ODD_IDS]
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(root, products)), root / "idx", BuildOptions(progress=False))
    return TestClient(create_app(SearchEngine(index, PaletteEncoder())), raise_server_exceptions=False)


@pytest.mark.parametrize("product_id", ODD_IDS)
def test_every_url_the_service_emits_encodes_the_id_and_reaches_the_product(odd_ids_client, product_id):
    from urllib.parse import quote

    client = odd_ids_client
    base = f"/products/{quote(product_id, safe='')}"
    body = client.get(base).json()
    assert body["id"] == product_id
    assert body["image_urls"] == [f"{base}/images/0", f"{base}/images/1"] and body["image_url"] == f"{base}/images/0"
    assert [image["url"] for image in body["images"]] == body["image_urls"]
    hits = client.get("/search", params={"q": "red", "k": 20, "mode": "vector"}).json()["results"]
    assert [hit["image_url"] for hit in hits if hit["id"] == product_id] == [f"{base}/images/0"]
    for url in body["image_urls"]:
        image = client.get(url)
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG", (url, image.text)
    similar = client.get(f"{base}/similar", params={"k": 3}).json()
    assert similar["query"]["similar_to"] == product_id and product_id not in [r["id"] for r in similar["results"]]
    assert client.get(f"{base}/images/2").json() == {"detail": f"product '{product_id}' has no image 2 (it has 2)"}


def test_an_id_is_one_encoded_segment_so_ids_never_reach_another_route(odd_ids_client):
    client = odd_ids_client
    assert client.get("/products/p00/similar").json()["query"]["similar_to"] == "p00"
    assert client.get("/products/p00%2Fsimilar").json()["id"] == "p00/similar"
    assert client.get("/products/p01/images/0").headers["content-type"] == "image/png"
    assert client.get("/products/p01%2Fimages%2F0").json()["id"] == "p01/images/0"
    assert client.get("/products/SKU/123").json() == {"detail": "Not Found"}  # an unencoded '/' is a path separator


def test_head_of_an_image_is_its_get_without_the_body(client):
    got, head = client.get("/products/p01/images/1"), client.head("/products/p01/images/1")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "x-content-type-options"):
        assert head.headers[name] == got.headers[name]
    assert head.headers["content-length"] == str(len(got.content))
    missing = client.head("/products/p01/images/7")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/json"
    assert client.post("/products/p01/images/1").headers["allow"] == "GET, HEAD"


def _form_with_a_field(name: str, size: int) -> dict:
    """Request arguments: a multipart upload whose field `name` holds `size` bytes (and a good image)."""
    body = (
        f'--XB\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + b"3" * size
        + b'\r\n--XB\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'
        + png_bytes("red") + b"\r\n--XB--\r\n"
    )
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=XB"}}


@pytest.mark.parametrize("name, size", [("k", 2 * 2**20), ("filters", 300 * 1024), ("other", 257 * 1024)])
def test_an_oversized_form_field_gets_413(client, name, size):
    response = client.post("/search/image", **_form_with_a_field(name, size))
    assert response.status_code == 413 and response.json() == {"detail": "a form field is larger than 256 KiB"}


def test_a_form_field_within_the_limit_is_read(client):
    response = client.post("/search/image", **_form_with_a_field("other", 255 * 1024))
    assert response.status_code == 200, response.text


def test_an_unreadable_form_gets_400_with_the_parsers_reason(client):
    fields = "".join(f'--XB\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(9)) + "--XB--\r\n"
    response = client.post("/search/image", content=fields.encode(), headers={"content-type": "multipart/form-data; boundary=XB"})
    assert response.status_code == 400
    assert response.json() == {"detail": "cannot read the multipart form: Too many fields. Maximum number of fields is 8."}
