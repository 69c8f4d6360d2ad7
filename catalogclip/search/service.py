"""The search service: a FastAPI app over a `SearchEngine`, and the web page at ``/``.

Every bad input gets a 4xx with the one error body of catalogclip/search/errors.py
(``{"detail": message}``): an empty, overlong or unusable query or filter (400), an unknown
product or image (404), an index built by another model (409), an oversized body, form field or
image (413), an upload that is not an accepted image (415), a mistyped or out-of-range parameter
such as `k` (422), an image that cannot be processed in time (503). No message or product carries
a server path, and every product URL carries its id percent-encoded (`product_url`).

Uploads are sniffed (JPEG, PNG, WebP, GIF, BMP only) before Pillow sees them, then decoded and
encoded off the event loop with a time budget, in threads of their own, so they never stall it
nor queue ahead of text searches; concurrent queries are encoded in micro-batches
(catalogclip/search/batching.py).
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Callable, Iterator, Literal
from urllib.parse import quote, unquote

import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from starlette.routing import Match
from starlette.types import Scope

from catalogclip.search.batching import BatchingEncoder
from catalogclip.search.engine import MAX_K, LiveEngine, SearchEngine, SearchResult
from catalogclip.search.index import ProductIndex
from catalogclip.search.errors import ERROR_RESPONSES, BodyLimit, Redactor, install_error_handlers, size_text
from catalogclip.search.query import QueryError
from catalogclip.search.uploads import FORMATS, content_type, decode_image, open_image_file

Mode = Literal["vector", "lexical", "hybrid"]  # catalogclip.search.fusion.MODES
WEB_DIR = Path(__file__).parent / "web"
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: any other request body (a POST /search) is small: a query plus its filters
MAX_BODY_BYTES = 256 * 1024
#: an upload that is not decoded and encoded within this many seconds gets a 503
IMAGE_TIMEOUT_S = 10.0


#: bounds of `k`, the number of results, declared on every route: out of them (or not an integer) is a 422
K_RANGE = {"ge": 1, "le": MAX_K}


def _json_schema_integer(value: Any) -> Any:
    """`k` as the published schema's "integer" reads: 5, and 5.0 or 5e0 (JSON Schema counts a
    number with no fraction as an integer, so clients and schemathesis may send it); not true, "5"
    or 5.5 (pydantic's lax int would take the first two)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("Input should be a valid integer")
    return int(value)


class SearchBody(BaseModel):
    q: str
    k: Annotated[int, BeforeValidator(_json_schema_integer)] = Field(10, **K_RANGE)
    filters: dict[str, Any] | None = None
    mode: Mode = "hybrid"
    strict: bool = False
    spell: bool = True


def _filters(raw: str | None) -> dict | None:
    """The `filters` query/form parameter: a JSON object."""
    if raw is None or not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise QueryError(f"filters is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError):  # an integer of thousands of digits, nesting too deep
        raise QueryError("filters is not a JSON object this service accepts (too deep or too large numbers)") from None


def product_url(product_id: str, *rest: str | int) -> str:
    """The URL of a product route: the id percent-encoded whole ("SKU/123" -> "SKU%2F123", "?",
    "#", spaces ...), so any catalog id is one path segment (`EncodedPathRoute` decodes it)."""
    return "/".join(["/products", quote(product_id, safe=""), *map(str, rest)])


def _image_json(product_id: str, number: int, image) -> dict:
    """A product image as the API shows it: where to fetch it, never where the server keeps it."""
    out = {**image.to_json(), "url": product_url(product_id, "images", number)}
    del out["path"]
    return out


def _product_json(product, score: float | None = None, image: int = 0, sides: dict | None = None) -> dict:
    out = {
        **product.to_json(),
        "images": [_image_json(product.id, n, im) for n, im in enumerate(product.images)],
        "image_urls": [product_url(product.id, "images", n) for n in range(len(product.images))],
        "image_url": product_url(product.id, "images", image),
    }
    if score is not None:
        out["score"] = round(score, 6)
    if sides is not None:
        out["sides"] = sides
    return out


def _result_json(result: SearchResult) -> dict:
    body = result.to_json()
    body["results"] = [_product_json(h.product, h.score, h.image, h.sides) for h in result.hits]
    return body


def _chunks(file: BinaryIO, size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """The first `size` bytes of an open file (no more than the Content-Length sent), in chunks;
    the file is closed after the last one."""
    with file:
        while size > 0 and (data := file.read(min(chunk, size))):
            size -= len(data)
            yield data


def _json(body: dict) -> Response:
    """`body` serialised by orjson in one call: FastAPI's own path walks it in Python first
    (`jsonable_encoder`, 0.8 ms for ten results, more than the vector search)."""
    return Response(orjson.dumps(body), media_type="application/json")


#: how Starlette's form parsers say a field passed `max_part_size` (they raise one exception type for every problem)
_FIELD_TOO_LARGE = ("Part exceeded maximum size", "Field exceeded maximum size")


async def _upload_form(request: Request) -> tuple[bytes, dict[str, str]]:
    """(file bytes, other fields) of a multipart upload with one file field named `file`
    (`BodyLimit` bounds its size; each other field is small, as a JSON body is)."""
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=MAX_BODY_BYTES)
    except HTTPException:
        raise
    except Exception as exc:  # Starlette's own 400 (an HTTPException of its own) or MultiPartException
        reason = str(getattr(exc, "detail", None) or getattr(exc, "message", exc))
        if reason.startswith(_FIELD_TOO_LARGE):
            raise HTTPException(413, f"a form field is larger than {size_text(MAX_BODY_BYTES)}") from None
        raise HTTPException(400, f"cannot read the multipart form: {reason}") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "the form has no file field named 'file'")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return await upload.read(), fields


class ImageFields(BaseModel):
    """The upload form's fields besides `file` (strings, as forms send them)."""

    k: int = Field(10, **K_RANGE)
    filters: str = Field("", description="JSON object of filters")


def _image_fields(fields: dict[str, str]) -> ImageFields:
    """The form's fields validated as a JSON body's are, with the same 422 for a bad `k`."""
    try:
        return ImageFields.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None


class EncodedPathRoute(APIRoute):
    """A route matched against the path as the client sent it, percent-encoded, each parameter
    decoded afterwards. Starlette routes the decoded path, where the id "SKU/123" (sent as
    SKU%2F123) would be two segments: 404, or worse, the id "a/similar" would reach the similar
    route of product "a"."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = scope.get("raw_path")
        if scope["type"] != "http" or raw is None:
            return super().matches(scope)
        match, child = super().matches({**scope, "path": raw.decode("latin-1")})
        if match != Match.NONE:
            child["path_params"] = {name: unquote(v) if isinstance(v, str) else v for name, v in child["path_params"].items()}
        return match, child


class ImageWorkers:
    """A few threads for image work (decode, resize, then encode through the batcher), with a
    time budget per upload.

    Separate from the threads serving text searches, so uploads queue among themselves; an
    upload still waiting when its budget runs out is dropped, not run later.
    """

    def __init__(self, threads: int = 2, timeout_s: float = IMAGE_TIMEOUT_S) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="image")
        self.timeout_s = timeout_s

    async def run(self, work: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().run_in_executor(self.pool, work)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise HTTPException(503, f"the image was not processed within {self.timeout_s:g} s; try again later", {"Retry-After": "5"}) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class ServiceOptions:
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    #: how long a query waits for others to share its model batch (0: no batching)
    batch_window_ms: float = 2.0
    max_batch: int = 32
    #: threads decoding uploads (the model runs in the batcher's threads)
    image_threads: int = 2
    image_timeout_s: float = IMAGE_TIMEOUT_S
    #: what runs a run's text and image towers for queries (catalogclip/featurise/runtime.py):
    #: "auto" picks ONNX Runtime where it matches PyTorch and is faster (half MiniLM's time, and
    #: one interpreter-lock release per batch instead of one per PyTorch operator)
    query_runtime: str = "auto"


def _image_route_doc() -> dict:
    """The image route answers with the image's own sniffed type."""
    return {200: {"description": "The image file", "content": {content_type(name): {} for name in FORMATS}}}


def _result_links() -> dict:
    """OpenAPI links from a result list to the first result's product routes (clients and
    stateful testers follow them)."""
    first = "$response.body#/results/0/id"
    return {200: {"links": {
        "product": {"operationId": "product", "parameters": {"product_id": first}},
        "similar": {"operationId": "similar", "parameters": {"product_id": first}},
        "image": {"operationId": "product_image", "parameters": {"product_id": first, "number": 0}},
    }}}


def _on_runtime(encoder, runtime: str):
    """A run's encoder with its query towers on `runtime` (other encoders as they are)."""
    from catalogclip.embed import RunEncoder

    return encoder.on_runtime(runtime) if isinstance(encoder, RunEncoder) else encoder


def create_app(engine: SearchEngine, options: ServiceOptions | None = None) -> FastAPI:
    options = options or ServiceOptions()
    index = engine.index
    encoder = _on_runtime(engine.encoder, options.query_runtime)
    if options.batch_window_ms > 0:
        encoder = BatchingEncoder(encoder, options.batch_window_ms, options.max_batch)
    if encoder is not engine.encoder:
        engine = engine.with_encoder(encoder)
    # every request asks `live` for the engine: an `index --update` while the service runs is served from its commit on
    live = LiveEngine(engine)
    images = ImageWorkers(options.image_threads, options.image_timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        images.close()
        if isinstance(encoder, BatchingEncoder):
            encoder.close()

    app = FastAPI(
        title="catalogclip search",
        description="Cross-modal product search: text, image and category queries with attribute filters.",
        version="1",
        responses=ERROR_RESPONSES,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, default=MAX_BODY_BYTES, per_path={"/search/image": options.max_upload_bytes})
    install_error_handlers(app, Redactor(index.path, index.catalog_root, index.info.get("run")))

    def product_or_404(index: ProductIndex, product_id: str):
        try:
            return index.product(product_id)
        except KeyError:
            raise HTTPException(404, f"no product '{product_id}'") from None

    @app.get("/healthz")
    def healthz() -> dict:
        engine = live.current()
        index = engine.index
        return {
            "status": "ok" if engine.incompatible is None else "incompatible model",
            "products": len(index),
            "model_id": index.model_id,
            "encoder_model_id": engine.encoder.model_id,
            "kind": index.kind,
            "detail": engine.incompatible,
            "fusion": engine.fusion.to_json(),
            "batches": engine.encoder.stats() if isinstance(engine.encoder, BatchingEncoder) else None,
        }

    @app.get("/search", operation_id="search", responses=_result_links())
    def search_get(
        q: str = "", k: int = Query(10, **K_RANGE), filters: str | None = None, mode: Mode = "hybrid", strict: bool = False,
        spell: bool = True,
    ) -> dict:
        return _json(_result_json(live.answer(lambda engine: engine.search_text(q, k, _filters(filters), mode, strict, spell))))

    @app.post("/search", operation_id="search_post", responses=_result_links())
    def search_post(body: SearchBody) -> dict:
        return _json(_result_json(live.answer(lambda engine: engine.search_text(body.q, body.k, body.filters, body.mode, body.strict, body.spell))))

    @app.get("/suggest", operation_id="suggest")
    def suggest(q: str = "", k: int = Query(8, **K_RANGE)) -> dict:
        """Search-as-you-type: completions of the query typed so far (entity values, then words)."""
        return _json(live.answer(lambda engine: engine.suggest(q, k)))

    @app.post(
        "/search/image",
        operation_id="search_image",
        responses=_result_links(),
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}, **ImageFields.model_json_schema()["properties"]},
                        }
                    }
                },
                "required": True,
            }
        },
    )
    async def search_image(request: Request) -> dict:
        data, form = await _upload_form(request)
        fields = _image_fields(form)
        k, filters = fields.k, _filters(fields.filters)

        def decode_and_search() -> SearchResult:
            image = decode_image(data)
            return live.answer(lambda engine: engine.search_image(image, k, filters))

        # decoding and the model run in the image threads: the event loop and text searches go on
        return _json(_result_json(await images.run(decode_and_search)))

    @app.get("/category", operation_id="category")
    def category(path: str | None = None, k: int = Query(10, **K_RANGE), filters: str | None = None, within: bool = True) -> dict:
        """The category tree; with `path`, also the products for that category query."""

        def answer(engine: SearchEngine) -> dict:
            body: dict = {"tree": engine.index.category_tree()}
            if path is not None:
                body.update(_result_json(engine.search_category(path, k, _filters(filters), within)))
            return body

        return live.answer(answer)

    @app.get("/facets", operation_id="facets")
    def facets() -> dict:
        return {"facets": live.current().index.facets()}

    def product_route(path: str, **kwargs) -> Callable:
        """`app.get` for a route under /products/{product_id}: an `EncodedPathRoute`."""

        def register(endpoint: Callable) -> Callable:
            app.router.add_api_route(path, endpoint, route_class_override=EncodedPathRoute, **kwargs)
            return endpoint

        return register

    @product_route("/products/{product_id}", operation_id="product")
    def product(product_id: str) -> dict:
        return _json(_product_json(product_or_404(live.current().index, product_id)))

    @product_route("/products/{product_id}/similar", operation_id="similar", responses=_result_links())
    def similar(product_id: str, k: int = Query(10, **K_RANGE), filters: str | None = None) -> dict:
        def answer(engine: SearchEngine) -> SearchResult:
            product_or_404(engine.index, product_id)
            return engine.similar(product_id, k, _filters(filters))

        return _json(_result_json(live.answer(answer)))

    @product_route("/products/{product_id}/images/{number}", operation_id="product_image", response_class=Response, responses=_image_route_doc())
    def product_image(product_id: str, number: int, request: Request) -> Response:
        """Image `number` of a product, as the index recorded it, if it is an accepted image."""
        index = live.current().index
        found = product_or_404(index, product_id)
        try:
            opened = open_image_file(index.image_file(found, number))
        except KeyError as exc:
            raise HTTPException(404, exc.args[0]) from None
        if opened is None:
            raise HTTPException(404, f"image {number} of product '{product_id}' is missing or not an image")
        file, size, media_type = opened
        headers = {"Content-Length": str(size), "X-Content-Type-Options": "nosniff"}
        if request.method == "HEAD":  # what a GET would answer, without reading the file
            file.close()
            return Response(headers=headers, media_type=media_type)
        return StreamingResponse(_chunks(file, size), media_type=media_type, headers=headers)

    # HEAD as GET without the body (FastAPI adds no HEAD to a GET route); one documented operation
    product_route("/products/{product_id}/images/{number}", methods=["HEAD"], response_class=Response, include_in_schema=False)(product_image)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


#: where uvicorn worker processes find what to serve (JSON: `open_engine` arguments, ServiceOptions)
WORKER_SPEC_ENV = "CATALOGCLIP_SERVE_SPEC"


def _one_thread_per_request() -> None:
    """Torch and FAISS single-threaded: an OpenMP team per request thread only contends for the
    cores; concurrency comes from requests, batches and worker processes."""
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


def _freeze_start_up_objects() -> None:
    """Keep what start-up made (model, tokenizer, index: half a million objects with the twotower
    run) out of the garbage collector's sweeps: each full collection took a quarter of a second,
    every request waiting, and it set the 99th percentile latency under load."""
    gc.collect()
    gc.freeze()


def serve(engine: SearchEngine, host: str = "127.0.0.1", port: int = 8000, options: ServiceOptions | None = None) -> None:
    """Run the service in this process until interrupted."""
    import uvicorn

    _one_thread_per_request()
    app = create_app(engine, options)
    _freeze_start_up_objects()
    uvicorn.run(app, host=host, port=port, log_level="info")


def worker_app() -> FastAPI:
    """uvicorn's app factory in each worker process: its own engine, from WORKER_SPEC_ENV."""
    from catalogclip.search.engine import open_engine

    from catalogclip.search.backend import Connection

    spec = json.loads(os.environ[WORKER_SPEC_ENV])
    _one_thread_per_request()
    engine_args = {**spec["engine"], "connection": Connection(**spec["engine"].get("connection", {}))}
    app = create_app(open_engine(**engine_args), ServiceOptions(**spec["options"]))
    _freeze_start_up_objects()
    return app


def serve_workers(engine_args: dict, workers: int, host: str = "127.0.0.1", port: int = 8000, options: ServiceOptions | None = None) -> None:
    """Run `workers` processes on one port, each with its own engine (model, index, batcher), so
    the per-request Python work is not serialised by one interpreter lock."""
    import uvicorn

    os.environ[WORKER_SPEC_ENV] = json.dumps({"engine": engine_args, "options": asdict(options or ServiceOptions())})
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=workers, host=host, port=port, log_level="info")


__all__ = ["MAX_UPLOAD_BYTES", "ServiceOptions", "create_app", "serve", "serve_workers", "worker_app"]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float, poll: float = 0.5) -> None:
    """Wait until `catalogclip serve`, started as `process`, answers ``url/healthz``: RuntimeError
    when it exits first (with its output, where it was captured) or does not answer in `timeout` s."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"serve exited with {process.returncode}: {output}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll)
    raise RuntimeError(f"serve did not answer {url}/healthz within {timeout:g} s")
